// ConnectionWatch (connection_watch.h): a socket monitor over an inproc PAIR, and on tcp
// the kernel's view of the connection's silence.
#include "connection_watch.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace zerocan::internal {

namespace {
std::string MonitorEndpoint() {
  static std::atomic<uint64_t> n{0};
  return absl::StrCat("inproc://zerocan-watch-", getpid(), "-", n.fetch_add(1));
}
}  // namespace

ConnectionWatch::ConnectionWatch(zmq::context_t& context, zmq::socket_t& socket,
                                 const std::string& url, std::chrono::milliseconds heartbeat,
                                 int liveness)
    : watched_(&socket), url_(url), tcp_(absl::StartsWith(url, "tcp://")) {
  if (heartbeat.count() > 0) {
    int ivl = static_cast<int>(std::min<int64_t>(heartbeat.count(), 1 << 30));
    int window = static_cast<int>(std::min<int64_t>(int64_t{ivl} * std::max(liveness, 1), 1 << 30));
    window_ = std::chrono::milliseconds(window);
    check_interval_ = std::chrono::milliseconds(ivl);
    socket.set(zmq::sockopt::heartbeat_ivl, ivl);
    // On tcp, SilentTooLong() decides; libzmq's timeout (which a long frame would trip)
    // is only a far backstop there.
    socket.set(zmq::sockopt::heartbeat_timeout, tcp_ ? 1 << 30 : window);
    // The peer drops us when it hears nothing for this long (our pings flow meanwhile).
    socket.set(zmq::sockopt::heartbeat_ttl, std::min(window, 6553500));
  }
  std::string endpoint = MonitorEndpoint();
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(),
                         ZMQ_EVENT_CONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                             ZMQ_EVENT_DISCONNECTED) != 0) {
    throw zmq::error_t();
  }
  monitor_ = zmq::socket_t(context, zmq::socket_type::pair);
  monitor_.set(zmq::sockopt::linger, 0);
  monitor_.connect(endpoint);
}

ConnectionWatch::~ConnectionWatch() { Close(); }

void ConnectionWatch::Close() {
  if (monitor_.handle() == nullptr) return;
  if (watched_->handle() != nullptr) zmq_socket_monitor(watched_->handle(), nullptr, 0);
  monitor_.close();
}

bool ConnectionWatch::Lost(bool events_ready) {
  if (monitor_.handle() == nullptr) return false;
  bool lost = false;
  while (events_ready) {
    zmq::message_t event;
    zmq::recv_result_t got;
    try {
      got = monitor_.recv(event, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t&) {
      break;
    }
    if (!got) break;
    uint16_t id = 0;
    uint32_t value = 0;
    if (event.size() >= 6) {
      std::memcpy(&id, event.data(), sizeof(id));
      std::memcpy(&value, static_cast<const char*>(event.data()) + 2, sizeof(value));
    }
    while (event.more()) {  // the endpoint frame
      zmq::message_t rest;
      if (!monitor_.recv(rest, zmq::recv_flags::dontwait)) break;
      event = std::move(rest);
    }
    if (id == ZMQ_EVENT_CONNECTED) {
      connecting_fd_ = static_cast<int>(value);
    } else if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      established_ = true;
      activity_.Watch(connecting_fd_);
    } else if (id == ZMQ_EVENT_DISCONNECTED && established_ &&
               (activity_.fd() < 0 || static_cast<int>(value) == activity_.fd())) {
      established_ = false;
      activity_.Watch(-1);
      lost = true;
    }
  }
  if (!lost && SilentTooLong()) {
    // Drop the silent connection and dial again: later calls go to whatever answers at
    // url_ then. A connection closed this way reports no DISCONNECTED.
    established_ = false;
    activity_.Watch(-1);
    try {
      watched_->disconnect(url_);
      watched_->connect(url_);
    } catch (const zmq::error_t&) {
    }
    lost = true;
  }
  return lost;
}

bool ConnectionWatch::SilentTooLong() {
  if (!tcp_ || !established_ || window_.count() <= 0) return false;
  auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return false;
  next_check_ = now + check_interval_;
  std::optional<std::chrono::milliseconds> idle = activity_.Idle(now);
  return idle && *idle > window_;
}

}  // namespace zerocan::internal
