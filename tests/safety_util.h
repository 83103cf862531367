// Helpers shared by the safety tests (signing, replay, malformed input, hostile peers):
// a small apply message with payload frames, a tcp ROUTER/DEALER pair, raw multipart
// sends that bypass zerocan::Send so tests can put any bytes on the wire.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "zerocan/transport/zmq.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"
#include "test_support.h"

namespace zerocan::testing {

// An apply "echo"(seq, bytes[bytes_len], float64 tensor[tensor_n], tag="t") whose
// bytes and tensor travel as frames 1 and 2 (inline threshold 256).
inline Outgoing MakeCall(uint64_t session, uint64_t sequence, size_t bytes_len = 800,
                         size_t tensor_n = 100) {
  Policy policy;
  policy.inline_threshold = 256;
  EnvelopeWriter writer(policy);
  writer.SetHeader(Header{sequence, session, sequence, 0});
  ApplyWriter apply = writer.StartApply("echo", 3, 1);
  apply.arg(0).Int(static_cast<int64_t>(sequence));
  std::vector<uint8_t> bytes(bytes_len);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + sequence);
  apply.arg(1).Bytes(Buffer::Adopt(std::move(bytes)));
  std::vector<double> values(tensor_n);
  std::iota(values.begin(), values.end(), 0.5);
  apply.arg(2).Array(DType::kFloat64, Shape{tensor_n}, Buffer::Adopt(std::move(values)));
  apply.kwarg(0, "tag").Text("t");
  return writer.Finish();
}

// Owned copies of frames (zmq::message_t is move-only).
inline FrameList CopyFrames(const FrameList& frames) {
  FrameList out;
  for (const auto& f : frames) out.push_back(testing::Frame(f.data(), f.size()));
  return out;
}

inline FrameList FramesOf(Outgoing&& out) { return LoopbackFrames(std::move(out)).frames; }

// A ROUTER bound on tcp loopback and a DEALER connected to it.
struct TcpPair {
  zmq::context_t context{1};
  zmq::socket_t router{context, zmq::socket_type::router};
  zmq::socket_t dealer{context, zmq::socket_type::dealer};
  std::string endpoint;

  TcpPair() {
    router.set(zmq::sockopt::linger, 0);
    dealer.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    endpoint = router.get(zmq::sockopt::last_endpoint);
    dealer.connect(endpoint);
  }
};

// Sends [empty delimiter][frames...] as one multipart message, copying the bytes.
inline void SendRaw(zmq::socket_t& socket, const FrameList& frames) {
  zmq::message_t delimiter;
  socket.send(delimiter, frames.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  for (size_t i = 0; i < frames.size(); ++i) {
    zmq::message_t copy(frames[i].data(), frames[i].size());
    socket.send(copy, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
}

// Waits up to `timeout` for a message on `socket`; nullopt on timeout.
inline std::optional<ReceivedMessage> ReceiveWithin(zmq::socket_t& socket, bool expect_routing,
                                                    std::chrono::milliseconds timeout,
                                                    const DecodeLimits& limits = {}) {
  zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, timeout) == 0) return std::nullopt;
  return Receive(socket, limits, zmq::recv_flags::none, expect_routing);
}

// Receives on the router, failing the test on a timeout.
inline ReceivedMessage MustReceive(zmq::socket_t& router, const DecodeLimits& limits = {}) {
  auto got = ReceiveWithin(router, /*expect_routing=*/true, std::chrono::seconds(10), limits);
  if (!got) {
    ADD_FAILURE() << "no message within 10 s";
    return ReceivedMessage{};
  }
  return std::move(*got);
}

}  // namespace zerocan::testing
