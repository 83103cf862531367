// Transport-neutral parts of the seam: Tracker, the payload hold every transport uses to
// release frames, and the in-process channel pair.
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "internal/testing.h"
#include "transport/payload_hold.h"
#include "zerocan/stats.h"
#include "zerocan/transport.h"

namespace zerocan {

// ---- Tracker -------------------------------------------------------------------------

bool Tracker::done() const noexcept {
  if (state_ == nullptr) return true;
  if (state_->pending.load(std::memory_order_acquire) != 0) return false;
  return !state_->rest || state_->rest(std::chrono::nanoseconds(0));
}

void Tracker::Wait() const {
  if (state_ == nullptr) return;
  for (uint32_t n = state_->pending.load(std::memory_order_acquire); n != 0;
       n = state_->pending.load(std::memory_order_acquire)) {
    state_->pending.wait(n, std::memory_order_acquire);
  }
  if (state_->rest) {
    while (!state_->rest(std::chrono::milliseconds(10))) {
    }
  }
}

bool Tracker::WaitFor(std::chrono::nanoseconds timeout) const {
  // std::atomic::wait has no timeout; poll with a short sleep (tracking waits are for
  // buffer reuse, not the hot path).
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (state_ != nullptr && state_->pending.load(std::memory_order_acquire) != 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  if (state_ == nullptr || !state_->rest) return true;
  while (true) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (state_->rest(std::max(std::chrono::nanoseconds(0),
                              std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(10))))) {
      return true;
    }
    if (left <= std::chrono::nanoseconds(0)) return false;
  }
}

namespace internal {

PayloadHold::PayloadHold(Buffer buffer, std::shared_ptr<Tracker::State> tracker) noexcept
    : buffer_(std::move(buffer)), tracker_(std::move(tracker)) {
  if (tracker_ != nullptr) tracker_->pending.fetch_add(1, std::memory_order_relaxed);
}

PayloadHold::~PayloadHold() {
  buffer_ = Buffer();  // drops the owner before the sender hears of the release
  Bump(GlobalStats().frames_released);
  if (tracker_ != nullptr && tracker_->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    tracker_->pending.notify_all();
  }
}

}  // namespace internal

// ---- the in-process pair ----------------------------------------------------------------

namespace {

// Received frames of an Outgoing: the envelope and trailer as they are, each payload
// frame behind a shared PayloadHold so that the receiver's last reference releases it.
ReceivedMessage HandOver(Outgoing&& message, const std::shared_ptr<Tracker::State>& tracker) {
  ReceivedMessage out;
  out.frames.push_back(message.TakeEnvelope());
  for (const Buffer& b : message.payload_frames()) {
    if (tracker == nullptr) {
      out.frames.push_back(b);
      continue;
    }
    auto hold = std::make_shared<internal::PayloadHold>(b, tracker);
    out.frames.push_back(Buffer(b.mutable_data(), b.size(), std::move(hold)));
  }
  if (!message.trailer().empty()) out.frames.push_back(message.trailer());
  return out;
}

struct Queue {
  std::mutex mu;
  std::condition_variable ready;
  std::deque<ReceivedMessage> messages;
};

class InProcessChannel final : public Channel {
 public:
  InProcessChannel(std::shared_ptr<Queue> in, std::shared_ptr<Queue> out)
      : in_(std::move(in)), out_(std::move(out)) {}

  Tracker Send(Outgoing&& message, std::span<const Buffer> routing) override {
    auto tracker = internal::NewTrackerState(message);
    ReceivedMessage received = HandOver(std::move(message), tracker);
    received.routing.assign(routing.begin(), routing.end());
    {
      std::lock_guard<std::mutex> lock(out_->mu);
      out_->messages.push_back(std::move(received));
    }
    out_->ready.notify_one();
    return Tracker(std::move(tracker));
  }

  std::optional<ReceivedMessage> Receive(std::chrono::milliseconds wait) override {
    std::unique_lock<std::mutex> lock(in_->mu);
    if (!in_->ready.wait_for(lock, wait, [&] { return !in_->messages.empty(); })) {
      return std::nullopt;
    }
    ReceivedMessage message = std::move(in_->messages.front());
    in_->messages.pop_front();
    return message;
  }

 private:
  std::shared_ptr<Queue> in_;
  std::shared_ptr<Queue> out_;
};

}  // namespace

std::pair<std::unique_ptr<Channel>, std::unique_ptr<Channel>> MakeInProcessPair() {
  auto a_to_b = std::make_shared<Queue>();
  auto b_to_a = std::make_shared<Queue>();
  return {std::make_unique<InProcessChannel>(b_to_a, a_to_b),
          std::make_unique<InProcessChannel>(a_to_b, b_to_a)};
}

ReceivedMessage LoopbackFrames(Outgoing&& outgoing) {
  return HandOver(std::move(outgoing), nullptr);
}

}  // namespace zerocan
