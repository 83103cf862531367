// Signature scheme 3: chunked one-time-key Poly1305 over every frame (see
// include/zerocan/signing.h for the layout and docs/SECURITY.md for why it is secure).
//
// Per message: a 16-byte random nonce; the outer one-time key K = HMAC-SHA256(key,
// domain || nonce); the tag is Poly1305 under K over the version, the chunk size, the
// frame count and each frame's length and content, padded to 16-byte blocks as in
// RFC 8439's AEAD construction. A frame of at most kSignatureChunkSize bytes enters as its
// bytes; a longer one as the 16-byte Poly1305 tags of its chunks, each under its own
// one-time key K(i, j) = HMAC-SHA256(key, domain || nonce || u64le(i) || u64le(j)).
//
// Why chunks: one Poly1305 stream runs at ~14 GB/s on one core here, so a 16 MiB frame
// costs ~1.2 ms to sign and as much to verify, serial with the transfer (libzmq starts
// sending a multipart message only at its last part, and the receiver has the whole
// message before it can verify). Chunks under independent keys are MACed on the
// Signer's ChunkPool threads at once; frames at or below the chunk size (envelopes, small
// payloads, every frame of a flood) never reach the pool.
//
// OpenSSL 3's EVP_MAC keeps the keyed HMAC state (the inner and outer pads already
// hashed) in one context; each derivation duplicates it instead of re-keying.
#include "zerocan/signing.h"

#include "internal/testing.h"


#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/version.h"

