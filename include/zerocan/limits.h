// DecodeLimits: every bound a decoder enforces on untrusted input, in one place.
// ConnectionLimits: how long a connection may hold memory before a message is complete.
//
// Defaults are safe for a network-facing engine on a 24 GiB machine while still letting
// a 1 GiB tensor through. Every decode entry point takes one; a violation raises
// DecodeError(kLimitExceeded) naming the limit, the value seen, and the field path.
// docs/SECURITY.md ("Memory an unauthenticated peer can pin") says what they bound.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace zerocan {

struct DecodeLimits {
  // Frames after the routing delimiter: the envelope, payload frames and a signature.
  size_t max_frames = 4096;
  // Routing frames before the delimiter (a broker chain adds one per hop).
  size_t max_routing_frames = 16;
  // Bytes of any one frame (also set as ZMQ_MAXMSGSIZE on sockets we configure, so a
  // larger frame is refused from its header, before libzmq allocates it).
  uint64_t max_frame_bytes = uint64_t{1} << 30;
  // Bytes of all frames of one message together. libzmq hands over a multipart message
  // only once it is complete, so this is checked after it was received (and then freed);
  // ConnectionLimits::receive_budget_bytes bounds what arrives meanwhile.
  uint64_t max_message_bytes = uint64_t{5} << 28;  // 1.25 GiB
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
  // Payload.shared references into another process's shared-memory arena (shared.h).
  // Clients and engines map them when their shared_memory option is on; tools that only
  // show messages (inspect) describe them.
  enum class SharedRefs : uint8_t {
    kRefuse,    // a message carrying one is rejected, naming the field
    kMap,       // each referenced arena is mapped (same user, same host only) and the
                // range checked against its sealed size, at Decode
    kDescribe,  // accepted unread: the references can be listed, their bytes not read
  };
  SharedRefs shared_refs = SharedRefs::kRefuse;
};

// Bounds on the connections of a socket that accepts peers (an engine's bound socket, a
// broker's frontend and backend), set on the socket before it binds (ApplyLimits in
// zerocan/transport/zmq.h). libzmq reads a peer's frames into memory before zerocan can
// look at them; these bound how long a peer that stops sending holds that memory.
struct ConnectionLimits {
  // A connection must finish its ZMTP handshake (and CurveZMQ authentication) within
  // this time or it is closed (ZMQ_HANDSHAKE_IVL). 0 = no limit.
  std::chrono::milliseconds handshake_timeout{5000};
  // A peer from which not a byte has arrived for this long (live peers answer the ZMTP
  // pings sent every third of it) is disconnected, and what it sent of an unfinished
  // frame is freed. Engines and brokers judge it from the kernel's counters, so an
  // upload still arriving is never cut, however long it takes; ApplyLimits on a socket of
  // your own uses libzmq's ZMQ_HEARTBEAT_TIMEOUT instead, which counts complete frames
  // only. 0 = no limit. A broker judges its engines by their liveness window as well.
  std::chrono::milliseconds idle_timeout{30000};
  // Complete messages libzmq queues from one connection before it stops reading that
  // connection (ZMQ_RCVHWM; back-pressure, nothing is dropped). 0 = no limit.
  int max_queued_messages = 10000;
  // Bytes that peers' messages may hold before zerocan reads them (frames still
  // arriving, complete messages still queued), all tcp connections an engine (or a
  // broker's frontend) accepted together. Past it, connections are closed: those that
  // sent little lately first, then the largest (docs/SECURITY.md). Keep it at least
  // DecodeLimits::max_message_bytes, and above the bytes of all the large messages you
  // expect to arrive at once. 0 = no limit.
  uint64_t receive_budget_bytes = uint64_t{3} << 29;  // 1.5 GiB
};

}  // namespace zerocan
