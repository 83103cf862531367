// One running call's control block, shared by the engine (cancel, credit) and the
// function (its Call, its StreamWriter: zerocan/stream.h). src/stream.cc.
#pragma once

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
}  // namespace zerocan
