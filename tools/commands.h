// Entry points of the `zerocan` subcommands, one file each in tools/. Each takes the
// arguments after the program name (argv[0] is the subcommand) and returns the exit code.
#pragma once

namespace zerocan::tools {

int RunBench(int argc, char** argv);    // tools/bench.cc
int RunBroker(int argc, char** argv);   // tools/broker.cc
int RunCall(int argc, char** argv);     // tools/call.cc
int RunDemo(int argc, char** argv);     // tools/demo.cc
int RunEngine(int argc, char** argv);   // tools/engine.cc
int RunInspect(int argc, char** argv);  // tools/inspect.cc
int RunKeygen(int argc, char** argv);   // tools/keygen.cc
int RunRecord(int argc, char** argv);   // tools/inspect.cc
int RunSchema(int argc, char** argv);   // tools/schema.cc
int RunTune(int argc, char** argv);     // tools/tune.cc
int RunVersion(int argc, char** argv);  // tools/schema.cc

}  // namespace zerocan::tools
