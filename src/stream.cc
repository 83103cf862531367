// Cancel and streams, the engine side (zerocan/stream.h): call control blocks, the
// stream writer and the engine's table of running calls.
#include "zerocan/stream.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "internal/block_cache.h"
#include "internal/call_control.h"
#include "zerocan/engine.h"
#include "internal/live_calls.h"
#include "internal/strings.h"

namespace zerocan {

namespace internal {

void CallControl::Cancel() {
  std::stop_source handed_out{std::nostopstate};
  {
    std::lock_guard<std::mutex> lock(mu);
    cancelled_.store(true, std::memory_order_release);
    handed_out = stop_;
    cv.notify_all();
  }
  // Outside mu: a stop callback may call back into this call.
  if (handed_out.stop_possible()) handed_out.request_stop();
}

std::stop_token CallControl::StopToken() noexcept {
  if (!cancellable) return std::stop_token();
  std::lock_guard<std::mutex> lock(mu);
  if (!stop_.stop_possible()) {
    try {
      stop_ = std::stop_source();
    } catch (const std::bad_alloc&) {
      return std::stop_token();  // (out of memory: a token that never stops)
    }
    // A fresh state has no callbacks yet: requesting under mu runs none.
    if (cancelled_.load(std::memory_order_acquire)) stop_.request_stop();
  }
  return stop_.get_token();
}

void CallControl::Grant(uint32_t items) {
  std::lock_guard<std::mutex> lock(mu);
  credits += items;
  cv.notify_all();
}

void CallControl::Stopping() {
  std::lock_guard<std::mutex> lock(mu);
  stopping = true;
  cv.notify_all();
}

std::string LiveCalls::Key(std::span<const Buffer> routing, uint64_t call_id) {
  std::string key;
  for (const Buffer& r : routing) {
    // The length in 7-bit groups, low first (one byte below 128): unambiguous for any
    // length, and short.
    for (uint64_t n = r.size(); ; n >>= 7) {
      key.push_back(static_cast<char>((n & 0x7f) | (n >= 0x80 ? 0x80 : 0)));
      if (n < 0x80) break;
    }
    key.append(reinterpret_cast<const char*>(r.data()), r.size());
  }
  key.append(reinterpret_cast<const char*>(&call_id), sizeof call_id);
  return key;
}

std::shared_ptr<CallControl> LiveCalls::Start(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!cancelled_.empty() && cancelled_.erase(key) > 0) return nullptr;
  // A block from this thread's cache: the call's worker allocates it, and usually
  // releases it too.
  auto control = std::allocate_shared<CallControl>(CachingAllocator<CallControl>());
  live_[key] = control;
  return control;
}

void LiveCalls::Finish(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(key);
}

void LiveCalls::Cancel(const std::string& key) {
  std::shared_ptr<CallControl> control;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(key);
    if (it != live_.end()) {
      control = it->second;
    } else if (cancelled_.insert(key).second) {
      cancelled_order_.push_back(key);
      while (cancelled_order_.size() > kRemembered) {
        cancelled_.erase(cancelled_order_.front());
        cancelled_order_.pop_front();
      }
    }
  }
  if (control) control->Cancel();
}

void LiveCalls::Grant(const std::string& key, uint32_t items) {
  std::shared_ptr<CallControl> control;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(key);
    if (it == live_.end()) return;
    control = it->second;
  }
  control->Grant(items);
}

void LiveCalls::StopAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, control] : live_) control->Stopping();
}

}  // namespace internal

void StreamWriter::WriteWith(const std::function<void(ValueWriter&)>& fill) {
  internal::CallControl& c = control_;
  {
    std::unique_lock<std::mutex> lock(c.mu);
    if (c.wait_for_credit) {
      c.cv.wait(lock, [&] { return c.credits > 0 || c.cancelled() || c.stopping; });
    }
    if (c.cancelled()) {
      throw CancelledError(absl::StrCat(internal::Sv(c.function), ": call ", c.call_id, " was cancelled"));
    }
    if (c.stopping) throw Error(absl::StrCat(internal::Sv(c.function), ": the engine is stopping"));
    --c.credits;
  }
  EnvelopeWriter w(*c.policy, c.registry);
  w.SetHeader(c.next_header());
  ValueWriter out = w.StartResult(c.call_id, c.engine_id);
  fill(out);
  w.SetStreamPart(StreamPart::kItem);
  c.send(w.Finish());
  std::lock_guard<std::mutex> lock(c.mu);
  ++c.items_sent;
}

bool StreamWriter::cancelled() const noexcept { return control_.cancelled(); }

std::stop_token StreamWriter::stop_token() const noexcept { return control_.StopToken(); }

bool Call::cancelled() const noexcept { return control_ != nullptr && control_->cancelled(); }

std::stop_token Call::stop_token() const noexcept {
  return control_ != nullptr ? control_->StopToken() : std::stop_token();
}

uint64_t StreamWriter::items() const {
  std::lock_guard<std::mutex> lock(control_.mu);
  return control_.items_sent;
}

}  // namespace zerocan