namespace zerocan {

namespace {

// NUL-terminated on the wire (sizeof includes it), so the tag ends unambiguously.
constexpr char kDomain[] = "zerocan.poly1305.v3";
// Poly1305 block size: every field and frame starts on a block boundary.
constexpr size_t kBlock = 16;
constexpr size_t kChunk = kSignatureChunkSize;
// The tags of retired schemes, recognised only to name them in the error: scheme 1
// (HMAC-SHA256 over SHA-256 frame digests) and scheme 2 (one sequential Poly1305 pass).
constexpr char kSchemeOneMagic[8] = {'z', 'c', 's', 'i', 'g', 1, 0, 0};
constexpr char kSchemeTwoMagic[8] = {'z', 'c', 's', 'i', 'g', 2, 0, 0};

void PutU64(unsigned char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

[[noreturn]] void CryptoFailure(const char* what) {
  // OpenSSL failing here means an allocation failure or a broken installation, never
  // anything a peer sent.
  throw Error(absl::StrCat("OpenSSL ", what, " failed"));
}

// Frees an EVP_MAC_CTX on every path.
struct MacCtx {
  EVP_MAC_CTX* ctx = nullptr;
  MacCtx() = default;
  explicit MacCtx(EVP_MAC_CTX* c) : ctx(c) {}
  MacCtx(const MacCtx&) = delete;
  MacCtx& operator=(const MacCtx&) = delete;
  ~MacCtx() { EVP_MAC_CTX_free(ctx); }
};

// ---- the chunk pool ------------------------------------------------------------------

// Runs job(0..n-1) on the calling thread and `helpers` helper threads, and returns when
// every job has run. One pool per keyed state (a Signer and its copies share it),
// created at the first frame that needs it; its threads are joined when the last
// Signer copy and Hasher sharing that state are gone. Any number of callers may run
// batches at once: each caller works through its own batch, and idle helpers join the
// oldest batch that still has unclaimed jobs, so a caller never waits for another
// caller's work. Jobs must not throw.
class ChunkPool {
 public:
  using Job = void (*)(const void* context, size_t index);

  ChunkPool(unsigned helpers, bool steer) : pid_(getpid()) {
    helpers = std::min(helpers, kMaxHelpers);
    for (unsigned i = 0; i < helpers; ++i) {
      try {
        threads_.emplace_back([this] { Help(); });
        handles_[i] = threads_.back().native_handle();
      } catch (const std::system_error&) {
        break;  // fewer helpers; callers still do all their own work
      }
    }
    helpers_ = static_cast<unsigned>(threads_.size());
    // The helpers inherited this thread's CPU set; steering only ever narrows it.
    CPU_ZERO(&allowed_);
    if (!steer || sched_getaffinity(0, sizeof(allowed_), &allowed_) != 0 ||
        CPU_COUNT(&allowed_) < 2) {
      steer_ = false;
    }
  }

  ~ChunkPool() {
    if (getpid() != pid_) {
      // A forked child: the helpers exist only in the parent, and the mutex may have been
      // held by one of them at the fork. Nothing to join; leave the thread objects be.
      new std::vector<std::thread>(std::move(threads_));  // deliberately leaked
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  void Run(size_t n, Job job, const void* context) noexcept {
    // In a forked child the helpers do not exist and the mutex may have been held by
    // one of them at the fork: never touch either.
    if (helpers_ == 0 || n < 2 || getpid() != pid_) {
      for (size_t i = 0; i < n; ++i) job(context, i);
      return;
    }
    SteerHelpers();
    Batch batch{job, context, n};
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(&batch);
    }
    if (n - 1 >= helpers_) {
      work_.notify_all();
    } else {
      for (size_t i = 0; i + 1 < n; ++i) work_.notify_one();
    }
    batch.Drain();
    std::unique_lock<std::mutex> lock(mu_);
    Unqueue(&batch);  // no helper can join it from here on
    done_.wait(lock, [&] { return batch.helpers == 0; });
  }

  static constexpr unsigned kMaxHelpers = 15;

 private:
  struct Batch {
    Job job;
    const void* context;
    size_t n;
    std::atomic<size_t> next{0};
    unsigned helpers = 0;  // helpers working on it (guarded by mu_)

    void Drain() noexcept {
      for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        job(context, i);
      }
    }
  };

  // Only with SignerOptions::steer_chunk_threads (off by default: a library sets no
  // thread's CPU affinity unless asked). Keeps the helpers off the caller's CPU. Some
  // guest kernels place a woken thread on its waker's CPU even while another CPU is idle
  // (the reference VM boots with sched_vcpu_pack=15, which packs wakeups): the helper
  // then waits in that CPU's run queue until the caller has drained the batch alone,
  // and the chunks run one after another. A helper whose CPU set excludes the caller's
  // CPU is woken elsewhere. The set is changed only when the caller's CPU differs from
  // the one last excluded (one pthread_setaffinity_np per helper, a few microseconds,
  // against ~75 us per 1 MiB chunk), so a caller that stays put makes no system call
  // beyond sched_getcpu (vDSO). Only this pool's own helpers are touched. Any failure
  // (a container that forbids it, a CPU set changed under us) turns steering off for
  // good and leaves the helpers wherever the kernel puts them.
  void SteerHelpers() noexcept {
    if (!steer_.load(std::memory_order_relaxed)) return;
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed_)) return;
    if (excluded_.load(std::memory_order_relaxed) == cpu) return;
    // Callers on different CPUs at once would undo each other's sets; one steers, the
    // others go on with the helpers where they are.
    std::unique_lock<std::mutex> lock(steer_mu_, std::try_to_lock);
    if (!lock.owns_lock() || !steer_.load(std::memory_order_relaxed)) return;
    cpu_set_t others = allowed_;
    CPU_CLR(cpu, &others);
    for (unsigned i = 0; i < helpers_; ++i) {
      if (pthread_setaffinity_np(handles_[i], sizeof(others), &others) != 0) {
        steer_.store(false, std::memory_order_relaxed);
        for (unsigned j = 0; j < i; ++j) {
          pthread_setaffinity_np(handles_[j], sizeof(allowed_), &allowed_);  // best effort
        }
        return;
      }
    }
    excluded_.store(cpu, std::memory_order_relaxed);
  }

  void Unqueue(Batch* batch) {
    auto it = std::find(queue_.begin(), queue_.end(), batch);
    if (it != queue_.end()) queue_.erase(it);
  }

