// The ZeroMQ transport: zerocan messages over libzmq sockets. The one place where frames
// meet zmq::message_t (src/transport/zmq.cc).
//
// Wire layout of one message (docs/FORMAT.md):
//   [routing frames...] [empty delimiter] [envelope] [payload 1..N] [signature]?
// DEALER/REQ-style senders write the delimiter; ROUTER sockets add routing frames.
//
// Sending: payload frames go out with zmq_msg_init_data over the Buffer's bytes; libzmq
// calls back from its I/O thread when done with each, which drops the Buffer's owner
// and counts the Tracker down. Receiving: the parts of one message are kept in one
// holder, and each frame is a Buffer over its part sharing that holder.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "zerocan/capture.h"
#include "zerocan/curve.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/transport.h"
#include "zerocan/writer.h"

namespace zerocan {

// Sends `routing` frames (copied: identities are short), an empty delimiter, the
// envelope and the payload frames as one multipart message. Blocks like zmq_send with
// flags 0. Throws TransportError on failure (frames not yet handed over are released).
Tracker Send(zmq::socket_t& socket, Outgoing&& message, std::span<const Buffer> routing = {});

// Forwards frames received elsewhere: `routing`, an empty delimiter, then `frames` as
// they are. Frames of at least Outgoing::kEnvelopeCopyBelow bytes go out without a copy
// (holding their Buffer until libzmq is done); shorter ones are copied. Returns false
// when the socket refused the message (EHOSTUNREACH on a ROUTER with mandatory routing,
// or EAGAIN with `flags` dontwait); throws TransportError on other failures.
bool SendFrames(zmq::socket_t& socket, std::span<const Buffer> routing,
                std::span<const Buffer> frames, zmq::send_flags flags = zmq::send_flags::none);

// Where a received message came from and what it cost on the wire: what a receive
// budget counts (ConnectionLimits::receive_budget_bytes).
struct Arrival {
  // In: the socket's connections use CurveZMQ (each frame travels boxed in a command).
  bool curve = false;
  // Out: the descriptor of the connection the message came over (libzmq's ZMQ_SRCFD),
  // -1 where there is none (inproc).
  int fd = -1;
  // Out: the bytes the message took on the wire, ZMTP framing included. Set also when
  // Receive rejects the message: its parts were read all the same.
  uint64_t wire_bytes = 0;
};

// Receives one multipart message. Returns nullopt when `flags` has dontwait and nothing
// is pending. Rejects (DecodeError, after draining the rest of the message) more parts or
// bytes than `limits` allow, and a message without a delimiter where `expect_routing`.
// With expect_routing == false (DEALER), the first frame must be the empty delimiter;
// with true (ROUTER), the first frame is the peer's routing id, added by the socket.
// With `arrival`: fills in where the message came from (above).
std::optional<ReceivedMessage> Receive(zmq::socket_t& socket, const DecodeLimits& limits = {},
                                       zmq::recv_flags flags = zmq::recv_flags::none,
                                       bool expect_routing = false, Arrival* arrival = nullptr);

// Sets ZMQ_MAXMSGSIZE from limits.max_frame_bytes (libzmq drops the connection of a peer
// that announces a larger frame, before allocating it).
void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits);
// The same, plus the connection bounds of a socket that accepts peers (limits.h): the
// handshake timeout, the idle timeout as ZMTP heartbeats (libzmq's timeout, which counts
// complete frames only: engines and brokers judge idleness themselves), and the receive
// queue.
void ApplyLimits(zmq::socket_t& socket, const DecodeLimits& limits,
                 const ConnectionLimits& connections);

// A Channel over a libzmq socket the caller owns (it must outlive the channel and be
// used by one thread at a time). `routed`: the socket is a ROUTER (messages start with
// routing frames); otherwise a DEALER-like socket.
class ZmqChannel final : public Channel {
 public:
  explicit ZmqChannel(zmq::socket_t& socket, DecodeLimits limits = {}, bool routed = false);
  Tracker Send(Outgoing&& message, std::span<const Buffer> routing = {}) override;
  std::optional<ReceivedMessage> Receive(std::chrono::milliseconds wait) override;

 private:
  zmq::socket_t* socket_;
  DecodeLimits limits_;
  bool routed_;
};

// ---- CurveZMQ on a socket (keys: zerocan/curve.h) --------------------------------------

// Server side (the engine or broker that binds): clients must know keys.public_key.
void ConfigureCurveServer(zmq::socket_t& socket, const CurveKeyPair& keys);
// Client side: `server_public_key` is the server's Z85 public key; `keys` is the client's
// own pair (a fresh one from GenerateCurveKeyPair is fine when the server does not
// check client identities).
void ConfigureCurveClient(zmq::socket_t& socket, const CurveKeyPair& keys,
                          std::string_view server_public_key);

// Admits Curve clients by public key. While it lives, every Curve server socket of
// `context` finishes a handshake only with a client whose public key is in
// `allowed_public_keys` (Z85); any other peer is refused during the handshake, before it
// can send a single frame (libzmq's ZAP: a handler bound at inproc://zeromq.zap.01, one
// per context, answering on its own thread). Throws Error on a malformed key, or when
// the context already has a handler.
class CurveAllowList {
 public:
  CurveAllowList(zmq::context_t& context, const std::vector<std::string>& allowed_public_keys);
  ~CurveAllowList();
  CurveAllowList(const CurveAllowList&) = delete;
  CurveAllowList& operator=(const CurveAllowList&) = delete;
  // Handshakes refused so far.
  uint64_t refused() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ---- live capture sockets -------------------------------------------------------------
//
// A program that shows its traffic to `zerocan record` / `zerocan inspect --follow`
// publishes each message on a PUB socket as one multipart message: a tag frame
// (CaptureTag, zerocan/capture.h), then every frame. Plain frames (as libzmq's zmq_proxy
// capture socket sends them) are accepted by the reader too.

// Publishes the tag frame and every frame of `message` (routing frames and delimiter
// included) on `pub` without blocking (a full PUB queue drops, as PUB does) and without
// copying long frames. The message is not changed. Throws TransportError on a socket error.
void PublishCaptured(zmq::socket_t& pub, const ReceivedMessage& message, Direction direction,
                     std::string_view source);

// Receives one multipart message from a SUB socket subscribed to a capture publisher
// (at most limits.max_frames parts; the rest of a longer one is dropped) and turns it
// into a record (RecordFromCaptureFrames). nullopt when nothing arrived within
// `timeout_ms` (-1 = wait).
std::optional<CaptureRecord> ReceiveCaptured(zmq::socket_t& sub, int timeout_ms,
                                             const CaptureLimits& limits = {});

}  // namespace zerocan
