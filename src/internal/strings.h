// Debian's Abseil (20220623) is built with its own absl::string_view, which does not
// convert from std::string_view; Sv() bridges the two for absl::StrCat and friends.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace zerocan::internal {
inline absl::string_view Sv(std::string_view s) noexcept { return {s.data(), s.size()}; }
}  // namespace zerocan::internal