  void Help() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_.wait(lock, [&] { return !queue_.empty() || stop_; });
      if (queue_.empty()) return;  // stopping, and no batch left
      Batch* batch = queue_.front();
      ++batch->helpers;
      lock.unlock();
      batch->Drain();
      lock.lock();
      Unqueue(batch);  // every job is claimed
      if (--batch->helpers == 0) done_.notify_all();
    }
  }

  const pid_t pid_;
  std::vector<std::thread> threads_;
  unsigned helpers_ = 0;              // threads_.size(), read without the lock
  pthread_t handles_[kMaxHelpers];    // the first helpers_ are live
  cpu_set_t allowed_;                 // the helpers' CPU set at creation
  std::mutex steer_mu_;               // held while the helpers' CPU sets change
  std::atomic<bool> steer_{true};
  std::atomic<int> excluded_{-1};  // the CPU the helpers now avoid; -1: none yet
  std::mutex mu_;
  std::condition_variable work_, done_;
  std::vector<Batch*> queue_;  // batches that may have unclaimed jobs, oldest first
  bool stop_ = false;          // mu_
};

// The helper count SignerOptions::chunk_threads asks for.
unsigned ChunkHelpers(int chunk_threads) {
  if (chunk_threads >= 0) return std::min<unsigned>(chunk_threads, ChunkPool::kMaxHelpers);
  return std::clamp(std::thread::hardware_concurrency(), 1u, ChunkPool::kMaxHelpers + 1) - 1;
}

}  // namespace

std::string_view AuthCodeName(AuthError::Code code) noexcept {
  switch (code) {
    case AuthError::Code::kUnsigned: return "unsigned";
    case AuthError::Code::kBadSignature: return "bad signature";
    case AuthError::Code::kReplayed: return "replayed";
    case AuthError::Code::kTooOld: return "too old";
    case AuthError::Code::kClockSkew: return "clock skew";
    case AuthError::Code::kTooManySessions: return "too many sessions";
    case AuthError::Code::kBadKey: return "bad key";
  }
  return "unknown";
}

bool LooksLikeSignature(const Buffer& frame) noexcept {
  return frame.size() == kSignatureFrameSize &&
         std::memcmp(frame.data(), kSignatureMagic, sizeof(kSignatureMagic)) == 0;
}

// ---- keyed state ---------------------------------------------------------------------

struct Signer::Keyed {
  EVP_MAC* hmac = nullptr;
  EVP_MAC* poly = nullptr;
  EVP_MAC_CTX* kdf = nullptr;  // HMAC-SHA256 keyed with the secret, never updated: duplicated
  SignerOptions options;
  // Made at the first frame over kSignatureChunkSize; null until then, and when it could
  // not be made (allocation failure: callers then run alone).
  mutable std::once_flag pool_once;
  mutable std::unique_ptr<ChunkPool> pool;

  ChunkPool* Pool() const noexcept {
    std::call_once(pool_once, [this] {
      unsigned helpers = ChunkHelpers(options.chunk_threads);
      if (helpers == 0) return;
      pool.reset(new (std::nothrow) ChunkPool(helpers, options.steer_chunk_threads));
    });
    return pool.get();
  }

  ~Keyed() {
    pool.reset();  // joins the helpers (none is working: no Hasher is left)
    EVP_MAC_CTX_free(kdf);
    EVP_MAC_free(poly);
    EVP_MAC_free(hmac);
  }

