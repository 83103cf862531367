#include "zerocan/stats.h"

namespace zerocan {

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
  s.messages_decoded = r(messages_decoded);
  s.messages_rejected = r(messages_rejected);
  return s;
}

Stats& GlobalStats() noexcept {
  static Stats stats;
  return stats;
}

}  // namespace zerocan
