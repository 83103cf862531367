// Message::Decode: body kinds, the misaligned envelope and tensor paths, and malformed
// input, each raising DecodeError with a code and a message that names the field path.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_support.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"
#include "internal/block_cache.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using testing::DecodeOutgoing;
using testing::EncodeArg;
using testing::FixedPolicy;
using testing::FrameAt;
using Code = DecodeError::Code;

// Received frames from an Outgoing, each copied into fresh storage with the envelope at
// `envelope_misalign` bytes past an aligned address.
ReceivedMessage Received(const Outgoing& out, size_t envelope_misalign = 0) {
  ReceivedMessage r;
  r.frames.push_back(FrameAt(out.envelope(), envelope_misalign));
  for (const Buffer& b : out.payload_frames()) r.frames.push_back(FrameAt(b.data(), b.size(), 0));
  return r;
}

// Decodes and expects a DecodeError with `code` whose message contains every substring.
void ExpectRejected(ReceivedMessage&& r, Code code, std::vector<std::string> substrings) {
  uint64_t rejected = GlobalStats().Snapshot().messages_rejected;
  try {
    Message m = Message::Decode(std::move(r));
    ADD_FAILURE() << "decoded; expected DecodeError containing " << substrings[0];
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& s : substrings) EXPECT_THAT(e.what(), HasSubstr(s));
    EXPECT_GT(GlobalStats().Snapshot().messages_rejected, rejected);
  }
}

// ---- body kinds ---------------------------------------------------------------------

// A default or moved-from Message has no body: the apply accessors throw, even after
// its old state was recycled for another message (reviewer's finding: they used to read
// through a stale pointer).
TEST(MessageTest, EmptyAndMovedFromMessagesThrow) {
  Message none;
  EXPECT_THROW(none.arg(0), DecodeError);
  EXPECT_THROW(none.function(), DecodeError);

  Message a = DecodeOutgoing(EncodeArg(std::string("secret-of-a")));
  Message b = std::move(a);
  EXPECT_EQ(b.arg(0).AsText(), "secret-of-a");
  b = Message();  // frees a's state, which the next decode may reuse
  Message c = DecodeOutgoing(EncodeArg(std::string("secret-of-c")));
  for (const Message* moved : {&a, &b}) {
    try {
      (void)moved->arg(0);
      ADD_FAILURE() << "no exception";
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), Code::kTypeMismatch);
      EXPECT_THAT(e.what(), HasSubstr("not an apply"));
    }
    EXPECT_THROW(moved->function(), DecodeError);
    EXPECT_THROW(moved->kwarg_name(0), DecodeError);
  }
  EXPECT_EQ(c.arg(0).AsText(), "secret-of-c");
}

// messages_decoded is counted per thread (no shared atomic per decode): the snapshot
// must still see every decode, from live threads and from threads that have exited.
TEST(MessageTest, MessagesDecodedCountsEveryThread) {
  auto decode = [](int n) {
    for (int i = 0; i < n; ++i) {
      EnvelopeWriter w(FixedPolicy());
      w.StartApply("f", 1, 0).arg(0).Int(i);
      ASSERT_EQ(Message::Decode(LoopbackFrames(w.Finish())).arg(0).AsInt(), i);
    }
  };
  const uint64_t before = GlobalStats().Snapshot().messages_decoded;
  decode(5);  // this thread
  std::thread exited(decode, 7);
  exited.join();  // its count moved to the shared counter when it exited
  std::atomic<bool> done{false}, stop{false};
  std::thread alive([&] {
    decode(11);
    done = true;
    while (!stop) std::this_thread::yield();
  });
  while (!done) std::this_thread::yield();
  EXPECT_EQ(GlobalStats().Snapshot().messages_decoded - before, 5u + 7u + 11u);
  stop = true;
  alive.join();
  EXPECT_EQ(GlobalStats().Snapshot().messages_decoded - before, 5u + 7u + 11u);
}

