// The engine's table of running calls, for cancel and credit messages (stream.h):
// keyed by the call's routing frames and id, so one client cannot name another's call.
// Thread-safe (a mutex of its own). src/stream.cc.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "zerocan/buffer.h"
#include "internal/call_control.h"
#include "zerocan/stream.h"

namespace zerocan::internal {

class LiveCalls {
 public:
  // Each routing frame with its length before it, then the id. A direct client's key
  // (one 5-byte routing id) fits std::string's inline buffer: no allocation.
  static std::string Key(std::span<const Buffer> routing, uint64_t call_id);

  // A call about to run: its control block, or nullptr when a cancel for it came first.
  std::shared_ptr<CallControl> Start(const std::string& key);
  void Finish(const std::string& key);
  // Requests stop on a running call; a call not (yet) running is remembered, so that
  // Start refuses it (the last kRemembered keys only).
  void Cancel(const std::string& key);
  void Grant(const std::string& key, uint32_t items);
  // The engine stops: stream writers waiting for credit give up.
  void StopAll();

  // Removes `key` when it leaves scope (`key` outlives it).
  class Scope {
   public:
    Scope(LiveCalls& calls, const std::string& key) : calls_(calls), key_(key) {}
    Scope(LiveCalls& calls, std::string&& key) = delete;  // would outlive its key
    ~Scope() { calls_.Finish(key_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    LiveCalls& calls_;
    const std::string& key_;
  };

 private:
  static constexpr size_t kRemembered = 4096;
  std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<CallControl>> live_;  // mu_
  std::deque<std::string> cancelled_order_;                              // mu_
  absl::flat_hash_set<std::string> cancelled_;                           // mu_
};

}  // namespace zerocan::internal
