// Watches one connecting socket's connection (a client's DEALER) through a libzmq socket
// monitor, so that a peer that went away is noticed at once instead of at each call's
// deadline.
//
// A process that died closes its connection: libzmq reports ZMQ_EVENT_DISCONNECTED at
// once. What closes nothing (a stopped process, a cut link, a dead host) is caught by
// ZMTP heartbeats: a ping every `heartbeat`, which the peer's libzmq answers. libzmq's
// own verdict on them counts only complete frames, so a reply frame that takes longer
// than the window to arrive (a large result over a slow link) would be taken for
// silence: its pong waits behind it (and a long upload holds our pings back). So on tcp
// the verdict is the kernel's instead: the connection is lost when for heartbeat x
// liveness no byte came from the peer and the peer acknowledged none of ours (TCP_INFO's
// last_data_recv and bytes_acked, read on the connection's descriptor); the watch then
// drops it and connects again. On other transports libzmq's verdict stands.
//
// Only a loss after a completed handshake counts: a connection that never got through
// (nothing listening, a Curve key refused) is not a loss, and its calls keep their
// deadlines.
//
// Not thread-safe: the owner calls Lost() under its socket lock, after each poll and at
// least every check_interval().
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <zmq.hpp>

#include "transport/tcp_activity.h"

namespace zerocan::internal {

class ConnectionWatch {
 public:
  // Sets the ZMTP heartbeat options on `socket` (before it connects to `url`) when
  // `heartbeat` is positive. Then starts the monitor.
  ConnectionWatch(zmq::context_t& context, zmq::socket_t& socket, const std::string& url,
                  std::chrono::milliseconds heartbeat, int liveness);
  ~ConnectionWatch();
  ConnectionWatch(const ConnectionWatch&) = delete;
  ConnectionWatch& operator=(const ConnectionWatch&) = delete;

  // For zmq_poll, next to the watched socket.
  zmq::pollitem_t pollitem() { return {monitor_.handle(), 0, ZMQ_POLLIN, 0}; }
  // How often Lost() must be called while calls are in flight (the heartbeat interval;
  // max() without heartbeats).
  std::chrono::milliseconds check_interval() const { return check_interval_; }
  // Reads the pending monitor events (when `events_ready`: pollitem() was readable) and,
  // at most once per check interval, the connection's silence, without blocking; true
  // when an established connection was lost since the last call.
  bool Lost(bool events_ready = true);

  // Stops the monitor; call before closing the watched socket.
  void Close();

 private:
  bool SilentTooLong();

  zmq::socket_t* watched_;
  zmq::socket_t monitor_;
  std::string url_;
  bool tcp_ = false;
  std::chrono::milliseconds window_{0};  // heartbeat x liveness; 0 = no heartbeats
  std::chrono::milliseconds check_interval_ = std::chrono::milliseconds::max();
  int connecting_fd_ = -1;  // from ZMQ_EVENT_CONNECTED, before the handshake
  bool established_ = false;
  TcpActivity activity_;  // the established connection's descriptor
  std::chrono::steady_clock::time_point next_check_{};
};

}  // namespace zerocan::internal
