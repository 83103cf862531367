// zerocan-bench [--only SECTION] [--json] [--quick]: every benchmark section, side by side
// with its baselines, as tables (or JSON rows for machines). Its own program, run from
// the build tree (build/bench/zerocan-bench); the installed zerocan program does not carry
// the benchmarks or their baselines (protobuf, msgpack-c).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench.h"

int main(int argc, char** argv) {
  using namespace zerocan::bench;
  Options options;
  std::string only;
  CLI::App app(
      "zerocan-bench: the benchmark sections, each side by side with its baselines measured\n"
      "in the same run (msgpack-c, protobuf, raw libzmq, ipyparallel).",
      "zerocan-bench");
  app.add_option("--only", only, "run one section")
      ->check(CLI::IsMember({"core", "apply", "tune", "safety", "shared", "python"}));
  app.add_flag("--json", options.json, "print JSON rows instead of tables");
  app.add_flag("--quick", options.quick, "fewer repetitions");
  app.footer(
      "The python section (clients/python/benchmarks/zerocan_bench.py, against ipyparallel)\n"
      "runs only when asked for by name: it needs the Python package and ipyparallel.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  if (only == "python") {
    std::string command = std::string("python3 '") + ZEROCAN_SOURCE_DIR +
                          "/clients/python/benchmarks/zerocan_bench.py'" +
                          (options.quick ? " --quick" : "") + (options.json ? " --json" : "");
    return std::system(command.c_str()) == 0 ? 0 : 1;
  }
  struct Section {
    const char* name;
    void (*run)(const Options&, std::vector<Row>*);
  };
  const Section sections[] = {{"core", RunCore},     {"apply", RunApply},   {"tune", RunTune},
                              {"safety", RunSafety}, {"shared", RunShared}};
  std::vector<Row> rows;
  for (const Section& s : sections) {
    if (!only.empty() && only != s.name) continue;
    s.run(options, &rows);
  }
  if (options.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const Row& r : rows) {
      out.push_back({{"section", r.section},
                     {"name", r.name},
                     {"metric", r.metric},
                     {"value", r.value},
                     {"baseline", r.baseline},
                     {"baseline_value", r.baseline_value},
                     {"ratio", r.ratio}});
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
  }
  return 0;
}
