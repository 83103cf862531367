#include "zerocan/stats.h"

#include <mutex>
#include <vector>

#include "absl/algorithm/container.h"

namespace zerocan {
namespace {

// The live threads' counters. Leaked on purpose: threads may exit after static
// destruction has begun.
struct ThreadCounters {
  std::mutex mutex;
  std::vector<const internal::ThreadCounter*> live;
};
ThreadCounters& Live() {
  static auto* counters = new ThreadCounters;
  return *counters;
}

uint64_t LiveSum(const std::atomic<uint64_t>& shared) {
  ThreadCounters& t = Live();
  std::lock_guard<std::mutex> lock(t.mutex);
  uint64_t sum = shared.load(std::memory_order_relaxed);
  for (const internal::ThreadCounter* c : t.live) sum += c->count();
  return sum;
}

}  // namespace

namespace internal {

ThreadCounter::ThreadCounter(std::atomic<uint64_t>* shared) : shared_(shared) {
  ThreadCounters& t = Live();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.live.push_back(this);
}

ThreadCounter::~ThreadCounter() {
  ThreadCounters& t = Live();
  std::lock_guard<std::mutex> lock(t.mutex);
  shared_->fetch_add(count(), std::memory_order_relaxed);
  t.live.erase(absl::c_find(t.live, this));
}

}  // namespace internal

StatsSnapshot Stats::Snapshot() const noexcept {
  auto r = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  StatsSnapshot s;
  s.frames_sent_zero_copy = r(frames_sent_zero_copy);
  s.payloads_inlined = r(payloads_inlined);
  s.frames_released = r(frames_released);
  s.envelope_realigned = r(envelope_realigned);
  s.payload_realigned = r(payload_realigned);
  s.payload_converted = r(payload_converted);
  s.buffer_copies = r(buffer_copies);
  s.messages_decoded = LiveSum(messages_decoded);
  s.messages_rejected = r(messages_rejected);
  s.shared_refs_sent = r(shared_refs_sent);
  s.shared_bytes_copied = r(shared_bytes_copied);
  s.shared_fallbacks = r(shared_fallbacks);
  s.shared_refs_received = r(shared_refs_received);
  return s;
}

Stats& GlobalStats() noexcept {
  static Stats stats;
  return stats;
}

}  // namespace zerocan
