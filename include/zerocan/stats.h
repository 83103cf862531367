// Process-wide counters that make copies and zero-copy sends visible to tests,
// benchmarks and tools. Relaxed atomics: cheap to bump, read as a snapshot.
#pragma once

#include <atomic>
#include <cstdint>

namespace zerocan {

struct StatsSnapshot {
  uint64_t frames_sent_zero_copy = 0;   // payload frames handed to libzmq without a copy
  uint64_t payloads_inlined = 0;        // payloads copied into an envelope
  uint64_t frames_released = 0;         // zero-copy frames whose free callback ran
  uint64_t envelope_realigned = 0;      // received envelopes copied for word alignment
  uint64_t payload_realigned = 0;       // received tensors copied for element alignment
  uint64_t payload_converted = 0;       // received tensors widened or byte-swapped (a copy)
  uint64_t buffer_copies = 0;           // explicit Buffer::CopyOf calls
  uint64_t messages_decoded = 0;
  uint64_t messages_rejected = 0;       // decode errors
  // Shared memory (shared.h): payloads sent as references into an arena, the bytes
  // copied into an arena to send them so (ordinary memory: one copy), payloads that
  // fell back to frames because the arena was full, and references received.
  uint64_t shared_refs_sent = 0;
  uint64_t shared_bytes_copied = 0;
  uint64_t shared_fallbacks = 0;
  uint64_t shared_refs_received = 0;
};

class Stats {
 public:
  std::atomic<uint64_t> frames_sent_zero_copy{0};
  std::atomic<uint64_t> payloads_inlined{0};
  std::atomic<uint64_t> frames_released{0};
  std::atomic<uint64_t> envelope_realigned{0};
  std::atomic<uint64_t> payload_realigned{0};
  std::atomic<uint64_t> payload_converted{0};
  std::atomic<uint64_t> buffer_copies{0};
  std::atomic<uint64_t> messages_decoded{0};
  std::atomic<uint64_t> messages_rejected{0};
  std::atomic<uint64_t> shared_refs_sent{0};
  std::atomic<uint64_t> shared_bytes_copied{0};
  std::atomic<uint64_t> shared_fallbacks{0};
  std::atomic<uint64_t> shared_refs_received{0};

  StatsSnapshot Snapshot() const noexcept;
};

Stats& GlobalStats() noexcept;

inline void Bump(std::atomic<uint64_t>& counter, uint64_t n = 1) noexcept {
  counter.fetch_add(n, std::memory_order_relaxed);
}

namespace internal {
// A counter bumped on every message (messages_decoded) is kept per thread: a shared
// atomic add is a locked instruction, several percent of a small decode's time. The
// owning thread adds with a plain load and store; Snapshot() sums the live threads'
// counters, and a thread that exits adds its count to the shared one.
class ThreadCounter {
 public:
  explicit ThreadCounter(std::atomic<uint64_t>* shared);
  ~ThreadCounter();
  ThreadCounter(const ThreadCounter&) = delete;
  ThreadCounter& operator=(const ThreadCounter&) = delete;
  void Bump() noexcept { count_.store(count_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t>* shared_;
  std::atomic<uint64_t> count_{0};
};
}  // namespace internal

}  // namespace zerocan
