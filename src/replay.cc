#include "zerocan/replay.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "zerocan/message.h"

namespace zerocan {

namespace {

uint64_t WallNowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string Who(uint64_t session_id, uint64_t sequence) {
  return absl::StrCat("session ", absl::Hex(session_id, absl::kZeroPad16), " sequence ", sequence);
}

}  // namespace

ReplayGuard::ReplayGuard(ReplayOptions options) : options_(options) {
  options_.window = std::max<uint32_t>(64, (options_.window + 63) / 64 * 64);
  if (options_.max_sessions == 0) options_.max_sessions = 1;
  if (options_.max_age_ns != 0) {
    uint64_t floor = options_.max_age_ns + options_.max_clock_skew_ns;
    options_.session_ttl_ns = std::max(options_.session_ttl_ns, floor);
  }
}

ReplayGuard::~ReplayGuard() = default;

size_t ReplayGuard::session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_.size();
}

void ReplayGuard::Expire(uint64_t now_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now_ns == 0 ? WallNowNs() : now_ns);
}

void ReplayGuard::ExpireLocked(uint64_t now_ns) {
  // Without an age check a forgotten session could be replayed from its start.
  if (options_.max_age_ns == 0) return;
  while (!lru_.empty()) {
    auto it = sessions_.find(lru_.back());
    if (now_ns < it->second.last_seen_ns ||
        now_ns - it->second.last_seen_ns <= options_.session_ttl_ns) {
      break;
    }
    sessions_.erase(it);
    lru_.pop_back();
  }
}

void ReplayGuard::Check(const Message& message, uint64_t now_ns) {
  Check(message.session_id(), message.sequence(), message.sent_at_ns(), now_ns);
}

std::optional<AuthError::Code> ReplayGuard::Admit(const Message& message, uint64_t now_ns) {
  return Admit(message.session_id(), message.sequence(), message.sent_at_ns(),
               now_ns);
}

std::optional<AuthError::Code> ReplayGuard::Admit(uint64_t session_id, uint64_t sequence,
                                                  uint64_t sent_at_ns, uint64_t now_ns) {
  uint64_t highest = 0;
  size_t sessions = 0;
  Reason reason = Decide(session_id, sequence, sent_at_ns, now_ns, &highest, &sessions);
  if (reason == Reason::kAccepted) return std::nullopt;
  return CodeOf(reason);
}

AuthError::Code ReplayGuard::CodeOf(Reason reason) noexcept {
  switch (reason) {
    case Reason::kFuture: return AuthError::Code::kClockSkew;
    case Reason::kTooManySessions: return AuthError::Code::kTooManySessions;
    case Reason::kSeen: return AuthError::Code::kReplayed;
    default: return AuthError::Code::kTooOld;
  }
}

void ReplayGuard::Check(uint64_t session_id, uint64_t sequence, uint64_t sent_at_ns,
                        uint64_t now_ns) {
  if (now_ns == 0) now_ns = WallNowNs();
  uint64_t highest = 0;
  size_t sessions = 0;
  Reason reason = Decide(session_id, sequence, sent_at_ns, now_ns, &highest, &sessions);
  std::string what;
  switch (reason) {
    case Reason::kAccepted:
      return;
    case Reason::kSequenceZero:
      what = absl::StrCat("sequence: ", Who(session_id, sequence),
                          ": sequence 0 is never valid (sequences start at 1)");
      break;
    case Reason::kNoSendTime:
      what = absl::StrCat("sentAtNs: ", Who(session_id, sequence),
                          " has no send time; replay protection needs one");
      break;
    case Reason::kFuture:
      what = absl::StrCat("sentAtNs: ", Who(session_id, sequence), " was sent ",
                          (sent_at_ns - now_ns) / 1000000, " ms in the future; max_clock_skew is ",
                          options_.max_clock_skew_ns / 1000000, " ms");
      break;
    case Reason::kAged:
      what = absl::StrCat("sentAtNs: ", Who(session_id, sequence), " was sent ",
                          (now_ns - sent_at_ns) / 1000000, " ms ago; max_age is ",
                          options_.max_age_ns / 1000000, " ms");
      break;
    case Reason::kTooManySessions:
      what = absl::StrCat("sessionId: ", Who(session_id, sequence), ": ", sessions,
                          " live sessions, max_sessions is ", options_.max_sessions);
      break;
    case Reason::kBehindWindow:
      what = absl::StrCat("sequence: ", Who(session_id, sequence), " is ", highest - sequence,
                          " behind the highest seen (", highest, "); the replay window is ",
                          options_.window);
      break;
    case Reason::kSeen:
      what = absl::StrCat("sequence: ", Who(session_id, sequence),
                          " was already accepted (replayed message)");
      break;
  }
  throw AuthError(CodeOf(reason), what);
}

ReplayGuard::Reason ReplayGuard::Decide(uint64_t session_id, uint64_t sequence,
                                        uint64_t sent_at_ns, uint64_t now_ns, uint64_t* highest,
                                        size_t* sessions) {
  if (now_ns == 0) now_ns = WallNowNs();
  if (sequence == 0) return Reason::kSequenceZero;
  if (options_.max_age_ns != 0) {
    if (sent_at_ns == 0) return Reason::kNoSendTime;
    if (sent_at_ns > now_ns && sent_at_ns - now_ns > options_.max_clock_skew_ns) {
      return Reason::kFuture;
    }
    if (now_ns > sent_at_ns && now_ns - sent_at_ns > options_.max_age_ns) return Reason::kAged;
  }

  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now_ns);
  const uint64_t window = options_.window;
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    if (sessions_.size() >= options_.max_sessions) {
      *sessions = sessions_.size();
      return Reason::kTooManySessions;
    }
    lru_.push_front(session_id);
    Session fresh;
    fresh.seen.assign(window / 64, 0);
    fresh.lru = lru_.begin();
    it = sessions_.emplace(session_id, std::move(fresh)).first;
  }
  Session& s = it->second;
  auto bit = [&](uint64_t seq) -> std::pair<uint64_t*, uint64_t> {
    uint64_t slot = seq % window;
    return {&s.seen[slot / 64], uint64_t{1} << (slot % 64)};
  };
  if (sequence > s.highest) {
    uint64_t advance = sequence - s.highest;
    if (advance >= window) {
      std::fill(s.seen.begin(), s.seen.end(), 0);
    } else {
      for (uint64_t q = s.highest + 1; q < sequence; ++q) {
        auto [word, mask] = bit(q);
        *word &= ~mask;
      }
    }
    auto [word, mask] = bit(sequence);
    *word |= mask;
    s.highest = sequence;
  } else if (s.highest - sequence >= window) {
    *highest = s.highest;
    return Reason::kBehindWindow;
  } else {
    auto [word, mask] = bit(sequence);
    if ((*word & mask) != 0) return Reason::kSeen;
    *word |= mask;
  }
  s.last_seen_ns = std::max(s.last_seen_ns, now_ns);
  lru_.splice(lru_.begin(), lru_, s.lru);
  return Reason::kAccepted;
}

}  // namespace zerocan
