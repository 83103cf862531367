// Send/Receive over real sockets: zero copy proven by addresses (inproc: the sender's
// own buffer; tcp: inside the received frame), owners released exactly once, the
// Tracker, routing frames, and Receive's rejections.
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/transport/zmq.h"
#include "test_support.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using testing::Frame;
using testing::Str;

using ::testing::HasSubstr;
using testing::BufferOf;
using testing::FixedPolicy;
using testing::PointsInto;
using testing::ReleaseCounter;
using testing::SocketPair;
using namespace std::chrono_literals;

Message ReceiveMessage(zmq::socket_t& socket) {
  std::optional<ReceivedMessage> r = Receive(socket);
  EXPECT_TRUE(r.has_value());
  return Message::Decode(std::move(*r));
}

TEST(FramesTest, InprocBytesArriveAtTheSendersAddress) {
  SocketPair pair("inproc");
  ReleaseCounter released;
  Tracker tracker;
  const std::byte* address = nullptr;
  {
    auto owner = released.Make(1 << 16);
    address = owner->data();
    EnvelopeWriter w(FixedPolicy(1024));
    w.StartApply("f", 1, 0).arg(0).Bytes(BufferOf(owner));
    tracker = Send(pair.a, w.Finish());
  }
  EXPECT_FALSE(tracker.done()) << "the receiver has not taken the frame yet";
  {
    Message m = ReceiveMessage(pair.b);
    Buffer bytes = m.arg(0).AsBytes();
    EXPECT_EQ(bytes.data(), address) << "inproc must hand over the sender's buffer";
    EXPECT_EQ(bytes.size(), size_t{1} << 16);
    EXPECT_EQ(m.frames()[1].data(), static_cast<const void*>(address));
    // Still held by the receiver: not released, the tracker waits.
    EXPECT_EQ(*released.count, 0);
    EXPECT_FALSE(tracker.done());
    EXPECT_FALSE(tracker.WaitFor(1ms));
  }
  tracker.Wait();
  EXPECT_TRUE(tracker.done());
  EXPECT_EQ(*released.count, 1);
}

TEST(FramesTest, InprocTensorBothDirections) {
  SocketPair pair("inproc");
  ReleaseCounter released;
  auto owner = released.Make(8 * 4096);
  const std::byte* address = owner->data();
  Tensor t(DType::kFloat64, Shape{64, 64}, BufferOf(owner));
  owner.reset();
  uint64_t released_before = GlobalStats().Snapshot().frames_released;

  EnvelopeWriter w(FixedPolicy(1024));
  w.StartApply("echo", 1, 0).arg(0).Write(t);
  Tracker sent = Send(pair.a, w.Finish());
  t = Tensor();

  // The far side reads a view at the sender's address, and echoes the received value
  // back without copying (ValueWriter::Copy forwards the frame).
  Tracker echoed;
  {
    Message request = ReceiveMessage(pair.b);
    Tensor view = request.arg(0).As<Tensor>();
    EXPECT_EQ(view.data().data(), address);
    EXPECT_TRUE(request.arg(0).TensorIsZeroCopy());
    TensorView<const double> typed = request.arg(0).As<TensorView<const double>>();
    EXPECT_EQ(static_cast<const void*>(typed.data()), static_cast<const void*>(address));
    EnvelopeWriter reply(FixedPolicy(1024));
    reply.StartResult(request.message_id(), "engine").Copy(request.arg(0));
    echoed = Send(pair.b, reply.Finish());
  }
  {
    Message result = ReceiveMessage(pair.a);
    ASSERT_TRUE(result.ok());
    EXPECT_EQ(result.result().AsTensor().data().data(), address)
        << "the reply carries the original buffer, still without a copy";
    EXPECT_EQ(*released.count, 0);
  }
  sent.Wait();
  echoed.Wait();
  EXPECT_EQ(*released.count, 1);
  EXPECT_GE(GlobalStats().Snapshot().frames_released, released_before + 2);
}

