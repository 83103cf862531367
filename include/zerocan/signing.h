// Message signatures: a one-time-key Poly1305 MAC (OpenSSL libcrypto) over every frame of
// a message, carried in one extra frame at the end.
//
// Wire layout of a signed message (docs/SECURITY.md):
//   [routing...] [] [envelope] [payload 1..N] [signature]
// The signature frame is kSignatureFrameSize (40) bytes: the 8-byte tag kSignatureMagic
// (scheme 2), a kNonceSize-byte nonce (random, fresh per message) and the kMacSize-byte
// tag:
//   K   = HMAC-SHA256(key, "zerocan.poly1305.v2" NUL || nonce)       (one-time key)
//   tag = Poly1305(K, version u16 LE || 0^6 || n u64 LE ||
//                     for each signed frame: length u64 LE || 0^8 || frame bytes ||
//                                            zero bytes up to a multiple of 16)
// over the frames after the delimiter (envelope first, signature excluded). So changing,
// truncating, extending, dropping, adding or reordering any frame changes the tag.
// Routing frames are not signed: brokers add and remove them. Scheme 1 (HMAC-SHA256 over
// SHA-256 frame digests) is no longer produced or accepted.
//
// Receivers verify before anything is decoded (Signer::Verify or Check, constant-time
// compare) and strip the signature frame, because Message::Decode expects exactly
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

inline constexpr size_t kNonceSize = 16;
inline constexpr size_t kMacSize = 16;  // Poly1305
inline constexpr size_t kSignatureFrameSize = 8 + kNonceSize + kMacSize;
// "zcsig", scheme 2 (one-time-key Poly1305), two reserved zero bytes.
inline constexpr char kSignatureMagic[8] = {'z', 'c', 's', 'i', 'g', 2, 0, 0};

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
  // Add feeds its frame's length and bytes to the MAC; nothing is copied. Begin draws a
  // fresh random nonce (OpenSSL RAND_bytes) for the message.
  class Hasher {
   public:
    Hasher(Hasher&&) noexcept;
    Hasher& operator=(Hasher&&) noexcept;
    ~Hasher();
    void Add(const void* data, size_t size);
    // The signature frame. The Hasher is spent afterwards.
    zmq::message_t Finish();
    // The raw kMacSize-byte tag (for Check).
    void FinishMac(unsigned char out[kMacSize]);

   private:
    friend class Signer;
    struct Ctx;
    Hasher(std::unique_ptr<Ctx> ctx, uint64_t frame_count);
    std::unique_ptr<Ctx> ctx_;
    uint64_t expected_ = 0;
    uint64_t added_ = 0;
  };
  Hasher Begin(uint64_t frame_count) const;
  // Begin with a caller-chosen nonce: for known-answer tests only. Signing two different
  // messages with one nonce reveals that nonce's one-time key and lets anyone forge
  // messages under it (docs/SECURITY.md); real senders use Begin.
  Hasher UnsafeBeginWithNonce(uint64_t frame_count, const unsigned char nonce[kNonceSize]) const;

  // The signature frame over an encoded message (envelope, then its payload frames).
  zmq::message_t SignatureFor(const Outgoing& message) const;
  // The signature frame over `frames` (all of them; none may be a signature already).
  zmq::message_t SignatureFor(std::span<const zmq::message_t> frames) const;
  // Appends the signature frame to `frames` (for forwarding and tests).
  void SignFrames(FrameList* frames) const;

  enum class Verdict { kOk, kUnsigned, kBadSignature };
  // Checks the last frame of `frames` against the others, in constant time in the tag
  // (CRYPTO_memcmp). Does not modify anything and throws nothing: the cheap
  // way for a server to refuse a flood (no exception, no message text; the cheapest
  // test, the last frame's size and magic, comes first).
  Verdict Check(std::span<const zmq::message_t> frames) const noexcept;
  // Checks `received` and, on success, removes its signature frame so that
  // Message::Decode can read it. Throws AuthError(kUnsigned or kBadSignature) and
  // leaves `received` untouched on failure.
  void Verify(ReceivedMessage* received) const;

 private:
  struct Keyed;
  template <class Frames>
  zmq::message_t SignatureOver(const Frames& frames, size_t count) const;
  std::shared_ptr<const Keyed> keyed_;
};

// Sends like zerocan::Send and appends the signature frame. Payload frames stay zero-copy.
// (libzmq hands a multipart message to its I/O thread only when the last part is
// written, so the MAC cannot overlap the transmission of earlier parts; see
// docs/SECURITY.md.) With signer == nullptr this is Send.
Tracker SendSigned(zmq::socket_t& socket, Outgoing&& message, const Signer* signer,
                   absl::InlinedVector<zmq::message_t, 2>* routing = nullptr);

// Removes and returns the last frame of `received` when it looks like a signature frame;
// otherwise returns an empty optional and leaves `received` alone. For tools that
// inspect signed traffic without the key (nothing is verified).
std::optional<zmq::message_t> StripSignature(ReceivedMessage* received);

}  // namespace zerocan
