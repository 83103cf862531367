// zerocan::Engine: serves functions registered by name to clients, directly or through
// a broker.
//
// ==== The apply protocol (what a client or engine in any language must do) ==========
//
// Every message is a ZeroMQ multipart message (docs/FORMAT.md, schema/zerocan.capnp):
//     [routing frames...] [empty delimiter] [envelope] [payload frames...]
// The routing frames are ZeroMQ's own reply stack: ROUTER sockets push the sender's
// identity on receipt and pop one on send. Nobody but a ROUTER adds them, and a reply
// carries the request's routing frames back unchanged.
//
// Sockets:
//   client  DEALER, connects to an engine's bound ROUTER or to a broker's frontend.
//   engine  ROUTER when it binds (clients connect to it directly), or DEALER when it
//           connects to a broker's backend.
//   broker  ROUTER frontend (clients) and ROUTER backend (engines); see broker.h.
//
// Calls:
//   client -> [""] [envelope: apply, messageId = M] [payloads]
//   engine <- [routing...] [""] [apply M]                (routing = 1 frame directly,
//                                                         the client's id via a broker)
//   engine -> [routing...] [""] [envelope: result, callId = M] [payloads]
//   client <- [""] [result M] [payloads]
//   The client matches replies by callId, so any number of calls may be in flight and
//   replies may come back in any order. A result is either `ok` (a Value) or `error`
//   (RemoteError: type, message, function, where = engine id).
//
// Engines attached to a broker (DEALER) also talk to the broker itself, with messages
// that have NO routing frames before the delimiter:
//   engine -> [""] [hello: peerId, role "engine", functions]   once, at start
//   engine -> [""] [heartbeat: peerId, nowNs]                  every heartbeat interval
//   engine -> [""] [goodbye]                                   when stopping, after its
//                                                              last reply
// The broker counts an engine alive while it hears anything from it within
// 3 heartbeat intervals (a heartbeat from an engine it does not know registers it, so
// engines survive a broker restart). The broker does not heartbeat engines: ZeroMQ
// reconnects a DEALER on its own. Clients never see hellos or heartbeats.
//
// Message ids: messageId is unique per sender session (sessionId random per client or
// engine instance); sequence increases per session.
// ======================================================================================
//
// Threading: def() before Start(); after Start() the engine runs one I/O thread that
// owns the socket and `threads` worker threads that decode, convert, run the function
// and encode the reply (threads = 0: everything runs on the I/O thread: lowest latency,
// one call at a time). A function may run on any worker thread, several at once; it runs
// on the I/O thread only when asked (FunctionOptions::inline_execution,
// EngineOptions::inline_execution).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>


#include "zerocan/codec.h"
#include "zerocan/curve.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/policy.h"
#include "zerocan/registry.h"
#include "zerocan/remote_error.h"
#include "zerocan/replay.h"
#include "zerocan/signing.h"
#include "zerocan/stream.h"
#include "zerocan/writer.h"

namespace zmq {
class context_t;  // cppzmq; include <zmq.hpp> to pass one
}  // namespace zmq

namespace zerocan {

// What a function registered with DefRaw sees of its call. Valid during the call only;
// Values borrow from the received message (payload Buffers share its frames and may be
// kept longer).
class Call {
 public:
  Call(const Message& message, const std::string& engine_id, const Registry& registry,
       internal::CallControl* control = nullptr, StreamWriter* stream = nullptr)
      : message_(message), engine_id_(engine_id), registry_(registry), control_(control),
        stream_(stream) {}
  const Message& message() const noexcept { return message_; }
  std::string_view function() const { return message_.function(); }
  size_t arg_count() const { return message_.arg_count(); }
  Value arg(size_t i) const { return message_.arg(i); }
  size_t kwarg_count() const { return message_.kwarg_count(); }
  std::string_view kwarg_name(size_t i) const { return message_.kwarg_name(i); }
  Value kwarg(size_t i) const { return message_.kwarg(i); }
  const std::string& engine_id() const noexcept { return engine_id_; }
  const Registry& registry() const noexcept { return registry_; }
  // Bytes in payload frames (not counting the envelope).
  uint64_t payload_bytes() const noexcept;
  // Cancel (stream.h): true once the client cancelled this call; its stop token.
  bool cancelled() const noexcept;
  std::stop_token stop_token() const noexcept;
  // The writer of a stream call's items (a function registered with
  // FunctionOptions::stream, called through Client::stream); nullptr otherwise.
  StreamWriter* stream() const noexcept { return stream_; }