TEST(FramesTest, TcpPayloadPointsInsideReceivedFrame) {
  SocketPair pair("tcp");
  ReleaseCounter released;
  Tracker tracker;
  std::vector<double> values(10000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) * 0.5;
  {
    auto owner = released.Make(values.size() * 8);
    std::memcpy(owner->data(), values.data(), owner->size());
    EnvelopeWriter w(FixedPolicy(1024));
    ApplyWriter a = w.StartApply("f", 3, 0);
    a.arg(0).Array(DType::kFloat64, Shape{values.size()}, BufferOf(owner));
    a.arg(1).Write(std::vector<int32_t>{1, 2, 3});  // inline
    a.arg(2).Bytes(Buffer::Adopt(std::vector<std::byte>(3000, std::byte{9})));
    tracker = Send(pair.a, w.Finish());
  }
  Message m = ReceiveMessage(pair.b);
  ASSERT_EQ(m.frames().size(), 3u);
  Tensor t = m.arg(0).AsTensor();
  EXPECT_TRUE(PointsInto(t.data().data(), t.nbytes(), m.frames()[1]));
  EXPECT_EQ(std::vector<double>(t.data_as<double>(), t.data_as<double>() + t.size()), values);
  Buffer bytes = m.arg(2).AsBytes();
  EXPECT_TRUE(PointsInto(bytes.data(), bytes.size(), m.frames()[2]));
  if (!m.envelope_copied()) {
    Buffer inline_bytes = m.arg(1).TensorBytes();
    EXPECT_TRUE(PointsInto(inline_bytes.data(), inline_bytes.size(), m.frames()[0]));
  }
  EXPECT_EQ(m.arg(1).As<std::vector<int32_t>>(), (std::vector<int32_t>{1, 2, 3}));
  // Over tcp the sender's frames are released once libzmq has written them, whether or
  // not the receiver still holds its copy.
  ASSERT_TRUE(tracker.WaitFor(10s));
  EXPECT_EQ(*released.count, 1);
}

TEST(FramesTest, TcpManySmallMessagesSomeMisaligned) {
  // libzmq batches small tcp frames into one read buffer, so envelopes arrive at any
  // address; every one must decode (realigned when needed, counted).
  SocketPair pair("tcp");
  uint64_t realigned_before = GlobalStats().Snapshot().envelope_realigned;
  size_t copied = 0;
  constexpr int kMessages = 200;
  for (int i = 0; i < kMessages; ++i) {
    EnvelopeWriter w(FixedPolicy());
    ApplyWriter a = w.StartApply("f", 1, 0);
    a.arg(0).Write(std::string(static_cast<size_t>(i % 13), 'x'));
    (void)Send(pair.a, w.Finish());
  }
  for (int i = 0; i < kMessages; ++i) {
    Message m = ReceiveMessage(pair.b);
    EXPECT_EQ(m.arg(0).AsText(), std::string(static_cast<size_t>(i % 13), 'x'));
    EXPECT_EQ(m.envelope_copied(), !IsAligned(m.frames()[0].data(), 8));
    copied += m.envelope_copied() ? 1 : 0;
  }
  EXPECT_EQ(GlobalStats().Snapshot().envelope_realigned - realigned_before, copied);
}

TEST(FramesTest, TrackerWithoutZeroCopyFramesIsDone) {
  SocketPair pair("inproc");
  EnvelopeWriter w(FixedPolicy());
  w.SetHeartbeat("p", 1);
  Tracker t = Send(pair.a, w.Finish());
  EXPECT_TRUE(t.done());
  t.Wait();
  EXPECT_TRUE(Tracker().done());
  Message m = ReceiveMessage(pair.b);
  EXPECT_EQ(m.body_kind(), BodyKind::kHeartbeat);
}

TEST(FramesTest, TrackerCountsEveryFrame) {
  SocketPair pair("inproc");
  ReleaseCounter released;
  EnvelopeWriter w(FixedPolicy(16));
  ApplyWriter a = w.StartApply("f", 3, 0);
  for (size_t i = 0; i < 3; ++i) a.arg(i).Bytes(BufferOf(released.Make(100)));
  Tracker t = Send(pair.a, w.Finish());
  std::optional<Message> m = ReceiveMessage(pair.b);
  EXPECT_EQ(m->frames().size(), 4u);
  // Keep one payload after the message is gone: the frames stay held.
  Buffer keep = m->arg(1).AsBytes();
  m.reset();
  EXPECT_FALSE(t.done());
  EXPECT_EQ(*released.count, 0);
  keep = Buffer();
  t.Wait();
  EXPECT_EQ(*released.count, 3);
}

