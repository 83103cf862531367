// Errors thrown by the zerocan public API.
//
// Every error names what was wrong and where (a frame index and a field path such as
// `apply.args[1].tensor.shape`). Callers tell the kinds apart by type, and within
// DecodeError by code: malformed input, a limit exceeded and a type mismatch are
// different failures with different remedies.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace zerocan {

// Base of every error zerocan throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Received bytes could not be turned into what was asked for.
class DecodeError : public Error {
 public:
  enum class Code {
    kMalformed,      // bytes that break the format (bad segment table, bad reference...)
    kLimitExceeded,  // a DecodeLimits bound was hit
    kTypeMismatch,   // well-formed value of another type than the caller asked for
    kVersion,        // protocol version this reader does not speak
  };
  DecodeError(Code code, const std::string& what) : Error(what), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

// The code's name, the same in every language ("malformed", "limit_exceeded",
// "type_mismatch", "version"; Python: zerocan.DecodeError.code).
constexpr std::string_view DecodeCodeName(DecodeError::Code code) noexcept {
  switch (code) {
    case DecodeError::Code::kMalformed: return "malformed";
    case DecodeError::Code::kLimitExceeded: return "limit_exceeded";
    case DecodeError::Code::kTypeMismatch: return "type_mismatch";
    case DecodeError::Code::kVersion: return "version";
  }
  return "malformed";
}

// A value could not be encoded (no codec for the type, a limit of the format...).
class EncodeError : public Error {
 public:
  using Error::Error;
};

// A socket operation failed (peer gone, context terminated, would-block where not allowed).
class TransportError : public Error {
 public:
  using Error::Error;
};

}  // namespace zerocan
