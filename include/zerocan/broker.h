// zerocan::Broker: connects many clients to many engines (protocol: engine.h).
//
// Clients (DEALER) connect to the frontend, engines (DEALER) to the backend; both are
// ROUTER sockets. Frames are forwarded as they came (moved, never copied or re-encoded):
//   request  frontend [client][""][env][payloads] -> backend [engine][client][""][env]...
//   reply    backend [engine][client][""][env][payloads] -> frontend [client][""][env]...
// The broker reads only the envelope's header (body kind, messageId / callId, function
// name) of each message, never a payload frame.
//
// Why not zmq_proxy with a DEALER backend (the classic queue device): a DEALER
// round-robins over every connected pipe, dead or alive, and forgets what it sent, so a
// call whose engine died would wait for its timeout with no word of why, and a new call
// could be queued to a pipe nobody reads. Instead (the "Paranoid Pirate" pattern) the
// backend is a ROUTER that knows each engine by its heartbeats, sends each call to the
// live engine with the fewest calls in flight (passing over engines that would be lost
// at the next check while others were heard from since; among the engines on this host
// first, for a call that may carry shared-memory references), and remembers which calls
// each engine holds.
//
// Failures. An engine is lost when its connection closes (a socket monitor reports it at
// once; sends use ZMQ_ROUTER_MANDATORY, so a call is never handed to a connection that is
// gone), when it stops answering ZMTP heartbeats or sends none of its own for `liveness`
// heartbeat intervals (a stopped process, a cut link), or when it says goodbye. Engines
// acknowledge each call as it starts (a `started` message): a call lost with its engine
// before that goes to another engine; a call that was running fails with a RemoteError
// of type "zerocan.EngineLost" naming the attempts made, unless its caller allowed
// retries (Apply.retries, ClientOptions::retries), in which case it runs again
// elsewhere, at most that many more times. A call that a third engine is lost holding
// unstarted (a goodbye does not count) fails with EngineLost too: a call that crashes
// its engine before the `started` leaves would otherwise take down every engine in turn.
// Engines found lost together are all forgotten before any of their calls moves. A
// reply that turns up for a call already failed or sent elsewhere is dropped, so no call
// is ever answered twice. An engine that says `draining` gets no new calls; a call it
// refuses unstarted (EngineStopping) goes to another engine.
//
// Calls that arrive while no engine is alive wait in the broker until one joins, their
// timeout passes or their client goes away; the queue is bounded (max_queued_calls,
// max_queued_bytes) and a call that would overflow it is answered "zerocan.Busy".
//
// Threading: one thread (Start) or the caller's (Run) owns every socket.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>


#include "zerocan/curve.h"
#include "zerocan/limits.h"
#include "zerocan/signing.h"

namespace zmq {
class context_t;  // cppzmq; include <zmq.hpp> to pass one
}  // namespace zmq

