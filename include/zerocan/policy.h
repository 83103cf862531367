// Policy: the sender's choices about where payload bytes travel, and the process's
// memory policy for large buffers.
//
// A payload of at least `inline_threshold` bytes leaves as its own ZeroMQ frame,
// without a copy; a smaller one is copied into the envelope. The threshold is measured,
// per machine and transport, by `zerocan tune --write`, which stores it in the
// per-user file ThresholdConfigPath():
//
//   $XDG_CONFIG_HOME/zerocan/threshold.json   (or ~/.config/zerocan/threshold.json)
//   {
//     "format": "zerocan-threshold/1",
//     "inline_threshold": {"inproc": 1024, "ipc": 4096, "tcp": 4096},
//     "default": 4096,                 // for transports not listed (and Policy::Default)
//     "reuse_memory": true,            // the memory policy tune measured as better
//     "machine": "...", "measured_at": "2026-11-26T14:00:00Z"   // informative
//   }
//
// Order of precedence: the environment variable ZEROCAN_INLINE_THRESHOLD (a size such as
// 4096, 64k or 1M) overrides everything; then the file; then kDefaultInlineThreshold. A
// missing file is silent; an unreadable or corrupt one falls back to the built-in
// default with one warning on stderr per process, never an exception. Policies are
// values: each channel holds one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "zerocan/buffer.h"

namespace zerocan {

class SharedArena;     // zerocan/shared.h
struct HostIdentity;  // zerocan/shared.h
struct SharedOrigin;  // zerocan/shared.h

// Measured on the reference machine (2-vCPU VM, libzmq 4.3.4) by `zerocan tune`: end to
// end, inline wins below about 1-2 KiB on every transport and a zero-copy frame wins from
// 16-64 KiB on; in between the two are within noise. Two full runs put the crossovers at
// inproc 2-8 KiB, ipc 8-32 KiB, tcp 2-8 KiB, so 4 KiB sits in every transport's tie
// region. See README "How the threshold is chosen".
inline constexpr size_t kDefaultInlineThreshold = 4096;

// The tuned thresholds as stored in the config file.
struct ThresholdConfig {
  // Transport name ("inproc", "ipc", "tcp") -> inline threshold in bytes.
  std::map<std::string, size_t> inline_threshold;
  // For transports not listed, and for Policy::Default().
  std::optional<size_t> default_threshold;
  // The memory policy that measured better (see UseReusingAllocator); unset = unknown.
  std::optional<bool> reuse_memory;
  std::string machine;
  std::string measured_at;

  // The threshold for `transport` (a name or an endpoint such as "tcp://host:5555"),
  // or nullopt when the file has none for it and no default.
  std::optional<size_t> ThresholdFor(std::string_view transport) const;
};

// $XDG_CONFIG_HOME/zerocan/threshold.json, else $HOME/.config/zerocan/threshold.json;
// "" when neither variable is set.
std::string ThresholdConfigPath();

// Reads a config file. Returns nullopt when the file does not exist (no warning) or
// cannot be used (then *warning, if given, says why: unreadable, not JSON, wrong format,
// a value that is not a size). Never throws.
std::optional<ThresholdConfig> ReadThresholdConfig(const std::string& path,
                                                   std::string* warning = nullptr);

// Writes `config` to `path` atomically (temporary file + rename), creating the
// directory. Throws zerocan::Error naming the path on failure.
void WriteThresholdConfig(const ThresholdConfig& config, const std::string& path);

// "inproc", "ipc", "tcp", ... from an endpoint "tcp://..." or a bare transport name.
std::string_view TransportOf(std::string_view endpoint_or_transport) noexcept;

struct Policy {
  size_t inline_threshold = kDefaultInlineThreshold;
  // Store small integer arrays in the narrowest integer type holding every element
  // (inline payloads only; zero-copy frames are never rewritten).
  bool pack_integers = true;
  // Shared memory (shared.h; same host only). When set, a payload at or above the
  // threshold travels as a reference into this arena instead of as a frame: in place
  // when it already lies in the arena (no copy), else copied into it once (counted in
  // Stats::shared_bytes_copied), or as a frame when the arena has no room. Not owned.
  // Set by a client for the calls to a peer whose hello said it shares this host; unset
  // by default.
  SharedArena* shared_arena = nullptr;
  // Payloads a reply may hand back as they came: the shared-memory arguments of the
  // call it answers (Message::shared_origins()). A payload at or above the threshold
  // that lies inside one travels back as a reference to the same bytes of the caller's
  // arena, with no copy; the caller keeps those blocks as long as its result. Not owned;
  // set by an engine for the reply to each call that had such arguments.
  const std::vector<SharedOrigin>* shared_returns = nullptr;

