// `zerocan tune [--transport inproc|ipc|tcp|all] [--quick] [--json] [--plot FILE]
// [--write]`: measures, on this machine and per transport, where sending a payload as its
// own zero-copy frame starts to beat copying it into the envelope, and which memory
// policy large buffers should use; prints the table and the crossover, plots the curves,
// and with --write stores the thresholds where Policy::Default()/ForTransport() read
// them (ThresholdConfigPath(), see include/zerocan/policy.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "tools/commands.h"
#include "tools/measure_util.h"
#include "tools/tune_measure.h"
#include "zerocan/policy.h"

namespace zerocan::tools {

namespace {

using nlohmann::ordered_json;

std::string ThresholdText(size_t t) {
  if (t == std::numeric_limits<size_t>::max()) return "never (always inline)";
  if (t <= 1) return "always a frame";
  return FormatBytes(static_cast<double>(t));
}

ordered_json JsonThreshold(size_t t) {
  return t == std::numeric_limits<size_t>::max() ? ordered_json(nullptr) : ordered_json(t);
}

std::string StatText(const Stat& s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s ±%.0f%%", FormatNs(s.median).c_str(), s.spread * 100);
  return buf;
}

std::string MachineName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string cpu;
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  return absl::StrCat(host, ", ", sysconf(_SC_NPROCESSORS_ONLN), " CPUs", cpu.empty() ? "" : ", ", cpu);
}

std::string UtcNow() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

void PrintTable(const TransportResult& tr) {
  std::printf("\n%s: process CPU per message (median ±spread), wall per message, page faults\n",
              tr.transport.c_str());
  Table table({"size", "inline", "copied frame", "zero-copy frame", "better", "inline/frame",
                      "sender CPU (inl/frame)", "msgs/s (inl/frame)", "faults/msg (inl/frame)"});
  for (const PointResult& p : tr.points) {
    const int kI = static_cast<int>(Placement::kInline), kC = static_cast<int>(Placement::kCopiedFrame),
              kF = static_cast<int>(Placement::kFrame);
    double ratio = p.cost[kF].median > 0 ? p.cost[kI].median / p.cost[kF].median : 0;
    char rates[64], faults[64];
    std::snprintf(rates, sizeof rates, "%.0f / %.0f", 1e9 / p.wall[kI].median, 1e9 / p.wall[kF].median);
    std::snprintf(faults, sizeof faults, "%.1f / %.1f", p.faults[kI].median, p.faults[kF].median);
    table.Add({FormatBytes(static_cast<double>(p.size)), StatText(p.cost[kI]),
               p.measured[kC] ? StatText(p.cost[kC]) : "-", StatText(p.cost[kF]),
               p.size >= tr.threshold ? "frame" : "inline", FormatRatio(ratio),
               absl::StrCat(FormatNs(p.sender_cpu[kI].median), " / ", FormatNs(p.sender_cpu[kF].median)), rates,
               faults});
  }
  table.Print();
  std::printf("%s crossover: inline below %s, zero-copy frame from there on", tr.transport.c_str(),
              ThresholdText(tr.threshold).c_str());
  if (tr.copy_crossover != 0) {
    std::printf(" (a zero-copy frame beats a copied frame from %s)", ThresholdText(tr.copy_crossover).c_str());
  }
  std::printf("\n");
}

// Plots cost against size per transport (log-log), the crossover marked, with gnuplot.
bool Plot(const std::vector<TransportResult>& results, const std::string& file) {
  std::string base = absl::StrCat("/tmp/zerocan-tune-", getpid());
  std::string script_path = base + ".gp";
  std::ofstream script(script_path);
  bool svg = file.size() >= 4 && file.compare(file.size() - 4, 4, ".svg") == 0;
  script << (svg ? "set terminal svg size 1200,450 dynamic font 'sans,11'\n"
                 : "set terminal pngcairo size 1400,500 font 'sans,10'\n");
  script << "set output '" << file << "'\n";
  script << "set multiplot layout 1," << results.size()
         << " title 'zerocan tune: CPU per message, end to end (lower is better)'\n";
  script << "set logscale xy\nset grid\nset key top left reverse Left\n";
  script << "set xlabel 'payload bytes'\nset ylabel 'ns per message'\n";
  script << "set format x '%.0s%cB'\n";
  std::vector<std::string> data_files;
  for (const TransportResult& tr : results) {
    std::string data_path = absl::StrCat(base, "-", tr.transport, ".dat");
    data_files.push_back(data_path);
    std::ofstream data(data_path);
    for (const PointResult& p : tr.points) {
      data << p.size << " " << p.cost[static_cast<int>(Placement::kInline)].median << " "
           << p.cost[static_cast<int>(Placement::kCopiedFrame)].median << " "
           << p.cost[static_cast<int>(Placement::kFrame)].median << "\n";
    }
    data.close();
    script << "set title '" << tr.transport << ": threshold " << ThresholdText(tr.threshold) << "'\n";
    script << "unset arrow\n";
    if (tr.threshold > 1 && tr.threshold != std::numeric_limits<size_t>::max()) {
      script << "set arrow from " << tr.threshold << ", graph 0 to " << tr.threshold
             << ", graph 1 nohead dashtype 2 linewidth 2 linecolor rgb '#cc0000'\n";
      script << "set label 1 'threshold' at " << tr.threshold << ", graph 0.05 left offset 0.5,0 textcolor rgb '#cc0000'\n";
    } else {
      script << "unset label 1\n";
    }
    bool copied = !tr.points.empty() && tr.points[0].measured[static_cast<int>(Placement::kCopiedFrame)];
    script << "plot '" << data_path << "' using 1:2 with linespoints title 'inline (copied into envelope)', '"
           << data_path << "' using 1:4 with linespoints title 'zero-copy frame'";
    if (copied) script << ", '" << data_path << "' using 1:3 with linespoints dashtype 3 title 'copied frame'";
    script << "\n";
  }
  script << "unset multiplot\n";
  script.close();
  int rc = std::system(absl::StrCat("gnuplot '", script_path, "' 2>&1").c_str());
  std::remove(script_path.c_str());
  for (const std::string& d : data_files) std::remove(d.c_str());
  return rc == 0;
}

void PrintJson(const std::vector<TransportResult>& results, const MemoryResult* memory,
               const std::string& written) {
  ordered_json doc;
  doc["machine"] = MachineName();
  ordered_json transports = ordered_json::array();
  for (const TransportResult& tr : results) {
    ordered_json points = ordered_json::array();
    for (const PointResult& p : tr.points) {
      ordered_json point;
      point["size"] = p.size;
      for (int m = 0; m < kPlacements; ++m) {
        if (!p.measured[m]) continue;
        std::string key = PlacementName(static_cast<Placement>(m));
        for (char& c : key) c = c == ' ' || c == '-' ? '_' : c;
        point[key] = {{"cpu_ns", p.cost[m].median},
                      {"spread", p.cost[m].spread},
                      {"sender_cpu_ns", p.sender_cpu[m].median},
                      {"msgs_per_s", 1e9 / p.wall[m].median},
                      {"faults_per_msg", p.faults[m].median}};
      }
      points.push_back(std::move(point));
    }
    transports.push_back({{"transport", tr.transport},
                          {"threshold", JsonThreshold(tr.threshold)},
                          {"copy_crossover", JsonThreshold(tr.copy_crossover)},
                          {"points", std::move(points)}});
  }
  doc["transports"] = std::move(transports);
  if (memory != nullptr) {
    doc["memory"] = {{"message_bytes", memory->message_bytes},
                     {"default_gbps", memory->default_gbps.median},
                     {"reuse_gbps", memory->reuse_gbps.median},
                     {"default_faults_per_msg", memory->default_faults.median},
                     {"reuse_faults_per_msg", memory->reuse_faults.median},
                     {"ratio", memory->ratio},
                     {"cpu_ratio", memory->cpu_ratio}};
  }
  if (!written.empty()) doc["written"] = written;
  // Host and CPU names come from the machine: escaped by the library, never by hand.
  std::printf("%s\n", doc.dump(2, ' ', false, ordered_json::error_handler_t::replace).c_str());
}

struct TuneArgs {
  SweepOptions options;
  bool json = false, write = false, no_memory = false;
  std::string plot;
};

int RunTune(TuneArgs& args) {
  SweepOptions& options = args.options;
  const bool json = args.json, write = args.write, memory = !args.no_memory;
  const std::string& plot = args.plot;
  if (options.rounds == 1 || !options.sizes.empty()) options.batch_ns = 1e6;
  double started = NowNs();
  options.progress = TerminalProgress();
  std::vector<TransportResult> results = Sweep(options);
  MemoryResult mem;
  if (memory) mem = MeasureMemoryPolicy(options.quick, options.progress);
  ClearProgress();

  std::string written;
  if (write) {
    ThresholdConfig config;
    for (const TransportResult& tr : results) config.inline_threshold[tr.transport] = tr.threshold;
    // The default for unlisted transports and Policy::Default(): tcp's if measured (the
    // usual network case), else the largest measured.
    auto tcp = config.inline_threshold.find("tcp");
    if (tcp != config.inline_threshold.end()) {
      config.default_threshold = tcp->second;
    } else {
      size_t largest = 0;
      for (const auto& [t, v] : config.inline_threshold) largest = std::max(largest, v);
      config.default_threshold = largest;
    }
    if (memory) config.reuse_memory = mem.ratio >= 1.0;
    config.machine = MachineName();
    config.measured_at = UtcNow();
    try {
      WriteThresholdConfig(config, ThresholdConfigPath());
      written = ThresholdConfigPath();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "zerocan tune: %s\n", e.what());
      return 1;
    }
  }
  bool plotted = false;
  if (!plot.empty()) {
    plotted = Plot(results, plot);
    if (!plotted) std::fprintf(stderr, "zerocan tune: gnuplot failed or is missing; no plot written\n");
  }