TEST(MessageTest, ResultOk) {
  EnvelopeWriter w(FixedPolicy());
  w.SetHeader(Header{5, 6, 7, 8});
  w.StartResult(99, "engine-1").Write(std::vector<std::string>{"x"});
  Message m = DecodeOutgoing(w.Finish());
  EXPECT_EQ(m.body_kind(), BodyKind::kResult);
  EXPECT_EQ(m.call_id(), 99u);
  EXPECT_EQ(m.engine_id(), "engine-1");
  EXPECT_TRUE(m.ok());
  EXPECT_EQ(m.result().As<std::vector<std::string>>(), std::vector<std::string>{"x"});
  EXPECT_THROW((void)m.error(), DecodeError);
  EXPECT_THROW((void)m.function(), DecodeError);
  EXPECT_THROW((void)m.arg(0), DecodeError);
}

TEST(MessageTest, ResultError) {
  EnvelopeWriter w(FixedPolicy());
  w.SetError(3, "e", RemoteErrorInfo{"ValueError", "bad value", "mod.fn", "host:1"});
  Message m = DecodeOutgoing(w.Finish());
  EXPECT_FALSE(m.ok());
  RemoteErrorInfo e = m.error();
  EXPECT_EQ(e.type, "ValueError");
  EXPECT_EQ(e.message, "bad value");
  EXPECT_EQ(e.function, "mod.fn");
  EXPECT_EQ(e.where, "host:1");
  try {
    (void)m.result();
    FAIL();
  } catch (const DecodeError& err) {
    EXPECT_EQ(err.code(), Code::kTypeMismatch);
  }
}

TEST(MessageTest, HelloHeartbeatGoodbye) {
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetHello("peer", "engine", {"f", "g"});
    Message m = DecodeOutgoing(w.Finish());
    EXPECT_EQ(m.body_kind(), BodyKind::kHello);
    auto h = GeneratedEnvelope(m).getBody().getHello();
    EXPECT_EQ(std::string(h.getPeerId().cStr()), "peer");
    EXPECT_EQ(std::string(h.getRole().cStr()), "engine");
    ASSERT_EQ(h.getFunctions().size(), 2u);
    EXPECT_EQ(std::string(h.getFunctions()[1].cStr()), "g");
    EXPECT_THROW((void)m.call_id(), DecodeError);
  }
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetHeartbeat("p", 123);
    Message m = DecodeOutgoing(w.Finish());
    EXPECT_EQ(m.body_kind(), BodyKind::kHeartbeat);
    EXPECT_EQ(GeneratedEnvelope(m).getBody().getHeartbeat().getNowNs(), 123u);
  }
}

TEST(MessageTest, PayloadOutlivesMessage) {
  Buffer bytes;
  Tensor tensor;
  {
    EnvelopeWriter w(FixedPolicy(1024));
    ApplyWriter a = w.StartApply("f", 2, 0);
    a.arg(0).Write(std::vector<std::byte>(5000, std::byte{1}));
    a.arg(1).Write(std::vector<double>{1, 2, 3});  // inline: lives in the envelope
    Message m = DecodeOutgoing(w.Finish());
    bytes = m.arg(0).AsBytes();
    tensor = m.arg(1).AsTensor();
  }
  // The message is gone; the views keep its frames alive (ASan checks the reads).
  EXPECT_EQ(bytes.size(), 5000u);
  EXPECT_EQ(bytes.data()[4999], std::byte{1});
  EXPECT_EQ(tensor.data_as<double>()[2], 3.0);
}

