// Replay protection with bounded memory: per session, a sliding window of sequence
// numbers; sessions expire; the table has a fixed maximum size.
//
// Checked after the signature (so only key holders can create sessions) and after
// Message::Decode (the session id, sequence and send time are envelope fields).
//
// Why this cannot forget at random: a session is dropped only after it has been idle
// for session_ttl, which is at least max_age + max_clock_skew, and any message older
// than max_age is refused on its send time alone. So a message whose session has been
// forgotten is always too old to be accepted again. When the table is full of live
// sessions a new session is refused (kTooManySessions); live sessions are never evicted.
//
// Memory: max_sessions * (window / 8 + about 100) bytes at most (defaults: 16384
// sessions, 1024-message window: about 3.7 MB).
//
// Threading: all methods lock an internal mutex; one guard may serve many threads.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "zerocan/auth_error.h"

namespace zerocan {

class Message;

struct ReplayOptions {
  // Sequence numbers remembered behind the highest one seen, per session (rounded up
  // to a multiple of 64). A message further behind is refused as too old.
  uint32_t window = 1024;
  // Sessions remembered at once.
  size_t max_sessions = 16384;
  // Messages whose sent_at_ns is older than this (by the receiver's wall clock) are
  // refused. 0 disables the age check and with it expiry (sessions then stay until
  // the guard is destroyed, and the table fills up).
  uint64_t max_age_ns = uint64_t{300} * 1000000000;
  // How far a sender's clock may run ahead of the receiver's.
  uint64_t max_clock_skew_ns = uint64_t{30} * 1000000000;
  // Idle time after which a session is forgotten; raised to max_age + max_clock_skew
  // if set lower (see above).
  uint64_t session_ttl_ns = uint64_t{330} * 1000000000;
};

class ReplayGuard {
 public:
  explicit ReplayGuard(ReplayOptions options = {});
  ~ReplayGuard();
  ReplayGuard(const ReplayGuard&) = delete;
  ReplayGuard& operator=(const ReplayGuard&) = delete;

  // Accepts (and records) the message, or throws AuthError: kReplayed, kTooOld,
  // kClockSkew or kTooManySessions, naming the session and sequence. `now_ns` is the
  // receiver's wall clock in ns since the Unix epoch (0 = read the clock).
  // Sequence 0 is never valid (sequences start at 1).
  void Check(uint64_t session_id, uint64_t sequence, uint64_t sent_at_ns, uint64_t now_ns = 0);
  // The same for a decoded message (its session_id, sequence and sentAtNs).
  void Check(const Message& message, uint64_t now_ns = 0);

  // The same verdict without an exception or message text: nullopt when the message
  // was accepted (and recorded), else the code Check would throw. For a server that
  // drops and counts refusals under a flood. Throws only std::bad_alloc.
  std::optional<AuthError::Code> Admit(uint64_t session_id, uint64_t sequence,
                                       uint64_t sent_at_ns, uint64_t now_ns = 0);
  std::optional<AuthError::Code> Admit(const Message& message, uint64_t now_ns = 0);

  size_t session_count() const;
  // Forgets sessions idle for longer than session_ttl (also done on each Check).
  void Expire(uint64_t now_ns = 0);
  const ReplayOptions& options() const noexcept { return options_; }

 private:
  using Lru = std::list<uint64_t>;  // session ids, most recently used first
  struct Session {
    uint64_t highest = 0;             // highest sequence accepted
    uint64_t last_seen_ns = 0;
    std::vector<uint64_t> seen;       // bit i of the ring: sequence (highest - i) accepted
    Lru::iterator lru;
  };
  // Why a message was refused, finer than AuthError::Code (for Check's message).
  enum class Reason {
    kAccepted, kSequenceZero, kNoSendTime, kFuture, kAged, kTooManySessions,
    kBehindWindow, kSeen
  };
  static AuthError::Code CodeOf(Reason reason) noexcept;
  // The one decision; records the message when accepted. *highest gets the session's
  // highest sequence and *sessions the table size (for the messages).
  Reason Decide(uint64_t session_id, uint64_t sequence, uint64_t sent_at_ns, uint64_t now_ns,
                uint64_t* highest, size_t* sessions);
  void ExpireLocked(uint64_t now_ns);

  ReplayOptions options_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Session> sessions_;
  Lru lru_;
};

}  // namespace zerocan
