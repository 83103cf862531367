// zerocan::Client: calls functions on an engine or through a broker (protocol: engine.h).
//
// apply(name, args...) encodes the call on the calling thread and sends it at once; it
// returns a ResultFuture. Any number of calls may be in flight. There is no background
// thread: whichever thread waits in ResultFuture::get() receives for everybody (replies
// are matched by call id and handed to their own futures), so a call-and-wait costs no
// thread hand-off. Several threads may apply and wait on one Client at the same time.
//
// Arguments are positional, or keywords written Kw("name", value). Large arguments leave
// as frames of their own: an rvalue container is adopted (no copy), an lvalue one is
// copied once, and zerocan::Borrow(v) lends it without a copy (keep it alive and
// unchanged until the future's tracker() is done). A Buffer or Tensor goes with the
// ownership its Buffer states (Buffer::Borrow lends).
//
// A Result views the received frames: result.as<TensorView<const double>>() points into
// the reply frame (over inproc:// that is the engine's own buffer).
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>


#include "zerocan/codec.h"
#include "zerocan/curve.h"
#include "zerocan/transport.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/policy.h"
#include "zerocan/shared.h"
#include "zerocan/registry.h"
#include "zerocan/remote_error.h"
#include "zerocan/signing.h"
#include "zerocan/writer.h"

namespace zmq {
class context_t;  // cppzmq; include <zmq.hpp> to pass one
}  // namespace zmq

namespace zerocan {

// The outcome of one call: a value (viewing the reply's frames) or a failure.
// Copyable (copies share the reply).
class Result {
 public:
  Result() = default;
  static Result Ok(Message reply, const Registry* registry);
  static Result Failed(std::exception_ptr error, Message reply = {});

  bool ok() const noexcept { return error_ == nullptr; }
  // Rethrows the failure: RemoteError (the engine or broker answered with an error) or
  // TimeoutError / TransportError (local).
  void ThrowIfError() const {
    if (error_ != nullptr) std::rethrow_exception(error_);
  }
  // The result value; rethrows a failure.
  Value value() const;
  template <class T>
  T as() const {
    return value().As<T>(*registry_);
  }
  // The engine that answered ("" for local failures).
  std::string_view engine_id() const;
  const Message& reply() const noexcept { return reply_; }
  std::exception_ptr error() const noexcept { return error_; }