// Message states are recycled through a per-thread cache (src/internal/block_cache.h): a message
// decoded on one thread and dropped on another (a worker pool's usual path) must leave
// both threads' caches sound, and a recycled state must not carry the last message's
// views. Each message here differs, so a stale view would read the wrong value.
TEST(MessageTest, StatesRecycleAcrossThreads) {
  constexpr int kMessages = 200;
  for (int round = 0; round < 3; ++round) {
    std::vector<Message> decoded;
    std::vector<Buffer> payloads;
    for (int i = 0; i < kMessages; ++i) {
      EnvelopeWriter w(FixedPolicy(64));
      ApplyWriter a = w.StartApply(i % 2 == 0 ? "even" : "odd", 2, 0);
      a.arg(0).Int(round * kMessages + i);
      a.arg(1).Write(std::vector<std::byte>(100 + static_cast<size_t>(i), std::byte{static_cast<uint8_t>(i)}));
      decoded.push_back(DecodeOutgoing(w.Finish()));
    }
    // Half the payloads outlive their message and are dropped on this thread later.
    for (int i = 0; i < kMessages; i += 2) payloads.push_back(decoded[static_cast<size_t>(i)].arg(1).AsBytes());
    std::thread other([moved = std::move(decoded)]() mutable { moved.clear(); });
    other.join();
    for (int i = 0; i < kMessages; ++i) {
      EnvelopeWriter w(FixedPolicy(64));
      w.StartApply("again", 1, 0).arg(0).Int(-i);
      Message m = DecodeOutgoing(w.Finish());
      ASSERT_EQ(m.function(), "again");
      ASSERT_EQ(m.arg_count(), 1u);
      ASSERT_EQ(m.arg(0).AsInt(), -i);
    }
    for (size_t k = 0; k < payloads.size(); ++k) {
      ASSERT_EQ(payloads[k].size(), 100 + 2 * k);
      ASSERT_EQ(payloads[k].data()[0], std::byte{static_cast<uint8_t>(2 * k)});
    }
  }
}

// A client with thousands of calls in flight decodes thousands of results, drops them
// together, and does it again: the second burst takes every state from the thread's
// cache (the same blocks), instead of malloc faulting fresh pages in for each.
TEST(MessageTest, BurstOfStatesIsReusedByTheNextBurst) {
  constexpr size_t kMessages = 2000;  // well inside the cache's byte budget
  if (internal::BlockCache<1>::kCacheBytes == 0) GTEST_SKIP() << "block cache off (ASan)";
  auto burst = [&](int round) {
    std::vector<Message> decoded;
    std::vector<const void*> states;
    for (size_t i = 0; i < kMessages; ++i) {
      EnvelopeWriter w(FixedPolicy(64));
      w.StartApply("f", 1, 0).arg(0).Write(std::vector<std::byte>(8, std::byte{1}));
      decoded.push_back(DecodeOutgoing(w.Finish()));
      Buffer inline_bytes = decoded.back().arg(0).AsBytes();  // kept alive by the state
      states.push_back(inline_bytes.keep_alive().get());
    }
    EXPECT_EQ(decoded[kMessages / 2].arg(0).AsBytes().size(), 8u) << "round " << round;
    return states;
  };
  std::vector<const void*> first = burst(0);
  std::vector<const void*> second = burst(1);
  std::sort(first.begin(), first.end());
  for (const void* state : second) {
    ASSERT_TRUE(std::binary_search(first.begin(), first.end(), state))
        << "a state of the second burst came from malloc, not from the first burst's blocks";
  }
}

// ---- alignment ----------------------------------------------------------------------

Outgoing SampleApply(size_t threshold = 1024) {
  EnvelopeWriter w(FixedPolicy(threshold));
  w.SetHeader(Header{1, 2, 3, 4});
  ApplyWriter a = w.StartApply("sample", 3, 1);
  a.arg(0).Write(std::vector<double>{1.5, 2.5, 3.5});
  a.arg(1).Write(std::string("text"));
  a.arg(2).Write(std::vector<float>(1000, 0.25f));  // 4000 bytes: a frame
  a.kwarg(0, "k").Write(std::map<std::string, int64_t>{{"a", 1}});
  return w.Finish();
}

void CheckSample(const Message& m) {
  EXPECT_EQ(m.function(), "sample");
  EXPECT_EQ(m.arg(0).As<std::vector<double>>(), (std::vector<double>{1.5, 2.5, 3.5}));
  EXPECT_EQ(m.arg(1).AsText(), "text");
  EXPECT_EQ(m.arg(2).As<std::vector<float>>(), std::vector<float>(1000, 0.25f));
  EXPECT_EQ(m.kwarg(0).Find("a")->AsInt(), 1);
}