  // The process default: ZEROCAN_INLINE_THRESHOLD if set and valid, else the config
  // file's "default", else kDefaultInlineThreshold. Read once; warnings (invalid
  // variable, corrupt file) go to stderr once.
  static const Policy& Default();
  // The policy for a transport name or endpoint ("tcp", "ipc://x", "inproc://y"): the
  // variable, else the file's value for that transport, else its "default", else
  // kDefaultInlineThreshold. The file is read once per process.
  static Policy ForTransport(std::string_view endpoint_or_transport);
  // As ForTransport, but reads the environment and the file now (no caching) and puts
  // warnings into *warnings instead of stderr. For tools and tests.
  static Policy Load(std::string_view endpoint_or_transport, std::string* warnings = nullptr);

  // Parses a size such as "4096", "64k", "1M", "2GiB"; -1 on error.
  static long long ParseSize(const std::string& text) noexcept;
};

// ---- memory policy ---------------------------------------------------------------------
//
// With glibc's defaults every large allocation (a received 128 MB frame, a fresh result
// tensor) is a fresh mmap, and every first touch of its pages is a page fault: on a VM
// that costs ~10 us per 4 KiB and makes big messages run at a tenth of memory speed.
// The reusing allocator keeps freed memory in the process for the next large buffer
// (glibc: large blocks come from the heap, M_MMAP_MAX = 0, and the heap is not trimmed),
// trading resident memory for speed. Process-wide; call early, before threads allocate.

// Turns the reusing allocator on (or back to glibc's default settings). No-op where the
// C library is not glibc. Returns whether it is now on.
bool UseReusingAllocator(bool enable = true);
bool ReusingAllocatorEnabled() noexcept;
// Free bytes the C library's heap holds for reuse right now (glibc: mallinfo2 over
// every arena; 0 elsewhere).
uint64_t HeapFreeBytes() noexcept;
// Gives memory kept for reuse back to the system: AllocateLarge's pooled buffers and
// the heap's free pages (glibc: malloc_trim). The next large buffer pays its page faults
// again. Never called by the library itself: a program calls it when it has gone quiet
// (the zerocan engine and broker programs do, see docs/SECURITY.md).
void ReleaseFreeMemory();
// Applies the memory policy the programs use: ZEROCAN_REUSE_MEMORY=0/1 if set, else the
// config file's "reuse_memory", else on. Returns whether reuse is on.
bool ApplyMemoryPolicy();

// A buffer for a large payload the program is about to fill (a result tensor, a frame
// to send). With the reusing allocator on and at least 1 MiB, it comes from a
// process-wide pool of buffers released earlier (power-of-two size classes; pages past
// `size` are never touched): a zero-copy send releases its buffer on libzmq's I/O thread
// with a lock-free push, and the next AllocateLarge takes it back with its pages
// already mapped. glibc alone does not manage this: sender buffers and libzmq's receive
// buffers differ by a few bytes, small blocks land between them, and each large request
// ends up on fresh pages. Otherwise, and below 1 MiB, Buffer::Allocate. Thread-safe.
Buffer AllocateLarge(size_t size);

}  // namespace zerocan