TEST(FramesTest, LoopbackSharesBuffersAndReleasesOnce) {
  ReleaseCounter released;
  auto owner = released.Make(5000);
  const std::byte* address = owner->data();
  EnvelopeWriter w(FixedPolicy(1024));
  w.StartApply("f", 1, 0).arg(0).Bytes(BufferOf(owner));
  owner.reset();
  {
    Message m = Message::Decode(LoopbackFrames(w.Finish()));
    EXPECT_EQ(m.arg(0).AsBytes().data(), address);
    EXPECT_EQ(*released.count, 0);
  }
  EXPECT_EQ(*released.count, 1);
}

TEST(FramesTest, LoopbackEnvelopeIsTheWritersBytesAndFramesOwnIt) {
  EnvelopeWriter w(FixedPolicy());
  w.StartApply("scale", 1, 0).arg(0).Text("in place");
  Outgoing out = w.Finish();
  const std::byte* envelope = out.envelope().data();
  std::vector<std::byte> bytes = testing::Bytes(out.envelope());

  ReceivedMessage received = LoopbackFrames(std::move(out));
  EXPECT_EQ(out.envelope().size(), 0u) << "a spent Outgoing shows no envelope";
  EXPECT_EQ(out.envelope().data(), nullptr);
  ASSERT_EQ(received.frames.size(), 1u);
  EXPECT_EQ(received.frames[0].data(), static_cast<const void*>(envelope)) << "no copy";
  EXPECT_FALSE(received.frames[0].borrowed()) << "the frame owns the writer's envelope";
  ReceivedMessage moved = std::move(received);
  Message m = Message::Decode(std::move(moved));
  EXPECT_EQ(m.function(), "scale");
  EXPECT_EQ(m.arg(0).AsText(), "in place");
  EXPECT_EQ(m.frames()[0].data(), static_cast<const void*>(envelope));

  // Frames taken alone keep their bytes: no copy, and no owner left behind.
  EnvelopeWriter w2(FixedPolicy());
  w2.StartApply("scale", 1, 0).arg(0).Text("in place");
  Outgoing out2 = w2.Finish();
  const void* envelope2 = out2.envelope().data();
  std::vector<std::byte> bytes2 = testing::Bytes(out2.envelope());
  FrameList detached = LoopbackFrames(std::move(out2)).frames;
  ASSERT_EQ(detached.size(), 1u);
  EXPECT_EQ(detached[0].data(), envelope2);
  EXPECT_EQ(testing::Bytes(detached[0]), bytes2);
  EXPECT_EQ(bytes2.size(), bytes.size());
  ReceivedMessage again;
  again.frames = std::move(detached);
  EXPECT_EQ(Message::Decode(std::move(again)).arg(0).AsText(), "in place");
}

// Envelopes below Outgoing::kEnvelopeCopyBelow are copied into their frame (cheaper
// than a zero-copy frame); larger ones travel zero-copy like payloads.
TEST(FramesTest, InprocLargeEnvelopeArrivesAtTheWritersAddress) {
  SocketPair pair("inproc");
  for (size_t texts : {1, 200}) {
    EnvelopeWriter w(FixedPolicy());
    ApplyWriter a = w.StartApply("f", texts, 0);
    for (size_t i = 0; i < texts; ++i) a.arg(i).Text("0123456789abcdef");
    Outgoing out = w.Finish();
    const bool large = out.envelope().size() >= Outgoing::kEnvelopeCopyBelow;
    EXPECT_EQ(large, texts == 200) << out.envelope().size();
    const void* address = out.envelope().data();
    uint64_t zero_copy_before = GlobalStats().Snapshot().frames_sent_zero_copy;
    Tracker t = Send(pair.a, std::move(out));
    EXPECT_TRUE(t.done()) << "the envelope is not a tracked payload";
    Message m = ReceiveMessage(pair.b);
    EXPECT_EQ(m.arg_count(), texts);
    EXPECT_EQ(m.frames()[0].data() == address, large);
    EXPECT_EQ(GlobalStats().Snapshot().frames_sent_zero_copy, zero_copy_before)
        << "only payload frames count as zero-copy sends";
  }
}

