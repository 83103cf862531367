// Replay window: duplicates and stale messages refused with their own codes, memory
// bounded by max_sessions, sessions forgotten only once their messages are too old.
#include "zerocan/replay.h"

#include <gtest/gtest.h>

#include <optional>

namespace zerocan {
namespace {

constexpr uint64_t kSecond = 1000000000;
constexpr uint64_t kNow = uint64_t{1700000000} * kSecond;

std::optional<AuthError::Code> Outcome(ReplayGuard& guard, uint64_t session, uint64_t sequence,
                                       uint64_t sent_at = kNow, uint64_t now = kNow) {
  try {
    guard.Check(session, sequence, sent_at, now);
    return std::nullopt;
  } catch (const AuthError& e) {
    return e.code();
  }
}

TEST(ReplayTest, InOrderAcceptedDuplicateRejected) {
  ReplayGuard guard;
  for (uint64_t s = 1; s <= 100; ++s) EXPECT_EQ(Outcome(guard, 1, s), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 100), AuthError::Code::kReplayed);
  EXPECT_EQ(Outcome(guard, 1, 50), AuthError::Code::kReplayed);
  EXPECT_EQ(Outcome(guard, 1, 1), AuthError::Code::kReplayed);
}

TEST(ReplayTest, OutOfOrderWithinWindowAcceptedOnce) {
  ReplayGuard guard(ReplayOptions{.window = 128});
  EXPECT_EQ(Outcome(guard, 1, 100), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 30), std::nullopt);   // 70 behind: inside the window
  EXPECT_EQ(Outcome(guard, 1, 30), AuthError::Code::kReplayed);
  EXPECT_EQ(Outcome(guard, 1, 99), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 101), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 99), AuthError::Code::kReplayed);
}

TEST(ReplayTest, BehindWindowIsTooOld) {
  ReplayGuard guard(ReplayOptions{.window = 64});
  EXPECT_EQ(Outcome(guard, 1, 1000), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 1000 - 63), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 1000 - 64), AuthError::Code::kTooOld);
  EXPECT_EQ(Outcome(guard, 1, 1), AuthError::Code::kTooOld);
}

TEST(ReplayTest, JumpClearsStaleBits) {
  // After a jump, sequence numbers that share ring slots with old accepted ones must
  // be accepted (their bits were cleared), and the old ones refused as too old.
  ReplayGuard guard(ReplayOptions{.window = 64});
  for (uint64_t s = 1; s <= 64; ++s) ASSERT_EQ(Outcome(guard, 1, s), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 64 + 40), std::nullopt);
  for (uint64_t s = 65; s < 104; ++s) EXPECT_EQ(Outcome(guard, 1, s), std::nullopt) << s;
  EXPECT_EQ(Outcome(guard, 1, 40), AuthError::Code::kTooOld);
  EXPECT_EQ(Outcome(guard, 1, 41), AuthError::Code::kReplayed);  // still in the window
  EXPECT_EQ(Outcome(guard, 1, 100000), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 100000 - 1), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 104), AuthError::Code::kTooOld);
}

TEST(ReplayTest, SessionsAreIndependent) {
  ReplayGuard guard;
  EXPECT_EQ(Outcome(guard, 1, 5), std::nullopt);
  EXPECT_EQ(Outcome(guard, 2, 5), std::nullopt);
  EXPECT_EQ(Outcome(guard, 2, 5), AuthError::Code::kReplayed);
  EXPECT_EQ(guard.session_count(), 2u);
}

TEST(ReplayTest, SequenceZeroAndMissingSendTimeRejected) {
  ReplayGuard guard;
  EXPECT_EQ(Outcome(guard, 1, 0), AuthError::Code::kTooOld);
  EXPECT_EQ(Outcome(guard, 1, 1, /*sent_at=*/0), AuthError::Code::kTooOld);
}