  if (json) {
    PrintJson(results, memory ? &mem : nullptr, written);
    return plot.empty() || plotted ? 0 : 1;
  }
  std::printf("zerocan tune on %s (%s sweep, process CPU time per message, %s)\n", MachineName().c_str(),
              options.quick ? "quick" : "full", "reusing allocator on during the sweep");
  for (const TransportResult& tr : results) PrintTable(tr);
  std::printf("\nthresholds: ");
  for (const TransportResult& tr : results) {
    std::printf("%s %s  ", tr.transport.c_str(), ThresholdText(tr.threshold).c_str());
  }
  std::printf("\n");
  if (memory) {
    std::printf("\nmemory policy, %s messages over tcp loopback (fresh buffer per message):\n",
                FormatBytes(static_cast<double>(mem.message_bytes)).c_str());
    std::printf("  glibc defaults    %.2f GB/s wall (±%.0f%%), %.2f GB per CPU-second, %.0f page faults/msg\n",
                mem.default_gbps.median, mem.default_gbps.spread * 100, mem.default_cpu_gbps.median,
                mem.default_faults.median);
    std::printf("  reusing allocator %.2f GB/s wall (±%.0f%%), %.2f GB per CPU-second, %.0f page faults/msg\n",
                mem.reuse_gbps.median, mem.reuse_gbps.spread * 100, mem.reuse_cpu_gbps.median,
                mem.reuse_faults.median);
    std::printf("  ratio %.1fx wall, %.1fx per CPU-second\n", mem.ratio, mem.cpu_ratio);
    std::printf("  -> %s\n",
                mem.ratio >= 1.0 ? "reuse freed memory (zerocan::UseReusingAllocator / ApplyMemoryPolicy)"
                                 : "keep glibc's defaults");
  }
  if (!written.empty()) std::printf("\nwrote %s\n", written.c_str());
  if (plotted) std::printf("plot: %s\n", plot.c_str());
  std::printf("(tune took %.1f s)\n", (NowNs() - started) / 1e9);
  return plot.empty() || plotted ? 0 : 1;
}

}  // namespace

