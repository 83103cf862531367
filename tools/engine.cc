// Not built yet: see the open issue for this subcommand.
#include <cstdio>
#include "tools/commands.h"
namespace zerocan::tools {
int RunEngine(int, char** argv) { std::fprintf(stderr, "zerocan %s: not implemented yet\n", argv[0]); return 3; }
}  // namespace zerocan::tools