TEST(MessageTest, MisalignedEnvelopeIsCopiedOnce) {
  Outgoing out = SampleApply();
  for (size_t misalign = 0; misalign < 8; ++misalign) {
    uint64_t before = GlobalStats().Snapshot().envelope_realigned;
    ReceivedMessage r = Received(out, misalign);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(r.frames[0].data()) % 8, misalign);
    Message m = Message::Decode(std::move(r));
    uint64_t after = GlobalStats().Snapshot().envelope_realigned;
    if (misalign == 0) {
      EXPECT_FALSE(m.envelope_copied());
      EXPECT_EQ(after, before);
      // Aligned: inline payloads are read in place inside the received frame.
      EXPECT_TRUE(testing::PointsInto(m.arg(0).AsTensor().data().data(), 24, m.frames()[0]));
    } else {
      EXPECT_TRUE(m.envelope_copied()) << misalign;
      EXPECT_EQ(after, before + 1) << misalign;
    }
    CheckSample(m);
    // Frame payloads are never copied, whatever happened to the envelope.
    EXPECT_TRUE(m.arg(2).TensorIsZeroCopy());
    EXPECT_TRUE(testing::PointsInto(m.arg(2).AsTensor().data().data(), 4000, m.frames()[1]));
  }
}

// An apply whose one argument is a float64 tensor of `count` elements in frame 1 at
// byte `offset` of that frame (bytes before it are filler).
ReceivedMessage TensorAtOffset(DType dtype, size_t count, size_t offset) {
  size_t item = ItemSize(dtype);
  std::vector<std::byte> data(count * item);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 13 + 1);
  EnvelopeWriter w(FixedPolicy(1));
  w.StartApply("f", 1, 0).arg(0).Array(dtype, Shape{count}, Buffer::Borrow(data.data(), data.size()));
  GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().getData().getFrame().setOffset(offset);
  Outgoing out = w.Finish();
  std::vector<std::byte> frame(offset, std::byte{0xee});
  frame.insert(frame.end(), data.begin(), data.end());
  ReceivedMessage r;
  r.frames.push_back(FrameAt(out.envelope(), 0));
  r.frames.push_back(FrameAt(frame.data(), frame.size(), 0));
  return r;
}

TEST(MessageTest, MisalignedTensorIsCopiedOnceAligned) {
  for (size_t offset = 0; offset <= 8; ++offset) {
    Message m = Message::Decode(TensorAtOffset(DType::kFloat64, 16, offset));
    Value v = m.arg(0);
    bool aligned = offset % 8 == 0;
    EXPECT_EQ(v.TensorIsZeroCopy(), aligned) << offset;
    // The raw bytes are always a view at the frame offset.
    EXPECT_EQ(v.TensorBytes().data(), static_cast<const std::byte*>(m.frames()[1].data()) + offset);
    uint64_t before = GlobalStats().Snapshot().payload_realigned;
    Tensor t = v.AsTensor();
    uint64_t after = GlobalStats().Snapshot().payload_realigned;
    EXPECT_EQ(after - before, aligned ? 0u : 1u) << offset;
    EXPECT_TRUE(IsAligned(t.data().data(), 8));
    EXPECT_EQ(t.data().data() == v.TensorBytes().data(), aligned);
    EXPECT_EQ(testing::Bytes(t.data()), testing::Bytes(v.TensorBytes()));
    (void)t.data_as<double>();  // typed access is legal on the result
  }
}

