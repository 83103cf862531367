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

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
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

// One running call's control block, shared by the engine (cancel, credit) and the
// function (its Call, its StreamWriter). src/stream.cc.
struct CallControl {
  std::stop_source stop;
  uint64_t call_id = 0;
  std::string engine_id;
  std::string function;
  const Policy* policy = nullptr;
  const Registry* registry = nullptr;
  // Streams: set for a stream call of a streaming function.
  bool stream = false;
  bool wait_for_credit = true;  // false on the I/O thread: nobody could grant more
  std::function<Header()> next_header;
  std::function<void(Outgoing&&)> send;  // hands one item message to the I/O thread
  std::mutex mu;
  std::condition_variable cv;
  int64_t credits = 0;      // mu: items that may still be sent
  bool stopping = false;    // mu: the engine stops; a waiting Write gives up
  uint64_t items_sent = 0;  // mu

  // From the engine's I/O thread.
  void Cancel();
  void Grant(uint32_t items);
  void Stopping();
};

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

  bool cancelled() const noexcept { return control_.stop.stop_requested(); }
  std::stop_token stop_token() const noexcept { return control_.stop.get_token(); }
  // Items sent so far.
  uint64_t items() const;

 private:
  internal::CallControl& control_;
};

}  // namespace zerocan
