// ConnectionGuard (connection_guard.h): per-connection accounting from TCP_INFO and SIOCINQ.
#include "transport/connection_guard.h"

#include <linux/sockios.h>  // SIOCINQ
#include <linux/tcp.h>      // tcp_info with tcpi_bytes_received (glibc's lacks it)
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include <absl/strings/str_cat.h>

#include "zerocan/error.h"

namespace zerocan::internal {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kInterval{50};
constexpr milliseconds kIntervalNearBudget{10};
// What a connection sends besides messages before the first one: the ZMTP greeting and
// handshake commands (a few hundred bytes; CurveZMQ's under 1 KiB) are credited up front.
constexpr uint64_t kHandshakeAllowance = 4096;
// Afterwards only ZMTP pings and pongs arrive besides messages, a few bytes every few
// seconds: a quiet connection holding no more than this is taken to hold nothing.
constexpr uint64_t kCommandSlack = 256;

struct Counters {
  uint64_t taken;                       // bytes libzmq has read from the connection
  std::chrono::milliseconds quiet;      // since a byte last arrived
};

// The kernel's counters of tcp connection `fd`; nullopt when it is not one (or gone).
std::optional<Counters> Read(int fd) {
  tcp_info info{};
  socklen_t size = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0 ||
      size < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
    return std::nullopt;
  }
  int unread = 0;
  if (ioctl(fd, SIOCINQ, &unread) != 0) return std::nullopt;
  return Counters{info.tcpi_bytes_received - std::min<uint64_t>(info.tcpi_bytes_received, unread),
                  milliseconds(info.tcpi_last_data_recv)};
}

}  // namespace

void ApplyIdlePings(zmq::socket_t& socket, milliseconds idle_timeout) {
  if (idle_timeout.count() <= 0) return;
  int ms = static_cast<int>(std::min<int64_t>(idle_timeout.count(), 1 << 30));
  socket.set(zmq::sockopt::heartbeat_ivl, std::max(ms / 3, 1));
  socket.set(zmq::sockopt::heartbeat_timeout, 1 << 30);  // the guard decides
}

ConnectionGuard::ConnectionGuard(zmq::context_t& context, uint64_t max_bytes,
                                 milliseconds idle_timeout)
    : context_(&context), max_bytes_(max_bytes), idle_timeout_(idle_timeout) {}

ConnectionGuard::~ConnectionGuard() {
  for (Watched& w : watched_) {
    zmq_socket_monitor(w.socket, nullptr, 0);
    w.monitor.close();
  }
}

size_t ConnectionGuard::Watch(zmq::socket_t& socket, std::string_view what) {
  static std::atomic<uint64_t> n{0};
  std::string endpoint =
      absl::StrCat("inproc://zerocan-connections-", std::string(what), "-", getpid(), "-", n.fetch_add(1));
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(),
                         ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    throw TransportError(absl::StrCat("cannot monitor the connections of the ", std::string(what), " socket"));
  }
  zmq::socket_t monitor(*context_, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  monitor.connect(endpoint);
  for (size_t i = 0; i < watched_.size(); ++i) {
    if (watched_[i].socket != socket.handle()) continue;
    // Watched again after another bind: the old monitor reports nothing more.
    watched_[i].monitor = std::move(monitor);
    return i;
  }
  watched_.push_back({socket.handle(), std::move(monitor)});
  return watched_.size() - 1;
}

zmq::pollitem_t ConnectionGuard::MonitorItem(size_t index) {
  return {watched_[index].monitor.handle(), 0, ZMQ_POLLIN, 0};
}

bool ConnectionGuard::TakeClosed(size_t index, bool readable, Clock::time_point now) {
  Watched& w = watched_[index];
  if (readable) ReadEvents(w, now);
  return std::exchange(w.closed, false);
}

void ConnectionGuard::ReadEvents(Watched& watched, Clock::time_point now) {
  while (true) {
    // An event: [event (uint16) | value (uint32, the descriptor)] [endpoint].
    zmq::message_t head, address;
    try {
      if (!watched.monitor.recv(head, zmq::recv_flags::dontwait)) return;
      if (head.more() && !watched.monitor.recv(address, zmq::recv_flags::dontwait)) return;
    } catch (const zmq::error_t&) {
      return;
    }
    if (head.size() < 6) continue;
    uint16_t event;
    uint32_t fd;
    std::memcpy(&event, head.data(), sizeof(event));
    std::memcpy(&fd, static_cast<const char*>(head.data()) + 2, sizeof(fd));
    if (event == ZMQ_EVENT_ACCEPTED) {
      // A descriptor number is reused once libzmq closed it; this is a new connection.
      connections_[static_cast<int>(fd)] = Connection{kHandshakeAllowance, 0, true};
      if (max_bytes_ > 0 || idle_timeout_.count() > 0) {
        next_check_ = std::min(next_check_, now + kInterval);
      }
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
      connections_.erase(static_cast<int>(fd));
      watched.closed = true;
    }
  }
}

void ConnectionGuard::Delivered(const Arrival& arrival) {
  auto it = connections_.find(arrival.fd);
  if (it != connections_.end()) it->second.delivered += arrival.wire_bytes;
}

void ConnectionGuard::Check(Clock::time_point now) {
  if ((max_bytes_ == 0 && idle_timeout_.count() <= 0) || now < next_check_) return;
  for (Watched& w : watched_) ReadEvents(w, now);
  struct Holder {
    int fd;
    uint64_t held;
    bool sending;  // took more bytes since the last look
  };
  std::vector<Holder> holders;
  std::vector<int> idle;
  uint64_t total = 0;
  for (auto& [fd, c] : connections_) {
    if (!c.tcp) continue;
    std::optional<Counters> counters = Read(fd);
    if (!counters) {
      c.tcp = false;  // ipc, or closed (its event follows)
      continue;
    }
    if (idle_timeout_.count() > 0 && counters->quiet > idle_timeout_) {
      idle.push_back(fd);  // not even a pong: stalled inside a frame, or gone
      continue;
    }
    bool sending = counters->taken != c.taken;
    c.taken = counters->taken;
    uint64_t held = c.taken > c.delivered ? c.taken - c.delivered : 0;
    if (!sending && held <= kCommandSlack) {
      c.delivered = std::max(c.delivered, c.taken);  // pings and pongs, not a frame
      held = 0;
    }
    if (held == 0) continue;
    holders.push_back({fd, held, sending});
    total += held;
  }
  for (int fd : idle) {
    ++closed_idle_;
    Close(fd);
  }
  if (max_bytes_ > 0 && total > max_bytes_) {
    std::sort(holders.begin(), holders.end(), [](const Holder& a, const Holder& b) {
      return a.sending != b.sending ? !a.sending : a.held > b.held;
    });
    for (const Holder& h : holders) {
      if (total <= max_bytes_) break;
      ++closed_over_budget_;
      Close(h.fd);
      total -= h.held;
    }
  }
  held_bytes_ = total;
  milliseconds interval =
      connections_.empty() ? milliseconds(1000)
      : max_bytes_ == 0    ? std::clamp(idle_timeout_ / 10, kInterval, milliseconds(1000))
      : total > max_bytes_ / 2 ? kIntervalNearBudget
                               : kInterval;
  next_check_ = now + interval;
}

void ConnectionGuard::Close(int fd) {
  // libzmq owns the descriptor and closes it once it saw the peer leave (its disconnect
  // event then retires the entry); until then the number cannot be reused.
  ::shutdown(fd, SHUT_RDWR);
  connections_.erase(fd);
}

}  // namespace zerocan::internal
