// ConnectionGuard: bounds what the tcp connections that a socket accepted may make this
// process hold, and for how long, judged from the kernel's counters.
//
// libzmq reads whatever a peer sends into memory and has no bound over all connections;
// its own idle timeout counts complete frames only, so it cuts an honest upload slower
// than the timeout as readily as a peer stalled inside a frame. The guard looks at each
// connection from outside (TCP_INFO and SIOCINQ on libzmq's descriptor):
//  - idle: a connection that showed no life for `idle_timeout` is closed: no byte came
//    from the peer and it acknowledged none of a frame of ours still being sent
//    (TcpActivity). Live peers answer ZMTP pings (the owner sets them: ApplyIdlePings),
//    so only a stalled or dead peer goes quiet; an upload still arriving, or a download
//    still being taken, however slowly, is never idle.
//  - budget: bytes received less those still in the kernel's queue is what libzmq took;
//    less the wire bytes of the messages read from the connection (Delivered), it is what
//    libzmq still holds (frames arriving, messages not yet read). When the connections of
//    the budgeted sockets together hold more than `max_bytes`, connections are closed,
//    those that sent less than 256 KiB/s since the last look first, then the largest,
//    until the rest fit.
// Closing is shutdown(2) on libzmq's descriptor: libzmq sees the peer leave, drops the
// connection and frees what it held. Checks run every 50 ms (every 10 ms once past half
// the budget), so the peak can pass the budget by what arrives in one interval. ipc
// connections are not watched (local peers, guarded by file permissions).
//
// Also the watched sockets' monitor (libzmq allows one per socket): it reports closed
// connections. Used by one thread (the owner's loop) after Watch.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <zmq.hpp>

#include "transport/tcp_activity.h"
#include "zerocan/limits.h"
#include "zerocan/transport/zmq.h"

namespace zerocan::internal {

// Sets ZMTP pings every third of `idle_timeout` on `socket`, with no libzmq timeout (a
// ConnectionGuard judges idleness); nothing when it is 0.
void ApplyIdlePings(zmq::socket_t& socket, std::chrono::milliseconds idle_timeout);

class ConnectionGuard {
 public:
  using Clock = std::chrono::steady_clock;

  // `max_bytes` (ConnectionLimits::receive_budget_bytes) and `idle_timeout` 0: no such
  // bound; connections are still watched for closes.
  ConnectionGuard(zmq::context_t& context, uint64_t max_bytes,
                  std::chrono::milliseconds idle_timeout);
  ~ConnectionGuard();
  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // Watches the connections `socket` accepts from now on, replacing any monitor it had;
  // call again after each bind (binding with pacing.h's BindUnpaced replaces it).
  // `budgeted`: its connections count against the receive budget (else only idleness
  // is judged). Returns the socket's index for MonitorItem and TakeClosed. Throws
  // TransportError.
  size_t Watch(zmq::socket_t& socket, std::string_view what, bool budgeted = true);
  // For zmq::poll: readable when socket `index` has monitor events.
  zmq::pollitem_t MonitorItem(size_t index);
  // Whether a connection of socket `index` closed since the last call; reads its
  // monitor's events first when `readable` (its MonitorItem polled readable). Call it
  // after Check in each turn of the loop: Check reads the events too.
  bool TakeClosed(size_t index, bool readable, Clock::time_point now = Clock::now());

  // A message read from a watched socket (Receive's Arrival).
  void Delivered(const Arrival& arrival);

  // Looks at every connection when due (see above) and closes the idle ones and what is
  // over the budget; reads every monitor's events first, so that no descriptor it closes
  // was reused.
  void Check(Clock::time_point now = Clock::now());
  Clock::time_point next_check() const { return next_check_; }

  // Bytes libzmq held for the watched connections at the last look.
  uint64_t held_bytes() const { return held_bytes_; }
  // Connections closed for the budget, and for idleness, so far.
  uint64_t closed_over_budget() const { return closed_over_budget_; }
  uint64_t closed_idle() const { return closed_idle_; }
  // Those closed since the last call, for the owner's counters.
  struct Closes {
    uint64_t idle = 0;
    uint64_t over_budget = 0;
  };
  Closes TakeCloses();

 private:
  struct Connection {
    uint64_t generation = 0;  // tells a reused descriptor number from the connection
    bool budgeted = true;     // of a budgeted socket
    bool tcp = true;          // false once TCP_INFO failed (ipc): not watched
    uint64_t delivered = 0;   // wire bytes of the messages read from it, plus allowances
    uint64_t taken = 0;       // bytes libzmq had taken from the kernel at the last look
    Clock::time_point looked{};
    TcpActivity activity;
  };
  struct Watched {
    void* socket = nullptr;
    zmq::socket_t monitor;
    bool budgeted = true;
    bool closed = false;  // a connection closed, not yet taken
  };
  struct Doomed {
    int fd;
    uint64_t generation;
  };

  void ReadEvents(Watched& watched, Clock::time_point now);
  void ReadAllEvents(Clock::time_point now);
  // Closes each connection still the one that was judged (its descriptor not reused).
  void Close(const std::vector<Doomed>& doomed, Clock::time_point now);

  zmq::context_t* context_;
  uint64_t max_bytes_;
  std::chrono::milliseconds idle_timeout_;
  std::vector<Watched> watched_;
  absl::flat_hash_map<int, Connection> connections_;
  uint64_t generations_ = 0;
  Clock::time_point next_check_ = Clock::time_point::max();
  uint64_t held_bytes_ = 0;
  uint64_t closed_over_budget_ = 0;
  uint64_t closed_idle_ = 0;
  Closes reported_;  // totals at the last TakeCloses
};

}  // namespace zerocan::internal
