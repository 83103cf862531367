#include "zerocan/policy.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/error.h"

namespace zerocan {

namespace {

constexpr const char* kFormat = "zerocan-threshold/1";
constexpr const char* kEnvThreshold = "ZEROCAN_INLINE_THRESHOLD";
constexpr const char* kEnvReuse = "ZEROCAN_REUSE_MEMORY";

// A threshold in the file: a non-negative integer (bytes) or a size string ("64k").
std::optional<size_t> SizeFromJson(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return static_cast<size_t>(v.get<uint64_t>());
  if (v.is_number_integer()) {
    int64_t n = v.get<int64_t>();
    if (n >= 0) return static_cast<size_t>(n);
    return std::nullopt;
  }
  if (v.is_string()) {
    long long n = Policy::ParseSize(v.get<std::string>());
    if (n >= 0) return static_cast<size_t>(n);
  }
  return std::nullopt;
}

// The file as this process first read it; warnings printed once.
struct CachedConfig {
  std::optional<ThresholdConfig> config;
  std::string warning;
};

const CachedConfig& Cached() {
  static const CachedConfig cached = [] {
    CachedConfig c;
    std::string path = ThresholdConfigPath();
    if (!path.empty()) c.config = ReadThresholdConfig(path, &c.warning);
    if (!c.warning.empty()) {
      std::fprintf(stderr, "zerocan: %s; using the built-in inline threshold %zu\n",
                   c.warning.c_str(), kDefaultInlineThreshold);
    }
    return c;
  }();
  return cached;
}

// The environment override, or nullopt; *warning set for an invalid value.
std::optional<size_t> EnvThreshold(std::string* warning) {
  const char* env = std::getenv(kEnvThreshold);
  if (env == nullptr) return std::nullopt;
  long long v = Policy::ParseSize(env);
  if (v < 0) {
    if (warning != nullptr) {
      *warning = absl::StrCat("ignoring ", kEnvThreshold, "=\"", env,
                              "\" (not a size such as 4096, 64k or 1M)");
    }
    return std::nullopt;
  }
  return static_cast<size_t>(v);
}

Policy Resolve(std::string_view transport, const std::optional<ThresholdConfig>& config,
               std::string* warning) {
  Policy p;
  if (std::optional<size_t> env = EnvThreshold(warning)) {
    p.inline_threshold = *env;
    return p;
  }
  if (config) {
    std::optional<size_t> t =
        transport.empty() ? config->default_threshold : config->ThresholdFor(transport);
    if (t) p.inline_threshold = *t;
  }
  return p;
}

}  // namespace

// ---- the config file --------------------------------------------------------------------

std::string_view TransportOf(std::string_view endpoint) noexcept {
  size_t colon = endpoint.find("://");
  return colon == std::string_view::npos ? endpoint : endpoint.substr(0, colon);
}

std::optional<size_t> ThresholdConfig::ThresholdFor(std::string_view transport) const {
  auto it = inline_threshold.find(std::string(TransportOf(transport)));
  if (it != inline_threshold.end()) return it->second;
  return default_threshold;
}

std::string ThresholdConfigPath() {
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg != nullptr && xdg[0] == '/') return absl::StrCat(xdg, "/zerocan/threshold.json");
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] != '\0') return absl::StrCat(home, "/.config/zerocan/threshold.json");
  return "";
}

std::optional<ThresholdConfig> ReadThresholdConfig(const std::string& path, std::string* warning) {
  auto fail = [&](const std::string& why) -> std::optional<ThresholdConfig> {
    if (warning != nullptr) *warning = absl::StrCat("threshold config ", path, ": ", why);
    return std::nullopt;
  };
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return fail("not valid JSON");
  if (!doc.is_object()) return fail("not a JSON object");
  auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() || format->get<std::string>() != kFormat) {
    return fail(absl::StrCat("\"format\" is not \"", kFormat, "\""));
  }
  ThresholdConfig config;
  auto thresholds = doc.find("inline_threshold");
  if (thresholds != doc.end()) {
    if (!thresholds->is_object()) return fail("\"inline_threshold\" is not an object");
    for (auto it = thresholds->begin(); it != thresholds->end(); ++it) {
      std::optional<size_t> v = SizeFromJson(it.value());
      if (!v) return fail(absl::StrCat("inline_threshold.", it.key(), " is not a size"));
      config.inline_threshold[it.key()] = *v;
    }
  }
  auto def = doc.find("default");
  if (def != doc.end()) {
    std::optional<size_t> v = SizeFromJson(*def);
    if (!v) return fail("\"default\" is not a size");
    config.default_threshold = *v;
  }
  auto reuse = doc.find("reuse_memory");
  if (reuse != doc.end()) {
    if (!reuse->is_boolean()) return fail("\"reuse_memory\" is not true or false");
    config.reuse_memory = reuse->get<bool>();
  }
  auto machine = doc.find("machine");
  if (machine != doc.end() && machine->is_string()) config.machine = machine->get<std::string>();
  auto at = doc.find("measured_at");
  if (at != doc.end() && at->is_string()) config.measured_at = at->get<std::string>();
  return config;
}

