// Policy: the sender's choices about where payload bytes travel.
//
// A payload of at least `inline_threshold` bytes leaves as its own ZeroMQ frame,
// without a copy; a smaller one is copied into the envelope. The default comes from
// (in order) the environment variable ZEROCAN_INLINE_THRESHOLD, then the built-in
// kDefaultInlineThreshold, which was measured on the project's reference machine
// (bench/threshold, see docs/FORMAT.md). Policies are values: each channel holds one.
#pragma once

#include <cstddef>
#include <string>

namespace zerocan {

// Measured: see docs/FORMAT.md "Inline threshold".
inline constexpr size_t kDefaultInlineThreshold = 4096;

struct Policy {
  size_t inline_threshold = kDefaultInlineThreshold;
  // Store small integer arrays in the narrowest integer type holding every element
  // (inline payloads only; zero-copy frames are never rewritten).
  bool pack_integers = true;

  // The process default: ZEROCAN_INLINE_THRESHOLD if set and valid (an invalid value
  // is reported once on stderr and ignored), else kDefaultInlineThreshold. Read once.
  static const Policy& Default();
  // Parses a threshold such as "4096", "64k", "1M"; nullopt-like -1 on error.
  static long long ParseSize(const std::string& text) noexcept;
};

}  // namespace zerocan
