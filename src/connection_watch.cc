// ConnectionWatch (connection_watch.h): a socket monitor over an inproc PAIR.
#include "connection_watch.h"

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace zerocan::internal {

namespace {
std::string MonitorEndpoint() {
  static std::atomic<uint64_t> n{0};
  return absl::StrCat("inproc://zerocan-watch-", getpid(), "-", n.fetch_add(1));
}
}  // namespace

ConnectionWatch::ConnectionWatch(zmq::context_t& context, zmq::socket_t& socket,
                                 std::chrono::milliseconds heartbeat, int liveness)
    : watched_(&socket) {
  if (heartbeat.count() > 0) {
    int ivl = static_cast<int>(std::min<int64_t>(heartbeat.count(), 1 << 30));
    int timeout = static_cast<int>(std::min<int64_t>(int64_t{ivl} * std::max(liveness, 1), 1 << 30));
    socket.set(zmq::sockopt::heartbeat_ivl, ivl);
    socket.set(zmq::sockopt::heartbeat_timeout, timeout);
    socket.set(zmq::sockopt::heartbeat_ttl, std::min(timeout, 6553500));
  }
  std::string endpoint = MonitorEndpoint();
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(),
                         ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0) {
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

bool ConnectionWatch::Lost() {
  if (monitor_.handle() == nullptr) return false;
  bool lost = false;
  while (true) {
    zmq::message_t event;
    zmq::recv_result_t got;
    try {
      got = monitor_.recv(event, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t&) {
      return lost;
    }
    if (!got) return lost;
    uint16_t id = 0;
    if (event.size() >= sizeof(id)) std::memcpy(&id, event.data(), sizeof(id));
    while (event.more()) {  // the endpoint frame
      zmq::message_t rest;
      if (!monitor_.recv(rest, zmq::recv_flags::dontwait)) break;
      event = std::move(rest);
    }
    if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      established_ = true;
    } else if (id == ZMQ_EVENT_DISCONNECTED && established_) {
      established_ = false;
      lost = true;
    }
  }
}

}  // namespace zerocan::internal
