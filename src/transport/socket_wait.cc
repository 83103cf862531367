// SocketWait (socket_wait.h).
#include "transport/socket_wait.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>

namespace zerocan::internal {

SocketWait::SocketWait(std::span<const zmq::pollitem_t> items)
    : settled_(items.size(), false), readable_(items.size(), false) {
  for (const zmq::pollitem_t& item : items) {
    int fd = item.fd;
    if (item.socket != nullptr) {
      size_t size = sizeof(fd);
      if (zmq_getsockopt(item.socket, ZMQ_FD, &fd, &size) != 0) throw zmq::error_t();
    }
    sockets_.push_back(item.socket);
    fds_.push_back(pollfd{fd, POLLIN, 0});
  }
}

int SocketWait::Wait(std::chrono::milliseconds timeout) {
  int ready = 0;
  for (size_t i = 0; i < fds_.size(); ++i) {
    readable_[i] = false;
    if (sockets_[i] == nullptr || settled_[i]) continue;
    uint32_t events = 0;
    size_t size = sizeof(events);
    // (Fails as zmq_poll does: ETERM once the context is shutting down.)
    if (zmq_getsockopt(sockets_[i], ZMQ_EVENTS, &events, &size) != 0) throw zmq::error_t();
    if ((events & ZMQ_POLLIN) != 0) {
      readable_[i] = true;
      ++ready;
    } else {
      settled_[i] = true;  // ZMQ_EVENTS processed every command and found nothing
    }
  }
  int wait_ms = ready > 0 ? 0
                : timeout.count() < 0 ? -1
                : static_cast<int>(std::min<int64_t>(timeout.count(), INT_MAX));
  if (::poll(fds_.data(), fds_.size(), wait_ms) < 0) {
    if (errno != EINTR) throw zmq::error_t();
    return ready;  // (revents are not valid)
  }
  for (size_t i = 0; i < fds_.size(); ++i) {
    if ((fds_[i].revents & POLLNVAL) != 0) {  // a closed descriptor: never ready again
      errno = EBADF;
      throw zmq::error_t();
    }
    if ((fds_[i].revents & (POLLIN | POLLERR | POLLHUP)) == 0 || readable_[i]) continue;
    readable_[i] = true;
    if (sockets_[i] != nullptr) settled_[i] = false;  // commands wait for it
    ++ready;
  }
  return ready;
}

}  // namespace zerocan::internal
