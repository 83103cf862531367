// Shared by the apply subcommands (engine, broker, call, demo): JSON <-> Value for
// `zerocan call`, and waiting for SIGINT/SIGTERM.
#pragma once

#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "zerocan/codec.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan::tools {

// Writes a JSON value: null, bool, integers (int64, or uint64 above INT64_MAX), floats,
// strings as text. An array whose elements are all numbers becomes a typed array
// (int64 when all are integers, else float64), as a list of numbers does in C++ and
// Python; other arrays are lists. An object with "dtype" and "data" (and optionally
// "shape") is a tensor, the form ToJson prints; other objects are maps with text keys.
void WriteJson(ValueWriter& w, const nlohmann::json& j);

// A received value as JSON. Tensors print as {"dtype", "shape", "data"}, with "data"
// cut to the first `limit` elements (and "elided": how many were left out) unless
// limit == 0. Bytes print as {"bytes": size, "hex": ...} under the same limit. Maps with
// text keys are objects, other maps {"map": [[key, value], ...]}; extensions
// {"extension": name, "state": ...}.
nlohmann::ordered_json ToJson(const Value& v, size_t limit);

// Parses JSON as nlohmann::json::parse does, but refuses the numbers it would change or
// that JSON cannot hold, wherever they stand: an integer beyond int64 and uint64 (nlohmann
// reads it as an inexact float), a number beyond float64's range (1e400), and words read
// as numbers elsewhere (NaN, Infinity, +1, 0x10). Those throw std::invalid_argument naming
// the number; other text that is not JSON gives nullopt.
std::optional<nlohmann::json> ParseExactJson(std::string_view text);

// `j` as one line of JSON (invalid UTF-8 in strings as U+FFFD), except that floats JSON
// cannot hold print as the bare tokens NaN, Infinity and -Infinity (as Python's json
// module and JSON5 write them) where nlohmann would print null.
std::string DumpJson(const nlohmann::ordered_json& j);

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts later.
// Call first in main, before any thread exists; then WaitForStopSignal() returns the
// signal that came.
void BlockStopSignals();
int WaitForStopSignal();
// The same, calling tick() about once a second while it waits.
int WaitForStopSignal(const std::function<void()>& tick);

// The engine and broker programs' choice (never the library's): memory the heap has held
// free for the last `quiet_ticks` ticks, at least `min_bytes` of it, goes back to the
// system (ReleaseFreeMemory, policy.h). Memory in use by a steady stream of large calls
// is reused in between and so never stays free that long; what an attack or a burst left
// behind does. Call Tick() once a second.
class IdleMemoryReturn {
 public:
  explicit IdleMemoryReturn(int quiet_ticks = 3, uint64_t min_bytes = uint64_t{32} << 20)
      : quiet_ticks_(quiet_ticks), min_bytes_(min_bytes) {}
  void Tick();
  int releases() const { return releases_; }

 private:
  int quiet_ticks_;
  uint64_t min_bytes_;
  int quiet_ = 0;
  int releases_ = 0;
  uint64_t released_free_ = 0;  // the heap's free bytes right after the last release
};

}  // namespace zerocan::tools
