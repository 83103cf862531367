// HMAC-SHA256 over every frame (see include/zerocan/signing.h for the layout).
//
// Each frame enters the HMAC as its length and its SHA-256 digest; a frame longer than
// kChunk is digested as the SHA-256 of its 1 MiB chunks' SHA-256 digests. The chunks of
// a large message are hashed in parallel on a small pool (one SHA-256 stream runs at
// about 2 GB/s with SHA-NI, which alone would cost a 16 MiB call 2 x 8 ms), and the
// HMAC itself then covers only a few dozen bytes per frame.
//
// OpenSSL 3's EVP_MAC keeps the keyed HMAC state (the inner and outer pads already
// hashed) in one context; each message duplicates it instead of re-keying.
#include "zerocan/signing.h"

#include "internal/send.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
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

constexpr char kDomain[] = "zerocan.hmac-sha256.v1";

void PutU64(unsigned char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

[[noreturn]] void CryptoFailure(const char* what) {
  // OpenSSL failing here means an allocation failure or a broken installation, never
  // anything a peer sent.
  throw Error(absl::StrCat("OpenSSL ", what, " failed"));
}

constexpr size_t kChunk = size_t{1} << 20;
// Below this many bytes in a message the pool's wake-up costs more than it saves.
constexpr size_t kParallelMin = size_t{2} << 20;
using Digest = std::array<unsigned char, 32>;

const EVP_MD* Sha256() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (md == nullptr) CryptoFailure("EVP_MD_fetch(SHA256)");
  return md;
}

void Sha256Of(const unsigned char* data, size_t size, unsigned char* out) {
  unsigned int written = 0;
  if (EVP_Digest(data, size, out, &written, Sha256(), nullptr) != 1 || written != 32) {
    CryptoFailure("EVP_Digest(SHA256)");
  }
}

// Runs fn(0..n-1) on the calling thread and up to 7 helpers. Helpers are started once
// and live as long as the process (intentionally never destroyed: a signer may run
// during static destruction). A second caller while a batch runs does its own work
// alone instead of waiting.
class HashPool {
 public:
  static HashPool& Get() {
    static HashPool* pool = new HashPool();
    return *pool;
  }

  void Run(size_t n, const std::function<void(size_t)>& fn) {
    std::unique_lock<std::mutex> exclusive(run_mu_, std::try_to_lock);
    if (!exclusive.owns_lock() || workers_ == 0 || n < 2) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      n_ = n;
      next_.store(0);
      ++generation_;
    }
    wake_.notify_all();
    Drain(fn, n);
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [&] { return active_ == 0; });
    job_ = nullptr;  // a helper waking late must not touch this batch
  }

 private:
  HashPool() {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    workers_ = std::min(cores, 8u) - 1;
    for (unsigned i = 0; i < workers_; ++i) std::thread([this] { Work(); }).detach();
  }

  void Drain(const std::function<void(size_t)>& fn, size_t n) {
    for (size_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i);
  }

  void Work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (job_ == nullptr) continue;
      const auto* job = job_;
      size_t n = n_;
      ++active_;
      lock.unlock();
      Drain(*job, n);
      lock.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  unsigned workers_ = 0;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable wake_, idle_;
  const std::function<void(size_t)>* job_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  uint64_t generation_ = 0;
  unsigned active_ = 0;
};

using Bytes = internal::FrameBytes;

// The digest of each frame: SHA-256 of the frame when it is at most kChunk bytes, else
// SHA-256 of the concatenated SHA-256 digests of its kChunk-byte chunks (the last one
// shorter). Frame lengths are bound separately, so the two forms cannot be confused.
std::vector<Digest> FrameDigests(const std::vector<Bytes>& frames) {
  std::vector<Digest> out(frames.size());
  struct Item {
    size_t frame;
    size_t chunk;  // index within the frame; SIZE_MAX = the whole (small) frame
  };
  std::vector<Item> items;
  std::vector<std::vector<Digest>> chunk_digests(frames.size());
  size_t total = 0;
  for (size_t f = 0; f < frames.size(); ++f) {
    total += frames[f].size;
    if (frames[f].size <= kChunk) {
      items.push_back({f, SIZE_MAX});
    } else {
      size_t chunks = (frames[f].size + kChunk - 1) / kChunk;
      chunk_digests[f].resize(chunks);
      for (size_t c = 0; c < chunks; ++c) items.push_back({f, c});
    }
  }
  auto hash = [&](size_t i) {
    const Item& item = items[i];
    const Bytes& frame = frames[item.frame];
    if (item.chunk == SIZE_MAX) {
      Sha256Of(frame.data, frame.size, out[item.frame].data());
    } else {
      size_t offset = item.chunk * kChunk;
      Sha256Of(frame.data + offset, std::min(kChunk, frame.size - offset),
               chunk_digests[item.frame][item.chunk].data());
    }
  };
  if (total >= kParallelMin) {
    HashPool::Get().Run(items.size(), hash);
  } else {
    for (size_t i = 0; i < items.size(); ++i) hash(i);
  }
  for (size_t f = 0; f < frames.size(); ++f) {
    if (!chunk_digests[f].empty()) {
      Sha256Of(chunk_digests[f][0].data(), chunk_digests[f].size() * sizeof(Digest), out[f].data());
    }
  }
  return out;
}

