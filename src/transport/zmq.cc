// The ZeroMQ transport (zerocan/transport/zmq.h): Buffers to libzmq frames and back.
#include "zerocan/transport/zmq.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "internal/block_cache.h"
#include "transport/payload_hold.h"
#include "transport/tsan_zmq.h"
#include "zerocan/stats.h"

namespace zerocan {
namespace {

// libzmq's free callback for frames built over a PayloadHold or a plain held Buffer.
void ReleasePayload(void* /*data*/, void* hint) noexcept {
  delete static_cast<internal::PayloadHold*>(hint);
}
void ReleaseBuffer(void* /*data*/, void* hint) noexcept { delete static_cast<Buffer*>(hint); }

// A frame over bytes held by `hold` (deleted by `release` when libzmq is done, or here
// if libzmq cannot take it).
template <class Hold>
zmq::message_t FrameOver(void* data, size_t size, Hold* hold, zmq_free_fn* release) {
  zmq::message_t frame;
  // zmq_msg_init_data only fails on allocation failure; then it has not taken the hint.
  if (zmq_msg_init_data(frame.handle(), data, size, release, hold) != 0) {
    release(data, hold);
    throw TransportError("zmq_msg_init_data failed: out of memory");
  }
  return frame;
}

// A payload frame: never copied; released through a PayloadHold (counts the tracker).
zmq::message_t PayloadFrame(const Buffer& buffer, const std::shared_ptr<Tracker::State>& tracker) {
  if (buffer.empty()) return zmq::message_t();
  auto* hold = new internal::PayloadHold(buffer, tracker);
  zmq::message_t frame = FrameOver(buffer.mutable_data(), buffer.size(), hold, &ReleasePayload);
  Bump(GlobalStats().frames_sent_zero_copy);
  return frame;
}

// Any other frame (an envelope, a forwarded or captured frame): copied when short
// (cheaper than a zero-copy frame's two allocations, and libzmq copies short frames
// into its batch anyway), else handed over holding its Buffer.
zmq::message_t FrameOf(const Buffer& buffer) {
  if (buffer.size() < Outgoing::kEnvelopeCopyBelow) {
    return zmq::message_t(buffer.data(), buffer.size());
  }
  return FrameOver(buffer.mutable_data(), buffer.size(), new Buffer(buffer), &ReleaseBuffer);
}

using Parts = absl::InlinedVector<zmq::message_t, 8>;

// Sends every part as one multipart message. Every part is built before the first is
// sent, so a failure cannot leave half a message on the socket; parts not handed to
// libzmq are released by their destructors. Reports whether libzmq refused the message
// with EAGAIN or EHOSTUNREACH (nothing was sent).
enum class Sent { kSent, kWouldBlock, kUnreachable };
Sent SendParts(zmq::socket_t& socket, Parts& parts, zmq::send_flags flags) {
  internal::TsanBeforeZmqSend();  // every byte of the message is written
  try {
    for (size_t i = 0; i < parts.size(); ++i) {
      auto more = i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      if (!socket.send(parts[i], more | flags)) return Sent::kWouldBlock;
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return Sent::kUnreachable;
    throw TransportError(absl::StrCat("send failed: ", e.what()));
  }
  return Sent::kSent;
}

void AddRouting(Parts& parts, std::span<const Buffer> routing) {
  for (const Buffer& r : routing) parts.emplace_back(r.data(), r.size());
  parts.emplace_back();  // empty delimiter
}

// The parts of one received message, kept together: each received frame is a Buffer over
// its part, sharing this holder. Parts are not moved once the Buffers exist (libzmq keeps
// short frames inside the zmq::message_t itself).
struct ReceivedParts {
  absl::InlinedVector<zmq::message_t, 4> parts;
};

Buffer BufferOver(zmq::message_t& part, const std::shared_ptr<ReceivedParts>& holder) {
  if (part.size() == 0) return Buffer();
  return Buffer(static_cast<std::byte*>(part.data()), part.size(), holder);
}

// Bytes a frame of `size` bytes takes on the wire (ZMTP 3: a flags byte and a 1-byte
// size up to 255, else an 8-byte one). CurveZMQ sends each frame as a MESSAGE command
// whose body is the command name (8), a nonce (8), the box's MAC (16), a flags byte and
// the frame.
uint64_t WireBytes(uint64_t size, bool curve) {
  if (curve) size += 8 + 8 + 16 + 1;
  return size + (size > 255 ? 9 : 2);
}

}  // namespace

Tracker Send(zmq::socket_t& socket, Outgoing&& message, std::span<const Buffer> routing) {
  auto tracker = internal::NewTrackerState(message);
  Parts parts;
  AddRouting(parts, routing);
  parts.push_back(FrameOf(message.TakeEnvelope()));
  for (const Buffer& b : message.payload_frames()) parts.push_back(PayloadFrame(b, tracker));
  if (!message.trailer().empty()) parts.push_back(FrameOf(message.trailer()));
  switch (SendParts(socket, parts, zmq::send_flags::none)) {
    case Sent::kSent: break;
    case Sent::kWouldBlock:
      throw TransportError("send failed: no connected peer could take the message now "
                           "(nothing connected yet, or a failed handshake)");
    case Sent::kUnreachable:
      throw TransportError("send failed: no peer with that routing id is connected");
  }
  return Tracker(std::move(tracker));
}

bool SendFrames(zmq::socket_t& socket, std::span<const Buffer> routing,
                std::span<const Buffer> frames, zmq::send_flags flags) {
  Parts parts;
  AddRouting(parts, routing);
  for (const Buffer& f : frames) parts.push_back(FrameOf(f));
  return SendParts(socket, parts, flags) == Sent::kSent;
}

std::optional<ReceivedMessage> Receive(zmq::socket_t& socket, const DecodeLimits& limits,
                                       zmq::recv_flags flags, bool expect_routing,
                                       Arrival* arrival) {
  auto receive = [&socket](zmq::message_t& part, zmq::recv_flags f) {
    try {
      return socket.recv(part, f).has_value();
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("receive failed: ", e.what()));
    }
  };
  // Nothing is allocated until a message is there: a loop that drains a socket ends
  // with one receive that finds it empty.
  zmq::message_t part;
  if (!receive(part, flags)) return std::nullopt;
  // Allocated from this thread's block cache: a server receives message after message.
  auto holder = std::allocate_shared<ReceivedParts>(internal::CachingAllocator<ReceivedParts>());
  size_t routing_count = 0;
  bool delimiter_seen = false;
  bool first = true;
  std::string problem;
  DecodeError::Code code = DecodeError::Code::kMalformed;
  uint64_t total = 0;
  auto reject = [&](DecodeError::Code c, std::string what) {
    if (problem.empty()) {
      code = c;
      problem = std::move(what);
    }
  };
  auto& parts = holder->parts;
  // Once a problem is found the rest of the message is still drained (and dropped), so
  // the next Receive starts at a message boundary.
  while (true) {
    if (!first && !receive(part, zmq::recv_flags::none)) {
      throw TransportError("receive interrupted in the middle of a multipart message");
    }
    internal::TsanAfterZmqReceive();  // before anything reads the part's bytes
    const bool more = part.more();
    const size_t size = part.size();
    if (arrival != nullptr) {
      // A ROUTER's first part (the peer's routing id) was added here, not sent.
      if (!(first && expect_routing)) arrival->wire_bytes += WireBytes(size, arrival->curve);
      // Asked of the last part, which always came over the connection (a ROUTER's
      // routing id may carry no metadata); libzmq answers with a lookup in it.
      if (!more) arrival->fd = zmq_msg_get(part.handle(), ZMQ_SRCFD);
    }
    first = false;
    if (!problem.empty()) {
      // draining
    } else if (!delimiter_seen) {
      if (size == 0) {
        delimiter_seen = true;
      } else if (!expect_routing) {
        reject(DecodeError::Code::kMalformed,
               absl::StrCat("frame 0 has ", size,
                            " bytes; expected the empty delimiter before the envelope"));
      } else if (routing_count >= limits.max_routing_frames) {
        reject(DecodeError::Code::kLimitExceeded,
               absl::StrCat("more than max_routing_frames ", limits.max_routing_frames,
                            " routing frames before the delimiter"));
      } else {
        parts.push_back(std::move(part));
        ++routing_count;
      }
    } else if (parts.size() - routing_count >= limits.max_frames) {
      reject(DecodeError::Code::kLimitExceeded,
             absl::StrCat("message has more than max_frames ", limits.max_frames, " frames"));
    } else if ((total += size) > limits.max_message_bytes) {
      reject(DecodeError::Code::kLimitExceeded,
             absl::StrCat("message exceeds max_message_bytes ", limits.max_message_bytes));
    } else {
      parts.push_back(std::move(part));
    }
    if (!more) break;
  }
  if (problem.empty() && !delimiter_seen) {
    reject(DecodeError::Code::kMalformed, "message ended before the empty delimiter");
  }
  if (problem.empty() && parts.size() == routing_count) {
    reject(DecodeError::Code::kMalformed, "message has no envelope frame after the delimiter");
  }
  if (!problem.empty()) {
    Bump(GlobalStats().messages_rejected);
    throw DecodeError(code, problem);
  }
  ReceivedMessage out;
  for (size_t i = 0; i < parts.size(); ++i) {
    (i < routing_count ? out.routing.push_back(BufferOver(parts[i], holder))
                       : out.frames.push_back(BufferOver(parts[i], holder)));
  }
  return out;
}

void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits) {
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limits.max_frame_bytes));
}

