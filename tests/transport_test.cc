// The transport seam: the same Channel contract holds for the in-process pair and the
// ZeroMQ channel. Zero copy is proven by addresses and owner counts, release by the
// Tracker, and a decoded message reads its payloads in place whichever channel it came by.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "test_support.h"
#include "zerocan/message.h"
#include "zerocan/stats.h"
#include "zerocan/transport.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/writer.h"

namespace zerocan {
namespace {

using namespace std::chrono_literals;
using testing::BufferOf;
using testing::FixedPolicy;
using testing::ReleaseCounter;

// Two connected ends of one kind: "inprocess" (MakeInProcessPair) or "zmq" (a DEALER
// pair over inproc://, where libzmq hands frames over without copying them).
struct Ends {
  explicit Ends(const std::string& kind) {
    if (kind == "inprocess") {
      auto [x, y] = MakeInProcessPair();
      a = std::move(x);
      b = std::move(y);
    } else {
      sockets = std::make_unique<testing::SocketPair>("inproc");
      a = std::make_unique<ZmqChannel>(sockets->a);
      b = std::make_unique<ZmqChannel>(sockets->b);
    }
  }
  std::unique_ptr<testing::SocketPair> sockets;
  std::unique_ptr<Channel> a, b;
};

class ChannelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChannelTest, PayloadArrivesAtTheSendersAddressAndTheTrackerWaitsForTheReceiver) {
  Ends ends(GetParam());
  ReleaseCounter released;
  const std::byte* address = nullptr;
  Tracker tracker;
  {
    auto owner = released.Make(1 << 16);
    address = owner->data();
    EnvelopeWriter w(FixedPolicy(1024));
    w.StartApply("f", 1, 0).arg(0).Bytes(BufferOf(owner));
    tracker = ends.a->Send(w.Finish());
  }
  EXPECT_FALSE(tracker.done());
  {
    std::optional<ReceivedMessage> received = ends.b->Receive(1000ms);
    ASSERT_TRUE(received.has_value());
    ASSERT_EQ(received->frames.size(), 2u);
    EXPECT_EQ(received->frames[1].data(), address) << "the payload frame is the sender's bytes";
    Message m = Message::Decode(std::move(*received));
    Buffer bytes = m.arg(0).AsBytes();
    EXPECT_EQ(bytes.data(), address) << "the decoded view reads the sender's bytes in place";
    EXPECT_EQ(*released.count, 0);
    EXPECT_FALSE(tracker.done()) << "the receiver still holds the frame";
  }
  EXPECT_TRUE(tracker.WaitFor(2s)) << "released once the receiver dropped the message";
  EXPECT_EQ(*released.count, 1) << "the owner is destroyed exactly once";
}

TEST_P(ChannelTest, ReceiveWaitsAtMostItsTimeoutAndMessagesKeepTheirOrder) {
  Ends ends(GetParam());
  auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(ends.b->Receive(30ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - started, 25ms);
  for (int64_t i = 0; i < 5; ++i) {
    EnvelopeWriter w(FixedPolicy());
    w.StartApply("f", 1, 0).arg(0).Write(i);
    ends.a->Send(w.Finish());
  }
  for (int64_t i = 0; i < 5; ++i) {
    std::optional<ReceivedMessage> r = ends.b->Receive(1000ms);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(Message::Decode(std::move(*r)).arg(0).AsInt(), i);
  }
  // Both directions.
  EnvelopeWriter back(FixedPolicy());
  back.StartResult(9, "b").Write(int64_t{10});
  ends.b->Send(back.Finish());
  std::optional<ReceivedMessage> r = ends.a->Receive(1000ms);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(Message::Decode(std::move(*r)).result().AsInt(), 10);
}

TEST_P(ChannelTest, ReceivedFramesOutliveTheirMessageOnTheirOwn) {
  Ends ends(GetParam());
  EnvelopeWriter w(FixedPolicy(64));
  std::vector<uint8_t> big(4096, 0x42);
  w.StartApply("f", 1, 0).arg(0).Bytes(Buffer::Adopt(std::move(big)));
  ends.a->Send(w.Finish());
  Buffer payload;
  {
    std::optional<ReceivedMessage> r = ends.b->Receive(1000ms);
    ASSERT_TRUE(r.has_value());
    payload = r->frames[1].Slice(100, 10);
  }
  ASSERT_FALSE(payload.borrowed()) << "a received frame owns its bytes";
  for (size_t i = 0; i < payload.size(); ++i) EXPECT_EQ(payload.data()[i], std::byte{0x42});
}

INSTANTIATE_TEST_SUITE_P(BothTransports, ChannelTest, ::testing::Values("inprocess", "zmq"));

TEST(ZmqTransportTest, ForwardingSharesLongFramesAndCopiesShortOnes) {
  testing::SocketPair pair("inproc");
  std::vector<std::byte> big(4096, std::byte{7});
  Buffer long_frame = Buffer::Borrow(big.data(), big.size());
  std::string small = "small";
  Buffer short_frame = Buffer::Borrow(small.data(), small.size());
  std::vector<Buffer> frames{short_frame, long_frame};
  ASSERT_TRUE(SendFrames(pair.a, {}, frames));
  small = "SMALL";  // the short frame was copied at the send
  std::optional<ReceivedMessage> r = Receive(pair.b);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->frames.size(), 2u);
  EXPECT_EQ(testing::Str(r->frames[0]), "small");
  EXPECT_EQ(r->frames[1].data(), big.data()) << "a long frame is forwarded without a copy";
}

}  // namespace
}  // namespace zerocan
