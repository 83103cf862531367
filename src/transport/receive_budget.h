// ReceiveBudget: one bound on the bytes that peers' messages hold inside libzmq before
// zerocan reads them (frames still arriving, complete messages not yet read), over all
// the tcp connections that the watched sockets accepted.
//
// libzmq reads whatever a peer sends into memory and has no such bound of its own; a
// peer that stalls inside a large frame holds what it sent until the idle timeout. The
// budget looks at each connection from outside: the kernel's count of bytes received on
// it (TCP_INFO) less those still in the kernel's queue is what libzmq has taken, and
// that less the wire bytes of the messages zerocan has read from it (Delivered) is what
// libzmq still holds. When the total is over the budget, connections are closed
// (shutdown(2) on libzmq's descriptor: libzmq sees the peer leave, drops the connection
// and frees what it held), those that sent nothing since the last look first, then the
// largest, until the rest fit. The bound is checked every 50 ms (every 10 ms once past
// half of it), so the peak can pass it by what arrives in one interval.
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

#include "zerocan/transport/zmq.h"

namespace zerocan::internal {

class ReceiveBudget {
 public:
  using Clock = std::chrono::steady_clock;

  // `max_bytes` 0: no budget; connections are still watched for closes.
  ReceiveBudget(zmq::context_t& context, uint64_t max_bytes);
  ~ReceiveBudget();
  ReceiveBudget(const ReceiveBudget&) = delete;
  ReceiveBudget& operator=(const ReceiveBudget&) = delete;

  // Watches the connections `socket` accepts from now on, replacing any monitor it had;
  // call again after each bind (binding with pacing.h's BindUnpaced replaces it).
  // Returns the socket's index for MonitorItem and TakeClosed. Throws TransportError.
  size_t Watch(zmq::socket_t& socket, std::string_view what);
  // For zmq::poll: readable when socket `index` has monitor events.
  zmq::pollitem_t MonitorItem(size_t index);
  // Whether a connection of socket `index` closed since the last call; reads its
  // monitor's events first when `readable` (its MonitorItem polled readable). Call it
  // after Check in each turn of the loop: Check reads the events too.
  bool TakeClosed(size_t index, bool readable, Clock::time_point now = Clock::now());

  // A message read from a watched socket (Receive's Arrival).
  void Delivered(const Arrival& arrival);

  // Looks at every connection when due (see above) and closes what is over the budget;
  // reads every monitor's events first, so that no descriptor it closes was reused.
  void Check(Clock::time_point now = Clock::now());
  Clock::time_point next_check() const { return next_check_; }

  uint64_t max_bytes() const { return max_bytes_; }
  // Bytes libzmq held for the watched connections at the last look.
  uint64_t held_bytes() const { return held_bytes_; }
  // Connections closed for the budget so far.
  uint64_t connections_closed() const { return closed_; }

 private:
  struct Connection {
    uint64_t delivered = 0;  // wire bytes of the messages read from it, plus allowances
    uint64_t taken = 0;      // bytes libzmq had taken from the kernel at the last look
    bool tcp = true;         // false once TCP_INFO failed (ipc): not budgeted
  };
  struct Watched {
    void* socket = nullptr;
    zmq::socket_t monitor;
    bool closed = false;  // a connection closed, not yet taken
  };

  void ReadEvents(Watched& watched, Clock::time_point now);
  void Close(int fd);

  zmq::context_t* context_;
  uint64_t max_bytes_;
  std::vector<Watched> watched_;
  absl::flat_hash_map<int, Connection> connections_;
  Clock::time_point next_check_ = Clock::time_point::max();
  uint64_t held_bytes_ = 0;
  uint64_t closed_ = 0;
};

}  // namespace zerocan::internal
