// The one `zerocan` program: dispatches to one function per subcommand.
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "tools/commands.h"
#include "zerocan/version.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* help;
};

constexpr Command kCommands[] = {
    {"demo", zerocan::tools::RunDemo, "start a broker and two engines on loopback and tour them"},
    {"engine", zerocan::tools::RunEngine, "serve functions (built-ins and --plugin libraries)"},
    {"broker", zerocan::tools::RunBroker, "forward calls from clients to engines"},
    {"call", zerocan::tools::RunCall, "call a function with JSON arguments, print the result"},
    {"inspect", zerocan::tools::RunInspect, "show the frames and envelope of captured messages"},
    {"record", zerocan::tools::RunRecord, "record a broker's capture socket to a file"},
    {"schema", zerocan::tools::RunSchema, "print the schema's path (--path) or text"},
    {"tune", zerocan::tools::RunTune, "measure the inline/zero-copy threshold of this machine"},
    {"bench", zerocan::tools::RunBench, "run the benchmarks side by side with their baselines"},
    {"keygen", zerocan::tools::RunKeygen, "write a CurveZMQ key pair (--curve FILE)"},
    {"version", zerocan::tools::RunVersion, "print library and protocol versions"},
};

void Usage(FILE* out) {
  std::fprintf(out, "usage: zerocan COMMAND [OPTIONS...]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    Usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    if (std::string_view(argv[1]) == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "zerocan: unknown command \"%s\"\n\n", argv[1]);
  Usage(stderr);
  return 2;
}
