// Message signatures: a one-time-key Poly1305 MAC (OpenSSL libcrypto) over every frame of
// a message, carried in one extra frame at the end; large frames are MACed in chunks on
// several threads.
//
// Wire layout of a signed message (docs/SECURITY.md):
//   [routing...] [] [envelope] [payload 1..N] [signature]
// The signature frame is kSignatureFrameSize (40) bytes: the 8-byte tag kSignatureMagic
// (scheme 3), a kNonceSize-byte nonce (random, fresh per message) and the kMacSize-byte
// tag. With C = kSignatureChunkSize and D = "zerocan.poly1305.v3" NUL:
//   K       = HMAC-SHA256(key, D || nonce)                         (one-time key)
//   K(i, j) = HMAC-SHA256(key, D || nonce || u64le(i) || u64le(j))  (chunk j of frame i)
//   tag = Poly1305(K, version u16 LE || 0^2 || C u32 LE || n u64 LE ||
//                     for each signed frame i: length u64 LE || 0^8 ||
//                       length <= C: frame bytes || zero bytes up to a multiple of 16
//                       length >  C: Poly1305(K(i, j), chunk j) for j = 0..ceil(length/C)-1)
// over the frames after the delimiter (envelope first, signature excluded; chunk j is
// bytes [j*C, min((j+1)*C, length)) of the frame). So changing, truncating, extending,
// dropping, adding or reordering any frame changes the tag. Routing frames are not
// signed: brokers add and remove them. Schemes 1 (HMAC-SHA256 over SHA-256 frame
// digests) and 2 (one sequential Poly1305 pass, "zcsig" 2) are no longer produced or
// accepted: such frames are kUnsigned, with a message naming the scheme.
//
// Cost: frames of at most C bytes are MACed inline on the calling thread (no thread
// hand-off: envelopes, small messages, every message of a flood). The chunks of a longer
// frame are MACed by the calling thread together with the Signer's pool of helper
// threads (SignerOptions::chunk_threads; by default hardware_concurrency() - 1, at most
// 15), created at the first such frame and joined when the last copy of the Signer (and
// its last Hasher) is gone; about 14 GB/s per thread here. The helpers keep the CPU set
// they were created with unless SignerOptions::steer_chunk_threads asks otherwise.
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

#include "zerocan/auth_error.h"
#include "zerocan/buffer.h"
#include "zerocan/message.h"
#include "zerocan/writer.h"

namespace zerocan {

namespace internal {
struct TestHooks;  // src/internal/testing.h
}  // namespace internal

inline constexpr size_t kNonceSize = 16;
inline constexpr size_t kMacSize = 16;  // Poly1305
inline constexpr size_t kSignatureFrameSize = 8 + kNonceSize + kMacSize;
// "zcsig", scheme 3 (chunked one-time-key Poly1305), two reserved zero bytes.
inline constexpr char kSignatureMagic[8] = {'z', 'c', 's', 'i', 'g', 3, 0, 0};
// Frames longer than this are MACed in chunks of this many bytes (part of scheme 3: a
// different value makes different tags). 1 MiB: the 16 chunks of a 16 MiB frame spread
// evenly over a few threads, and each chunk's key derivation (~0.4 us) is noise against
// its ~70 us of Poly1305.
inline constexpr size_t kSignatureChunkSize = size_t{1} << 20;

// True when `frame` has the size and magic of a signature frame (says nothing about
// whether the MAC is right).
bool LooksLikeSignature(const Buffer& frame) noexcept;

struct SignerOptions {
  // Helper threads that MAC the chunks of frames longer than kSignatureChunkSize beside
  // the calling thread. -1 = hardware_concurrency() - 1; 0 = the calling thread alone;
  // at most 15. Shared by copies of the Signer.
  int chunk_threads = -1;
  // Opt-in: before each batch of chunks, keep the helpers off the calling thread's CPU
  // (pthread_setaffinity_np on the pool's own threads, only when the caller's CPU
  // changed). Helps on kernels that pack wakeups onto the waker's CPU; off by default,
  // as a library sets no thread's affinity unless asked.
  bool steer_chunk_threads = false;
};

class Signer {
 public:
  // `key`: the shared secret, any bytes, at least 1 byte (32 random bytes recommended).
  // Throws AuthError(kBadKey) when empty.
  explicit Signer(std::string_view key, SignerOptions options = {});

