// The one place where KJ exceptions become zerocan errors. Cap'n Proto throws
// kj::Exception for malformed input (bad segment table, pointer out of bounds, limits);
// callers see DecodeError with our context prepended, never a KJ type.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <kj/exception.h>

#include "zerocan/error.h"

namespace zerocan::internal {

// Runs `body`; a kj::Exception becomes DecodeError("<context>: <kj description>").
// `context` is a view: every message decoded passes here, and builds no string unless
// it fails.
template <class F>
auto CatchKj(std::string_view context, F&& body) -> decltype(body()) {
  try {
    return std::forward<F>(body)();
  } catch (const kj::Exception& e) {
    auto code = e.getDescription().startsWith("Exceeded message traversal limit") ||
                        e.getDescription().startsWith("Message is too deeply nested")
                    ? DecodeError::Code::kLimitExceeded
                    : DecodeError::Code::kMalformed;
    throw DecodeError(code, std::string(context) + ": " + e.getDescription().cStr());
  }
}

}  // namespace zerocan::internal