 private:
  const Message& message_;
  const std::string& engine_id_;
  const Registry& registry_;
  internal::CallControl* control_ = nullptr;
  StreamWriter* stream_ = nullptr;
};

// Writes the result of `call` into `result`, or throws (any exception: it becomes the
// remote error).
using RawFunction = std::function<void(const Call& call, ValueWriter& result)>;

struct FunctionOptions {
  // Run this function's calls on the engine's I/O thread instead of handing them to a
  // worker. Saves two thread wake-ups per call (the difference between ~0.7x and ~0.9x
  // of a raw libzmq round trip for a small call), at a price: while the function runs,
  // heartbeats and every other call wait for it, and a cancel cannot reach it. For short
  // functions whose run time does not depend on their arguments. Behind a broker the
  // call is acknowledged as started before it runs: a broker that loses the engine
  // meanwhile (its heartbeats stop while a slow call runs) fails the call with
  // EngineLost rather than running it again elsewhere (unless its caller allowed
  // retries). Off by default: calls run on the worker pool.
  bool inline_execution = false;
  // The function streams its result through Call::stream() (set by def() for a function
  // that takes a StreamWriter&): it must be called as a stream (Client::stream).
  bool stream = false;
};

struct EngineOptions {
  std::string id;  // "" = "<hostname>:<pid>:<n>"
  int threads = 2;
  std::chrono::milliseconds heartbeat{500};
  // Stop()'s grace period: how long a stopping engine keeps finishing the calls it holds
  // before it answers the rest with zerocan.EngineStopping (see Stop()).
  std::chrono::milliseconds drain_timeout{30000};
  // Calls waiting for a worker thread: past either bound, a call is answered
  // zerocan.Busy at once (it did not run; retry later or elsewhere). 0 = no limit. A call
  // is always taken when none wait, however large (DecodeLimits bounds one message): it
  // could never run otherwise.
  size_t max_queued_calls = 10000;
  uint64_t max_queued_bytes = uint64_t{1} << 30;  // 1 GiB
  // Where result bytes travel. Unset: the policy tuned for the transport of the first
  // Bind() or Connect() endpoint (Policy::ForTransport), as the Python engine does.
  std::optional<Policy> policy;
  DecodeLimits limits;
  // For the socket Bind() makes (clients connecting directly): limits.h.
  ConnectionLimits connection_limits;
  const Registry* registry = nullptr;  // nullptr = Registry::Default()
  // The ZeroMQ context; required to share inproc:// endpoints with clients in the same
  // process. nullptr = the engine owns a context of its own.
  zmq::context_t* context = nullptr;
  // CPUs the engine's own context's I/O thread may run on (placement.h): keeps a large
  // transfer's receive off the sending client's CPU. Empty = anywhere; not with `context`.
  std::vector<int> io_cpus;
  // Opt-in: a tcp:// bind to a loopback address takes its connections off BBR's pacing
  // by setting "reno" on the listener (BindUnpaced, pacing.h). Off by default: a library
  // leaves congestion control to the host; a program that wants it says so.
  bool unpace_local_tcp = false;
  // Opt-in: registers the test built-ins echo, add, sum, nbytes, sleep and fail
  // (AddBuiltins) at construction. Off by default: `sleep` and `fail` are for tests and
  // demos, not something to expose on a network by accident.
  bool builtins = false;
  // Opt-in: every function runs as if registered with FunctionOptions::inline_execution
  // (on the I/O thread). Off by default: calls run on the worker pool.
  bool inline_execution = false;
  // With a signer every message is signed, and every received message must carry a
  // valid signature (checked before anything is decoded) and pass the replay guard
  // (session, sequence, age); a failure is counted (counters().errors) and dropped,
  // never answered. See signing.h.
  std::optional<Signer> signer;
  ReplayOptions replay;
  // CurveZMQ encryption (curve.h; docs/SECURITY.md), applied before bind/connect. With
  // `curve` (this engine's key pair) every socket it binds is a Curve server: clients
  // must set curve.public_key as their server key. With `curve_server_key` (the broker
  // backend's Z85 public key) every socket it connects is a Curve client, using `curve`
  // as its own pair or, when unset, a fresh one. Neither = plain text (the default).
  std::optional<CurveKeyPair> curve;
  std::string curve_server_key;
  // With `curve`: the only client public keys (Z85) its bound sockets accept; any other
  // client is refused during the handshake, before it can send a frame (ReadCurveAllowList;
  // docs/SECURITY.md). Empty = every client that knows curve.public_key. The engine then
  // owns its context's ZAP handler (CurveAllowList, transport/zmq.h).
  std::vector<std::string> curve_allowed_clients;
  // Shared memory with clients on this host (shared.h): the engine answers a client's
  // (or its broker's) hello with where it runs, reads the arguments such a client sends
  // as references into the client's arena in place (mapped read-only, each view holding
  // its block until it is gone, so a function may keep one; Stats::shared_refs_received),
  // and hands a result that is (part of) such an argument back as a reference to it
  // (Policy::shared_returns). For a caller that reads shared results (Apply.sharedResults)
  // and shares this host, any other result payload at or above the threshold goes as a
  // reference into `shared_arena`: in place when the function returned bytes of it
  // (Engine::shared_arena()->Allocate), else copied there once (Stats::
  // shared_bytes_copied). Off: clients' hellos go unanswered, so clients send frames, and
  // references are refused.
  bool shared_memory = true;
  // The arena results go into (above); null: one of the engine's own, created at the
  // first such result with ZEROCAN_ARENA_BYTES bytes (default 1 GiB of address space,
  // committed as written). Its blocks are lent to the caller: kept until the caller
  // holds them, or for `shared_result_wait` (a caller that reads its reply later finds
  // the block gone: DecodeError); full, results go as frames.
  std::shared_ptr<SharedArena> shared_arena;
  std::chrono::milliseconds shared_result_wait{60000};
};

struct EngineCounters {
  uint64_t calls = 0;
  uint64_t errors = 0;     // error replies sent
  uint64_t dropped = 0;    // messages neither answerable nor decodable
  // Client connections closed: silent past ConnectionLimits::idle_timeout, or closed to
  // stay within receive_budget_bytes.
  uint64_t connections_closed_idle = 0;
  uint64_t connections_closed_over_budget = 0;
};

namespace internal {

struct TestHooks;  // src/internal/testing.h

template <class T>
struct FnTraits : FnTraits<decltype(&T::operator())> {};
template <class R, class... A>
struct FnTraits<R (*)(A...)> {
  using Ret = R;
  using Args = std::tuple<A...>;
};
template <class R, class... A>
struct FnTraits<R(A...)> : FnTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct FnTraits<R (C::*)(A...) const> : FnTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct FnTraits<R (C::*)(A...)> : FnTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct FnTraits<R (C::*)(A...) noexcept> : FnTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct FnTraits<R (C::*)(A...) const noexcept> : FnTraits<R (*)(A...)> {};

[[noreturn]] void ThrowArgCount(std::string_view function, size_t want, size_t got);
// Checks that the call's positional and keyword arguments fill each of `want`
// parameters exactly once (keywords bind by `names`); throws ArgumentError naming the
// first that does not ("scale: unexpected keyword argument 'q'", "... missing argument
// 1 (k)", "... argument 0 (x) given twice").
void CheckArguments(const Call& call, std::string_view function, size_t want,
                    const std::vector<std::string>& names);
// Parameter i's value: positional i, else the keyword named names[i] (after
// CheckArguments).
Value ArgumentAt(const Call& call, size_t i, const std::vector<std::string>& names);
[[noreturn]] void ThrowArgType(std::string_view function, size_t index,
                               const std::vector<std::string>& names, const Error& cause);

template <class T>
std::decay_t<T> ConvertArg(const Call& call, size_t i, std::string_view function,
                           const std::vector<std::string>& names) {
  try {
    return ArgumentAt(call, i, names).template As<std::decay_t<T>>(call.registry());
  } catch (const DecodeError& e) {
    ThrowArgType(function, i, names, e);
  } catch (const EncodeError& e) {  // no codec for the parameter type
    ThrowArgType(function, i, names, e);
  }
}

// Parameters that do not come from the wire: a std::stop_token (the call's, see
// stream.h) and a StreamWriter& (the stream call's item writer).
template <class A>
inline constexpr bool kIsStopParam = std::is_same_v<std::decay_t<A>, std::stop_token>;
template <class A>
inline constexpr bool kIsStreamParam = std::is_same_v<std::decay_t<A>, StreamWriter>;
template <class A>
inline constexpr bool kIsContextParam = kIsStopParam<A> || kIsStreamParam<A>;
// What the argument tuple holds for a parameter of type A.
template <class A>
using HeldArg = std::conditional_t<kIsStreamParam<A>, StreamWriter*, std::decay_t<A>>;

// Wire argument index of each parameter (context parameters take none); the last entry
// is the number of wire arguments.
template <class... A>
constexpr std::array<size_t, sizeof...(A) + 1> WireIndices() {
  constexpr bool context[] = {kIsContextParam<A>..., false};
  std::array<size_t, sizeof...(A) + 1> out{};
  size_t n = 0;
  for (size_t i = 0; i < sizeof...(A); ++i) {
    out[i] = n;
    if (!context[i]) ++n;
  }
  out[sizeof...(A)] = n;
  return out;
}

template <class A, size_t W>
HeldArg<A> ArgFor(const Call& call, std::string_view function,
                  const std::vector<std::string>& names) {
  if constexpr (kIsStopParam<A>) {
    return call.stop_token();
  } else if constexpr (kIsStreamParam<A>) {
    return call.stream();
  } else {
    return ConvertArg<A>(call, W, function, names);
  }
}
template <class A, class H>
decltype(auto) PassArg(H& held) {
  if constexpr (kIsStreamParam<A>) {
    return *held;
  } else {
    return (held);
  }
}

template <class F, class... A, size_t... I>
void InvokeTyped(F& fn, const Call& call, ValueWriter& out, const std::string& function,
                 const std::vector<std::string>& names, std::index_sequence<I...>) {
  constexpr auto kWire = WireIndices<A...>();
  constexpr size_t kWant = kWire[sizeof...(A)];
  if (call.arg_count() != kWant || call.kwarg_count() != 0) {
    CheckArguments(call, function, kWant, names);
  }
  // Braced init: arguments are converted left to right, so the first bad one is named.
  std::tuple<HeldArg<A>...> args{ArgFor<A, kWire[I]>(call, function, names)...};
  using R = std::invoke_result_t<F&, A...>;
  if constexpr (std::is_void_v<R>) {
    fn(PassArg<A>(std::get<I>(args))...);
    out.Null();
  } else {
    out.Write(fn(PassArg<A>(std::get<I>(args))...));
  }
}

template <class F, class Tuple>
struct Invoker;
template <class F, class... A>
struct Invoker<F, std::tuple<A...>> {
  static constexpr bool kStreams = (kIsStreamParam<A> || ...);
  static void Run(F& fn, const Call& call, ValueWriter& out, const std::string& function,
                  const std::vector<std::string>& names) {
    InvokeTyped<F, A...>(fn, call, out, function, names, std::index_sequence_for<A...>{});
  }
};

}  // namespace internal

class Engine {
 public:
  explicit Engine(EngineOptions options = {});
  ~Engine();  // Stop()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Registers `fn` (any callable with an ordinary C++ signature) under `name`. Each
  // argument converts through Value::As<T> (codec.h, then the registry); the return
  // value is encoded the same way (a returned std::vector or Tensor leaves as a zero-copy
  // frame). `arg_names`, when given, name the parameters: callers may then pass them as
  // keyword arguments (Kw("k", 2.0) in C++, k=2.0 in Python), and error replies name
  // them: "scale: argument 1 (k): expected float64, got text \"a\"". Before Start()
  // only; replaces an earlier function of that name.
  template <class F>
  Engine& def(std::string_view name, F fn, std::vector<std::string> arg_names = {},
              FunctionOptions options = {}) {
    using Traits = internal::FnTraits<std::decay_t<F>>;
    // A function that takes a StreamWriter& streams its result (stream.h).
    if constexpr (internal::Invoker<std::decay_t<F>, typename Traits::Args>::kStreams) {
      options.stream = true;
    }
    std::string fname(name);
    return DefRaw(
        name,
        [fn = std::move(fn), fname, names = std::move(arg_names)](const Call& call,
                                                                  ValueWriter& out) mutable {
          internal::Invoker<std::decay_t<F>, typename Traits::Args>::Run(fn, call, out, fname,
                                                                         names);
        },
        options);
  }
  // The same with options and no parameter names:
  // engine.def("add", add, FunctionOptions{.inline_execution = true}).
  // (A template, so that a braced list of names, def("f", f, {"x"}), never reads as
  // options.)
  template <class F, class O>
    requires std::is_same_v<std::decay_t<O>, FunctionOptions>
  Engine& def(std::string_view name, F fn, O&& options) {
    return def(name, std::move(fn), std::vector<std::string>{}, options);
  }
  // A function that reads its call (any number of arguments, keywords) and writes its
  // result itself.
  Engine& DefRaw(std::string_view name, RawFunction fn, FunctionOptions options = {});
  std::vector<std::string> functions() const;