  // Reads a key file: either JSON with a "key" string (a Jupyter-style connection
  // file; if it has "signature_scheme" it must be "hmac-sha256"), or the raw key
  // (surrounding whitespace removed). Throws AuthError(kBadKey) naming the path.
  static Signer FromKeyFile(const std::string& path, SignerOptions options = {});
  static std::string ReadKeyFile(const std::string& path);

  // Incremental signing of one message: Add each frame in order (envelope first), then
  // Finish. `frame_count` must equal the number of Add calls (checked by Add and Finish).
  // Each Add reads its frame only during the call and copies nothing: a frame longer
  // than kSignatureChunkSize is MACed chunk by chunk on the calling thread and the
  // Signer's pool, and Add returns when all its chunks are done. Begin draws a fresh
  // random nonce (OpenSSL RAND_bytes) for the message. A Hasher is used by one thread at
  // a time; it keeps the Signer's keyed state alive.
  class Hasher {
   public:
    Hasher(Hasher&&) noexcept;
    Hasher& operator=(Hasher&&) noexcept;
    ~Hasher();
    void Add(const void* data, size_t size);
    // The signature frame. The Hasher is spent afterwards.
    Buffer Finish();
    // The raw kMacSize-byte tag (for Check).
    void FinishMac(unsigned char out[kMacSize]);

   private:
    friend class Signer;
    friend struct internal::TestHooks;
    struct Ctx;
    Hasher(std::unique_ptr<Ctx> ctx, uint64_t frame_count);
    std::unique_ptr<Ctx> ctx_;
    uint64_t expected_ = 0;
    uint64_t added_ = 0;
  };
  Hasher Begin(uint64_t frame_count) const;

  // Signs an encoded message: its trailer becomes the signature frame over the envelope
  // and the payload frames (which must not change afterwards). Signing wraps the message;
  // any transport then sends it whole.
  void Sign(Outgoing* message) const;
  // The signature frame over an encoded message (envelope, then its payload frames).
  Buffer SignatureFor(const Outgoing& message) const;
  // The signature frame over `frames` (all of them; none may be a signature already).
  Buffer SignatureFor(std::span<const Buffer> frames) const;
  // Appends the signature frame to `frames` (for forwarding and tests).
  void SignFrames(FrameList* frames) const;

  // Opaque keyed OpenSSL state (src/signing.cc), shared by copies and Hashers.
  struct Keyed;

  enum class Verdict { kOk, kUnsigned, kBadSignature };
  // Checks the last frame of `frames` against the others, in constant time in the tag
  // (CRYPTO_memcmp). Does not modify anything and throws nothing: the cheap
  // way for a server to refuse a flood (no exception, no message text; the cheapest
  // test, the last frame's size and magic, comes first, and only a message with a
  // frame over kSignatureChunkSize reaches the thread pool). Fails closed
  // (kBadSignature) if OpenSSL or an allocation fails.
  Verdict Check(std::span<const Buffer> frames) const noexcept;
  // Checks `received` and, on success, removes its signature frame so that
  // Message::Decode can read it. Throws AuthError(kUnsigned or kBadSignature) and
  // leaves `received` untouched on failure.
  void Verify(ReceivedMessage* received) const;

 private:
  friend struct internal::TestHooks;
  template <class Frames>
  Buffer SignatureOver(const Frames& frames, size_t count) const;
  std::shared_ptr<const Keyed> keyed_;
};

// Removes and returns the last frame of `received` when it looks like a signature frame;
// otherwise returns an empty optional and leaves `received` alone. For tools that
// inspect signed traffic without the key (nothing is verified).
std::optional<Buffer> StripSignature(ReceivedMessage* received);

}  // namespace zerocan
