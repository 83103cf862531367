// A hostile peer floods an echo server with garbage, unsigned, forged, tampered,
// replayed and oversize messages while honest clients call it: every honest call
// succeeds, every bad message is refused and counted, the server never stops.
//
// The server is the loop an engine runs (Receive -> Signer::Verify -> Message::Decode
// -> ReplayGuard::Check -> reply), written here with the safety modules alone so the
// test does not depend on the engine's internals.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <random>
#include <thread>

#include "test_support.h"
#include "zerocan/transport/zmq.h"
#include "tests/safety_util.h"
#include "zerocan/replay.h"
#include "zerocan/signing.h"

namespace zerocan {
namespace {

using testing::Frame;
using testing::Str;

using testing::MakeCall;
using testing::ReceiveWithin;

constexpr char kKey[] = "hostile-test-key";

struct Counters {
  std::atomic<uint64_t> served{0}, receive_rejected{0}, unsigned_{0}, bad_signature{0},
      replayed{0}, decode_rejected{0}, error_replies{0};
};

DecodeLimits ServerLimits() {
  DecodeLimits limits;
  limits.max_frames = 16;
  limits.max_frame_bytes = 1 << 20;
  limits.max_message_bytes = 4 << 20;
  return limits;
}

void Serve(zmq::context_t* context, std::promise<std::string>* endpoint,
           const std::atomic<bool>* stop, Counters* counters) {
  const Signer signer(kKey);
  ReplayGuard replay;
  const DecodeLimits limits = ServerLimits();
  zmq::socket_t router(*context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  ApplyLimits(router, limits);
  router.bind("tcp://127.0.0.1:*");
  endpoint->set_value(router.get(zmq::sockopt::last_endpoint));
  uint64_t sequence = 0;
  Policy policy;
  policy.inline_threshold = 256;
  while (!stop->load()) {
    std::optional<ReceivedMessage> received;
    try {
      received = ReceiveWithin(router, /*expect_routing=*/true, std::chrono::milliseconds(20),
                               limits);
    } catch (const DecodeError&) {
      ++counters->receive_rejected;  // drained; no sender we could trust to answer
      continue;
    }
    if (!received) continue;
    auto routing = std::move(received->routing);
    try {
      signer.Verify(&*received);
    } catch (const AuthError& e) {
      ++(e.code() == AuthError::Code::kUnsigned ? counters->unsigned_ : counters->bad_signature);
      continue;  // dropped and counted: never answer an unauthenticated peer
    }
    EnvelopeWriter writer(policy);
    writer.SetHeader(Header{++sequence, 99, sequence, 0});
    try {
      Message call = Message::Decode(std::move(*received), limits);
      replay.Check(call);
      writer.StartResult(call.message_id(), "hostile-engine").Copy(call.arg(1));
      ++counters->served;
    } catch (const AuthError&) {
      ++counters->replayed;
      continue;
    } catch (const DecodeError& e) {
      // Signed, so the sender is a key holder with a bug: tell it what was wrong.
      ++counters->decode_rejected;
      writer.SetError(0, "hostile-engine", RemoteErrorInfo{"zerocan.DecodeError", e.what(), "", ""});
      ++counters->error_replies;
    }
    Outgoing reply = writer.Finish();
    signer.Sign(&reply);
    Send(router, std::move(reply), routing);
  }
}

// One honest client: `calls` sequential signed calls, each answered with its bytes.
int HonestClient(zmq::context_t* context, const std::string& endpoint, uint64_t session,
                 int calls) {
  const Signer signer(kKey);
  ReplayGuard replies;
  zmq::socket_t dealer(*context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(endpoint);
  int ok = 0;
  for (int i = 1; i <= calls; ++i) {
    Outgoing call = MakeCall(session, static_cast<uint64_t>(i));
    signer.Sign(&call);
    Send(dealer, std::move(call));
    auto reply = ReceiveWithin(dealer, /*expect_routing=*/false, std::chrono::seconds(20));
    if (!reply) return ok;
    signer.Verify(&*reply);
    Message result = Message::Decode(std::move(*reply));
    replies.Check(result);
    if (result.ok() && result.call_id() == static_cast<uint64_t>(i) &&
        result.result().AsBytes().size() == 800) {
      ++ok;
    }
  }
  return ok;
}

void Flood(zmq::context_t* context, const std::string& endpoint, const std::atomic<bool>* stop,
           std::atomic<uint64_t>* sent) {
  const Signer signer(kKey), forger("not the key");
  std::mt19937_64 rng(7);
  zmq::socket_t dealer(*context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::sndhwm, 100000);
  dealer.connect(endpoint);
  // Captured honest traffic to replay: signed by a key holder, sent once for real below.
  std::vector<FrameList> captured;
  for (uint64_t s = 1; s <= 8; ++s) {
    FrameList frames = testing::FramesOf(MakeCall(4242, s));
    signer.SignFrames(&frames);
    captured.push_back(std::move(frames));
  }
  for (const auto& frames : captured) testing::SendRaw(dealer, frames);
  auto send = [&](const FrameList& frames) {
    testing::SendRaw(dealer, frames);
    ++*sent;
  };
  for (uint64_t n = 0; !stop->load(); ++n) {
    FrameList frames;
    switch (n % 8) {
      case 0: {  // garbage frames
        size_t count = 1 + rng() % 5;
        for (size_t i = 0; i < count; ++i) {
          std::string bytes(rng() % 300, '\0');
          for (char& c : bytes) c = static_cast<char>(rng());
          frames.push_back(testing::Frame(bytes.data(), bytes.size()));
        }
        break;
      }
      case 1: frames = testing::FramesOf(MakeCall(5, n + 1)); break;  // unsigned
      case 2:  // forged with another key
        frames = testing::FramesOf(MakeCall(5, n + 1));
        forger.SignFrames(&frames);
        break;
      case 3: frames = testing::CopyFrames(captured[n % captured.size()]); break;  // replay
      case 4: {  // a captured message with one byte changed
        frames = testing::CopyFrames(captured[n % captured.size()]);
        size_t f = rng() % (frames.size() - 1);
        reinterpret_cast<char*>(frames[f].mutable_data())[rng() % frames[f].size()] ^= 1;
        break;
      }
      case 5: {  // a key holder's malformed message (signed garbage envelope)
        std::string env(64, '\x01');
        frames.push_back(testing::Frame(env.data(), env.size()));
        signer.SignFrames(&frames);
        break;
      }
      case 6:  // too many frames
        for (int i = 0; i < 40; ++i) frames.push_back(testing::Frame("f", 1));
        break;
      case 7:
        if (n % 200 == 7) {  // over ZMQ_MAXMSGSIZE: libzmq drops the connection
          std::string big((1 << 20) + 1, 'x');
          frames.push_back(testing::Frame(big.data(), big.size()));
        } else {
          frames.emplace_back();  // empty envelope
        }
        break;
    }
    send(frames);
    // Drain error replies addressed to us so they do not pile up.
    zmq::message_t reply;
    while (dealer.recv(reply, zmq::recv_flags::dontwait)) {
    }
  }
}

TEST(HostileTest, HonestCallsSucceedDuringFlood) {
  zmq::context_t context(2);
  std::promise<std::string> endpoint_promise;
  std::atomic<bool> stop_server{false}, stop_flood{false};
  Counters counters;
  std::thread server(Serve, &context, &endpoint_promise, &stop_server, &counters);
  std::string endpoint = endpoint_promise.get_future().get();

  std::atomic<uint64_t> flooded{0};
  std::thread flood(Flood, &context, endpoint, &stop_flood, &flooded);
  while (flooded.load() < 500) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  constexpr int kCalls = 150;
  auto a = std::async(std::launch::async, HonestClient, &context, endpoint, 1, kCalls);
  auto b = std::async(std::launch::async, HonestClient, &context, endpoint, 2, kCalls);
  int ok_a = a.get(), ok_b = b.get();
  stop_flood = true;
  flood.join();
  stop_server = true;
  server.join();

  EXPECT_EQ(ok_a, kCalls);
  EXPECT_EQ(ok_b, kCalls);
  EXPECT_GE(flooded.load(), 500u);
  // Every kind of bad message reached the server and was refused.
  EXPECT_GT(counters.receive_rejected.load(), 0u);
  EXPECT_GT(counters.unsigned_.load(), 0u);
  EXPECT_GT(counters.bad_signature.load(), 0u);
  EXPECT_GT(counters.replayed.load(), 0u);
  EXPECT_GT(counters.decode_rejected.load(), 0u);
  // Honest calls, plus the 8 captured messages on their first (genuine) delivery.
  EXPECT_EQ(counters.served.load(), 2u * kCalls + 8u);
}

}  // namespace
}  // namespace zerocan
