// DecodeLimits: every bound a decoder enforces on untrusted input, in one place.
//
// Defaults are safe for a network-facing engine on a 24 GiB machine while still letting
// a 1 GiB tensor through. Every decode entry point takes one; a violation raises
// DecodeError(kLimitExceeded) naming the limit, the value seen, and the field path.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zerocan {

struct DecodeLimits {
  // Frames after the routing delimiter: the envelope, payload frames and a signature.
  size_t max_frames = 4096;
  // Routing frames before the delimiter (a broker chain adds one per hop).
  size_t max_routing_frames = 16;
  // Bytes of any one frame (also set as ZMQ_MAXMSGSIZE on sockets we configure).
  uint64_t max_frame_bytes = uint64_t{2} << 30;
  // Bytes of all frames of one message together.
  uint64_t max_message_bytes = uint64_t{4} << 30;
  // Bytes of the envelope frame (everything inline lives there).
  uint64_t max_envelope_bytes = uint64_t{256} << 20;
  // Cap'n Proto traversal budget, in multiples of the envelope's own size in words.
  // 1 would be exact for a message without shared substructure; amplification beyond
  // this factor (a "traversal bomb") is rejected.
  uint32_t traversal_factor = 4;
  // Nesting of values (list in list in map...).
  uint32_t max_depth = 64;
  // Elements of one list or map, and keyword arguments.
  uint64_t max_list_length = uint64_t{1} << 24;
  // Tensor rank.
  uint32_t max_rank = 32;
  // Payload references (inline or frame) in one message.
  uint64_t max_payload_refs = uint64_t{1} << 20;
  // Bytes of a text value or name.
  uint64_t max_text_bytes = uint64_t{64} << 20;
};

}  // namespace zerocan
