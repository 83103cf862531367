// Signatures over every frame: each kind of tampering, over real tcp sockets, is
// rejected with its own error before anything is decoded.
#include "test_support.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/signing.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/host_util.h"
#include "tests/safety_util.h"
#include "zerocan/replay.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using testing::Frame;
using testing::Str;

using testing::CopyFrames;
using testing::FramesOf;
using testing::MakeCall;
using testing::MustReceive;
using testing::SendRaw;
using testing::TcpPair;

constexpr char kKey[] = "zerocan-test-key";

std::string Hex(const void* data, size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < size; ++i) {
    auto b = static_cast<const unsigned char*>(data)[i];
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// Sends `frames` raw over tcp, receives them on the router and verifies (Check and
// Verify): the error code, or nullopt when verification passed.
std::optional<AuthError::Code> VerifyOverTcp(TcpPair& pair, const Signer& signer,
                                             const FrameList& frames) {
  SendRaw(pair.dealer, frames);
  ReceivedMessage received = MustReceive(pair.router);
  // The verdict form (what a server under a flood uses) must agree with Verify.
  Signer::Verdict verdict = signer.Check(
      std::span<const Buffer>(received.frames.data(), received.frames.size()));
  std::optional<AuthError::Code> code;
  try {
    signer.Verify(&received);
  } catch (const AuthError& e) {
    code = e.code();
  }
  std::optional<AuthError::Code> from_verdict;
  if (verdict == Signer::Verdict::kUnsigned) from_verdict = AuthError::Code::kUnsigned;
  if (verdict == Signer::Verdict::kBadSignature) from_verdict = AuthError::Code::kBadSignature;
  EXPECT_EQ(code, from_verdict);
  return code;
}

FrameList SignedCall(const Signer& signer, uint64_t sequence = 1) {
  FrameList frames = FramesOf(MakeCall(7, sequence));
  signer.SignFrames(&frames);
  return frames;
}

// The known answers below were computed outside this code base, by the script in
// docs/SECURITY.md ("Known answers"): HMAC-SHA256 from Python's hmac/hashlib, Poly1305
// written from RFC 8439 section 2.5 in plain Python integers (checked against the RFC's
// test vector) and cross-checked with the `cryptography` package's Poly1305.
constexpr unsigned char kTestNonce[kNonceSize] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                  8, 9, 10, 11, 12, 13, 14, 15};

std::string TagHex(const Buffer& signature) {
  return Hex(reinterpret_cast<const char*>(signature.data()) + sizeof(kSignatureMagic) + kNonceSize,
             kMacSize);
}

Buffer SignWithNonce(const Signer& signer, const FrameList& frames,
                             const unsigned char nonce[kNonceSize]) {
  Signer::Hasher hasher = internal::TestHooks::BeginWithNonce(signer, frames.size(), nonce);
  for (const auto& f : frames) hasher.Add(f.data(), f.size());
  return hasher.Finish();
}

TEST(SigningTest, KnownAnswerMatchesSpecifiedLayout) {
  // K = HMAC-SHA256(key, "zerocan.poly1305.v3\0" || nonce 00..0f),
  // tag = Poly1305(K, u16le(1) 0^2 u32le(1 MiB) u64le(3) || u64le(5) 0^8 "hello" 0^11 ||
  //                   u64le(0) 0^8 || u64le(6) 0^8 "world!" 0^10)
  Signer signer(kKey);
  FrameList frames;
  frames.push_back(Frame("hello", 5));
  frames.emplace_back();
  frames.push_back(Frame("world!", 6));
  Buffer signature = SignWithNonce(signer, frames, kTestNonce);
  ASSERT_EQ(signature.size(), kSignatureFrameSize);
  EXPECT_EQ(std::memcmp(signature.data(), "zcsig\x03\0\0", 8), 0);
  EXPECT_EQ(std::memcmp(signature.data(), kSignatureMagic, 8), 0);
  EXPECT_EQ(std::memcmp(reinterpret_cast<const char*>(signature.data()) + 8, kTestNonce, kNonceSize), 0);
  EXPECT_EQ(TagHex(signature), "99e13fd75e0e8b7612f6a8722528e703");
  frames.push_back(std::move(signature));
  EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kOk);

  // The nonce selects the one-time key: same frames, nonce ff..ff.
  unsigned char ones[kNonceSize];
  std::memset(ones, 0xff, sizeof(ones));
  frames.pop_back();
  EXPECT_EQ(TagHex(SignWithNonce(signer, frames, ones)), "8e6ef6d85b8a751b455ae14ad0f7a651");
}