// Copy forwards a received tensor's bytes as they are; small integer arrays are packed
// when written, which must not read misaligned bytes as integers (found by the value
// fuzz target under UBSan). The copy keeps the values either way.
TEST(MessageTest, CopyOfMisalignedIntegerTensorKeepsItsValues) {
  for (size_t offset : {0, 1, 3, 4}) {
    Message m = Message::Decode(TensorAtOffset(DType::kInt64, 16, offset));
    EnvelopeWriter w(FixedPolicy(4096));
    w.StartApply("f", 1, 0).arg(0).Copy(m.arg(0));
    Message copy = DecodeOutgoing(w.Finish());
    EXPECT_EQ(copy.arg(0).As<std::vector<int64_t>>(), m.arg(0).As<std::vector<int64_t>>()) << offset;
  }
}

TEST(MessageTest, ByteTensorsNeedNoAlignment) {
  for (size_t offset : {1, 3, 7}) {
    Message m = Message::Decode(TensorAtOffset(DType::kUInt8, 100, offset));
    EXPECT_TRUE(m.arg(0).TensorIsZeroCopy());
    EXPECT_EQ(m.arg(0).AsTensor().data().data(), m.arg(0).TensorBytes().data());
  }
  // complex64 aligns like float32.
  Message c = Message::Decode(TensorAtOffset(DType::kComplex64, 4, 4));
  EXPECT_TRUE(c.arg(0).TensorIsZeroCopy());
  Message c2 = Message::Decode(TensorAtOffset(DType::kComplex64, 4, 2));
  EXPECT_FALSE(c2.arg(0).TensorIsZeroCopy());
}

// ---- malformed ------------------------------------------------------------------------

TEST(MalformedTest, EmptyMessageAndEmptyEnvelope) {
  ExpectRejected(ReceivedMessage{}, Code::kMalformed, {"no envelope"});
  ReceivedMessage r;
  r.frames.emplace_back();
  ExpectRejected(std::move(r), Code::kMalformed, {"frame 0", "8-byte words"});
}

TEST(MalformedTest, TruncatedEnvelope) {
  Outgoing out = SampleApply();
  size_t size = out.envelope().size();
  std::vector<size_t> cuts = {1, 4, 7, 8, 9, 15, 16, 24, size / 2, size - 8, size - 1};
  for (size_t cut : cuts) {
    ReceivedMessage r;
    r.frames.push_back(FrameAt(out.envelope().data(), cut, 0));
    r.frames.push_back(FrameAt(out.payload_frames()[0].data(), out.payload_frames()[0].size(), 0));
    try {
      Message m = Message::Decode(std::move(r));
      ADD_FAILURE() << "truncated at " << cut << " of " << size << " decoded";
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), Code::kMalformed) << e.what();
      EXPECT_THAT(e.what(), HasSubstr("frame 0")) << cut;
    }
  }
}

TEST(MalformedTest, TrailingBytesAfterSegment) {
  Outgoing out = SampleApply();
  std::vector<std::byte> env = testing::Bytes(out.envelope());
  env.resize(env.size() + 8);
  ReceivedMessage r;
  r.frames.push_back(FrameAt(env.data(), env.size(), 0));
  r.frames.push_back(FrameAt(out.payload_frames()[0].data(), out.payload_frames()[0].size(), 0));
  ExpectRejected(std::move(r), Code::kMalformed, {"frame 0", "after the last segment"});
}

// An apply with a bytes argument in frame 1, whose FrameRef `edit` modifies.
template <class Edit>
ReceivedMessage BytesRef(Edit edit, size_t size = 100) {
  std::vector<std::byte> data(size, std::byte{2});
  EnvelopeWriter w(FixedPolicy(1));
  w.StartApply("f", 1, 0).arg(0).Bytes(Buffer::Borrow(data.data(), data.size()));
  edit(GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getBytes().getFrame());
  Outgoing out = w.Finish();
  return Received(out);
}

TEST(MalformedTest, ReferenceToMissingFrame) {
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) { ref.setIndex(2); }), Code::kMalformed,
                 {"apply.args[0].bytes", "frame 2", "1 payload frame"});
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) { ref.setIndex(0); }), Code::kMalformed,
                 {"apply.args[0].bytes", "frame 0"});
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) { ref.setIndex(UINT32_MAX); }),
                 Code::kMalformed, {"apply.args[0].bytes", "4294967295"});
}

