// `zerocan-bench --only tune`: does the tuned policy pick well? Per transport and size,
// interleaved in one run: always inline, always a zero-copy frame, and the tuned policy
// (Policy::Load(transport): the thresholds `zerocan tune --write` stored, else the
// built-in default), reported as tuned cost / min(inline, frame) (target <= 1.1 at every
// size). Also the memory policy: 128 MiB messages over tcp, glibc defaults vs the
// reusing allocator (target >= 3x).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <limits>

#include "absl/strings/str_cat.h"
#include "bench.h"
#include "bench_util.h"
#include "tools/tune_measure.h"
#include "zerocan/policy.h"

namespace zerocan::bench {

// The measurement of `zerocan tune` (tools/tune_measure.h), here with the tuned policy.
using tools::ClearProgress;
using tools::MeasureMemoryPolicy;
using tools::MemoryResult;
using tools::Placement;
using tools::PointResult;
using tools::Sweep;
using tools::SweepOptions;
using tools::TerminalProgress;
using tools::TransportResult;

void RunTune(const Options& options, std::vector<Row>* rows) {
  double started = NowNs();
  SweepOptions sweep;
  sweep.quick = options.quick;
  sweep.copied_frame = false;
  sweep.tuned = true;
  // Multiples of 6: every order of the 3 modes equally often. Where the tuned policy makes
  // the same placement as the better fixed one (the same code path; only the threshold
  // number differs), the two medians differ by noise alone: 24 rounds rather than 12 cut
  // that noise by ~1.4x. A burst of other load lasting several rounds can still put a
  // median on the edge between two regimes; the paired column (per-round ratios) is
  // immune to that.
  sweep.rounds = options.quick ? 6 : 24;
  if (!options.json) sweep.progress = TerminalProgress();
  // Diagnostics: ZEROCAN_TUNE_TRANSPORTS=tcp,ipc limits the transports,
  // ZEROCAN_TUNE_BATCH_MS sets the batch length.
  if (const char* t = std::getenv("ZEROCAN_TUNE_TRANSPORTS")) {
    sweep.transports.clear();
    std::string list = t;
    for (size_t start = 0; start <= list.size();) {
      size_t comma = list.find(',', start);
      sweep.transports.push_back(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (const char* b = std::getenv("ZEROCAN_TUNE_BATCH_MS")) sweep.batch_ns = std::atof(b) * 1e6;
  // ZEROCAN_TUNE_SIZES=4M,16M measures only those sizes, ZEROCAN_TUNE_ROUNDS=24 sets the rounds.
  if (const char* z = std::getenv("ZEROCAN_TUNE_SIZES")) {
    std::string list = z;
    for (size_t start = 0; start <= list.size();) {
      size_t comma = list.find(',', start);
      long long v = Policy::ParseSize(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (v > 0) sweep.sizes.push_back(static_cast<size_t>(v));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (const char* r = std::getenv("ZEROCAN_TUNE_ROUNDS")) sweep.rounds = std::max(1, std::atoi(r));
  std::vector<TransportResult> results = Sweep(sweep);
  MemoryResult mem = MeasureMemoryPolicy(options.quick, sweep.progress);
  ClearProgress();

  const int kI = static_cast<int>(Placement::kInline), kF = static_cast<int>(Placement::kFrame),
            kT = static_cast<int>(Placement::kTuned);
  bool all_ok = true, all_paired_ok = true;
  double worst = 0, worst_paired = 0;
  for (const TransportResult& tr : results) {
    for (const PointResult& p : tr.points) {
      double best = std::min(p.cost[kI].median, p.cost[kF].median);
      double ratio = best > 0 ? p.cost[kT].median / best : 0;
      worst = std::max(worst, ratio);
      worst_paired = std::max(worst_paired, p.tuned_paired);
      all_ok = all_ok && ratio <= 1.1;
      all_paired_ok = all_paired_ok && p.tuned_paired <= 1.1;
      rows->push_back(Row{"tune", absl::StrCat(tr.transport, " ", p.size, " B tuned paired ratio"), "ratio",
                          p.tuned_paired, "", 0, 0});
      rows->push_back(Row{"tune", absl::StrCat(tr.transport, " ", p.size, " B tuned"), "cpu ns/msg",
                          p.cost[kT].median, "min(inline, frame)", best, best > 0 ? best / p.cost[kT].median : 0});
    }
  }
  rows->push_back(Row{"tune", absl::StrCat("memory policy ", mem.message_bytes, " B over tcp"), "GB/s",
                      mem.reuse_gbps.median, "glibc defaults", mem.default_gbps.median, mem.ratio});
  if (options.json) return;

  std::printf("== tune: tuned policy vs always inline / always frame (process CPU per message, median of %d "
              "interleaved rounds) ==\n",
              sweep.rounds);
  for (const TransportResult& tr : results) {
    std::string threshold = tr.tuned_threshold == std::numeric_limits<size_t>::max()
                                ? "never"
                                : FormatBytes(static_cast<double>(tr.tuned_threshold));
    std::printf("\n%s (tuned threshold %s; this run's own choice would be %s)\n", tr.transport.c_str(),
                threshold.c_str(),
                tr.threshold == std::numeric_limits<size_t>::max() ? "never"
                                                                   : FormatBytes(static_cast<double>(tr.threshold)).c_str());
    Table table({"size", "always inline", "always frame", "tuned", "tuned picks", "tuned/min", "<= 1.1",
                 "paired", "<= 1.1"});
    for (const PointResult& p : tr.points) {
      double best = std::min(p.cost[kI].median, p.cost[kF].median);
      double ratio = best > 0 ? p.cost[kT].median / best : 0;
      char r[16], paired[16];
      std::snprintf(r, sizeof r, "%.3f", ratio);
      std::snprintf(paired, sizeof paired, "%.3f", p.tuned_paired);
      table.Add({FormatBytes(static_cast<double>(p.size)), FormatNs(p.cost[kI].median), FormatNs(p.cost[kF].median),
                 FormatNs(p.cost[kT].median), p.size >= tr.tuned_threshold ? "frame" : "inline", r,
                 ratio <= 1.1 ? "PASS" : "FAIL", paired, p.tuned_paired <= 1.1 ? "PASS" : "FAIL"});
    }
    table.Print();
  }
  std::printf("\nworst tuned/min (medians) over every size and transport: %.3f -> %s\n", worst, all_ok ? "PASS" : "FAIL");
  std::printf("worst paired ratio (median over rounds of tuned / better placement in the same round): %.3f -> %s\n",
              worst_paired, all_paired_ok ? "PASS" : "FAIL");
  std::printf("memory policy, %s over tcp: glibc defaults %.2f GB/s (%.0f faults/msg), reusing allocator %.2f GB/s "
              "(%.0f faults/msg): %.1fx (target >= 3x) -> %s\n",
              FormatBytes(static_cast<double>(mem.message_bytes)).c_str(), mem.default_gbps.median,
              mem.default_faults.median, mem.reuse_gbps.median, mem.reuse_faults.median, mem.ratio,
              mem.ratio >= 3 ? "PASS" : "FAIL");
  std::printf("(tune section took %.1f s)\n\n", (NowNs() - started) / 1e9);
  std::fflush(stdout);
}

}  // namespace zerocan::bench