TEST(SigningTest, KnownAnswerForChunkedFrames) {
  // A 2.5 MiB + 3 byte frame: three chunks under keys K(1, 0..2), the last one 0.5 MiB
  // + 3 bytes (a partial Poly1305 block); then an exactly 1 MiB frame, which is not
  // chunked (its bytes enter the outer MAC).
  ASSERT_EQ(kSignatureChunkSize, size_t{1} << 20);
  std::string big((5 << 19) + 3, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 31 + 7) % 251);
  FrameList frames;
  frames.push_back(testing::Frame("env", 3));
  frames.push_back(testing::Frame(big.data(), big.size()));
  frames.push_back(Frame(std::string(1 << 20, '\0')));
  Signer signer(kKey);
  EXPECT_EQ(TagHex(SignWithNonce(signer, frames, kTestNonce)), "5532e9980477413bb2114da37650c8b8");
  // Signing with a fresh nonce verifies; a change in the middle of the big frame, in
  // its last byte (the partial last chunk) or in the unchunked frame does not.
  signer.SignFrames(&frames);
  EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kOk);
  for (auto [frame, at] : {std::pair<size_t, size_t>{1, (3 << 19) + 11}, {1, (5 << 19) + 2},
                           {1, 0}, {2, (1 << 20) - 1}}) {
    reinterpret_cast<char*>(frames[frame].mutable_data())[at] ^= 1;
    EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
              Signer::Verdict::kBadSignature)
        << frame << " " << at;
    reinterpret_cast<char*>(frames[frame].mutable_data())[at] ^= 1;
  }
  EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kOk);

  // One byte over the chunk size: two chunks, the second of one byte.
  FrameList edge;
  edge.push_back(Frame(std::string(1 << 20, '\0')));
  edge.push_back(Frame(std::string((1 << 20) + 1, '\x01')));
  EXPECT_EQ(TagHex(SignWithNonce(signer, edge, kTestNonce)), "d2efcbd282f0dac63adc321c57f95a0f");
}

TEST(SigningTest, SwappedChunksAreRejected) {
  // Chunk keys depend on the chunk's position: exchanging two equal-sized chunks of a
  // frame, or moving a chunked frame's bytes to another frame index, fails.
  const size_t c = kSignatureChunkSize;
  std::string a(3 * c, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i / c + 1);
  Signer signer(kKey);
  FrameList frames;
  frames.push_back(testing::Frame("env", 3));
  frames.push_back(testing::Frame(a.data(), a.size()));
  signer.SignFrames(&frames);
  std::string swapped = a.substr(c, c) + a.substr(0, c) + a.substr(2 * c);
  FrameList tampered = CopyFrames(frames);
  tampered[1] = Frame(swapped.data(), swapped.size());
  EXPECT_EQ(signer.Check(std::span<const Buffer>(tampered.data(), tampered.size())),
            Signer::Verdict::kBadSignature);
  // Same bytes at frame index 0 with the envelope second: another frame's chunk keys.
  FrameList moved = CopyFrames(frames);
  std::swap(moved[0], moved[1]);
  EXPECT_EQ(signer.Check(std::span<const Buffer>(moved.data(), moved.size())),
            Signer::Verdict::kBadSignature);
  EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kOk);
}

TEST(SigningTest, EachSignatureHasAFreshNonce) {
  // The one-time key must never repeat: the same frames signed twice carry different
  // nonces (and tags), and both verify.
  Signer signer(kKey);
  FrameList frames = FramesOf(MakeCall(7, 1));
  std::set<std::string> nonces;
  for (int i = 0; i < 100; ++i) {
    Buffer signature =
        signer.SignatureFor(std::span<const Buffer>(frames.data(), frames.size()));
    nonces.insert(std::string(reinterpret_cast<const char*>(signature.data()) + 8, kNonceSize));
    FrameList with = CopyFrames(frames);
    with.push_back(std::move(signature));
    EXPECT_EQ(signer.Check(std::span<const Buffer>(with.data(), with.size())),
              Signer::Verdict::kOk);
  }
  EXPECT_EQ(nonces.size(), 100u);
}

TEST(SigningTest, TagUnderAnotherNonceIsRejected) {
  // Moving a genuine tag to another nonce (or a nonce to another message) fails.
  Signer signer(kKey);
  FrameList frames = SignedCall(signer);
  FrameList other = SignedCall(signer);  // same frames, another nonce
  ASSERT_NE(Str(frames.back()), Str(other.back()));
  std::memcpy(reinterpret_cast<char*>(frames.back().mutable_data()) + 8,
              reinterpret_cast<const char*>(other.back().data()) + 8, kNonceSize);
  EXPECT_EQ(signer.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kBadSignature);
}