TEST(MalformedTest, OffsetPlusLengthPastFrameEnd) {
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) { ref.setLength(101); }),
                 Code::kMalformed, {"apply.args[0].bytes", "past the end of frame 1", "100 bytes"});
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) { ref.setOffset(1); }),
                 Code::kMalformed, {"apply.args[0].bytes", "offset 1 + length 100"});
  // Values chosen so a naive offset + length overflows to something small.
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) {
                   ref.setOffset(UINT64_MAX);
                   ref.setLength(2);
                 }),
                 Code::kMalformed, {"apply.args[0].bytes", "past the end"});
  ExpectRejected(BytesRef([](wire::FrameRef::Builder ref) {
                   ref.setOffset(1);
                   ref.setLength(UINT64_MAX);
                 }),
                 Code::kMalformed, {"past the end"});
  // In range is fine.
  Message m = Message::Decode(BytesRef([](wire::FrameRef::Builder ref) {
    ref.setOffset(40);
    ref.setLength(60);
  }));
  EXPECT_EQ(m.arg(0).AsBytes().size(), 60u);
}

// An apply whose argument 0 is a tensor `edit` modifies (in a frame by default).
template <class Edit>
ReceivedMessage TensorEdit(Edit edit, size_t threshold = 1) {
  std::vector<double> data(10, 1.0);
  EnvelopeWriter w(FixedPolicy(threshold));
  ApplyWriter a = w.StartApply("f", 2, 1);
  a.arg(0).Write(int64_t{0});
  a.arg(1).Write(data);
  a.kwarg(0, "t").Write(data);
  edit(GeneratedEnvelope(w).getBody().getApply());
  Outgoing out = w.Finish();
  return Received(out);
}

TEST(MalformedTest, ShapeTimesItemSizeNotBytes) {
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   auto shape = a.getArgs()[1].getTensor().initShape(2);
                   shape.set(0, 3);
                   shape.set(1, 4);
                 }),
                 Code::kMalformed,
                 {"apply.args[1].tensor.shape", "3x4 float64 needs 96 bytes, frame 1 has 80"});
  // Inline data and a keyword argument path.
  ExpectRejected(TensorEdit(
                     [](wire::Apply::Builder a) {
                       a.getKwargs()[0].getValue().getTensor().getShape().set(0, 11);
                     },
                     1 << 20),
                 Code::kMalformed,
                 {"apply.kwargs[0].value.tensor.shape", "11 float64 needs 88 bytes, inline data has 80"});
  // A shape whose product overflows 64 bits.
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   auto shape = a.getArgs()[1].getTensor().initShape(3);
                   shape.set(0, uint64_t{1} << 32);
                   shape.set(1, uint64_t{1} << 32);
                   shape.set(2, 2);
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.shape", "more than 2^64"});
  // Changing the dtype changes the bytes needed.
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setDtype(wire::DType::FLOAT32);
                 }),
                 Code::kMalformed, {"10 float32 needs 40 bytes, frame 1 has 80"});
}

TEST(MalformedTest, UnknownDtypeOrderPacking) {
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setDtype(static_cast<wire::DType>(14));
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.dtype", "unknown dtype 14"});
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setOrder(static_cast<wire::Order>(7));
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.order"});
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setByteOrder(static_cast<wire::ByteOrder>(2));
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.byteOrder"});
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setPacking(static_cast<wire::Packing>(99));
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.packing"});
  // Packing a float tensor, or packing data that lives in a frame, is malformed.
  ExpectRejected(TensorEdit([](wire::Apply::Builder a) {
                   a.getArgs()[1].getTensor().setPacking(wire::Packing::INT8);
                 }),
                 Code::kMalformed, {"apply.args[1].tensor.packing"});
}