namespace zerocan {

struct BrokerOptions {
  // Engines heartbeat at this interval (EngineOptions::heartbeat); an engine silent for
  // `liveness` intervals is declared lost.
  std::chrono::milliseconds heartbeat{500};
  int liveness = 3;
  DecodeLimits limits;
  // For both sockets (limits.h); the backend's idle timeout is heartbeat x liveness.
  ConnectionLimits connection_limits;
  std::string capture;  // "" = none; else a PUB endpoint publishing every message
  // "" = none; else a capture file (docs/CAPTURE.md) receiving every message the broker
  // forwards, written on the broker's thread (so it slows forwarding by the file's speed).
  std::string capture_file;
  zmq::context_t* context = nullptr;
  // CPUs the broker's own context's I/O thread may run on (placement.h). Empty =
  // anywhere; not with `context`.
  std::vector<int> io_cpus;
  // Opt-in: a tcp:// bind to a loopback address (frontend, backend, capture) takes its
  // connections off BBR's pacing by setting "reno" on the listener (BindUnpaced,
  // pacing.h). Off by default: a library leaves congestion control to the host.
  bool unpace_local_tcp = false;
  // With a key: the broker signs the errors it makes (EngineLost) and ignores engine
  // hellos and heartbeats that are not signed with it. Calls and replies are forwarded
  // as they are (their signatures are checked end to end by engines and clients).
  std::optional<Signer> signer;
  // CurveZMQ encryption (curve.h): with a key pair, every socket the broker binds
  // (frontend, backend, capture) is a Curve server with it, so clients and engines
  // (EngineOptions::curve_server_key) and capture subscribers must set curve.public_key
  // as their server key. Unset = plain text (the default). Curve ends here: the broker
  // sees calls in clear, so keep signatures on end to end.
  std::optional<CurveKeyPair> curve;
  // With `curve`: the only peer public keys (Z85; clients, engines and capture
  // subscribers alike) the broker's sockets accept; anyone else is refused during the
  // handshake, before it can send a frame. Empty = every peer that knows curve.public_key.
  std::vector<std::string> curve_allowed_clients;
  // The queue of calls waiting for an engine (none alive, or all draining): past either
  // bound a new call is answered at once with a zerocan.Busy error (nothing ran).
  // Calls leave the queue when an engine takes them, their timeoutMs passes, or their
  // client disconnects.
  size_t max_queued_calls = 10000;
  uint64_t max_queued_bytes = uint64_t{1} << 30;  // 1 GiB
  // Shared memory on one host (docs/FORMAT.md "Shared memory"): the broker answers a
  // client's hello with where it runs, so a client on this host passes large arguments
  // as references into its arena. A call goes on as it is to an engine on this host
  // (its hello said so); for any other engine the broker replaces each reference with
  // its bytes, read in place from the mapped arena and sent as frames (the one copy is
  // the kernel's; counted in BrokerCounters::materialized_*). A signed call is
  // materialized only by a broker with the key (`signer`), which signs it again.
  // false: client hellos go unanswered and clients send frames.
  bool shared_memory = true;
  // Drain()'s grace period.
  std::chrono::milliseconds drain_timeout{10000};
};

struct BrokerCounters {
  uint64_t requests = 0;      // calls forwarded to an engine
  uint64_t replies = 0;       // replies forwarded to a client
  uint64_t lost = 0;          // calls failed because their engine was lost
  uint64_t dropped = 0;       // messages dropped (late replies, malformed, expired)
  uint64_t engines_live = 0;  // right now
  uint64_t rerouted = 0;      // calls sent to another engine (never started, or retried)
  uint64_t retried = 0;       // of those, calls that had started (the caller's retries)
  uint64_t busy = 0;          // calls answered zerocan.Busy (queue full)
  uint64_t queued = 0;        // calls waiting for an engine, right now
  // Connections closed: silent past ConnectionLimits::idle_timeout, or clients closed to
  // stay within receive_budget_bytes.
  uint64_t connections_closed_idle = 0;
  uint64_t connections_closed_over_budget = 0;
  // Calls whose shared-memory references were replaced by their bytes for an engine on
  // another host (BrokerOptions::shared_memory), and those bytes.
  uint64_t materialized = 0;
  uint64_t materialized_bytes = 0;
};

class Broker {
 public:
  // Binds both sockets (and the capture socket) at once; throws TransportError.
  Broker(const std::string& frontend, const std::string& backend, BrokerOptions options = {});
  ~Broker();  // Stop()
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Serves on a thread of its own.
  void Start();
  // Serves on the calling thread until Stop() (from another thread or a signal handler
  // that calls RequestStop()).
  void Run();
  // Stops at once: calls in flight get no reply from this broker (their clients see the
  // connection close: zerocan.BrokerLost).
  void Stop();
  // Stops gracefully: answers calls still waiting for an engine, and every new call,
  // with zerocan.BrokerStopping; lets the calls in flight finish and forwards their
  // replies for at most `grace` (BrokerOptions::drain_timeout); then fails the rest with
  // zerocan.BrokerStopping and stops. For a broker serving on its own thread (Start()).
  void Drain();
  void Drain(std::chrono::milliseconds grace);
  // Async-signal-safe: asks Run() to return.
  void RequestStop() noexcept;

  // Endpoints as bound (resolves tcp://127.0.0.1:* ports).
  std::string frontend_endpoint() const;
  std::string backend_endpoint() const;
  BrokerCounters counters() const noexcept;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerocan
