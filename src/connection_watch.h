// Watches one connecting socket's connection (a client's DEALER) through a libzmq socket
// monitor, so that a peer that went away is noticed at once instead of at each call's
// deadline.
//
// libzmq reports ZMQ_EVENT_DISCONNECTED when the TCP (or IPC) connection closes, and
// also when the ZMTP heartbeats it sends (ZMQ_HEARTBEAT_IVL, set here) go unanswered for
// the heartbeat timeout: a process that died closes its connection at once, a stopped
// process or a cut link is caught by the heartbeats. Only a disconnect after a completed
// handshake counts: a connection that never got through (nothing listening, a Curve key
// mismatch) is not a loss, and its calls keep their deadlines.
//
// Not thread-safe: the owner polls `pollitem()` and calls Lost() under its socket lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <zmq.hpp>

namespace zerocan::internal {

class ConnectionWatch {
 public:
  // Sets the ZMTP heartbeat options on `socket` (before it connects) when `heartbeat`
  // is positive: a ping every `heartbeat`, the connection dropped after
  // heartbeat * liveness without traffic. Then starts the monitor.
  ConnectionWatch(zmq::context_t& context, zmq::socket_t& socket,
                  std::chrono::milliseconds heartbeat, int liveness);
  ~ConnectionWatch();
  ConnectionWatch(const ConnectionWatch&) = delete;
  ConnectionWatch& operator=(const ConnectionWatch&) = delete;

  // For zmq_poll, next to the watched socket.
  zmq::pollitem_t pollitem() { return {monitor_.handle(), 0, ZMQ_POLLIN, 0}; }

  // Reads the pending monitor events without blocking; true when an established
  // connection was lost since the last call.
  bool Lost();

  // Stops the monitor; call before closing the watched socket.
  void Close();

 private:
  zmq::socket_t* watched_;
  zmq::socket_t monitor_;
  bool established_ = false;
};

}  // namespace zerocan::internal
