// Cancel and streams on the engine side (docs/FORMAT.md "Cancel and streams").
//
// A running call can be cancelled by its client: the engine then requests stop on the
// call's stop source. A function sees it through Call::cancelled() / Call::stop_token(),
// or by taking a std::stop_token parameter in a typed def():
//     engine.def("work", [](int n, std::stop_token stop) { ... if (stop.stop_requested()) ... });
// Its client's future has ended (cancelled) already, whatever the function does; the
// engine sends no result for a cancelled call.
//
// A streaming function takes a StreamWriter& and writes its items one by one; each
// leaves at once as its own result message (large items as zero-copy frames):
//     engine.def("count", [](int n, zerocan::StreamWriter& out) {
//       for (int i = 0; i < n; ++i) out.Write(i);
//     });
// Flow control: the client grants credits (the apply's streamCredits, then credit
// messages as it reads); Write waits while none are left, so a client that stops reading
// holds the engine at that bound. Write throws CancelledError once the call is cancelled
// (so the function unwinds: destructors are its `finally`). A stream function called by
// a plain apply fails with ArgumentError. Run streaming functions on workers (the
// default): on the I/O thread (inline_execution, threads = 0) Write cannot wait for
// credits, and its items leave when the function returns.
#pragma once

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <utility>

#include "zerocan/message.h"
#include "zerocan/policy.h"
#include "zerocan/remote_error.h"
#include "zerocan/writer.h"

namespace zerocan {

class Registry;

namespace internal {
struct CallControl;  // one running call's control block (src/internal/call_control.h)
}  // namespace internal

// Writes the items of a stream call (see the header comment). Belongs to its call;
// valid while the function runs.
class StreamWriter {
 public:
  explicit StreamWriter(internal::CallControl& control) : control_(control) {}
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Sends one item (any type a result can be; an rvalue container is adopted, a large
  // one leaves as a zero-copy frame). Waits for a credit first; throws CancelledError
  // once the call is cancelled, Error when the engine stops.
  template <class T>
  void Write(T&& item) {
    WriteWith([&](ValueWriter& out) { out.Write(std::forward<T>(item)); });
  }
  // Sends one item that `fill` writes.
  void WriteWith(const std::function<void(ValueWriter&)>& fill);

  bool cancelled() const noexcept;
  std::stop_token stop_token() const noexcept;
  // Items sent so far.
  uint64_t items() const;

 private:
  internal::CallControl& control_;
};

}  // namespace zerocan
