// The transport seam: a message is an envelope plus owned byte ranges (Buffers), and a
// Channel moves such messages between two peers. Nothing here names a transport.
//
// Implementations: ZeroMQ (zerocan/transport/zmq.h, what engines, clients and brokers
// use) and an in-process pair (MakeInProcessPair, frames handed over as the very same
// Buffers). A transport owns how frames become its own units and back; it keeps the
// zero-copy contract: payload frames are never copied, and the sender's Tracker says when
// the transport (and, in process, the receiver) released them.
#pragma once

#include <atomic>
#include <functional>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>

#include "zerocan/buffer.h"
#include "zerocan/message.h"
#include "zerocan/writer.h"

namespace zerocan {

// Reports when the transport has released every payload frame of a send, so the caller
// may reuse or free borrowed buffers; for a call whose arguments went in shared memory
// (shared.h), also when its receivers let go of those blocks. Copyable; all copies
// observe the same send.
class Tracker {
 public:
  Tracker() = default;  // an already-done tracker
  bool done() const noexcept;
  // Blocks until done.
  void Wait() const;
  // Blocks until done or the timeout passes; returns done().
  bool WaitFor(std::chrono::nanoseconds timeout) const;

  struct State {
    // The count of payload frames not yet released. Transports share one per send.
    std::atomic<uint32_t> pending{0};
    // Set by a sender whose bytes stay in use beyond the frames (a call's arena blocks,
    // read in place until its receivers let go): waits at most the time given for that,
    // doing what progress needs (receiving the reply), and says whether it is over.
    // Called once the frames are released; must not throw.
    std::function<bool(std::chrono::nanoseconds)> rest;
  };
  explicit Tracker(std::shared_ptr<State> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<State> state_;
};

// One end of a connection that carries zerocan messages.
class Channel {
 public:
  virtual ~Channel() = default;

  // Sends `message` whole (envelope, payload frames, trailer). `routing` addresses the
  // peer on channels that route (a ZeroMQ ROUTER); others ignore it. Payload frames are
  // handed over without a copy; the Tracker is done when the transport released them.
  // Throws TransportError on failure.
  virtual Tracker Send(Outgoing&& message, std::span<const Buffer> routing = {}) = 0;

  // Receives one message, waiting at most `wait` (zero: only one already pending).
  // Returns nullopt when none arrived. Throws DecodeError for a message over the
  // channel's DecodeLimits, TransportError when the channel failed.
  virtual std::optional<ReceivedMessage> Receive(std::chrono::milliseconds wait) = 0;
};

// Two connected in-process channels: what one end sends, the other receives, each frame
// the same bytes as sent (envelope and payloads alike, no copy). A send's Tracker is done
// once the receiver has dropped every payload frame (and each Buffer sliced from one).
// Both ends may be used from different threads.
std::pair<std::unique_ptr<Channel>, std::unique_ptr<Channel>> MakeInProcessPair();

}  // namespace zerocan
