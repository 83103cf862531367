// The `zerocan` subcommands, one file each in tools/. Each Add function adds its
// subcommand to the program's CLI11 app: its options (checked by CLI11, so a bad value is
// a usage error naming the option, exit status 2), its help, and what runs once the
// command line has parsed: on parsing, it stores that in *chosen. What runs returns the
// program's exit status.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace zerocan::tools {

using RunFunction = std::function<int()>;

void AddBroker(CLI::App& app, RunFunction* chosen);   // tools/broker.cc
void AddCall(CLI::App& app, RunFunction* chosen);     // tools/call.cc
void AddDemo(CLI::App& app, RunFunction* chosen);     // tools/demo.cc
void AddEngine(CLI::App& app, RunFunction* chosen);   // tools/engine.cc
void AddInspect(CLI::App& app, RunFunction* chosen);  // tools/inspect.cc
void AddKeygen(CLI::App& app, RunFunction* chosen);   // tools/keygen.cc
void AddRecord(CLI::App& app, RunFunction* chosen);   // tools/inspect.cc
void AddSchema(CLI::App& app, RunFunction* chosen);   // tools/schema.cc
void AddTune(CLI::App& app, RunFunction* chosen);     // tools/tune.cc
void AddVersion(CLI::App& app, RunFunction* chosen);  // tools/schema.cc

// `zerocan call` takes JSON arrays ("[1, 2]") as single arguments, where CLI11 would read
// a list of values, and anything after `--` as an argument, where CLI11 (2.1) stops
// reading a subcommand's arguments once its positionals have a value. main() passes the
// arguments after "call" through ShieldCallArguments before parsing; the call subcommand
// takes the shield off each positional with UnshieldCallArgument (tools/call.cc).
std::vector<std::string> ShieldCallArguments(std::vector<std::string> args);
std::string UnshieldCallArgument(std::string arg);

// A validator that runs `parse` on the option's value and reports what it throws (the
// message then names the option: "--io-cpus: CPU list ..."). For values whose check is
// the parse itself: CPU lists, key files.
template <class Parse>
CLI::Validator Parses(Parse parse) {
  return CLI::Validator(
      [parse](std::string& value) -> std::string {
        try {
          parse(value);
          return {};
        } catch (const std::exception& e) {
          return e.what();
        }
      },
      "");
}

// For unsigned counts and ids: CLI11 would read "-1" as a huge number.
inline CLI::Validator NotNegative() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        return !value.empty() && value[0] == '-' ? "must not be negative, got " + value : "";
      },
      "");
}

// For input files: "" when `path` is "-" (stdin) or a file this process can open for
// reading, else why not ("is a directory: DIR", "cannot read FILE: Permission denied").
// CLI::ExistingFile neither allows "-" nor checks that the file opens.
inline std::string CannotRead(const std::string& path) {
  if (path == "-") return {};
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "cannot read " + path + ": " + std::strerror(errno);
  if (S_ISDIR(st.st_mode)) return "is a directory: " + path;
  std::ifstream probe(path, std::ios::binary);
  if (!probe) return "cannot read " + path + ": " + std::strerror(errno);
  return {};
}

inline CLI::Validator ReadableFile() {
  return CLI::Validator([](std::string& path) { return CannotRead(path); }, "");
}

}  // namespace zerocan::tools
