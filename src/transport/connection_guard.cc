// ConnectionGuard (connection_guard.h): per-connection judgement from TCP_INFO and SIOCINQ.
#include "transport/connection_guard.h"

#include <linux/sockios.h>  // SIOCINQ
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

// Bytes in tcp connection `fd`'s receive queue, not yet read by libzmq.
std::optional<uint64_t> Unread(int fd) {
  int unread = 0;
  if (ioctl(fd, SIOCINQ, &unread) != 0 || unread < 0) return std::nullopt;
  return static_cast<uint64_t>(unread);
}

// Below this rate since the last look, a connection holding bytes counts as stalled.
constexpr double kSendingBytesPerSecond = 256 * 1024;

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

size_t ConnectionGuard::Watch(zmq::socket_t& socket, std::string_view what, bool budgeted) {
  static std::atomic<uint64_t> n{0};
  std::string endpoint =
      absl::StrCat("inproc://zerocan-connections-", std::string(what), "-", getpid(), "-",
                   n.fetch_add(1));
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(),
                         ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
    throw TransportError(
        absl::StrCat("cannot monitor the connections of the ", std::string(what), " socket"));
  }
  zmq::socket_t monitor(*context_, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  // libzmq's I/O thread sends events with a blocking send: a bounded queue that nobody
  // reads for a while (a long inline call, a stop) would stall every connection.
  monitor.set(zmq::sockopt::rcvhwm, 0);
  monitor.connect(endpoint);
  for (size_t i = 0; i < watched_.size(); ++i) {
    if (watched_[i].socket != socket.handle()) continue;
    // Watched again after another bind: the old monitor reports nothing more.
    watched_[i].monitor = std::move(monitor);
    watched_[i].budgeted = budgeted;
    return i;
  }
  watched_.push_back({socket.handle(), std::move(monitor), budgeted});
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
      Connection& c = connections_[static_cast<int>(fd)];
      c = Connection{};
      c.generation = ++generations_;
      c.budgeted = watched.budgeted;
      c.delivered = kHandshakeAllowance;
      c.looked = now;
      c.activity.Watch(static_cast<int>(fd), now);
      if (max_bytes_ > 0 || idle_timeout_.count() > 0) {
        next_check_ = std::min(next_check_, now + kInterval);
      }
    } else if (event == ZMQ_EVENT_DISCONNECTED) {
      connections_.erase(static_cast<int>(fd));
      watched.closed = true;
    }
  }
}

ConnectionGuard::Closes ConnectionGuard::TakeCloses() {
  Closes since{closed_idle_ - reported_.idle, closed_over_budget_ - reported_.over_budget};
  reported_ = Closes{closed_idle_, closed_over_budget_};
  return since;
}

void ConnectionGuard::ReadAllEvents(Clock::time_point now) {
  for (Watched& w : watched_) ReadEvents(w, now);
}

void ConnectionGuard::Delivered(const Arrival& arrival) {
  if (arrival.fd < 0) return;  // inproc
  auto it = connections_.find(arrival.fd);
  if (it == connections_.end()) {
    // Read before its connection's event was: take the events now.
    ReadAllEvents(Clock::now());
    it = connections_.find(arrival.fd);
  }
  if (it != connections_.end()) it->second.delivered += arrival.wire_bytes;
}

void ConnectionGuard::Check(Clock::time_point now) {
  if ((max_bytes_ == 0 && idle_timeout_.count() <= 0) || now < next_check_) return;
  ReadAllEvents(now);
  struct Holder {
    Doomed who;
    uint64_t held;
    bool sending;  // took at least kSendingBytesPerSecond since the last look
  };
  std::vector<Holder> holders;
  std::vector<Doomed> idle;
  uint64_t total = 0;
  for (auto& [fd, c] : connections_) {
    if (!c.tcp) continue;
    std::optional<TcpCounters> counters = ReadTcpCounters(fd);
    std::optional<uint64_t> unread = counters ? Unread(fd) : std::nullopt;
    if (!unread) {
      c.tcp = false;  // ipc, or closed (its event follows)
      continue;
    }
    if (idle_timeout_.count() > 0 && c.activity.Idle(now, *counters) > idle_timeout_) {
      idle.push_back({fd, c.generation});  // stalled inside a frame, or gone
      continue;
    }
    uint64_t taken = counters->bytes_received - std::min(counters->bytes_received, *unread);
    bool moved = taken != c.taken;
    double seconds = std::chrono::duration<double>(now - c.looked).count();
    bool sending = taken > c.taken && static_cast<double>(taken - c.taken) >=
                                          kSendingBytesPerSecond * std::max(seconds, 1e-3);
    c.taken = taken;
    c.looked = now;
    // What was read from a connection came off it: a count above that is credit for
    // messages of an earlier connection with the same descriptor number.
    c.delivered = std::min(c.delivered, c.taken + kHandshakeAllowance);
    uint64_t held = c.taken > c.delivered ? c.taken - c.delivered : 0;
    if (!moved && held <= kCommandSlack) {
      c.delivered = std::max(c.delivered, c.taken);  // pings and pongs, not a frame
      held = 0;
    }
    if (held == 0 || !c.budgeted) continue;
    holders.push_back({{fd, c.generation}, held, sending});
    total += held;
  }
  closed_idle_ += idle.size();  // counted first: a peer may see its close at once
  std::vector<Doomed> doomed = std::move(idle);
  if (max_bytes_ > 0 && total > max_bytes_) {
    std::sort(holders.begin(), holders.end(), [](const Holder& a, const Holder& b) {
      return a.sending != b.sending ? !a.sending : a.held > b.held;
    });
    for (const Holder& h : holders) {
      if (total <= max_bytes_) break;
      doomed.push_back(h.who);
      ++closed_over_budget_;
      total -= h.held;
    }
  }
  Close(doomed, now);
  held_bytes_ = total;
  milliseconds interval =
      connections_.empty() ? milliseconds(1000)
      : max_bytes_ == 0    ? std::clamp(idle_timeout_ / 10, kInterval, milliseconds(1000))
      : total > max_bytes_ / 2 ? kIntervalNearBudget
                               : kInterval;
  next_check_ = now + interval;
}

void ConnectionGuard::Close(const std::vector<Doomed>& doomed, Clock::time_point now) {
  if (doomed.empty()) return;
  // libzmq owns the descriptors and closes each once it saw its peer leave (a disconnect
  // event then retires the entry). Events are read once more first: a connection closed
  // meanwhile, its number taken by a new one, must not be shut down in its place.
  ReadAllEvents(now);
  for (const Doomed& d : doomed) {
    auto it = connections_.find(d.fd);
    if (it == connections_.end() || it->second.generation != d.generation) continue;
    ::shutdown(d.fd, SHUT_RDWR);
    connections_.erase(it);
  }
}

}  // namespace zerocan::internal
