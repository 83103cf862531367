// Inspecting messages: what `zerocan inspect` prints for each captured message. Part of
// the program, not the library: the library reads and writes captures (capture.h) and
// decodes messages; the rendering lives here, with the tool.
//
// For every message: a frame table (index, role, size, where the payload data starts
// within the frame modulo 8, which values refer to it), the envelope as Cap'n Proto
// text read through the schema's reflection (after Message::Decode has checked it; raw
// bytes are never handed to a reader that has not been bounded), each payload
// summarised (dtype, shape, bytes, inline or its own frame, whether a receiver gets a
// view or a copy, the first values), and, with a key, whether the signature holds.
// A message that does not decode is shown as malformed with DecodeError's reason and
// field path; the Inspector goes on with the next one. Output is deterministic: it
// depends only on the bytes captured, never on addresses or the clock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "zerocan/capture.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"

namespace zerocan {
class Signer;
}  // namespace zerocan

namespace zerocan::tools {

struct InspectOptions {
  bool json = false;          // one JSON object per message, one per line
  bool full = false;          // show every value and byte instead of a summary
  size_t max_values = 8;      // tensor elements shown per payload without `full`
  size_t max_bytes = 16;      // bytes shown per bytes payload / inline Data without `full`
  size_t max_list = 32;       // list elements shown in the envelope text without `full`
  size_t max_text = 200;      // characters of a text field without `full`
  std::string function;       // only applies of this function and their results ("" = all)
  std::optional<uint64_t> id; // only messages with this messageId, or results for it
  DecodeLimits limits;
  // When set, signatures are checked (not owned; must outlive the Inspector).
  const Signer* signer = nullptr;
};

// Turns captured records into text or JSON. Keeps the function name of every apply it
// has seen, so that `function` also selects the results answering those applies.
// One thread at a time.
class Inspector {
 public:
  explicit Inspector(InspectOptions options);
  ~Inspector();

  // The text (several lines, ending in a newline) or JSON line for `record`, or an
  // empty string when the filters leave it out. Never throws for malformed input.
  std::string Render(const CaptureRecord& record);
  // A final line: how many messages were shown, malformed, filtered out, and how the
  // capture ended (reader may be null for a live capture).
  std::string Summary(const CaptureReader* reader) const;

  uint64_t seen() const noexcept { return seen_; }
  uint64_t shown() const noexcept { return shown_; }
  uint64_t malformed() const noexcept { return malformed_; }

 private:
  InspectOptions options_;
  std::map<uint64_t, std::string> functions_by_id_;
  uint64_t seen_ = 0;
  uint64_t shown_ = 0;
  uint64_t malformed_ = 0;
  uint64_t filtered_ = 0;
};

// One message outside a capture (for tests and debugging): the same text as Render.
std::string InspectMessage(const ReceivedMessage& message, const InspectOptions& options = {});

// The schema in use, from the generated code's reflection: every struct and enum
// reachable from Envelope with its ID, each field with its ordinal, type and union
// membership, and the protocol version. Text, or JSON when `json`.
std::string DescribeSchema(bool json = false);

}  // namespace zerocan::tools
