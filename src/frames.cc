#include "zerocan/frames.h"


#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tsan_zmq.h"
#include "zerocan/stats.h"

namespace zerocan {

// ---- Tracker -------------------------------------------------------------------------

bool Tracker::done() const noexcept {
  return state_ == nullptr || state_->pending.load(std::memory_order_acquire) == 0;
}

void Tracker::Wait() const {
  if (state_ == nullptr) return;
  for (uint32_t n = state_->pending.load(std::memory_order_acquire); n != 0;
       n = state_->pending.load(std::memory_order_acquire)) {
    state_->pending.wait(n, std::memory_order_acquire);
  }
}

bool Tracker::WaitFor(std::chrono::nanoseconds timeout) const {
  // std::atomic::wait has no timeout; poll with a short sleep (tracking waits are for
  // buffer reuse, not the hot path).
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  return true;
}

namespace internal {

// What a zero-copy frame keeps alive until libzmq is done with it. Deleted by the free
// callback on libzmq's I/O thread (or on the sending thread if the send fails): it drops
// one reference and decrements the tracker, nothing else.
struct FrameHold {
  Buffer buffer;
  std::shared_ptr<Tracker::State> tracker;
};

void ReleaseFrame(void* /*data*/, void* hint) noexcept {
  auto* hold = static_cast<FrameHold*>(hint);
  std::shared_ptr<Tracker::State> tracker = std::move(hold->tracker);
  delete hold;  // drops the buffer's owner
  Bump(GlobalStats().frames_released);
  if (tracker != nullptr && tracker->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    tracker->pending.notify_all();
  }
}

void ReleaseEnvelope(void* /*data*/, void* hint) noexcept { delete static_cast<FrameHold*>(hint); }

// A frame over `buffer`'s bytes, without a copy: `release` (ReleaseFrame or
// ReleaseEnvelope) drops the hold when libzmq is done, or here if it cannot take it.
zmq::message_t FrameOver(Buffer buffer, std::shared_ptr<Tracker::State> tracker, zmq_free_fn* release) {
  void* data = buffer.mutable_data();
  size_t size = buffer.size();
  auto* hold = new FrameHold{std::move(buffer), std::move(tracker)};
  zmq::message_t frame;
  // zmq_msg_init_data only fails on allocation failure; then it has not taken the hint.
  if (zmq_msg_init_data(frame.handle(), data, size, release, hold) != 0) {
    release(data, hold);
    throw TransportError("zmq_msg_init_data failed: out of memory");
  }
  return frame;
}

zmq::message_t ZeroCopyFrame(Buffer buffer, const std::shared_ptr<Tracker::State>& tracker) {
  if (buffer.size() == 0) return zmq::message_t();
  if (tracker != nullptr) tracker->pending.fetch_add(1, std::memory_order_relaxed);
  zmq::message_t frame = FrameOver(std::move(buffer), tracker, &ReleaseFrame);
  Bump(GlobalStats().frames_sent_zero_copy);
  return frame;
}

// The envelope as a frame: copied when small (cheaper than a zero-copy frame's two
// allocations, and libzmq copies small frames into its batch anyway), else handed over
// like a payload, without a tracker and without counting as a payload frame.
zmq::message_t EnvelopeFrame(Buffer envelope) {
  if (envelope.size() < Outgoing::kEnvelopeCopyBelow) {
    return zmq::message_t(envelope.data(), envelope.size());
  }
  return FrameOver(std::move(envelope), nullptr, &ReleaseEnvelope);
}

}  // namespace internal

namespace internal {

// Sends [routing...] [] [envelope] [payload frames...] [trailer]? as one multipart
// message. Every frame is built before the first is sent, so a failure cannot leave half
// a message on the socket.
Tracker SendFrames(zmq::socket_t& socket, Outgoing&& message,
                   absl::InlinedVector<zmq::message_t, 2>* routing) {
  auto tracker = message.payload_frames().empty() ? nullptr
                                                  : std::make_shared<Tracker::State>();
  absl::InlinedVector<zmq::message_t, 8> frames;
  if (routing != nullptr) {
    for (auto& r : *routing) frames.push_back(std::move(r));
  }
  frames.emplace_back();  // empty delimiter
  frames.push_back(EnvelopeFrame(message.TakeEnvelope()));
  for (const Buffer& b : message.payload_frames()) {
    frames.push_back(ZeroCopyFrame(b, tracker));
  }
  if (!message.trailer().empty()) {
    frames.emplace_back(message.trailer().data(), message.trailer().size());  // a signature: small
  }
  TsanBeforeZmqSend();  // every byte of the message is written
  try {
    for (size_t i = 0; i < frames.size(); ++i) {
      auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      socket.send(frames[i], flags);
    }
  } catch (const zmq::error_t& e) {
    // Frames not handed to libzmq are released here (their destructors run callbacks).
    throw TransportError(absl::StrCat("send failed: ", e.what()));
  }
  return Tracker(std::move(tracker));
}

}  // namespace internal

Tracker Send(zmq::socket_t& socket, Outgoing&& message,
             absl::InlinedVector<zmq::message_t, 2>* routing) {
  return internal::SendFrames(socket, std::move(message), routing);
}

std::optional<ReceivedMessage> Receive(zmq::socket_t& socket, const DecodeLimits& limits,
                                       zmq::recv_flags flags, bool expect_routing) {
  ReceivedMessage out;
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
  // Once a problem is found the rest of the message is still drained (and dropped), so
  // the next Receive starts at a message boundary.
  while (true) {
    zmq::message_t part;
    zmq::recv_result_t got;
    try {
      got = socket.recv(part, first ? flags : zmq::recv_flags::none);
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("receive failed: ", e.what()));
    }
    if (!got) {
      if (first) return std::nullopt;
      throw TransportError("receive interrupted in the middle of a multipart message");
    }
    internal::TsanAfterZmqReceive();  // before anything reads the part's bytes
    first = false;
    bool more = part.more();
    if (!problem.empty()) {
      // draining
    } else if (!delimiter_seen) {
      if (part.size() == 0) {
        delimiter_seen = true;
      } else if (!expect_routing) {
        reject(DecodeError::Code::kMalformed,
               absl::StrCat("frame 0 has ", part.size(),
                            " bytes; expected the empty delimiter before the envelope"));
      } else if (out.routing.size() >= limits.max_routing_frames) {
        reject(DecodeError::Code::kLimitExceeded,
               absl::StrCat("more than max_routing_frames ", limits.max_routing_frames,
                            " routing frames before the delimiter"));
      } else {
        out.routing.push_back(std::move(part));
      }
    } else if (out.frames.size() >= limits.max_frames) {
      reject(DecodeError::Code::kLimitExceeded,
             absl::StrCat("message has more than max_frames ", limits.max_frames, " frames"));
    } else if ((total += part.size()) > limits.max_message_bytes) {
      reject(DecodeError::Code::kLimitExceeded,
             absl::StrCat("message exceeds max_message_bytes ", limits.max_message_bytes));
    } else {
      out.frames.push_back(std::move(part));
    }
    if (!more) break;
  }
  if (problem.empty() && !delimiter_seen) {
    reject(DecodeError::Code::kMalformed, "message ended before the empty delimiter");
  }
  if (problem.empty() && out.frames.empty()) {
    reject(DecodeError::Code::kMalformed, "message has no envelope frame after the delimiter");
  }
  if (!problem.empty()) {
    Bump(GlobalStats().messages_rejected);
    throw DecodeError(code, problem);
  }
  return out;
}

void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits) {
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limits.max_frame_bytes));
}

}  // namespace zerocan

namespace zerocan {

ReceivedMessage LoopbackFrames(Outgoing&& outgoing) {
  ReceivedMessage out;
  out.envelope_owner = outgoing.TakeEnvelope();
  // A constant frame (no free function): libzmq neither allocates nor counts references
  // for it; envelope_owner keeps the bytes alive as long as the frame.
  out.frames.emplace_back(out.envelope_owner.mutable_data(), out.envelope_owner.size(), nullptr);
  for (const Buffer& b : outgoing.payload_frames()) {
    out.frames.push_back(internal::ZeroCopyFrame(b, nullptr));
  }
  if (!outgoing.trailer().empty()) {
    out.frames.emplace_back(outgoing.trailer().data(), outgoing.trailer().size());
  }
  return out;
}

FrameList DetachFrames(ReceivedMessage&& received) {
  FrameList frames = std::move(received.frames);
  if (!received.envelope_owner.empty() && !frames.empty()) {
    frames[0] = zmq::message_t(frames[0].data(), frames[0].size());
  }
  return frames;
}

}  // namespace zerocan
