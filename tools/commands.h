// The `zerocan` subcommands, one file each in tools/. Each Add function adds its
// subcommand to the program's CLI11 app: its options (checked by CLI11, so a bad value is
// a usage error naming the option, exit status 2), its help, and what runs once the
// command line has parsed: on parsing, it stores that in *chosen. What runs returns the
// program's exit status.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "zerocan/curve.h"
#include "zerocan/limits.h"

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

// The options of a program that accepts connections (`engine --bind`, `broker`): the
// bounds on its peers' connections (ConnectionLimits, limits.h) and a CurveZMQ
// allow-list. For the help text: `idle_peers` are the peers the idle timeout applies to,
// `allowed_peers` those the allow-list covers. The allow-list needs
// --curve-secret-key-file, which must be added first.
struct ServerFlags {
  int idle_timeout_ms = static_cast<int>(ConnectionLimits().idle_timeout.count());
  int handshake_timeout_ms = static_cast<int>(ConnectionLimits().handshake_timeout.count());
  uint64_t receive_budget_mib = ConnectionLimits().receive_budget_bytes >> 20;
  std::string curve_allow_file;

  ConnectionLimits limits() const {
    ConnectionLimits l;
    l.idle_timeout = std::chrono::milliseconds(idle_timeout_ms);
    l.handshake_timeout = std::chrono::milliseconds(handshake_timeout_ms);
    l.receive_budget_bytes = receive_budget_mib << 20;
    return l;
  }
};

inline void AddServerFlags(CLI::App* sub, ServerFlags* flags, const std::string& idle_peers,
                           const std::string& allowed_peers) {
  sub->add_option("--idle-timeout-ms", flags->idle_timeout_ms,
                  "disconnect a peer (" + idle_peers + ") from which not a byte came for this\n"
                  "long (live peers answer pings), freeing what it sent of an unfinished frame\n"
                  "(0: never; an upload still arriving is never idle)")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600 * 1000));
  sub->add_option("--handshake-timeout-ms", flags->handshake_timeout_ms,
                  "close a connection whose ZMTP (or CurveZMQ) handshake takes longer (0: never)")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600 * 1000));
  sub->add_option("--receive-budget-mib", flags->receive_budget_mib,
                  "bytes (MiB) that peers' messages may hold before they are read, all\n"
                  "connections together; past it, connections are closed, stalled ones first\n"
                  "(0: no limit; keep it above the largest message you accept)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 24));
  sub->add_option("--curve-allow", flags->curve_allow_file,
                  "with --curve-secret-key-file: accept only the peers (" + allowed_peers + ") whose\n"
                  "public keys this file lists (one Z85 key or key file per line); anyone else is\n"
                  "refused during the handshake")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { ReadCurveAllowList(f); }))
      ->needs(sub->get_option("--curve-secret-key-file"));
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