void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits,
                 const ConnectionLimits& connections) {
  ApplyLimits(socket, limits);
  auto ms = [](std::chrono::milliseconds d) {
    return static_cast<int>(std::clamp<int64_t>(d.count(), 0, 1 << 30));
  };
  socket.set(zmq::sockopt::handshake_ivl, ms(connections.handshake_timeout));
  if (connections.idle_timeout.count() > 0) {
    // libzmq cancels the timeout when any complete frame arrives (a message or a pong),
    // so a peer stalled inside a frame is cut after at most ivl + timeout.
    socket.set(zmq::sockopt::heartbeat_ivl, std::max(ms(connections.idle_timeout) / 3, 1));
    socket.set(zmq::sockopt::heartbeat_timeout, ms(connections.idle_timeout));
  }
  socket.set(zmq::sockopt::rcvhwm, std::max(connections.max_queued_messages, 0));
}

// ---- ZmqChannel ------------------------------------------------------------------------

ZmqChannel::ZmqChannel(zmq::socket_t& socket, DecodeLimits limits, bool routed)
    : socket_(&socket), limits_(limits), routed_(routed) {}

Tracker ZmqChannel::Send(Outgoing&& message, std::span<const Buffer> routing) {
  return zerocan::Send(*socket_, std::move(message), routed_ ? routing : std::span<const Buffer>());
}