template <class Frames>
std::vector<Bytes> AsBytes(const Frames& frames, size_t count) {
  std::vector<Bytes> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    out.push_back({static_cast<const unsigned char*>(frames[i].data()), frames[i].size()});
  }
  return out;
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

bool LooksLikeSignature(const zmq::message_t& frame) noexcept {
  return frame.size() == kSignatureFrameSize &&
         std::memcmp(frame.data(), kSignatureMagic, sizeof(kSignatureMagic)) == 0;
}

// ---- keyed state ---------------------------------------------------------------------

struct Signer::Keyed {
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* ctx = nullptr;  // keyed, never updated: duplicated per message
  ~Keyed() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
};

struct Signer::Hasher::Ctx {
  EVP_MAC_CTX* ctx = nullptr;
  ~Ctx() { EVP_MAC_CTX_free(ctx); }
};

Signer::Signer(std::string_view key) {
  if (key.empty()) throw AuthError(AuthError::Code::kBadKey, "signing key is empty");
  auto keyed = std::make_shared<Keyed>();
  keyed->mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (keyed->mac == nullptr) CryptoFailure("EVP_MAC_fetch(HMAC)");
  keyed->ctx = EVP_MAC_CTX_new(keyed->mac);
  if (keyed->ctx == nullptr) CryptoFailure("EVP_MAC_CTX_new");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(keyed->ctx, reinterpret_cast<const unsigned char*>(key.data()), key.size(),
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

Signer Signer::FromKeyFile(const std::string& path) { return Signer(ReadKeyFile(path)); }

// ---- hashing -------------------------------------------------------------------------

Signer::Hasher::Hasher(std::unique_ptr<Ctx> ctx, uint64_t frame_count)
    : ctx_(std::move(ctx)), expected_(frame_count) {}
Signer::Hasher::Hasher(Hasher&&) noexcept = default;
Signer::Hasher& Signer::Hasher::operator=(Hasher&&) noexcept = default;
Signer::Hasher::~Hasher() = default;

Signer::Hasher Signer::Begin(uint64_t frame_count) const {
  auto ctx = std::make_unique<Hasher::Ctx>();
  ctx->ctx = EVP_MAC_CTX_dup(keyed_->ctx);
  if (ctx->ctx == nullptr) CryptoFailure("EVP_MAC_CTX_dup");
  unsigned char header[sizeof(kDomain) + 2 + 8];
  std::memcpy(header, kDomain, sizeof(kDomain));  // with its NUL: the tag ends unambiguously
  header[sizeof(kDomain)] = static_cast<unsigned char>(kProtocolVersion & 0xff);
  header[sizeof(kDomain) + 1] = static_cast<unsigned char>(kProtocolVersion >> 8);
  PutU64(header + sizeof(kDomain) + 2, frame_count);
  if (EVP_MAC_update(ctx->ctx, header, sizeof(header)) != 1) CryptoFailure("EVP_MAC_update");
  return Hasher(std::move(ctx), frame_count);
}

void Signer::Hasher::Add(const void* data, size_t size) {
  auto digests = FrameDigests({Bytes{static_cast<const unsigned char*>(data), size}});
  AddDigest(size, digests[0].data());
}

void Signer::Hasher::AddDigest(uint64_t size, const unsigned char digest[32]) {
  if (ctx_ == nullptr) throw Error("Signer::Hasher used after Finish");
  unsigned char entry[8 + 32];
  PutU64(entry, size);
  std::memcpy(entry + 8, digest, 32);
  if (EVP_MAC_update(ctx_->ctx, entry, sizeof(entry)) != 1) CryptoFailure("EVP_MAC_update");
  ++added_;
}

void Signer::Hasher::FinishMac(unsigned char out[kMacSize]) {
  if (ctx_ == nullptr) throw Error("Signer::Hasher used after Finish");
  if (added_ != expected_) {
    // Our bug, not the peer's: the count bound into the MAC would be a lie.
    throw Error(absl::StrCat("Signer::Hasher: ", added_, " frames added, ", expected_,
                             " announced"));
  }
  size_t written = 0;
  if (EVP_MAC_final(ctx_->ctx, out, &written, kMacSize) != 1 || written != kMacSize) {
    CryptoFailure("EVP_MAC_final");
  }
  ctx_.reset();
}

zmq::message_t Signer::Hasher::Finish() {
  zmq::message_t frame(kSignatureFrameSize);
  auto* bytes = static_cast<unsigned char*>(frame.data());
  std::memcpy(bytes, kSignatureMagic, sizeof(kSignatureMagic));
  FinishMac(bytes + sizeof(kSignatureMagic));
  return frame;
}

zmq::message_t Signer::SignatureOver(const std::vector<internal::FrameBytes>& frames) const {
  std::vector<Digest> digests = FrameDigests(frames);
  Hasher hasher = Begin(frames.size());
  for (size_t i = 0; i < frames.size(); ++i) hasher.AddDigest(frames[i].size, digests[i].data());
  return hasher.Finish();
}

zmq::message_t Signer::SignatureFor(const Outgoing& message) const {
  std::vector<Bytes> frames;
  frames.push_back({static_cast<const unsigned char*>(message.envelope().data()),
                    message.envelope().size()});
  for (const Buffer& b : message.payload_frames()) {
    frames.push_back({reinterpret_cast<const unsigned char*>(b.data()), b.size()});
  }
  return SignatureOver(frames);
}

zmq::message_t Signer::SignatureFor(std::span<const zmq::message_t> frames) const {
  return SignatureOver(AsBytes(frames, frames.size()));
}

void Signer::SignFrames(FrameList* frames) const {
  zmq::message_t signature = SignatureFor(std::span<const zmq::message_t>(frames->data(), frames->size()));
  frames->push_back(std::move(signature));
}

Signer::Verdict Signer::Check(std::span<const zmq::message_t> frames) const noexcept {
  if (frames.size() < 2 || !LooksLikeSignature(frames.back())) return Verdict::kUnsigned;
  unsigned char mac[kMacSize];
  try {
    zmq::message_t expected = SignatureOver(AsBytes(frames, frames.size() - 1));
    std::memcpy(mac, static_cast<const unsigned char*>(expected.data()) + sizeof(kSignatureMagic),
                kMacSize);
  } catch (...) {
    return Verdict::kBadSignature;  // only on an OpenSSL failure: fail closed
  }
  const auto* got = static_cast<const unsigned char*>(frames.back().data()) + sizeof(kSignatureMagic);
  return CRYPTO_memcmp(mac, got, kMacSize) == 0 ? Verdict::kOk : Verdict::kBadSignature;
}

void Signer::Verify(ReceivedMessage* received) const {
  FrameList& frames = received->frames;
  switch (Check(std::span<const zmq::message_t>(frames.data(), frames.size()))) {
    case Verdict::kOk:
      frames.pop_back();
      return;
    case Verdict::kUnsigned:
      throw AuthError(AuthError::Code::kUnsigned,
                      absl::StrCat("unsigned message: a key is set but the last of its ",
                                   frames.size(), " frames is not a signature frame"));
    case Verdict::kBadSignature:
      throw AuthError(AuthError::Code::kBadSignature,
                      absl::StrCat("bad signature: frame ", frames.size() - 1,
                                   " does not match the HMAC-SHA256 of frames 0..",
                                   frames.size() - 2,
                                   " (altered, reordered, added or dropped frame, or another key)"));
  }
}

std::optional<zmq::message_t> StripSignature(ReceivedMessage* received) {
  if (received->frames.size() < 2 || !LooksLikeSignature(received->frames.back())) {
    return std::nullopt;
  }
  zmq::message_t signature = std::move(received->frames.back());
  received->frames.pop_back();
  return signature;
}

Tracker SendSigned(zmq::socket_t& socket, Outgoing&& message, const Signer* signer,
                   absl::InlinedVector<zmq::message_t, 2>* routing) {
  if (signer == nullptr) return Send(socket, std::move(message), routing);
  // Hash first, then hand every frame over: libzmq only flushes a multipart message to
  // its I/O thread at the last part, so sending earlier parts first would not overlap
  // anything and would leave half a message on the socket if hashing failed.
  zmq::message_t signature = signer->SignatureFor(message);
  return internal::SendFrames(socket, std::move(message), routing, std::move(signature));
}

}  // namespace zerocan
