// The threshold tuner's measurements, made by `zerocan tune` (tools/tune.cc) and reused
// by the benchmark program's tune section (`zerocan-bench --only tune`, bench/tune_bench.cc).
//
// For each transport and payload size, messages carrying one bytes payload go end to
// end through a real socket pair (PUSH -> PULL, a receiver thread receiving, decoding
// and reading the payload) in each placement mode: inline in the envelope, a copied
// frame, a zero-copy frame (and, for the bench, the tuned policy). Modes are interleaved
// round by round; each sample is one batch of messages at steady state. The cost that
// decides the threshold is the process CPU time per message (sender, receiver and
// libzmq's I/O threads together): on a small shared machine it is what a message costs,
// where wall time would also count whatever else ran.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tools/tune_choice.h"

namespace zerocan::tools {

enum class Placement { kInline = 0, kCopiedFrame = 1, kFrame = 2, kTuned = 3 };
inline constexpr int kPlacements = 4;
const char* PlacementName(Placement p);

struct Stat {
  double median = 0;
  double spread = 0;  // half the interquartile range, relative to the median
};

struct PointResult {
  size_t size = 0;
  bool measured[kPlacements] = {};
  Stat cost[kPlacements];        // process CPU ns per message
  Stat sender_cpu[kPlacements];  // sender thread CPU ns per message
  Stat wall[kPlacements];        // wall ns per message (1e9 / messages per second)
  Stat faults[kPlacements];      // minor page faults per message
  // With kTuned measured: the median over rounds of tuned / (the placement with the lower
  // median) in the same round. Samples taken moments apart share the machine's load, so
  // this cancels the drift that medians of separate samples keep.
  double tuned_paired = 0;
};

struct TransportResult {
  std::string transport;
  std::vector<PointResult> points;
  size_t threshold = 0;          // chosen: payloads >= threshold go as frames
  size_t copy_crossover = 0;     // where a zero-copy frame starts beating a copied one
  size_t tuned_threshold = 0;    // the policy measured as kTuned (bench)
};

struct SweepOptions {
  std::vector<std::string> transports = {"inproc", "ipc", "tcp"};
  std::vector<size_t> sizes;     // empty: DefaultSizes(quick)
  bool quick = false;
  int rounds = 0;                // 0: 6
  double batch_ns = 0;           // target CPU time of one batch; 0: 20 ms (quick: 5 ms)
  bool copied_frame = true;      // also measure the copied-frame mode
  bool tuned = false;            // also measure Policy::Load(transport) (the bench)
  // Called with the fraction done (0..1) and what is being measured.
  std::function<void(double, const std::string&)> progress;
};

// 64 B .. 64 MiB, x4 steps (quick: x16 steps up to 16 MiB).
std::vector<size_t> DefaultSizes(bool quick);

// Measures every transport and size. Turns the reusing allocator on (the programs'
// memory policy) for the sweep.
std::vector<TransportResult> Sweep(const SweepOptions& options);

// The memory policy measured: large messages over tcp loopback, fresh buffers each
// (sender allocates and fills, receiver frees), glibc defaults vs the reusing allocator,
// interleaved.
struct MemoryResult {
  size_t message_bytes = 0;
  Stat default_gbps, reuse_gbps;
  Stat default_faults, reuse_faults;  // minor page faults per message
  Stat default_cpu_gbps, reuse_cpu_gbps;  // bytes per second of process CPU time
  double ratio = 0;                   // reuse / default throughput (wall)
  double cpu_ratio = 0;               // reuse / default bytes per CPU second
};
MemoryResult MeasureMemoryPolicy(bool quick, const std::function<void(double, const std::string&)>& progress = {});

// A one-line progress bar on stderr when it is a terminal; nothing otherwise.
std::function<void(double, const std::string&)> TerminalProgress();
void ClearProgress();

}  // namespace zerocan::tools
