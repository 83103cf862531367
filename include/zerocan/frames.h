// Moving messages over ZeroMQ sockets: Send (with a Tracker for zero-copy buffers) and
// Receive (with the part count and sizes capped before anything is decoded).
//
// Wire layout of one message (docs/FORMAT.md):
//   [routing frames...] [empty delimiter] [envelope] [payload 1..N]
// DEALER/REQ-style senders write the delimiter; ROUTER sockets add routing frames.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>

#include <zmq.hpp>

#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/writer.h"

namespace zerocan {

// Reports when libzmq has released every zero-copy frame of a send, so the caller may
// reuse or free borrowed buffers. Copyable; all copies observe the same send.
class Tracker {
 public:
  Tracker() = default;  // an already-done tracker
  bool done() const noexcept;
  // Blocks until done.
  void Wait() const;
  // Blocks until done or the timeout passes; returns done().
  bool WaitFor(std::chrono::nanoseconds timeout) const;

  struct State {
    std::atomic<uint32_t> pending{0};
  };
  explicit Tracker(std::shared_ptr<State> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<State> state_;
};

// Sends `routing` frames (moved from), an empty delimiter, the envelope and the payload
// frames as one multipart message. Payload frames go out with zmq_msg_init_data: libzmq
// calls back from its I/O thread when done with each, which drops the Buffer's owner.
// Blocks like zmq_send with flags 0. Throws TransportError on failure (the frames not
// yet handed over are released at once).
Tracker Send(zmq::socket_t& socket, Outgoing&& message,
             absl::InlinedVector<zmq::message_t, 2>* routing = nullptr);

// Receives one multipart message. Returns nullopt when `flags` has dontwait and nothing
// is pending. Rejects (DecodeError, after draining the rest of the message) more parts or
// bytes than `limits` allow, and a message without a delimiter where `expect_routing`.
// With expect_routing == false (DEALER), the first frame must be the empty delimiter.
std::optional<ReceivedMessage> Receive(zmq::socket_t& socket, const DecodeLimits& limits = {},
                                       zmq::recv_flags flags = zmq::recv_flags::none,
                                       bool expect_routing = false);

// Sets ZMQ_MAXMSGSIZE from limits.max_frame_bytes (libzmq drops the connection of a peer
// that announces a larger frame, before allocating it).
void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits);

}  // namespace zerocan
