// Reading an envelope's header (body kind, ids, function name) without the full
// checked decode: for routing decisions (the broker; the engine's choice of thread).
// Safe on untrusted bytes: Cap'n Proto bounds-checks every read, the traversal budget is
// scaled to the frame's size, and any failure is just "no peek".
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include <capnp/serialize.h>
#include <zmq.hpp>

#include "internal/kj_bridge.h"
#include "zerocan/buffer.h"
#include "zerocan/limits.h"
#include "zerocan/version.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan::internal {

// What the broker reads of an envelope: its header, never its values.
struct Peek {
  wire::Envelope::Body::Which kind;
  uint64_t message_id = 0;
  uint64_t call_id = 0;       // results
  std::string function;       // applies
  uint32_t timeout_ms = 0;    // applies
};

inline std::optional<Peek> PeekEnvelope(const zmq::message_t& frame, const DecodeLimits& limits) {
  size_t size = frame.size();
  if (size < 8 || size % 8 != 0 || size > limits.max_envelope_bytes) return std::nullopt;
  const capnp::word* words = static_cast<const capnp::word*>(frame.data());
  std::unique_ptr<capnp::word[]> copy;
  if (!IsAligned(words, alignof(capnp::word))) {
    copy.reset(new capnp::word[size / 8]);
    std::memcpy(copy.get(), frame.data(), size);
    words = copy.get();
  }
  try {
    return CatchKj("envelope", [&]() -> std::optional<Peek> {
      capnp::ReaderOptions options;
      options.traversalLimitInWords = limits.traversal_factor * (size / 8) + 64;
      options.nestingLimit = 16;
      capnp::FlatArrayMessageReader reader(kj::ArrayPtr<const capnp::word>(words, size / 8),
                                           options);
      auto env = reader.getRoot<wire::Envelope>();
      if (env.getVersion() != kProtocolVersion) return std::nullopt;
      Peek p;
      p.kind = env.getBody().which();
      p.message_id = env.getMessageId();
      if (p.kind == wire::Envelope::Body::APPLY) {
        auto apply = env.getBody().getApply();
        auto fn = apply.getFunction();
        p.function.assign(fn.begin(), std::min<size_t>(fn.size(), 1024));
        p.timeout_ms = apply.getTimeoutMs();
      } else if (p.kind == wire::Envelope::Body::RESULT) {
        p.call_id = env.getBody().getResult().getCallId();
      }
      return p;
    });
  } catch (const DecodeError&) {
    return std::nullopt;
  }
}

}  // namespace zerocan::internal
