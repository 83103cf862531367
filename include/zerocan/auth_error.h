// AuthError: a message was refused because it could not be trusted, not because its
// bytes were malformed.
//
// Kept apart from DecodeError on purpose: a DecodeError may be answered with an error
// reply naming the field, while an AuthError means the sender is not who it claims (or
// is replaying an old message), so an engine drops it and counts it instead of talking
// back. Each reason has its own code so that logs, counters and tests can tell an
// unsigned message from a forged, replayed or stale one.
#pragma once

#include <string>
#include <string_view>

#include "zerocan/error.h"

namespace zerocan {

class AuthError : public Error {
 public:
  enum class Code {
    kUnsigned,         // a key is set but the message carries no signature frame
    kBadSignature,     // a signature frame whose tag does not match the frames
    kReplayed,         // (session, sequence) already accepted
    kTooOld,           // sequence behind the replay window, or sent longer ago than max_age
    kClockSkew,        // sent_at lies further in the future than max_clock_skew allows
    kTooManySessions,  // the replay table is full of live sessions
    kBadKey,           // an empty or unreadable key
  };
  AuthError(Code code, const std::string& what) : Error(what), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

// "unsigned", "bad signature", "replayed", ...: for counters and log lines.
std::string_view AuthCodeName(AuthError::Code code) noexcept;

}  // namespace zerocan