  // Where to serve; either may be called several times, before Start().
  void Bind(const std::string& url);     // ROUTER: clients connect here directly
  void Connect(const std::string& url);  // DEALER to a broker's backend
  // The endpoint actually bound by the last Bind (resolves tcp://127.0.0.1:* ports).
  std::string last_endpoint() const;

  void Start();
  // Drains, then stops: takes no new calls (a broker is told at once, with a `draining`
  // message, and sends its calls elsewhere; a client calling directly gets a
  // zerocan.EngineStopping error), keeps heartbeating, answers each call it holds as it
  // finishes, and after the last one (or when EngineOptions::drain_timeout has passed)
  // says goodbye and joins every thread. Calls still queued or running at the deadline
  // are answered with zerocan.EngineStopping; a function still running then is waited
  // for, its result dropped. Idempotent.
  void Stop();
  // The same with a grace period of its own; Stop(0ms) stops at once, answering every
  // call held with zerocan.EngineStopping.
  void Stop(std::chrono::milliseconds grace);
  bool running() const noexcept;

  const std::string& id() const noexcept;
  // The arena results are placed in for callers that read shared results
  // (EngineOptions::shared_arena, or the engine's own, created here at first use).
  // A function that allocates its result here sends it without a copy. Throws Error
  // when the system refuses an arena.
  std::shared_ptr<SharedArena> shared_arena();
  EngineCounters counters() const noexcept;

 private:
  class Impl;
  friend struct internal::TestHooks;
  std::unique_ptr<Impl> impl_;
};

// Loads a plugin: a shared library exporting
//     extern "C" void zerocan_register(zerocan::Engine& engine);
// (kPluginEntryPoint), which calls engine.def(...) for its functions. The library stays
// loaded for the life of the process. Throws Error naming the library and dlerror().
inline constexpr const char kPluginEntryPoint[] = "zerocan_register";
void LoadPlugin(Engine& engine, const std::string& path);

// Registers the test built-ins echo, add, sum, nbytes, sleep and fail (see
// tools/engine.cc --help) with `options`, except that sleep always runs on a worker
// (EngineOptions::builtins registers them with the default options).
void AddBuiltins(Engine& engine, FunctionOptions options = {});

}  // namespace zerocan
