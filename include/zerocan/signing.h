// Message signatures: an HMAC-SHA256 (OpenSSL libcrypto) over every frame of a message,
// carried in one extra frame at the end.
//
// Wire layout of a signed message (docs/SECURITY.md):
//   [routing...] [] [envelope] [payload 1..N] [signature]
// The signature frame is kSignatureFrameSize bytes: the 8-byte tag kSignatureMagic
// (scheme 1) and the 32-byte MAC:
//   HMAC-SHA256(key, "zerocan.hmac-sha256.v1" NUL || version u16 LE || n u64 LE ||
//               for each signed frame: length u64 LE || D(frame))
// over the frames after the delimiter (envelope first, signature excluded), where
// D(frame) = SHA-256(frame) for frames of at most 1 MiB and, for longer frames,
// SHA-256 of the concatenated SHA-256 digests of its 1 MiB chunks (last one shorter).
// The chunk digests of large messages are computed in parallel (see docs/SECURITY.md).
// So changing, truncating, extending, dropping, adding or reordering any frame changes
// the MAC. Routing frames are not signed: brokers add and remove them.
//
// Receivers verify before anything is decoded (Signer::Verify, constant-time compare)
// and strip the signature frame, because Message::Decode expects exactly
// 1 + payloadFrames frames.
//
// Threading: a Signer is immutable after construction; its const methods may run on any
// number of threads at once. Copies share the keyed state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "zerocan/auth_error.h"
#include "zerocan/frames.h"
#include "zerocan/message.h"
#include "zerocan/writer.h"

namespace zerocan {

namespace internal {
struct FrameBytes {
  const unsigned char* data;
  size_t size;
};
}  // namespace internal

inline constexpr size_t kMacSize = 32;
inline constexpr size_t kSignatureFrameSize = 8 + kMacSize;
// "zcsig", scheme 1, two reserved zero bytes.
inline constexpr char kSignatureMagic[8] = {'z', 'c', 's', 'i', 'g', 1, 0, 0};

// True when `frame` has the size and magic of a signature frame (says nothing about
// whether the MAC is right).
bool LooksLikeSignature(const zmq::message_t& frame) noexcept;

class Signer {
 public:
  // `key`: the shared secret, any bytes, at least 1 byte (32 random bytes recommended).
  // Throws AuthError(kBadKey) when empty.
  explicit Signer(std::string_view key);

  // Reads a key file: either JSON with a "key" string (a Jupyter-style connection
  // file; if it has "signature_scheme" it must be "hmac-sha256"), or the raw key
  // (surrounding whitespace removed). Throws AuthError(kBadKey) naming the path.
  static Signer FromKeyFile(const std::string& path);
  static std::string ReadKeyFile(const std::string& path);

  // Incremental signing of one message: Add each frame in order (envelope first), then
  // Finish. `frame_count` must equal the number of Add calls (checked by Finish). Each
  // Add hashes its whole frame (chunks in parallel when large).
  class Hasher {
   public:
    Hasher(Hasher&&) noexcept;
    Hasher& operator=(Hasher&&) noexcept;
    ~Hasher();
    void Add(const void* data, size_t size);
    // The signature frame. The Hasher is spent afterwards.
    zmq::message_t Finish();
    // The raw 32-byte MAC (for Verify).
    void FinishMac(unsigned char out[kMacSize]);

   private:
    friend class Signer;
    struct Ctx;
    // One frame by its length and D(frame) (see above).
    void AddDigest(uint64_t size, const unsigned char digest[32]);
    Hasher(std::unique_ptr<Ctx> ctx, uint64_t frame_count);
    std::unique_ptr<Ctx> ctx_;
    uint64_t expected_ = 0;
    uint64_t added_ = 0;
  };
  Hasher Begin(uint64_t frame_count) const;

  // The signature frame over an encoded message (envelope, then its payload frames).
  zmq::message_t SignatureFor(const Outgoing& message) const;
  // The signature frame over `frames` (all of them; none may be a signature already).
  zmq::message_t SignatureFor(std::span<const zmq::message_t> frames) const;
  // Appends the signature frame to `frames` (for forwarding and tests).
  void SignFrames(FrameList* frames) const;

  enum class Verdict { kOk, kUnsigned, kBadSignature };
  // Checks the last frame of `frames` against the others, in constant time in the MAC
  // (CRYPTO_memcmp). Does not modify anything.
  Verdict Check(std::span<const zmq::message_t> frames) const noexcept;
  // Checks `received` and, on success, removes its signature frame so that
  // Message::Decode can read it. Throws AuthError(kUnsigned or kBadSignature) and
  // leaves `received` untouched on failure.
  void Verify(ReceivedMessage* received) const;

 private:
  struct Keyed;
  zmq::message_t SignatureOver(const std::vector<internal::FrameBytes>& frames) const;
  std::shared_ptr<const Keyed> keyed_;
};

// Sends like zerocan::Send and appends the signature frame. Payload frames stay zero-copy.
// (libzmq hands a multipart message to its I/O thread only when the last part is
// written, so hashing cannot overlap the transmission of earlier parts; see
// docs/SECURITY.md for what was measured.) With signer == nullptr this is Send.
Tracker SendSigned(zmq::socket_t& socket, Outgoing&& message, const Signer* signer,
                   absl::InlinedVector<zmq::message_t, 2>* routing = nullptr);

// Removes and returns the last frame of `received` when it looks like a signature frame;
// otherwise returns an empty optional and leaves `received` alone. For tools that
// inspect signed traffic without the key (nothing is verified).
std::optional<zmq::message_t> StripSignature(ReceivedMessage* received);

}  // namespace zerocan
