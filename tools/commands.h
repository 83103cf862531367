// Entry points of the `zerocan` subcommands, one per file in tools/. Each takes the
// arguments after the program name (argv[0] is the subcommand) and returns the exit code.
#pragma once

namespace zerocan::tools {

int RunBench(int argc, char** argv);
int RunSchema(int argc, char** argv);
int RunVersion(int argc, char** argv);

}  // namespace zerocan::tools