  // A Poly1305 context under the one-time key HMAC-SHA256(secret, kDomain || nonce ||
  // suffix): the message's outer key with no suffix, a chunk's with u64le(frame) ||
  // u64le(chunk). The two input lengths (36 and 52 bytes) differ, so no chunk key is
  // ever the outer key's PRF input. Returns null only when OpenSSL fails (allocation).
  // Safe on any number of threads at once (kdf is only read, by EVP_MAC_CTX_dup).
  EVP_MAC_CTX* OneTimeMac(const unsigned char nonce[kNonceSize], const unsigned char* suffix,
                          size_t suffix_size) const noexcept {
    MacCtx kdf_msg(EVP_MAC_CTX_dup(kdf));
    if (kdf_msg.ctx == nullptr) return nullptr;
    unsigned char one_time[32];
    size_t written = 0;
    bool ok = EVP_MAC_update(kdf_msg.ctx, reinterpret_cast<const unsigned char*>(kDomain),
                             sizeof(kDomain)) == 1 &&
              EVP_MAC_update(kdf_msg.ctx, nonce, kNonceSize) == 1 &&
              (suffix_size == 0 || EVP_MAC_update(kdf_msg.ctx, suffix, suffix_size) == 1) &&
              EVP_MAC_final(kdf_msg.ctx, one_time, &written, sizeof(one_time)) == 1 &&
              written == sizeof(one_time);
    MacCtx mac(ok ? EVP_MAC_CTX_new(poly) : nullptr);
    ok = mac.ctx != nullptr && EVP_MAC_init(mac.ctx, one_time, sizeof(one_time), nullptr) == 1;
    OPENSSL_cleanse(one_time, sizeof(one_time));
    if (!ok) return nullptr;
    EVP_MAC_CTX* out = mac.ctx;
    mac.ctx = nullptr;
    return out;
  }

  // The message's outer Poly1305 context, with its header block already fed: version
  // u16 LE, 2 zero bytes, chunk size u32 LE, frame count u64 LE.
  EVP_MAC_CTX* Start(const unsigned char nonce[kNonceSize], uint64_t frame_count) const noexcept {
    MacCtx mac(OneTimeMac(nonce, nullptr, 0));
    if (mac.ctx == nullptr) return nullptr;
    unsigned char header[kBlock] = {};
    header[0] = static_cast<unsigned char>(kProtocolVersion & 0xff);
    header[1] = static_cast<unsigned char>(kProtocolVersion >> 8);
    for (int i = 0; i < 4; ++i) header[4 + i] = static_cast<unsigned char>(kChunk >> (8 * i));
    PutU64(header + 8, frame_count);
    if (EVP_MAC_update(mac.ctx, header, sizeof(header)) != 1) return nullptr;
    EVP_MAC_CTX* out = mac.ctx;
    mac.ctx = nullptr;
    return out;
  }
};

namespace {

bool FinalTag(EVP_MAC_CTX* ctx, unsigned char out[kMacSize]) noexcept {
  size_t written = 0;
  return EVP_MAC_final(ctx, out, &written, kMacSize) == 1 && written == kMacSize;
}

// The chunks of one large frame, MACed as ChunkPool jobs.
struct FrameChunks {
  const Signer::Keyed* keyed;
  const unsigned char* nonce;
  uint64_t frame_index;
  const unsigned char* data;
  size_t size;
  unsigned char* tags;  // kMacSize bytes per chunk
  mutable std::atomic<bool> failed{false};

