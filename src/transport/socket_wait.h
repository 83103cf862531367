// SocketWait: one poll(2) over libzmq sockets and plain descriptors, for a thread that
// owns the sockets and loops "wait, then receive until nothing is left".
//
// zmq_poll asks every socket for ZMQ_EVENTS before and after sleeping, and sleeps twice
// (a first pass with no timeout): on a ping-pong that is about four system calls per
// socket per wake-up, more than the messages themselves cost. SocketWait sleeps once, on
// the sockets' notification descriptors (ZMQ_FD), and asks ZMQ_EVENTS only of sockets
// whose state it cannot know.
//
// ZMQ_FD signals a change, not a level: it becomes readable when commands arrive for a
// socket that has processed all of its earlier ones, and any libzmq call on the socket
// (a send, a connect, ZMQ_EVENTS) may process a command without delivering its message.
// So SocketWait tracks, per socket, whether it is *settled*: the last call on it was a
// receive that found nothing (libzmq then processed every command and put its readers
// to sleep, so the next message will signal the descriptor). The owner says so with
// Settled(); Touched() after anything else on the socket. Wait() asks ZMQ_EVENTS only of
// sockets that are not settled, and a socket whose descriptor fired is no longer settled
// until the owner has received from it until nothing was left. A socket starts not
// settled: a pipe attached by connect() signals nothing until a receive found it empty.
// An owner that cannot be sure its last receive ended on EAGAIN (a socket monitor read
// that may stop on an error) leaves the socket unsettled and lets Wait() ask: one
// ZMQ_EVENTS after each of its wake-ups.
//
// Wait() throws zmq::error_t as zmq_poll does (ETERM while the context shuts down), and
// on a descriptor that was closed under it.
//
// Not thread-safe: one thread (or the holder of the sockets' lock) uses it.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <span>
#include <vector>

#include <zmq.hpp>

namespace zerocan::internal {

class SocketWait {
 public:
  // As for zmq_poll, with ZMQ_POLLIN only: a libzmq socket (`socket`) or a plain
  // descriptor (`fd`). Sockets start not settled.
  explicit SocketWait(std::span<const zmq::pollitem_t> items);

  // Sleeps until an item may be readable or `timeout` passes (a negative timeout waits
  // without end). Returns how many items may be readable; readable() says which.
  int Wait(std::chrono::milliseconds timeout);

  // Item `index` may be readable since the last Wait: a descriptor is; a socket may have
  // a message (a receive that finds none is then harmless, and settles it).
  bool readable(size_t index) const { return readable_[index]; }

  // A receive on socket `index` found nothing (EAGAIN), and nothing was done with the
  // socket since.
  void Settled(size_t index) { settled_[index] = true; }
  // Something other than such a receive was done with socket `index` (a send, a
  // connect, an option read).
  void Touched(size_t index) { settled_[index] = false; }

 private:
  std::vector<void*> sockets_;  // null for a plain descriptor
  std::vector<pollfd> fds_;
  std::vector<bool> settled_;
  std::vector<bool> readable_;
};

}  // namespace zerocan::internal