 private:
  Message reply_;
  std::exception_ptr error_;
  const Registry* registry_ = nullptr;
};

struct ClientOptions {
  // Per-call deadline unless apply_for() gives one. A call without reply by then fails
  // with TimeoutError; a late reply is dropped.
  std::chrono::milliseconds timeout{60000};
  // Where argument bytes travel (inline threshold, packing). Unset: the policy tuned for
  // the transport of `url` (Policy::ForTransport), as the Python client does.
  std::optional<Policy> policy;
  DecodeLimits limits;
  const Registry* registry = nullptr;  // nullptr = Registry::Default()
  zmq::context_t* context = nullptr;   // nullptr = the client owns one
  // CPUs the client's own context's I/O thread may run on (placement.h). Empty =
  // anywhere; not with `context`.
  std::vector<int> io_cpus;
  // Signs every call and drops replies without a valid signature (counted in
  // ClientCounters::rejected). Engines must hold the same key.
  std::optional<Signer> signer;
  // CurveZMQ encryption (curve.h): the Z85 public key of the engine or broker frontend
  // at `url` ("" = plain text, the default). `curve` is this client's own key pair,
  // unset = a fresh one. A client whose server key is wrong never gets a message
  // through: its calls fail with TimeoutError.
  std::string curve_server_key;
  std::optional<CurveKeyPair> curve;
  // Through a broker: how many more engines may run a call whose engine was lost while
  // running it (Apply.retries). 0 (the default): such a call fails with
  // zerocan.EngineLost. Only for functions that are safe to run twice. (A call that had
  // not started on a lost engine goes to another whatever this says, up to the third
  // engine lost holding it: see broker.h.)
  int retries = 0;
  // ZMTP heartbeats on the connection: a ping every `heartbeat`; a connection silent for
  // heartbeat * liveness is dropped (on tcp: no byte from the peer and none of ours
  // acknowledged that long, so a large frame on a slow link is not silence). A lost
  // connection (closed, or silent that long)
  // fails every call in flight at once with BrokerLost (RemoteError type
  // "zerocan.BrokerLost"), instead of at its deadline; the socket reconnects on its own
  // and later calls go to whatever listens at `url` then. 0 = no heartbeats (a closed
  // connection is still noticed).
  std::chrono::milliseconds heartbeat{1000};
  int liveness = 3;
  // Stream calls (Client::stream): items the engine may send ahead of the reader; the
  // client grants more as items are read, so at most this many wait unread.
  uint32_t stream_credits = 64;
  // Shared memory with a peer on this host (shared.h). The client asks its peer where
  // it runs (a hello); when an engine or a broker answers from this host (same kernel,
  // network namespace and user), arguments at or above the threshold travel as
  // references into `shared_arena` (null: SharedArena::ProcessDefault()): those already
  // in it with no copy, others copied in once (Stats::shared_bytes_copied), frames when
  // it is full. A block stays allocated until the call is answered. A peer that does not
  // answer costs nothing: calls send frames. false: no hello, frames only.
  bool shared_memory = true;
  std::shared_ptr<SharedArena> shared_arena;
};

struct ClientCounters {
  uint64_t sent = 0;
  uint64_t received = 0;
  uint64_t late = 0;      // replies for calls that had timed out (dropped)
  uint64_t rejected = 0;  // replies that failed to decode (dropped)
};

namespace internal {
class ClientCore;
struct PendingCall;
}  // namespace internal

// A keyword argument of an apply: client.apply("scale", x, Kw("k", 2.0)). An lvalue is
// held by reference (and copied or lent when the apply encodes it, by the usual rule),
// an rvalue by value (then adopted). `name` is viewed, not copied: pass a name that
// outlives the apply call. Keywords follow the positional arguments on the wire, in the
// caller's order.
template <class T>
struct Keyword {
  std::string_view name;
  T value;  // U& for an lvalue, U for an rvalue
};
template <class T>
Keyword<T> Kw(std::string_view name, T&& value) {
  return Keyword<T>{name, std::forward<T>(value)};
}

namespace internal {
template <class T>
struct IsKeyword : std::false_type {};
template <class T>
struct IsKeyword<Keyword<T>> : std::true_type {};

// The canonical order (docs/FORMAT.md): every positional argument's contents, then the
// keywords. Two passes over the arguments: positional ones first, keywords second.
template <class Arg>
void WritePositional(const ApplyWriter& apply, size_t& positional, Arg&& arg) {
  if constexpr (!IsKeyword<std::decay_t<Arg>>::value) apply.arg(positional++).Write(std::forward<Arg>(arg));
}
template <class Arg>
void WriteKeyword(const ApplyWriter& apply, size_t& keyword, Arg&& arg) {
  if constexpr (IsKeyword<std::decay_t<Arg>>::value) {
    using V = decltype(arg.value);  // U& or U
    apply.kwarg(keyword++, arg.name).Write(static_cast<std::conditional_t<std::is_lvalue_reference_v<V>, V, V&&>>(arg.value));
  }
}
}  // namespace internal

// The future of one call. get() waits (receiving for every call of its Client while it
// does) until the reply or the deadline, then returns the Result (failures are inside
// the Result; as<T>() rethrows them). May outlive its Client (then fails with
// TransportError). Move-only; get() once.
class ResultFuture {
 public:
  ResultFuture() = default;
  ResultFuture(std::shared_ptr<internal::ClientCore> core,
               std::shared_ptr<internal::PendingCall> call, Tracker tracker)
      : core_(std::move(core)), call_(std::move(call)), tracker_(std::move(tracker)) {}
  ResultFuture(ResultFuture&&) noexcept = default;
  ResultFuture& operator=(ResultFuture&&) noexcept = default;

  bool valid() const noexcept { return call_ != nullptr; }
  Result get();
  void wait() const;
  // std::future_status::ready or ::timeout (never deferred).
  std::future_status wait_for(std::chrono::nanoseconds timeout) const;
  bool ready() const;
  // Done when libzmq has released every zero-copy argument frame of this call, and for
  // arguments passed in place from the caller's own arena blocks, when the call is over
  // and nothing holds those blocks any more (a receiver's view, or a result that hands
  // one back in place, while it lives). Waiting on it receives for the Client, as
  // wait() does.
  const Tracker& tracker() const noexcept { return tracker_; }
  uint64_t call_id() const noexcept;
  // Gives up the call: unless it is done already, it ends at once, failed with
  // CancelledError, and a cancel goes to the engine (or broker), which drops the call if
  // it is queued and tells it if it runs (Call::cancelled). No reply is taken for it
  // afterwards. True when this cancelled it.
  bool Cancel();