  // tag j = Poly1305(K(frame_index, j), chunk j's bytes): no padding, Poly1305 itself
  // marks where the last (partial) block ends; every chunk starts a fresh context, so
  // OpenSSL's bulk code runs from its first byte.
  static void Job(const void* context, size_t j) noexcept {
    const auto& self = *static_cast<const FrameChunks*>(context);
    unsigned char suffix[16];
    PutU64(suffix, self.frame_index);
    PutU64(suffix + 8, j);
    size_t offset = j * kChunk;
    MacCtx mac(self.keyed->OneTimeMac(self.nonce, suffix, sizeof(suffix)));
    size_t length = std::min(kChunk, self.size - offset);
    bool ok = mac.ctx != nullptr && EVP_MAC_update(mac.ctx, self.data + offset, length) == 1 &&
              FinalTag(mac.ctx, self.tags + j * kMacSize);
    if (!ok) self.failed.store(true, std::memory_order_relaxed);
  }
};

// Feeds frame `index` (0 = envelope) to the outer MAC: a 16-byte block holding its
// length (u64 LE, then 8 zero bytes), then either its bytes and zero bytes up to the
// next multiple of 16 (at most kChunk bytes) or the 16-byte tags of its kChunk-byte
// chunks, in order (longer frames; the last chunk may be short). Every frame thus starts
// on a Poly1305 block boundary, which keeps OpenSSL on its fast path (bulk bytes that
// follow a partial block run at half speed, 7 vs 14 GB/s measured here). Throws nothing;
// false on an OpenSSL or allocation failure.
bool AddFrame(const Signer::Keyed& keyed, EVP_MAC_CTX* ctx, const unsigned char nonce[kNonceSize],
              uint64_t index, const void* data, size_t size) noexcept {
  static constexpr unsigned char kZeros[kBlock] = {};
  unsigned char length[kBlock] = {};
  PutU64(length, size);
  if (EVP_MAC_update(ctx, length, sizeof(length)) != 1) return false;
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (size <= kChunk) {
    size_t pad = (kBlock - size % kBlock) % kBlock;
    return (size == 0 || EVP_MAC_update(ctx, bytes, size) == 1) &&
           (pad == 0 || EVP_MAC_update(ctx, kZeros, pad) == 1);
  }
  size_t chunks = (size - 1) / kChunk + 1;  // >= 2
  // 64 chunks (64 MiB) of tags on the stack; beyond that 16 bytes per MiB on the heap.
  unsigned char local[64 * kMacSize];
  std::unique_ptr<unsigned char[]> heap;
  unsigned char* tags = local;
  if (chunks > 64) {
    heap.reset(new (std::nothrow) unsigned char[chunks * kMacSize]);
    if (heap == nullptr) return false;
    tags = heap.get();
  }
  FrameChunks work{&keyed, nonce, index, bytes, size, tags};
  if (ChunkPool* pool = keyed.Pool()) {
    pool->Run(chunks, &FrameChunks::Job, &work);
  } else {
    for (size_t j = 0; j < chunks; ++j) FrameChunks::Job(&work, j);
  }
  return !work.failed.load(std::memory_order_relaxed) &&
         EVP_MAC_update(ctx, tags, chunks * kMacSize) == 1;
}

}  // namespace

struct Signer::Hasher::Ctx {
  std::shared_ptr<const Keyed> keyed;  // the Signer's: a Hasher may outlive it
  EVP_MAC_CTX* ctx = nullptr;          // the outer Poly1305, under the message's key
  unsigned char nonce[kNonceSize];
  ~Ctx() { EVP_MAC_CTX_free(ctx); }
};

Signer::Signer(std::string_view key, SignerOptions options) {
  if (key.empty()) throw AuthError(AuthError::Code::kBadKey, "signing key is empty");
  auto keyed = std::make_shared<Keyed>();
  keyed->options = options;
  keyed->hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (keyed->hmac == nullptr) CryptoFailure("EVP_MAC_fetch(HMAC)");
  keyed->poly = EVP_MAC_fetch(nullptr, "POLY1305", nullptr);
  if (keyed->poly == nullptr) CryptoFailure("EVP_MAC_fetch(POLY1305)");
  keyed->kdf = EVP_MAC_CTX_new(keyed->hmac);
  if (keyed->kdf == nullptr) CryptoFailure("EVP_MAC_CTX_new");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(keyed->kdf, reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                   params) != 1) {
    CryptoFailure("EVP_MAC_init(HMAC-SHA256)");
  }
  keyed_ = std::move(keyed);
}

