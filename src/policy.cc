#include "zerocan/policy.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace zerocan {

long long Policy::ParseSize(const std::string& text) noexcept {
  if (text.empty()) return -1;
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || text[0] == '-') return -1;
  unsigned long long scale = 1;
  std::string suffix(end);
  if (suffix == "" || suffix == "B" || suffix == "b") {
    scale = 1;
  } else if (suffix == "k" || suffix == "K" || suffix == "KiB" || suffix == "kB") {
    scale = 1ull << 10;
  } else if (suffix == "M" || suffix == "m" || suffix == "MiB" || suffix == "MB") {
    scale = 1ull << 20;
  } else if (suffix == "G" || suffix == "g" || suffix == "GiB" || suffix == "GB") {
    scale = 1ull << 30;
  } else {
    return -1;
  }
  if (n > (1ull << 62) / scale) return -1;
  return static_cast<long long>(n * scale);
}

const Policy& Policy::Default() {
  static const Policy policy = [] {
    Policy p;
    if (const char* env = std::getenv("ZEROCAN_INLINE_THRESHOLD")) {
      long long v = ParseSize(env);
      if (v < 0) {
        std::fprintf(stderr,
                     "zerocan: ignoring ZEROCAN_INLINE_THRESHOLD=\"%s\" (not a size such as "
                     "4096, 64k or 1M); using %zu\n",
                     env, p.inline_threshold);
      } else {
        p.inline_threshold = static_cast<size_t>(v);
      }
    }
    return p;
  }();
  return policy;
}

}  // namespace zerocan
