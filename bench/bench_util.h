// Helpers of the benchmark sections: interleaved timing of contenders with medians, on
// top of the measuring helpers the benchmark shares with `zerocan tune`
// (tools/measure_util.h). Header-only, bench/ only.
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "tools/measure_util.h"

namespace zerocan::bench {

using tools::CpuNs;
using tools::FormatBytes;
using tools::FormatNs;
using tools::FormatRatio;
using tools::Median;
using tools::NowNs;
using tools::RelativeSpread;
using tools::SettleThreads;
using tools::Sink;
using tools::Table;

// One thing being timed. `op(n)` runs the operation n times; samples are ns per op.
struct Contender {
  std::string name;
  std::function<void(int)> op;
  int iters = 1;
  std::vector<double> samples;
  double median() const { return Median(samples); }
};

// Picks iters so one batch takes about target_ns (at least 1, at most max_iters).
inline void Calibrate(Contender& c, double target_ns, int max_iters = 1 << 20) {
  c.op(1);  // warm: first-touch, caches, lazy init
  int n = 1;
  while (true) {
    double t0 = CpuNs();
    c.op(n);
    double dt = CpuNs() - t0;
    if (dt >= target_ns / 4 || n >= max_iters) {
      double per = dt / n;
      double want = per > 0 ? target_ns / per : max_iters;
      c.iters = static_cast<int>(std::clamp(want, 1.0, static_cast<double>(max_iters)));
      return;
    }
    n *= 4;
  }
}

// Runs every contender once per round, `rounds` times, so slow drifts of the machine
// (other processes, frequency) hit every contender alike. Samples are CPU ns per op.
inline void Interleave(std::vector<Contender*> contenders, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    for (Contender* c : contenders) {
      double t0 = CpuNs();
      c->op(c->iters);
      SettleThreads();
      c->samples.push_back((CpuNs() - t0) / c->iters);
    }
  }
}

}  // namespace zerocan::bench