std::optional<ReceivedMessage> ZmqChannel::Receive(std::chrono::milliseconds wait) {
  if (wait.count() > 0) {
    zmq::pollitem_t item{socket_->handle(), 0, ZMQ_POLLIN, 0};
    try {
      if (zmq::poll(&item, 1, wait) == 0) return std::nullopt;
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("poll failed: ", e.what()));
    }
  }
  return zerocan::Receive(*socket_, limits_, zmq::recv_flags::dontwait, routed_);
}

// ---- live capture sockets ----------------------------------------------------------------

void PublishCaptured(zmq::socket_t& pub, const ReceivedMessage& message, Direction direction,
                     std::string_view source) {
  std::string tag = CaptureTag(direction, 0, source);
  Parts parts;
  parts.emplace_back(tag.data(), tag.size());
  AddRouting(parts, message.routing);
  for (const Buffer& f : message.frames) parts.push_back(FrameOf(f));
  try {
    // PUB drops the whole message when its queue is full.
    SendParts(pub, parts, zmq::send_flags::dontwait);
  } catch (const TransportError& e) {
    throw TransportError(absl::StrCat("publishing to the capture socket failed: ", e.what()));
  }
}

std::optional<CaptureRecord> ReceiveCaptured(zmq::socket_t& sub, int timeout_ms,
                                             const CaptureLimits& limits) {
  auto holder = std::make_shared<ReceivedParts>();
  try {
    zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return std::nullopt;
    bool more = true;
    while (more) {
      zmq::message_t part;
      if (!sub.recv(part, zmq::recv_flags::none)) return std::nullopt;
      more = part.more();
      // The tag frame does not count against the message's frames.
      if (holder->parts.size() <= limits.max_frames) holder->parts.push_back(std::move(part));
    }
  } catch (const zmq::error_t& e) {
    throw TransportError(absl::StrCat("receiving from the capture socket failed: ", e.what()));
  }
  std::vector<Buffer> frames;
  frames.reserve(holder->parts.size());
  for (zmq::message_t& part : holder->parts) frames.push_back(BufferOver(part, holder));
  return RecordFromCaptureFrames(frames);
}

}  // namespace zerocan
