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
// live engine with the fewest calls in flight, and remembers which calls each engine
// holds. When an engine goes silent for `liveness` heartbeat intervals, or says goodbye,
// every call it held fails at once with a RemoteError of type "zerocan.EngineLost"; a
// reply that turns up afterwards is dropped, so no call is ever answered twice. Calls
// that arrive while no engine is alive wait in the broker until one joins or their
// timeout passes.
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
};

struct BrokerCounters {
  uint64_t requests = 0;      // calls forwarded to an engine
  uint64_t replies = 0;       // replies forwarded to a client
  uint64_t lost = 0;          // calls failed because their engine was lost
  uint64_t dropped = 0;       // messages dropped (late replies, malformed, expired)
  uint64_t engines_live = 0;  // right now
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
  void Stop();
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
