// What a transport keeps of a payload frame until it has released it: the Buffer (its
// owner stays alive) and the send's Tracker state. Destroying the hold is the release:
// it drops the Buffer, counts Stats::frames_released and counts the Tracker down.
#pragma once

#include <memory>
#include <utility>

#include "zerocan/buffer.h"
#include "zerocan/transport.h"

namespace zerocan::internal {

class PayloadHold {
 public:
  // Counts the tracker (if any) up by one; the destructor counts it down.
  PayloadHold(Buffer buffer, std::shared_ptr<Tracker::State> tracker) noexcept;
  ~PayloadHold();
  PayloadHold(const PayloadHold&) = delete;
  PayloadHold& operator=(const PayloadHold&) = delete;

  const Buffer& buffer() const noexcept { return buffer_; }

 private:
  Buffer buffer_;
  std::shared_ptr<Tracker::State> tracker_;
};

// A new tracker state for a send with payload frames; nullptr (an already-done Tracker)
// when there are none.
inline std::shared_ptr<Tracker::State> NewTrackerState(const Outgoing& message) {
  return message.payload_frames().empty() ? nullptr : std::make_shared<Tracker::State>();
}

}  // namespace zerocan::internal