std::string Signer::ReadKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw AuthError(AuthError::Code::kBadKey, absl::StrCat("key file ", path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  size_t begin = content.find_first_not_of(" \t\r\n");
  size_t end = content.find_last_not_of(" \t\r\n");
  std::string trimmed = begin == std::string::npos ? std::string()
                                                   : content.substr(begin, end - begin + 1);
  if (!trimmed.empty() && trimmed.front() == '{') {
    auto json = nlohmann::json::parse(trimmed, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      throw AuthError(AuthError::Code::kBadKey,
                      absl::StrCat("key file ", path, ": starts with '{' but is not a JSON object"));
    }
    auto scheme = json.find("signature_scheme");
    if (scheme != json.end() && (!scheme->is_string() || *scheme != "hmac-sha256")) {
      throw AuthError(AuthError::Code::kBadKey,
                      absl::StrCat("key file ", path, ": signature_scheme ", scheme->dump(),
                                   " is not supported (only \"hmac-sha256\")"));
    }
    auto key = json.find("key");
    if (key == json.end() || !key->is_string()) {
      throw AuthError(AuthError::Code::kBadKey,
                      absl::StrCat("key file ", path, ": no \"key\" string"));
    }
    trimmed = key->get<std::string>();
  }
  if (trimmed.empty()) {
    throw AuthError(AuthError::Code::kBadKey, absl::StrCat("key file ", path, ": the key is empty"));
  }
  return trimmed;
}

Signer Signer::FromKeyFile(const std::string& path, SignerOptions options) {
  return Signer(ReadKeyFile(path), options);
}

// ---- signing -------------------------------------------------------------------------

Signer::Hasher::Hasher(std::unique_ptr<Ctx> ctx, uint64_t frame_count)
    : ctx_(std::move(ctx)), expected_(frame_count) {}
Signer::Hasher::Hasher(Hasher&&) noexcept = default;
Signer::Hasher& Signer::Hasher::operator=(Hasher&&) noexcept = default;
Signer::Hasher::~Hasher() = default;

Signer::Hasher Signer::Begin(uint64_t frame_count) const {
  // A fresh nonce from OpenSSL's CSPRNG (fork-safe: it reseeds in a forked child), so
  // one-time keys never repeat however the caller numbers its messages.
  unsigned char nonce[kNonceSize];
  if (RAND_bytes(nonce, sizeof(nonce)) != 1) CryptoFailure("RAND_bytes");
  return internal::TestHooks::BeginWithNonce(*this, frame_count, nonce);
}

Signer::Hasher internal::TestHooks::BeginWithNonce(const Signer& signer, uint64_t frame_count,
                                                   const unsigned char nonce[kNonceSize]) {
  auto ctx = std::make_unique<Signer::Hasher::Ctx>();
  ctx->keyed = signer.keyed_;
  std::memcpy(ctx->nonce, nonce, kNonceSize);
  ctx->ctx = signer.keyed_->Start(nonce, frame_count);
  if (ctx->ctx == nullptr) CryptoFailure("one-time key / Poly1305 init");
  return Signer::Hasher(std::move(ctx), frame_count);
}

void Signer::Hasher::Add(const void* data, size_t size) {
  if (ctx_ == nullptr) throw Error("Signer::Hasher used after Finish");
  if (added_ >= expected_) {
    // Our bug: frame indices past the announced count would still make distinct chunk
    // keys, but the count bound into the MAC would be a lie (Finish checks it too).
    throw Error(absl::StrCat("Signer::Hasher: more than the ", expected_, " frames announced"));
  }
  if (!AddFrame(*ctx_->keyed, ctx_->ctx, ctx_->nonce, added_, data, size)) {
    CryptoFailure("Poly1305 over a frame");
  }
  ++added_;
}

void Signer::Hasher::FinishMac(unsigned char out[kMacSize]) {
  if (ctx_ == nullptr) throw Error("Signer::Hasher used after Finish");
  if (added_ != expected_) {
    // Our bug, not the peer's: the count bound into the MAC would be a lie.
    throw Error(absl::StrCat("Signer::Hasher: ", added_, " frames added, ", expected_,
                             " announced"));
  }
  if (!FinalTag(ctx_->ctx, out)) CryptoFailure("EVP_MAC_final(POLY1305)");
  ctx_.reset();
}

Buffer Signer::Hasher::Finish() {
  if (ctx_ == nullptr) throw Error("Signer::Hasher used after Finish");
  Buffer frame = Buffer::Allocate(kSignatureFrameSize);
  auto* bytes = reinterpret_cast<unsigned char*>(frame.mutable_data());
  std::memcpy(bytes, kSignatureMagic, sizeof(kSignatureMagic));
  std::memcpy(bytes + sizeof(kSignatureMagic), ctx_->nonce, kNonceSize);
  FinishMac(bytes + sizeof(kSignatureMagic) + kNonceSize);
  return frame;
}

template <class Frames>
Buffer Signer::SignatureOver(const Frames& frames, size_t count) const {
  Hasher hasher = Begin(count);
  for (size_t i = 0; i < count; ++i) hasher.Add(frames[i].data(), frames[i].size());
  return hasher.Finish();
}

void Signer::Sign(Outgoing* message) const {
  message->SetTrailer(SignatureFor(*message));
}

Buffer Signer::SignatureFor(const Outgoing& message) const {
  Hasher hasher = Begin(1 + message.payload_frames().size());
  hasher.Add(message.envelope().data(), message.envelope().size());
  for (const Buffer& b : message.payload_frames()) hasher.Add(b.data(), b.size());
  return hasher.Finish();
}

Buffer Signer::SignatureFor(std::span<const Buffer> frames) const {
  return SignatureOver(frames, frames.size());
}

void Signer::SignFrames(FrameList* frames) const {
  frames->push_back(SignatureFor(std::span<const Buffer>(frames->data(), frames->size())));
}

// ---- verifying -----------------------------------------------------------------------

Signer::Verdict Signer::Check(std::span<const Buffer> frames) const noexcept {
  // Cheapest first: a flood of unsigned or garbage messages costs one size compare and
  // one 8-byte compare each.
  if (frames.size() < 2 || !LooksLikeSignature(frames.back())) return Verdict::kUnsigned;
  const auto* signature = reinterpret_cast<const unsigned char*>(frames.back().data());
  const unsigned char* nonce = signature + sizeof(kSignatureMagic);
  const unsigned char* got = nonce + kNonceSize;
  size_t count = frames.size() - 1;
  // On an OpenSSL or allocation failure fail closed.
  MacCtx mac(keyed_->Start(nonce, count));
  if (mac.ctx == nullptr) return Verdict::kBadSignature;
  for (size_t i = 0; i < count; ++i) {
    if (!AddFrame(*keyed_, mac.ctx, nonce, i, frames[i].data(), frames[i].size())) {
      return Verdict::kBadSignature;
    }
  }
  unsigned char want[kMacSize];
  if (!FinalTag(mac.ctx, want)) return Verdict::kBadSignature;
  return CRYPTO_memcmp(want, got, kMacSize) == 0 ? Verdict::kOk : Verdict::kBadSignature;
}

void Signer::Verify(ReceivedMessage* received) const {
  FrameList& frames = received->frames;
  switch (Check(std::span<const Buffer>(frames.data(), frames.size()))) {
    case Verdict::kOk:
      frames.pop_back();
      return;
    case Verdict::kUnsigned: {
      auto retired = [&](const char* magic) {
        return !frames.empty() && frames.back().size() == kSignatureFrameSize &&
               std::memcmp(frames.back().data(), magic, sizeof(kSignatureMagic)) == 0;
      };
      const char* old = retired(kSchemeOneMagic)   ? "scheme-1 (HMAC-SHA256)"
                        : retired(kSchemeTwoMagic) ? "scheme-2 (single-pass Poly1305)"
                                                   : nullptr;
      throw AuthError(
          AuthError::Code::kUnsigned,
          old != nullptr
              ? absl::StrCat("unsigned message: the last of its ", frames.size(),
                             " frames is a ", old,
                             " signature, which this version no longer accepts (scheme 3: "
                             "chunked Poly1305)")
              : absl::StrCat("unsigned message: a key is set but the last of its ",
                             frames.size(), " frames is not a signature frame"));
    }
    case Verdict::kBadSignature:
      throw AuthError(AuthError::Code::kBadSignature,
                      absl::StrCat("bad signature: frame ", frames.size() - 1,
                                   " does not match the Poly1305 tag of frames 0..",
                                   frames.size() - 2,
                                   " (altered, reordered, added or dropped frame, or another key)"));
  }
}

std::optional<Buffer> StripSignature(ReceivedMessage* received) {
  if (received->frames.size() < 2 || !LooksLikeSignature(received->frames.back())) {
    return std::nullopt;
  }
  Buffer signature = std::move(received->frames.back());
  received->frames.pop_back();
  return signature;
}


}  // namespace zerocan