 private:
  friend class Client;  // SubmitStream makes a ResultStream of a submitted call
  std::shared_ptr<internal::ClientCore> core_;
  std::shared_ptr<internal::PendingCall> call_;
  Tracker tracker_;
};

// The items of a stream call (Client::stream), in order. Next() waits for the next
// item (receiving for every call of its Client, as ResultFuture::get does) and returns
// it, or nullopt once the stream ended; a failed stream throws its error there
// (RemoteError, TimeoutError when no item came within the call's timeout,
// CancelledError after Cancel). Reading grants the engine credit for more items.
// Move-only; may outlive its Client (then fails with TransportError).
class ResultStream {
 public:
  ResultStream() = default;
  ResultStream(std::shared_ptr<internal::ClientCore> core,
               std::shared_ptr<internal::PendingCall> call, uint32_t credits)
      : core_(std::move(core)), call_(std::move(call)), window_(credits) {}
  ResultStream(ResultStream&&) noexcept = default;
  ResultStream& operator=(ResultStream&&) noexcept = default;
  // Cancels a stream not read to its end.
  ~ResultStream();

  std::optional<Result> Next();
  // Stops the stream: the engine's writer throws CancelledError (so the function
  // unwinds) and no more items are taken. True when it was still running.
  bool Cancel();
  uint64_t call_id() const noexcept;
  bool valid() const noexcept { return call_ != nullptr; }

 private:
  std::shared_ptr<internal::ClientCore> core_;
  std::shared_ptr<internal::PendingCall> call_;
  uint32_t window_ = 0;
  uint32_t unacknowledged_ = 0;  // items read and not yet granted back
};

class Client {
 public:
  // Connects a DEALER socket to `url` (an engine's bound endpoint or a broker frontend).
  explicit Client(const std::string& url, ClientOptions options = {});
  // Pending calls fail with TransportError("client closed").
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  template <class... Args>
  ResultFuture apply(std::string_view function, Args&&... args) {
    return apply_for(options_.timeout, function, std::forward<Args>(args)...);
  }
  template <class... Args>
  ResultFuture apply_for(std::chrono::milliseconds timeout, std::string_view function,
                         Args&&... args) {
    EnvelopeWriter writer(call_policy(), registry_);
    WriteApply(writer, timeout, function, std::forward<Args>(args)...);
    return Submit(writer, function, timeout);
  }
  // A stream call: the function (one that streams, e.g. takes a StreamWriter&) sends its
  // items one by one; read them with ResultStream::Next. `timeout` bounds the wait for
  // each item.
  template <class... Args>
  ResultStream stream(std::string_view function, Args&&... args) {
    return stream_for(options_.timeout, function, std::forward<Args>(args)...);
  }
  template <class... Args>
  ResultStream stream_for(std::chrono::milliseconds timeout, std::string_view function,
                          Args&&... args) {
    EnvelopeWriter writer(call_policy(), registry_);
    WriteApply(writer, timeout, function, std::forward<Args>(args)...);
    return SubmitStream(writer, function, timeout);
  }
  ResultStream SubmitStream(EnvelopeWriter& writer, std::string_view function,
                            std::chrono::milliseconds timeout);

  // For callers that build the apply themselves (zerocan call, forwarding): `writer`
  // holds a StartApply'd message; the header is filled in here.
  ResultFuture Submit(EnvelopeWriter& writer, std::string_view function,
                      std::chrono::milliseconds timeout);

  ClientCounters counters() const;
  const ClientOptions& options() const noexcept { return options_; }
  // The policy calls are encoded with (ClientOptions::policy, or the transport's).
  const Policy& policy() const noexcept { return policy_; }
  // The policy for the next call: policy(), plus the shared arena once the peer's hello
  // said it runs on this host (shares_memory()). Use it for a writer passed to Submit.
  Policy call_policy() const;
  // Whether calls now pass large arguments in shared memory (ClientOptions::shared_memory).
  bool shares_memory() const;

 private:
  static uint32_t TimeoutMs(std::chrono::milliseconds t) noexcept;
  // The apply of `function(args...)`: positional arguments, then keywords (Kw).
  template <class... Args>
  static void WriteApply(EnvelopeWriter& writer, std::chrono::milliseconds timeout,
                         std::string_view function, Args&&... args) {
    constexpr size_t kKeywords = (size_t{internal::IsKeyword<std::decay_t<Args>>::value} + ... + 0);
    ApplyWriter apply =
        writer.StartApply(function, sizeof...(Args) - kKeywords, kKeywords, TimeoutMs(timeout));
    size_t positional = 0, keyword = 0;
    (internal::WritePositional(apply, positional, std::forward<Args>(args)), ...);
    (internal::WriteKeyword(apply, keyword, std::forward<Args>(args)), ...);
  }

  ClientOptions options_;
  Policy policy_;
  const Registry* registry_;
  std::shared_ptr<internal::ClientCore> core_;
};

}  // namespace zerocan
