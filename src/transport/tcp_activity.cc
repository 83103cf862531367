// TcpActivity (tcp_activity.h): TCP_INFO's last_data_recv and bytes_acked.
#include "transport/tcp_activity.h"

#include <linux/sockios.h>  // SIOCOUTQ
#include <linux/tcp.h>      // tcp_info with tcpi_bytes_acked (glibc's lacks it)
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstddef>

namespace zerocan::internal {

std::optional<TcpCounters> ReadTcpCounters(int fd) {
  if (fd < 0) return std::nullopt;
  tcp_info info{};
  socklen_t size = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0 ||
      size < offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
    return std::nullopt;
  }
  return TcpCounters{info.tcpi_bytes_acked, info.tcpi_bytes_received,
                     std::chrono::milliseconds(info.tcpi_last_data_recv)};
}

void TcpActivity::Watch(int fd, Clock::time_point now) {
  fd_ = fd;
  acked_ = 0;
  acked_moved_ = now;
  looked_ = now;
}

std::optional<std::chrono::milliseconds> TcpActivity::Idle(Clock::time_point now) {
  std::optional<TcpCounters> counters = ReadTcpCounters(fd_);
  if (!counters) return std::nullopt;
  return Idle(now, *counters);
}

std::chrono::milliseconds TcpActivity::Idle(Clock::time_point now, const TcpCounters& counters) {
  // Sending counts only while more of ours waits in the send queue (a frame in
  // transit): a stopped peer's kernel still acknowledges a few bytes of pings, and
  // then our queue is empty again. The acknowledgement came some time after the
  // previous look: alive then, at least (counting it as now would let a stale count
  // hide a link cut since).
  int queued = 0;
  if (counters.bytes_acked != acked_ && ioctl(fd_, SIOCOUTQ, &queued) == 0 && queued > 0) {
    acked_moved_ = looked_;
  }
  acked_ = counters.bytes_acked;
  looked_ = now;
  auto since_sent = std::chrono::duration_cast<std::chrono::milliseconds>(now - acked_moved_);
  return std::min(counters.since_data_received, since_sent);
}

}  // namespace zerocan::internal
