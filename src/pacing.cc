#include "zerocan/pacing.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>

namespace zerocan {

namespace {

bool IsLoopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr) && in6.sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

// Switches listener `fd` (from a LISTENING event) as BindUnpaced promises.
Unpacing UnpaceListener(int fd) {
  int protocol = 0;
  socklen_t plen = sizeof(protocol);
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &plen) != 0 || protocol != IPPROTO_TCP) {
    return Unpacing::kNoTcpListener;
  }
  sockaddr_storage local{};
  socklen_t llen = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) != 0) {
    return Unpacing::kNoTcpListener;
  }
  if (!IsLoopback(local)) return Unpacing::kNotLoopback;
  if (CongestionControl(fd).rfind("bbr", 0) != 0) return Unpacing::kNotPaced;
  static constexpr char kReno[] = "reno";
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, kReno, sizeof(kReno) - 1) != 0) {
    return Unpacing::kRefused;
  }
  return Unpacing::kSwitched;
}

}  // namespace

std::string_view UnpacingName(Unpacing u) {
  switch (u) {
    case Unpacing::kSwitched: return "switched to reno";
    case Unpacing::kNotPaced: return "not a pacing congestion control";
    case Unpacing::kNotLoopback: return "not a loopback address";
    case Unpacing::kNoTcpListener: return "not a tcp listener";
    case Unpacing::kRefused: return "reno refused";
    case Unpacing::kNotSeen: return "listener not seen";
  }
  return "?";
}

std::string CongestionControl(int fd) {
  char name[16] = {};  // TCP_CA_NAME_MAX in the kernel's headers
  socklen_t len = sizeof(name);
  if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0) return "";
  return std::string(name, strnlen(name, std::min<size_t>(len, sizeof(name))));
}

Unpacing BindUnpaced(zmq::context_t& context, zmq::socket_t& socket, const std::string& url) {
  if (url.rfind("tcp://", 0) != 0) {
    socket.bind(url);
    return Unpacing::kNoTcpListener;
  }
  // libzmq makes the listener inside bind(), on this thread, and reports it (with its
  // descriptor) to the monitor before bind() returns. A name of its own per call: a
  // stopped monitor's endpoint is released only later, by libzmq's reaper, so a second
  // bind of the same socket cannot reuse it.
  static std::atomic<uint64_t> calls{0};
  std::string endpoint = "inproc://zerocan-bind-" +
                         std::to_string(reinterpret_cast<uintptr_t>(socket.handle())) + "-" +
                         std::to_string(calls.fetch_add(1, std::memory_order_relaxed));
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(), ZMQ_EVENT_LISTENING) != 0) {
    socket.bind(url);  // no monitor to be had: bind as it is
    return Unpacing::kNotSeen;
  }
  // From here the monitor must go whatever happens: libzmq's monitor sends block, so one
  // left without its reader would hang the socket's next bind.
  struct StopMonitor {
    void* socket;
    ~StopMonitor() { zmq_socket_monitor(socket, nullptr, 0); }
  } stop{socket.handle()};
  std::optional<zmq::socket_t> monitor;
  try {
    monitor.emplace(context, zmq::socket_type::pair);
    monitor->set(zmq::sockopt::linger, 0);
    monitor->connect(endpoint);
  } catch (const zmq::error_t&) {
    monitor.reset();  // no reader (out of sockets?): bind as it is
  }
  socket.bind(url);  // throws as socket.bind does
  if (!monitor) return Unpacing::kNotSeen;
  // The socket is bound now: nothing below may throw (a caller would take it for a
  // failed bind). The event is queued already; the short wait only covers an inproc
  // pipe that has not been activated yet.
  try {
    zmq::pollitem_t item{monitor->handle(), 0, ZMQ_POLLIN, 0};
    auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (std::chrono::steady_clock::now() < give_up) {
      zmq::poll(&item, 1, std::chrono::milliseconds(20));
      // An event is two frames: 2 bytes of event and 4 of value (the descriptor), then
      // the endpoint.
      zmq::message_t head, address;
      if (!monitor->recv(head, zmq::recv_flags::dontwait)) continue;
      if (head.more()) (void)monitor->recv(address, zmq::recv_flags::dontwait);
      if (head.size() < 6) continue;
      uint16_t event;
      uint32_t value;
      std::memcpy(&event, head.data(), sizeof(event));
      std::memcpy(&value, static_cast<const char*>(head.data()) + 2, sizeof(value));
      if (event == ZMQ_EVENT_LISTENING) return UnpaceListener(static_cast<int>(value));
    }
  } catch (const zmq::error_t&) {
    // interrupted, or the context is ending: the bind stands, unswitched
  }
  return Unpacing::kNotSeen;
}

}  // namespace zerocan
