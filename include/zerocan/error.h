// Errors thrown by the zerocan public API.
//
// Every error names what was wrong and where (a frame index and a field path such as
// `apply.args[1].tensor.shape`). Callers tell the kinds apart by type, and within
// DecodeError by code: malformed input, a limit exceeded and a type mismatch are
// different failures with different remedies.
#pragma once

#include <stdexcept>
#include <string>

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