TEST(MalformedTest, RankLimit) {
  DecodeLimits limits;
  limits.max_rank = 2;
  Outgoing out = EncodeArg(Tensor(DType::kUInt8, Shape{1, 1, 1}, Buffer::Allocate(1)));
  try {
    Message::Decode(Received(out), limits);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), Code::kLimitExceeded);
    EXPECT_THAT(e.what(), AllOf(HasSubstr("apply.args[0].tensor.shape"), HasSubstr("max_rank")));
  }
}

TEST(MalformedTest, NestingTooDeep) {
  // Built with the raw Cap'n Proto builder: the writer refuses to go this deep.
  for (int levels : {65, 100, 300}) {
    EnvelopeWriter w(FixedPolicy());
    w.StartApply("f", 1, 0);
    wire::Value::Builder v = GeneratedEnvelope(w).getBody().getApply().getArgs()[0];
    for (int i = 0; i < levels; ++i) v = v.initList(1)[0];
    v.setInt(1);
    Outgoing out = w.Finish();
    try {
      Message::Decode(Received(out));
      ADD_FAILURE() << levels << " levels decoded";
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), Code::kLimitExceeded) << e.what();
      EXPECT_THAT(e.what(), AnyOf(HasSubstr("max_depth"), HasSubstr("nested")));
    }
  }
  // A tighter limit names the path where it was hit.
  Outgoing out = EncodeArg(std::vector<std::vector<std::vector<std::string>>>{{{"x"}}});
  DecodeLimits limits;
  limits.max_depth = 3;
  try {
    Message::Decode(Received(out), limits);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), Code::kLimitExceeded);
    EXPECT_THAT(e.what(), HasSubstr("apply.args[0][0][0][0]: values nested deeper than max_depth 3"));
  }
  limits.max_depth = 4;
  EXPECT_NO_THROW(Message::Decode(Received(out), limits));
  // Maps and extensions count as levels too.
  Outgoing map_out = EncodeArg(std::map<std::string, std::map<std::string, int>>{{"a", {{"b", 1}}}});
  limits.max_depth = 2;
  EXPECT_THROW(Message::Decode(Received(map_out), limits), DecodeError);
}

TEST(MalformedTest, WrongProtocolVersion) {
  for (uint16_t version : {uint16_t{0}, uint16_t{kProtocolVersion + 1}, uint16_t{65535}}) {
    EnvelopeWriter w(FixedPolicy());
    w.SetGoodbye();
    GeneratedEnvelope(w).setVersion(version);
    Outgoing out = w.Finish();
    ExpectRejected(Received(out), Code::kVersion,
                   {"version", std::to_string(version), "speaks " + std::to_string(kProtocolVersion)});
  }
}

TEST(MalformedTest, PayloadFramesMismatch) {
  Outgoing out = SampleApply();
  {
    ReceivedMessage r = Received(out);
    r.frames.push_back(FrameAt("x", 1, 0));
    ExpectRejected(std::move(r), Code::kMalformed, {"payloadFrames", "announces 1", "has 2"});
  }
  {
    ReceivedMessage r = Received(out);
    r.frames.pop_back();
    ExpectRejected(std::move(r), Code::kMalformed, {"payloadFrames", "announces 1", "has 0"});
  }
}

TEST(MalformedTest, Limits) {
  Outgoing out = SampleApply();
  DecodeLimits limits;
  limits.max_frames = 1;
  try {
    Message::Decode(Received(out), limits);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), Code::kLimitExceeded);
  }
  auto expect_limit = [&](DecodeLimits l, const char* name) {
    try {
      Message::Decode(Received(out), l);
      ADD_FAILURE() << name;
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), Code::kLimitExceeded) << e.what();
      EXPECT_THAT(e.what(), HasSubstr(name));
    }
  };
  DecodeLimits l;
  l.max_frame_bytes = 1000;
  expect_limit(l, "max_frame_bytes");
  l = {};
  l.max_message_bytes = 1000;
  expect_limit(l, "max_message_bytes");
  l = {};
  l.max_envelope_bytes = 64;
  expect_limit(l, "max_envelope_bytes");
  l = {};
  l.max_text_bytes = 3;
  expect_limit(l, "max_text_bytes");
  l = {};
  l.max_list_length = 0;
  expect_limit(l, "max_list_length");
  l = {};
  l.max_payload_refs = 1;
  expect_limit(l, "max_payload_refs");
}