TEST(SigningTest, RetiredSchemesAreRefusedByName) {
  // A 40-byte frame with the retired scheme-1 or scheme-2 tag is not a signature of this
  // version: kUnsigned (as cheap as any unsigned message), and Verify names the scheme.
  Signer signer(kKey);
  TcpPair pair;
  for (char scheme : {'\x01', '\x02'}) {
    FrameList frames = FramesOf(MakeCall(7, 1));
    std::string old(kSignatureFrameSize, '\x11');
    std::memcpy(old.data(), "zcsig\0\0\0", 8);
    old[5] = scheme;
    frames.push_back(testing::Frame(old.data(), old.size()));
    EXPECT_FALSE(LooksLikeSignature(frames.back()));
    SendRaw(pair.dealer, frames);
    ReceivedMessage received = MustReceive(pair.router);
    EXPECT_EQ(signer.Check(std::span<const Buffer>(received.frames.data(),
                                                           received.frames.size())),
              Signer::Verdict::kUnsigned);
    try {
      signer.Verify(&received);
      FAIL() << "scheme " << int{scheme} << " frame accepted";
    } catch (const AuthError& e) {
      EXPECT_EQ(e.code(), AuthError::Code::kUnsigned);
      std::string name = std::string("scheme-") + static_cast<char>('0' + scheme);
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("scheme 3"), std::string::npos) << e.what();
    }
  }
}

