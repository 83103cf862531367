// Reading an envelope's header (body kind, ids, function name) without the full checked
// decode: for routing decisions (the broker; the engine). Safe on untrusted bytes: Cap'n
// Proto bounds-checks every read, the traversal budget is scaled to the frame's size,
// and any failure is just "no peek". Defined beside Message::Decode (src/wire/envelope.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "zerocan/buffer.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"

namespace zerocan::internal {

// What the broker reads of an envelope: its header, never its values.
struct Peek {
  BodyKind kind = BodyKind::kUnknown;
  uint64_t message_id = 0;
  uint64_t call_id = 0;       // results, started
  std::string function;       // applies
  uint32_t timeout_ms = 0;    // applies
  uint32_t retries = 0;       // applies
  std::string error_type;     // error results (at most 256 bytes of it)
  uint32_t stream_credits = 0;           // applies (0 = a plain call)
  StreamPart stream = StreamPart::kNone;  // results
  // call_id is also the call a cancel or credit names.
};

std::optional<Peek> PeekEnvelope(const Buffer& frame, const DecodeLimits& limits);

}  // namespace zerocan::internal