TEST(FramesTest, RouterRoutingFramesRoundTrip) {
  zmq::context_t ctx;
  zmq::socket_t router(ctx, zmq::socket_type::router);
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  router.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::routing_id, "client-7");
  router.bind("inproc://zerocan-router-test");
  dealer.connect("inproc://zerocan-router-test");

  EnvelopeWriter w(FixedPolicy());
  w.SetHeader(Header{42, 1, 1, 1});
  w.StartApply("f", 1, 0).arg(0).Write(int64_t{5});
  (void)Send(dealer, w.Finish());

  std::optional<ReceivedMessage> r = Receive(router, {}, zmq::recv_flags::none, true);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->routing.size(), 1u);
  EXPECT_EQ(Str(r->routing[0]), "client-7");
  RoutingFrames routing = std::move(r->routing);
  Message request = Message::Decode(std::move(*r));
  EXPECT_EQ(request.arg(0).AsInt(), 5);

  EnvelopeWriter reply(FixedPolicy());
  reply.StartResult(request.message_id(), "e").Write(int64_t{6});
  (void)Send(router, reply.Finish(), routing);
  Message result = ReceiveMessage(dealer);
  EXPECT_EQ(result.call_id(), 42u);
  EXPECT_EQ(result.result().AsInt(), 6);
}

TEST(FramesTest, ReceiveDontWaitReturnsNulloptWhenEmpty) {
  SocketPair pair("inproc");
  EXPECT_FALSE(Receive(pair.b, {}, zmq::recv_flags::dontwait).has_value());
}

// Sends raw parts (no zerocan framing) on `socket`.
void SendRaw(zmq::socket_t& socket, const std::vector<std::string>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    socket.send(zmq::buffer(parts[i]),
                i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
}

void ExpectReceiveRejects(zmq::socket_t& socket, const DecodeLimits& limits,
                          DecodeError::Code code, const std::string& substring) {
  try {
    (void)Receive(socket, limits);
    ADD_FAILURE() << "expected a rejection containing " << substring;
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_THAT(e.what(), HasSubstr(substring));
  }
}

TEST(FramesTest, ReceiveRejectsBadFramingAndStaysInSync) {
  SocketPair pair("inproc");
  DecodeLimits limits;
  // No delimiter: the first frame is not empty.
  SendRaw(pair.a, {"envelope?", "payload"});
  ExpectReceiveRejects(pair.b, limits, DecodeError::Code::kMalformed, "empty delimiter");
  // A delimiter and nothing after it.
  SendRaw(pair.a, {""});
  ExpectReceiveRejects(pair.b, limits, DecodeError::Code::kMalformed, "no envelope frame");
  // Too many frames.
  limits.max_frames = 2;
  SendRaw(pair.a, {"", "a", "b", "c"});
  ExpectReceiveRejects(pair.b, limits, DecodeError::Code::kLimitExceeded, "max_frames");
  limits = {};
  limits.max_message_bytes = 10;
  SendRaw(pair.a, {"", std::string(20, 'x')});
  ExpectReceiveRejects(pair.b, limits, DecodeError::Code::kLimitExceeded, "max_message_bytes");
  // Each rejection drained its whole message: a good one still comes through.
  EnvelopeWriter w(FixedPolicy());
  w.StartApply("after", 0, 0);
  (void)Send(pair.a, w.Finish());
  Message m = ReceiveMessage(pair.b);
  EXPECT_EQ(m.function(), "after");
}

TEST(FramesTest, RouterRejectsTooManyRoutingFrames) {
  zmq::context_t ctx;
  zmq::socket_t a(ctx, zmq::socket_type::dealer);
  zmq::socket_t b(ctx, zmq::socket_type::dealer);
  a.set(zmq::sockopt::linger, 0);
  b.set(zmq::sockopt::linger, 0);
  a.bind("inproc://zerocan-routing-limit");
  b.connect("inproc://zerocan-routing-limit");
  SendRaw(a, {"r1", "r2", "r3", "", "env"});
  DecodeLimits limits;
  limits.max_routing_frames = 2;
  try {
    (void)Receive(b, limits, zmq::recv_flags::none, true);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kLimitExceeded);
    EXPECT_THAT(e.what(), HasSubstr("max_routing_frames"));
  }
  SendRaw(a, {"r1", "r2"});
  try {
    (void)Receive(b, limits, zmq::recv_flags::none, true);
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("before the empty delimiter"));
  }
}

TEST(FramesTest, ApplyLimitsSetsMaxMessageSize) {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  DecodeLimits limits;
  limits.max_frame_bytes = 12345;
  ApplyLimits(s, limits);
  EXPECT_EQ(s.get(zmq::sockopt::maxmsgsize), 12345);
}

}  // namespace
}  // namespace zerocan