TEST(SigningTest, ConcurrentSignersAndVerifiers) {
  // Threads share one Signer: fixed-nonce signatures agree, fresh ones verify (6 chunks
  // per frame).
  Signer signer(kKey);
  std::string big(size_t{6} << 20, 'q');
  FrameList frames;
  frames.push_back(testing::Frame(big.data(), big.size()));
  std::string expected = testing::Str(SignWithNonce(signer, frames, kTestNonce));
  std::atomic<int> mismatches{0};
  auto work = [&] {
    for (int i = 0; i < 10; ++i) {
      if (testing::Str(SignWithNonce(signer, frames, kTestNonce)) != expected) ++mismatches;
      FrameList with = CopyFrames(frames);
      signer.SignFrames(&with);
      if (signer.Check(std::span<const Buffer>(with.data(), with.size())) !=
          Signer::Verdict::kOk) {
        ++mismatches;
      }
    }
  };
  // More threads than this machine's cores: batches of chunks from several callers
  // share the pool at once.
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back(work);
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

size_t ThreadCount() { return testing::NumericEntries("/proc/self/task").size(); }

// Waits (a joined thread leaves /proc a moment after join returns) until this process
// has `n` threads; returns the count it settled on.
size_t AwaitThreadCount(size_t n) {
  for (int i = 0; i < 200 && ThreadCount() != n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return ThreadCount();
}

TEST(SigningTest, PoolSizeChangesNoTagAndItsThreadsEndWithTheSigner) {
  std::string big((size_t{5} << 20) + 7, 'p');  // 6 chunks, the last one short
  FrameList frames;
  frames.push_back(testing::Frame(big.data(), big.size()));
  // A sanitizer's runtime may start a thread of its own at the first thread created.
  std::thread([] {}).join();
  const size_t before = AwaitThreadCount(ThreadCount());
  std::string expected =
      testing::Str(SignWithNonce(Signer(kKey, SignerOptions{.chunk_threads = 0}), frames, kTestNonce));
  EXPECT_EQ(ThreadCount(), before) << "chunk_threads = 0 starts no thread";
  unsigned automatic = std::clamp(std::thread::hardware_concurrency(), 1u, 16u) - 1;
  for (int n : {1, 3, -1, 100}) {
    {
      Signer signer(kKey, SignerOptions{.chunk_threads = n});
      EXPECT_EQ(ThreadCount(), before) << n << ": helpers start at the first large frame";
      EXPECT_EQ(testing::Str(SignWithNonce(signer, frames, kTestNonce)), expected) << n;
      Signer copy = signer;  // shares the keyed state and its pool
      FrameList with = CopyFrames(frames);
      copy.SignFrames(&with);
      EXPECT_EQ(signer.Check(std::span<const Buffer>(with.data(), with.size())),
                Signer::Verdict::kOk)
          << n;
      size_t helpers = n < 0 ? automatic : std::min(n, 15);
      EXPECT_EQ(ThreadCount(), before + helpers) << n;
    }
    EXPECT_EQ(AwaitThreadCount(before), before) << n << ": the helpers end with the signer";
  }
}

TEST(SigningTest, HasherCountsItsFrames) {
  Signer signer(kKey);
  Signer::Hasher hasher = signer.Begin(2);
  hasher.Add("a", 1);
  EXPECT_THROW(hasher.Finish(), Error);  // one frame short: our bug, not a wrong MAC
  Signer::Hasher more = signer.Begin(1);
  more.Add("a", 1);
  EXPECT_THROW(more.Add("b", 1), Error);  // one frame too many
}

TEST(SigningTest, HasherMatchesSignatureForAndOutlivesItsSigner) {
  // Add per frame, large frames included, gives the tag SignatureFor gives; the Hasher
  // keeps the keyed state alive after its Signer is gone.
  std::string big(3 * kSignatureChunkSize + 5, 'z');
  FrameList frames;
  frames.push_back(testing::Frame("env", 3));
  frames.push_back(testing::Frame(big.data(), big.size()));
  std::optional<Signer> signer(std::in_place, kKey);
  Signer::Hasher hasher = internal::TestHooks::BeginWithNonce(*signer, frames.size(), kTestNonce);
  std::string want = Str(SignWithNonce(*signer, frames, kTestNonce));
  signer.reset();
  for (const auto& f : frames) hasher.Add(f.data(), f.size());
  EXPECT_EQ(testing::Str(hasher.Finish()), want);
}

TEST(SigningTest, FrameBoundariesAreBound) {
  Signer signer(kKey);
  FrameList a, b;
  a.push_back(testing::Frame("ab", 2));
  a.push_back(testing::Frame("c", 1));
  b.push_back(testing::Frame("a", 1));
  b.push_back(testing::Frame("bc", 2));
  auto sa = signer.SignatureFor(std::span<const Buffer>(a.data(), a.size()));
  auto sb = signer.SignatureFor(std::span<const Buffer>(b.data(), b.size()));
  EXPECT_NE(Str(sa), Str(sb));
}

TEST(SigningTest, SignedCallOverTcpVerifiesAndDecodes) {
  Signer signer(kKey);
  TcpPair pair;
  Outgoing call = MakeCall(7, 1);
  signer.Sign(&call);  // signing wraps the message: the trailer is its signature frame
  EXPECT_EQ(call.frame_count(), 4u);
  Tracker tracker = Send(pair.dealer, std::move(call));
  ReceivedMessage received = MustReceive(pair.router);
  ASSERT_EQ(received.frames.size(), 4u);  // envelope, two payload frames, signature
  EXPECT_TRUE(LooksLikeSignature(received.frames.back()));
  signer.Verify(&received);
  EXPECT_EQ(received.frames.size(), 3u);  // signature stripped
  Message message = Message::Decode(std::move(received));
  EXPECT_EQ(message.function(), "echo");
  EXPECT_EQ(message.arg(0).AsInt(), 1);
  EXPECT_EQ(message.arg(1).AsBytes().size(), 800u);
  EXPECT_EQ(message.arg(2).AsTensor().size(), 100u);
  EXPECT_TRUE(tracker.WaitFor(std::chrono::seconds(10)));
}

TEST(SigningTest, UnsignedMessageHasNoTrailer) {
  TcpPair pair;
  Send(pair.dealer, MakeCall(7, 1));
  ReceivedMessage received = MustReceive(pair.router);
  EXPECT_EQ(received.frames.size(), 3u);
  EXPECT_FALSE(StripSignature(&received).has_value());
}

TEST(SigningTest, EveryAlteredByteOfEveryFrameIsRejectedOverTcp) {
  Signer signer(kKey);
  TcpPair pair;
  FrameList signed_frames = SignedCall(signer);
  ASSERT_EQ(VerifyOverTcp(pair, signer, signed_frames), std::nullopt);
  size_t variants = 0;
  for (size_t f = 0; f < signed_frames.size(); ++f) {
    bool signature_frame = f + 1 == signed_frames.size();
    for (size_t i = 0; i < signed_frames[f].size(); ++i) {
      FrameList tampered = CopyFrames(signed_frames);
      reinterpret_cast<unsigned char*>(tampered[f].mutable_data())[i] ^= 0x5a;
      auto code = VerifyOverTcp(pair, signer, tampered);
      // Altering the signature frame's magic makes it no signature at all.
      auto want = signature_frame && i < sizeof(kSignatureMagic) ? AuthError::Code::kUnsigned
                                                                 : AuthError::Code::kBadSignature;
      ASSERT_EQ(code, want) << "frame " << f << " byte " << i;
      ++variants;
    }
  }
  EXPECT_GT(variants, 1600u);
}

TEST(SigningTest, ReorderedFramesAreRejected) {
  Signer signer(kKey);
  TcpPair pair;
  // Same-size payloads: the decoder alone could not tell them apart once swapped.
  FrameList frames = FramesOf(MakeCall(7, 1, 800, 100));
  ASSERT_EQ(frames[1].size(), frames[2].size());
  signer.SignFrames(&frames);
  FrameList swapped = CopyFrames(frames);
  std::swap(swapped[1], swapped[2]);
  EXPECT_EQ(VerifyOverTcp(pair, signer, swapped), AuthError::Code::kBadSignature);
  FrameList envelope_moved = CopyFrames(frames);
  std::swap(envelope_moved[0], envelope_moved[1]);
  EXPECT_EQ(VerifyOverTcp(pair, signer, envelope_moved), AuthError::Code::kBadSignature);
  FrameList signature_first = CopyFrames(frames);
  std::rotate(signature_first.begin(), signature_first.end() - 1, signature_first.end());
  EXPECT_EQ(VerifyOverTcp(pair, signer, signature_first), AuthError::Code::kUnsigned);
}

TEST(SigningTest, DroppedFramesAreRejected) {
  Signer signer(kKey);
  TcpPair pair;
  FrameList frames = SignedCall(signer);
  for (size_t f = 0; f + 1 < frames.size(); ++f) {
    FrameList dropped = CopyFrames(frames);
    dropped.erase(dropped.begin() + static_cast<ptrdiff_t>(f));
    EXPECT_EQ(VerifyOverTcp(pair, signer, dropped), AuthError::Code::kBadSignature) << f;
  }
  FrameList no_signature = CopyFrames(frames);
  no_signature.pop_back();
  EXPECT_EQ(VerifyOverTcp(pair, signer, no_signature), AuthError::Code::kUnsigned);
}

TEST(SigningTest, AddedFramesAreRejected) {
  Signer signer(kKey);
  TcpPair pair;
  FrameList frames = SignedCall(signer);
  FrameList before_signature = CopyFrames(frames);
  before_signature.insert(before_signature.end() - 1, Frame("extra", 5));
  EXPECT_EQ(VerifyOverTcp(pair, signer, before_signature), AuthError::Code::kBadSignature);
  FrameList empty_frame = CopyFrames(frames);
  empty_frame.insert(empty_frame.begin() + 1, Buffer());
  EXPECT_EQ(VerifyOverTcp(pair, signer, empty_frame), AuthError::Code::kBadSignature);
  FrameList after_signature = CopyFrames(frames);
  after_signature.push_back(testing::Frame("extra", 5));
  EXPECT_EQ(VerifyOverTcp(pair, signer, after_signature), AuthError::Code::kUnsigned);
  // A second, copied signature frame appended: the last frame is a signature, but over
  // a different frame list.
  FrameList doubled = CopyFrames(frames);
  doubled.push_back(Frame(frames.back().data(), frames.back().size()));
  EXPECT_EQ(VerifyOverTcp(pair, signer, doubled), AuthError::Code::kBadSignature);
}

TEST(SigningTest, TruncatedOrExtendedFrameIsRejected) {
  Signer signer(kKey);
  TcpPair pair;
  FrameList frames = SignedCall(signer);
  for (size_t f = 0; f + 1 < frames.size(); ++f) {
    FrameList cut = CopyFrames(frames);
    cut[f] = Frame(frames[f].data(), frames[f].size() - 1);
    EXPECT_EQ(VerifyOverTcp(pair, signer, cut), AuthError::Code::kBadSignature) << f;
    FrameList longer = CopyFrames(frames);
    std::string bytes = Str(frames[f]) + '\0';
    longer[f] = Frame(bytes.data(), bytes.size());
    EXPECT_EQ(VerifyOverTcp(pair, signer, longer), AuthError::Code::kBadSignature) << f;
  }
}

TEST(SigningTest, UnsignedMessageIsRejectedWhenKeyIsSet) {
  Signer signer(kKey);
  TcpPair pair;
  Send(pair.dealer, MakeCall(7, 1));
  ReceivedMessage received = MustReceive(pair.router);
  try {
    signer.Verify(&received);
    FAIL() << "unsigned message accepted";
  } catch (const AuthError& e) {
    EXPECT_EQ(e.code(), AuthError::Code::kUnsigned);
    EXPECT_NE(std::string(e.what()).find("unsigned"), std::string::npos) << e.what();
  }
  EXPECT_EQ(received.frames.size(), 3u);  // untouched on failure
}

TEST(SigningTest, OtherKeyIsRejected) {
  Signer signer(kKey), other("another key");
  TcpPair pair;
  EXPECT_EQ(VerifyOverTcp(pair, other, SignedCall(signer)), AuthError::Code::kBadSignature);
}

TEST(SigningTest, ReplayedSignedMessageIsRejectedOverTcp) {
  Signer signer(kKey);
  ReplayGuard guard;
  TcpPair pair;
  FrameList frames = SignedCall(signer, 1);
  std::vector<std::optional<AuthError::Code>> outcomes;
  for (int i = 0; i < 2; ++i) {
    SendRaw(pair.dealer, frames);
    ReceivedMessage received = MustReceive(pair.router);
    signer.Verify(&received);  // the copy is genuinely signed
    Message message = Message::Decode(std::move(received));
    try {
      guard.Check(message);
      outcomes.push_back(std::nullopt);
    } catch (const AuthError& e) {
      outcomes.push_back(e.code());
    }
  }
  EXPECT_EQ(outcomes[0], std::nullopt);
  EXPECT_EQ(outcomes[1], AuthError::Code::kReplayed);
}

TEST(SigningTest, EachRejectionHasItsOwnName) {
  std::set<std::string_view> names;
  for (auto code : {AuthError::Code::kUnsigned, AuthError::Code::kBadSignature,
                    AuthError::Code::kReplayed, AuthError::Code::kTooOld,
                    AuthError::Code::kClockSkew, AuthError::Code::kTooManySessions,
                    AuthError::Code::kBadKey}) {
    names.insert(AuthCodeName(code));
  }
  EXPECT_EQ(names.size(), 7u);
}

class KeyFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& content) {
    // The pid too: two runs of the suite on one machine must not share files.
    path_ = ::testing::TempDir() + "zerocan_key_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::ofstream(path_, std::ios::binary) << content;
    return path_;
  }
  void TearDown() override {
    if (!path_.empty()) std::remove(path_.c_str());
  }
  std::string path_;
};

