// The benchmark sections run by the zerocan-bench program (bench/main.cc). Each prints one table, side by side with
// its baselines measured in the same run, and can emit JSON rows.
#pragma once

#include <string>
#include <vector>

namespace zerocan::bench {

struct Row {
  std::string section;
  std::string name;      // what was measured
  std::string metric;    // "ns/op", "bytes", "GB/s", ...
  double value = 0;
  std::string baseline;  // name of the baseline compared with ("" = none)
  double baseline_value = 0;
  double ratio = 0;      // how many times better than the baseline (>1 = better)
};

struct Options {
  bool quick = false;
  bool json = false;
};

// Each section appends its rows and prints its table unless options.json.
void RunCore(const Options& options, std::vector<Row>* rows);   // bench/core_bench.cc
void RunApply(const Options& options, std::vector<Row>* rows);  // bench/apply_bench.cc
void RunTune(const Options& options, std::vector<Row>* rows);   // bench/tune_bench.cc
void RunSafety(const Options& options, std::vector<Row>* rows); // bench/safety_bench.cc
void RunShared(const Options& options, std::vector<Row>* rows); // bench/shared_bench.cc

}  // namespace zerocan::bench