TEST(MalformedTest, UnknownUnionMembersFromNewerSenders) {
  // An envelope whose body discriminant is past the last member this reader knows. The
  // discriminant's place comes from the schema: the root struct's data section starts
  // after the segment table (8 bytes) and the root pointer (8 bytes).
  uint32_t offset = capnp::Schema::from<wire::Envelope::Body>().getProto().getStruct()
                        .getDiscriminantOffset();
  size_t disc = 16 + 2 * size_t{offset};
  EnvelopeWriter w(FixedPolicy());
  w.SetGoodbye();
  Outgoing out = w.Finish();
  std::vector<std::byte> a = testing::Bytes(out.envelope());
  ASSERT_LT(disc + 1, a.size());
  EXPECT_EQ(static_cast<int>(a[disc]), static_cast<int>(wire::Envelope::Body::GOODBYE));
  a[disc] = std::byte{9};
  ReceivedMessage bad;
  bad.frames.push_back(FrameAt(a.data(), a.size(), 0));
  ExpectRejected(std::move(bad), Code::kMalformed, {"body", "unknown message kind 9"});
}

// Every bit of a few valid envelopes flipped in turn: each result decodes or raises
// DecodeError; nothing crashes (run under ASan/UBSan).
TEST(MalformedTest, BitFlipsNeverCrash) {
  std::vector<Outgoing> samples;
  samples.push_back(SampleApply());
  samples.push_back(SampleApply(1 << 20));
  {
    EnvelopeWriter w(FixedPolicy(64));
    w.StartResult(1, "e").Write(std::map<std::string, std::vector<int16_t>>{
        {"a", {1, -2, 300}}, {"b", std::vector<int16_t>(100, 5)}});
    samples.push_back(w.Finish());
  }
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetError(1, "e", RemoteErrorInfo{"T", "m", "f", "w"});
    samples.push_back(w.Finish());
  }
  size_t decoded = 0, rejected = 0;
  for (const Outgoing& out : samples) {
    std::vector<std::vector<std::byte>> frames;
    frames.push_back(testing::Bytes(out.envelope()));
    for (const Buffer& b : out.payload_frames()) frames.push_back(testing::Bytes(b));
    ASSERT_TRUE(testing::DecodesOrRejects(frames));
    for (size_t i = 0; i < frames[0].size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        frames[0][i] ^= std::byte(1 << bit);
        (testing::DecodesOrRejects(frames) ? decoded : rejected)++;
        frames[0][i] ^= std::byte(1 << bit);
      }
    }
  }
  EXPECT_GT(rejected, 0u);
  EXPECT_GT(decoded, 0u);
}

}  // namespace
}  // namespace zerocan

namespace zerocan {
namespace {
TEST(MessageTest, DecodeCodesHaveLanguageNeutralNames) {
  EXPECT_EQ(DecodeCodeName(DecodeError::Code::kMalformed), "malformed");
  EXPECT_EQ(DecodeCodeName(DecodeError::Code::kLimitExceeded), "limit_exceeded");
  EXPECT_EQ(DecodeCodeName(DecodeError::Code::kTypeMismatch), "type_mismatch");
  EXPECT_EQ(DecodeCodeName(DecodeError::Code::kVersion), "version");
}
}  // namespace
}  // namespace zerocan

namespace zerocan {
namespace {
TEST(MessageTest, HeaderOfAnEmptyMessageIsZero) {
  Message none;
  EXPECT_EQ(none.body_kind(), BodyKind::kUnknown);
  EXPECT_EQ(none.message_id(), 0u);
  EXPECT_TRUE(none.frames().empty());
  EXPECT_FALSE(none.envelope_copied());
}
}  // namespace
}  // namespace zerocan
