// TcpActivity: whether a tcp connection showed life lately, by the kernel's counters.
//
// libzmq's heartbeat timeout counts complete frames only, so a frame that takes longer
// than the window to cross a slow link looks like silence (the pong waits behind it).
// The kernel knows better: a connection is alive while bytes arrive from the peer, or
// while the peer acknowledges more of a frame of ours still being sent. A stopped process
// or a cut link does neither (a stopped peer's kernel acknowledges until its receive
// buffer is full; pings alone never count as sending). Read-only on a descriptor libzmq
// owns.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace zerocan::internal {

// TCP_INFO's counters of one connection.
struct TcpCounters {
  uint64_t bytes_acked = 0;     // of ours, by the peer
  uint64_t bytes_received = 0;  // from the peer, in order (some may wait in our queue)
  std::chrono::milliseconds since_data_received{0};
};
// The counters of tcp connection `fd`; nullopt when it is not one (or gone).
std::optional<TcpCounters> ReadTcpCounters(int fd);

class TcpActivity {
 public:
  using Clock = std::chrono::steady_clock;
  // Starts watching descriptor `fd` (a connected tcp socket); -1 = nothing to watch.
  void Watch(int fd, Clock::time_point now = Clock::now());
  int fd() const { return fd_; }
  // How long the connection has shown no life; nullopt when there is no descriptor or
  // the kernel cannot say (not tcp, closed). Look regularly (every check of the
  // window): progress seen is dated to the previous look.
  std::optional<std::chrono::milliseconds> Idle(Clock::time_point now = Clock::now());
  // The same from counters read already (ReadTcpCounters(fd())).
  std::chrono::milliseconds Idle(Clock::time_point now, const TcpCounters& counters);

 private:
  int fd_ = -1;
  uint64_t acked_ = 0;              // of our bytes, by the peer, at the last look
  Clock::time_point acked_moved_{};  // when that last grew (at the latest)
  Clock::time_point looked_{};       // the last look
};

}  // namespace zerocan::internal
