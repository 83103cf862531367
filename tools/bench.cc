// `zerocan bench [--only SECTION] [--json] [--quick]`: every benchmark section, side by
// side with its baselines, as tables (or JSON rows for machines).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "bench.h"
#include "tools/commands.h"

namespace zerocan::tools {

int RunBench(int argc, char** argv) {
  bench::Options options;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--json") {
      options.json = true;
    } else if (a == "--quick") {
      options.quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "usage: zerocan bench [--only core|apply|tune|safety|python] [--json] [--quick]\n");
      return 2;
    }
  }
  struct Section {
    const char* name;
    void (*run)(const bench::Options&, std::vector<bench::Row>*);
  };
  // The Python section is its own program (clients/python, against ipyparallel); it runs
  // only when asked for by name, since it needs the package installed.
  if (only == "python") {
    return std::system(options.quick ? "python3 -m zerocan.bench --quick" : "python3 -m zerocan.bench") == 0 ? 0 : 1;
  }
  const Section sections[] = {{"core", bench::RunCore},
                              {"apply", bench::RunApply},
                              {"tune", bench::RunTune},
                              {"safety", bench::RunSafety}};
  std::vector<bench::Row> rows;
  bool ran = false;
  for (const Section& s : sections) {
    if (!only.empty() && only != s.name) continue;
    s.run(options, &rows);
    ran = true;
  }
  if (!ran) {
    std::fprintf(stderr, "zerocan bench: no section named \"%s\" (have: core, apply, tune, safety, python)\n", only.c_str());
    return 2;
  }
  if (options.json) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const bench::Row& r = rows[i];
      std::printf(
          "  {\"section\": \"%s\", \"name\": \"%s\", \"metric\": \"%s\", \"value\": %.6g, "
          "\"baseline\": \"%s\", \"baseline_value\": %.6g, \"ratio\": %.4g}%s\n",
          r.section.c_str(), r.name.c_str(), r.metric.c_str(), r.value, r.baseline.c_str(),
          r.baseline_value, r.ratio, i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
  }
  return 0;
}

}  // namespace zerocan::tools