void WriteThresholdConfig(const ThresholdConfig& config, const std::string& path) {
  if (path.empty()) throw Error("threshold config: no path (neither XDG_CONFIG_HOME nor HOME is set)");
  nlohmann::ordered_json doc;
  doc["format"] = kFormat;
  nlohmann::ordered_json thresholds = nlohmann::ordered_json::object();
  for (const auto& [transport, bytes] : config.inline_threshold) thresholds[transport] = bytes;
  doc["inline_threshold"] = thresholds;
  if (config.default_threshold) doc["default"] = *config.default_threshold;
  if (config.reuse_memory) doc["reuse_memory"] = *config.reuse_memory;
  if (!config.machine.empty()) doc["machine"] = config.machine;
  if (!config.measured_at.empty()) doc["measured_at"] = config.measured_at;

  std::filesystem::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ec);
  if (ec) throw Error(absl::StrCat("threshold config ", path, ": cannot create its directory: ", ec.message()));
  std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << doc.dump(2) << "\n";
    out.close();
    if (!out) throw Error(absl::StrCat("threshold config ", path, ": cannot write ", tmp));
  }
  std::filesystem::rename(tmp, target, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw Error(absl::StrCat("threshold config ", path, ": cannot replace the file"));
  }
}

// ---- Policy -----------------------------------------------------------------------------

long long Policy::ParseSize(const std::string& text) noexcept {
  if (text.empty() || text[0] < '0' || text[0] > '9') return -1;
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str()) return -1;
  unsigned long long scale = 1;
  std::string suffix(end);
  if (suffix == "" || suffix == "B" || suffix == "b") {
    scale = 1;
  } else if (suffix == "k" || suffix == "K" || suffix == "KiB" || suffix == "kB" || suffix == "KB") {
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
    std::string warning;
    Policy p = Resolve("", Cached().config, &warning);
    if (!warning.empty()) std::fprintf(stderr, "zerocan: %s; using %zu\n", warning.c_str(), p.inline_threshold);
    return p;
  }();
  return policy;
}

Policy Policy::ForTransport(std::string_view endpoint) {
  // The variable's warning, if any, was printed by Default().
  (void)Default();
  return Resolve(TransportOf(endpoint), Cached().config, nullptr);
}

Policy Policy::Load(std::string_view endpoint, std::string* warnings) {
  std::string file_warning, env_warning;
  std::string path = ThresholdConfigPath();
  std::optional<ThresholdConfig> config;
  if (!path.empty()) config = ReadThresholdConfig(path, &file_warning);
  Policy p = Resolve(TransportOf(endpoint), config, &env_warning);
  if (warnings != nullptr) {
    *warnings = file_warning;
    if (!env_warning.empty()) absl::StrAppend(warnings, warnings->empty() ? "" : "; ", env_warning);
  }
  return p;
}

// ---- memory policy ------------------------------------------------------------------------

namespace {
std::mutex g_memory_mutex;
bool g_reusing = false;
}  // namespace

