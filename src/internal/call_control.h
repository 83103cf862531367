// One running call's control block, shared by the engine (cancel, credit) and the
// function (its Call, its StreamWriter: zerocan/stream.h). src/stream.cc.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>

#include "zerocan/message.h"
#include "zerocan/policy.h"

namespace zerocan {

class Registry;

namespace internal {

struct CallControl {
  // Whether the call was cancelled. Its std::stop_source gets a shared state only when
  // the function asks for a std::stop_token (most never do: nothing allocated per call).
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  std::stop_token StopToken() noexcept;
  // False for a call no cancel can reach (one run on the engine's I/O thread): its stop
  // token has no stop state (stop_possible() is false).
  bool cancellable = true;
  uint64_t call_id = 0;
  // The engine's id and the function's registered name: both outlive every call.
  std::string_view engine_id;
  std::string_view function;
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

  // From the engine's I/O thread. Runs the function's stop callbacks, if any.
  void Cancel();
  void Grant(uint32_t items);
  void Stopping();

 private:
  std::atomic<bool> cancelled_{false};
  std::stop_source stop_{std::nostopstate};  // mu
};

}  // namespace internal
}  // namespace zerocan