TEST_F(KeyFileTest, JupyterStyleJson) {
  EXPECT_EQ(Signer::ReadKeyFile(Write(R"({"key": "abc-123", "signature_scheme": "hmac-sha256",
                                          "transport": "tcp"})")),
            "abc-123");
}

TEST_F(KeyFileTest, RawKeyWithNewline) {
  EXPECT_EQ(Signer::ReadKeyFile(Write("secret bytes\n")), "secret bytes");
}

TEST_F(KeyFileTest, SameKeyFromFileSignsTheSame) {
  Signer from_file = Signer::FromKeyFile(Write(std::string(R"({"key": ")") + kKey + "\"}"));
  FrameList frames = SignedCall(Signer(kKey));
  EXPECT_EQ(from_file.Check(std::span<const Buffer>(frames.data(), frames.size())),
            Signer::Verdict::kOk);
}

TEST_F(KeyFileTest, BadKeyFilesAreRejected) {
  auto code_of = [&](const std::string& content) -> std::optional<AuthError::Code> {
    try {
      Signer::FromKeyFile(Write(content));
      return std::nullopt;
    } catch (const AuthError& e) {
      EXPECT_NE(std::string(e.what()).find(path_), std::string::npos) << e.what();
      return e.code();
    }
  };
  EXPECT_EQ(code_of(""), AuthError::Code::kBadKey);
  EXPECT_EQ(code_of("  \n"), AuthError::Code::kBadKey);
  EXPECT_EQ(code_of(R"({"key": ""})"), AuthError::Code::kBadKey);
  EXPECT_EQ(code_of(R"({"key": 42})"), AuthError::Code::kBadKey);
  EXPECT_EQ(code_of(R"({"key": "x", "signature_scheme": "hmac-md5"})"), AuthError::Code::kBadKey);
  EXPECT_EQ(code_of(R"({"key": "x")"), AuthError::Code::kBadKey);
  EXPECT_THROW(Signer::FromKeyFile("/nonexistent/zerocan.key"), AuthError);
  EXPECT_THROW(Signer(""), AuthError);
}

}  // namespace
}  // namespace zerocan