bool UseReusingAllocator(bool enable) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
#if defined(__GLIBC__)
  if (enable) {
    // Large blocks from the main heap instead of fresh mmaps, and freed memory kept
    // there for the next one. One arena: a thread's own arena (libzmq's I/O thread
    // allocates received frames) is an mmap'd heap of at most 64 MiB, and glibc falls
    // back to a fresh mmap for anything larger there whatever M_MMAP_MAX says. The
    // arena limit applies to threads that have not allocated yet, hence "call early".
    mallopt(M_ARENA_MAX, 1);
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
    mallopt(M_TOP_PAD, 64 << 20);
  } else {
    // glibc's documented defaults (the dynamic mmap threshold stays off once set), and
    // what was kept given back.
    mallopt(M_ARENA_MAX, 8 * static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
    mallopt(M_MMAP_MAX, 65536);
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    mallopt(M_TOP_PAD, 128 * 1024);
    malloc_trim(0);
  }
  g_reusing = enable;
#else
  g_reusing = false;
#endif
  return g_reusing;
}

bool ReusingAllocatorEnabled() noexcept {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  return g_reusing;
}

namespace {

// The large-buffer pool: one lock-free stack per power-of-two size class. A free buffer
// holds its own list node in its first bytes, so returning it allocates nothing. Pushes
// come from any thread (libzmq's I/O thread included); pops take the whole stack with
// one exchange (no ABA), keep one buffer and push the rest back.
constexpr int kPoolMinShift = 20;  // 1 MiB
constexpr int kPoolClasses = 44;   // up to 2^43 bytes
constexpr int kPoolKeepPerClass = 4;
struct PoolNode {
  PoolNode* next;
};
std::atomic<PoolNode*> g_pool[kPoolClasses];
std::atomic<int> g_pool_count[kPoolClasses];

void PoolPush(int cls, void* p) noexcept {
  if (g_pool_count[cls].fetch_add(1, std::memory_order_relaxed) >= kPoolKeepPerClass) {
    g_pool_count[cls].fetch_sub(1, std::memory_order_relaxed);
    std::free(p);
    return;
  }
  auto* node = static_cast<PoolNode*>(p);
  node->next = g_pool[cls].load(std::memory_order_relaxed);
  while (!g_pool[cls].compare_exchange_weak(node->next, node, std::memory_order_release,
                                            std::memory_order_relaxed)) {
  }
}

void* PoolPop(int cls) noexcept {
  PoolNode* all = g_pool[cls].exchange(nullptr, std::memory_order_acquire);
  if (all == nullptr) return nullptr;
  g_pool_count[cls].fetch_sub(1, std::memory_order_relaxed);
  for (PoolNode* rest = all->next; rest != nullptr;) {
    PoolNode* next = rest->next;
    rest->next = g_pool[cls].load(std::memory_order_relaxed);
    while (!g_pool[cls].compare_exchange_weak(rest->next, rest, std::memory_order_release,
                                              std::memory_order_relaxed)) {
    }
    rest = next;
  }
  return all;
}

}  // namespace

Buffer AllocateLarge(size_t size) {
  if (size < (size_t{1} << kPoolMinShift) || !ReusingAllocatorEnabled()) return Buffer::Allocate(size);
  int cls = kPoolMinShift;
  while ((size_t{1} << cls) < size) ++cls;
  if (cls >= kPoolClasses) return Buffer::Allocate(size);
  void* p = PoolPop(cls);
  if (p == nullptr) p = std::aligned_alloc(64, size_t{1} << cls);
  if (p == nullptr) throw std::bad_alloc();
  std::shared_ptr<void> owner(p, [cls](void* q) { PoolPush(cls, q); });
  return Buffer(static_cast<std::byte*>(p), size, std::move(owner));
}

uint64_t HeapFreeBytes() noexcept {
#if defined(__GLIBC__)
  struct mallinfo2 info = mallinfo2();  // summed over every arena
  return info.fordblks;
#else
  return 0;
#endif
}

void ReleaseFreeMemory() {
  for (int cls = 0; cls < kPoolClasses; ++cls) {
    PoolNode* all = g_pool[cls].exchange(nullptr, std::memory_order_acquire);
    while (all != nullptr) {
      PoolNode* next = all->next;
      g_pool_count[cls].fetch_sub(1, std::memory_order_relaxed);
      std::free(all);
      all = next;
    }
  }
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

bool ApplyMemoryPolicy() {
  bool reuse = true;
  const char* env = std::getenv(kEnvReuse);
  if (env != nullptr && (std::string(env) == "0" || std::string(env) == "1")) {
    reuse = std::string(env) == "1";
  } else if (Cached().config && Cached().config->reuse_memory) {
    reuse = *Cached().config->reuse_memory;
  }
  return UseReusingAllocator(reuse);
}

}  // namespace zerocan