TEST(ReplayTest, OldAndFutureMessagesRejectedByTime) {
  ReplayGuard guard(ReplayOptions{.max_age_ns = 10 * kSecond, .max_clock_skew_ns = 2 * kSecond});
  EXPECT_EQ(Outcome(guard, 1, 1, kNow - 9 * kSecond), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 2, kNow - 11 * kSecond), AuthError::Code::kTooOld);
  EXPECT_EQ(Outcome(guard, 1, 3, kNow + 1 * kSecond), std::nullopt);
  EXPECT_EQ(Outcome(guard, 1, 4, kNow + 3 * kSecond), AuthError::Code::kClockSkew);
  try {
    guard.Check(1, 5, kNow - 60 * kSecond, kNow);
    FAIL();
  } catch (const AuthError& e) {
    EXPECT_NE(std::string(e.what()).find("sentAtNs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("max_age"), std::string::npos) << e.what();
  }
}

TEST(ReplayTest, FullTableRefusesNewSessionsButNotLiveOnes) {
  ReplayGuard guard(ReplayOptions{.max_sessions = 3});
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_EQ(Outcome(guard, id, 1), std::nullopt);
  EXPECT_EQ(Outcome(guard, 4, 1), AuthError::Code::kTooManySessions);
  EXPECT_EQ(Outcome(guard, 1, 2), std::nullopt);  // a live session keeps working
  EXPECT_EQ(Outcome(guard, 2, 1), AuthError::Code::kReplayed);  // and is not forgotten
  EXPECT_EQ(guard.session_count(), 3u);
}

TEST(ReplayTest, ExpiredSessionsFreeRoomAndTheirMessagesStayRejected) {
  ReplayOptions options{.max_sessions = 2, .max_age_ns = 10 * kSecond,
                        .max_clock_skew_ns = 1 * kSecond, .session_ttl_ns = 0};
  ReplayGuard guard(options);
  EXPECT_EQ(guard.options().session_ttl_ns, 11 * kSecond);  // raised to max_age + skew
  ASSERT_EQ(Outcome(guard, 1, 1, kNow, kNow), std::nullopt);
  ASSERT_EQ(Outcome(guard, 2, 1, kNow + 5 * kSecond, kNow + 5 * kSecond), std::nullopt);
  uint64_t later = kNow + 12 * kSecond;  // session 1 idle for 12 s > ttl; session 2 for 7 s
  EXPECT_EQ(Outcome(guard, 3, 1, later, later), std::nullopt);
  EXPECT_EQ(guard.session_count(), 2u);
  // Session 1 was forgotten, but its old message is refused on age: no replay window gap.
  EXPECT_EQ(Outcome(guard, 1, 1, kNow, later), AuthError::Code::kTooOld);
  EXPECT_EQ(Outcome(guard, 2, 1, kNow + 5 * kSecond, later), AuthError::Code::kReplayed);
}

TEST(ReplayTest, ActivityKeepsASessionAlive) {
  ReplayGuard guard(ReplayOptions{.max_sessions = 1, .max_age_ns = 10 * kSecond,
                                  .max_clock_skew_ns = 0, .session_ttl_ns = 0});
  for (uint64_t t = 0; t < 100; t += 5) {
    ASSERT_EQ(Outcome(guard, 1, t + 1, kNow + t * kSecond, kNow + t * kSecond), std::nullopt);
  }
  EXPECT_EQ(guard.session_count(), 1u);
  EXPECT_EQ(Outcome(guard, 2, 1, kNow + 100 * kSecond, kNow + 100 * kSecond),
            AuthError::Code::kTooManySessions);
  guard.Expire(kNow + 200 * kSecond);
  EXPECT_EQ(guard.session_count(), 0u);
}

TEST(ReplayTest, WindowRoundsUpToWords) {
  ReplayGuard guard(ReplayOptions{.window = 100});
  EXPECT_EQ(guard.options().window, 128u);
}

TEST(ReplayTest, AdmitGivesCheckVerdictWithoutThrowing) {
  // Two guards fed the same sequence of messages: the throwing and the verdict forms
  // agree on every code, and Admit records what it accepts.
  ReplayOptions options;
  options.window = 64;
  options.max_sessions = 2;
  options.max_age_ns = 10 * kSecond;
  options.max_clock_skew_ns = 2 * kSecond;
  ReplayGuard checked(options), admitted(options);
  struct Case {
    uint64_t session, sequence, sent_at;
    std::optional<AuthError::Code> want;
  };
  const Case cases[] = {
      {1, 1, kNow, std::nullopt},
      {1, 1, kNow, AuthError::Code::kReplayed},
      {1, 0, kNow, AuthError::Code::kTooOld},
      {1, 2, 0, AuthError::Code::kTooOld},
      {1, 3, kNow + 5 * kSecond, AuthError::Code::kClockSkew},
      {1, 4, kNow - 20 * kSecond, AuthError::Code::kTooOld},
      {1, 200, kNow, std::nullopt},
      {1, 100, kNow, AuthError::Code::kTooOld},  // behind the window
      {2, 1, kNow, std::nullopt},
      {3, 1, kNow, AuthError::Code::kTooManySessions},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Outcome(checked, c.session, c.sequence, c.sent_at), c.want) << c.sequence;
    EXPECT_EQ(admitted.Admit(c.session, c.sequence, c.sent_at, kNow), c.want) << c.sequence;
  }
  EXPECT_EQ(admitted.session_count(), 2u);
}

}  // namespace
}  // namespace zerocan