void AddTune(CLI::App& app, RunFunction* chosen) {
  auto args = std::make_shared<TuneArgs>();
  CLI::App* sub = app.add_subcommand("tune", "measure the inline/zero-copy threshold of this machine");
  sub->description(
      "measure the inline/zero-copy threshold of this machine\n"
      "\n"
      "Measures, per transport and payload size, where sending a payload as its own\n"
      "zero-copy frame starts to beat copying it into the envelope, and which memory policy\n"
      "large buffers should use; prints the table and the crossover.");
  sub->add_option_function<std::string>(
         "--transport",
         [args](const std::string& t) {
           args->options.transports = t == "all" ? std::vector<std::string>{"inproc", "ipc", "tcp"}
                                                 : std::vector<std::string>{t};
         },
         "the transports to measure (default all)")
      ->check(CLI::IsMember({"inproc", "ipc", "tcp", "all"}));
  sub->add_flag("--quick", args->options.quick, "fewer sizes and shorter batches");
  sub->add_flag("--json", args->json, "print JSON instead of tables");
  sub->add_option("--plot", args->plot, "plot the curves with gnuplot into FILE.png or FILE.svg")
      ->type_name("FILE");
  sub->add_flag("--write", args->write,
                "store the thresholds where Policy::Default()/ForTransport() read them (" +
                    ThresholdConfigPath() + ")");
  sub->add_flag("--no-memory", args->no_memory, "skip measuring the memory policy");
  // Mostly for tests: a short sweep of chosen sizes and rounds. (In a hidden group
  // CLI11 would leave the option's name out of its error messages.)
  sub->add_option_function<std::vector<std::string>>(
         "--sizes",
         [args](const std::vector<std::string>& sizes) {
           for (const std::string& item : sizes) {
             args->options.sizes.push_back(static_cast<size_t>(Policy::ParseSize(item)));
           }
         },
         "payload sizes to measure, comma-separated (\"64,1M\"; default 64 B..64 MiB)")
      ->delimiter(',')
      ->check(CLI::Validator(
          [](std::string& item) -> std::string {
            return Policy::ParseSize(item) > 0 ? "" : "not a size: \"" + item + "\"";
          },
          "SIZE"))
      ->group("Sweep");
  sub->add_option("--rounds", args->options.rounds, "interleaved rounds per size (default 6)")
      ->check(CLI::Range(1, 1000))
      ->group("Sweep");
  sub->callback([args, chosen] { *chosen = [args] { return RunTune(*args); }; });
}

}  // namespace zerocan::tools
