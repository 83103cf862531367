// Engine: one I/O thread owns the sockets; workers decode, run and encode.
//
// The I/O thread runs user code only when asked (threads == 0, inline_execution), so
// heartbeats keep flowing while a function runs for minutes: a broker tells a busy
// engine from a dead one.
// Workers hand replies back through a queue and an eventfd that the I/O thread polls
// next to its sockets (a ZeroMQ socket may only be used by one thread at a time).
#include "zerocan/engine.h"
#include "zerocan/shared.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <typeinfo>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "internal/fifo.h"
#include "internal/live_calls.h"
#include "transport/connection_guard.h"
#include "transport/shared_segments.h"
#include "transport/socket_wait.h"
#include "internal/testing.h"
#include "internal/strings.h"
#include "wire/peek.h"
#include "zerocan/auth_error.h"
#include "zerocan/pacing.h"
#include "zerocan/placement.h"
#include "zerocan/stats.h"
#include "zerocan/transport/zmq.h"

namespace zerocan {

using Clock = std::chrono::steady_clock;

namespace internal {

void ThrowArgCount(std::string_view function, size_t want, size_t got) {
  throw ArgumentError(absl::StrCat(Sv(function), ": expected ", want, " argument",
                                   want == 1 ? "" : "s", ", got ", got));
}

void CheckArguments(const Call& call, std::string_view function, size_t want,
                    const std::vector<std::string>& names) {
  size_t given = call.arg_count();
  if (given > want || call.kwarg_count() == 0) ThrowArgCount(function, want, given);
  std::vector<bool> filled(want, false);
  for (size_t i = 0; i < given; ++i) filled[i] = true;
  for (size_t k = 0; k < call.kwarg_count(); ++k) {
    std::string_view key = call.kwarg_name(k);
    size_t i = 0;
    while (i < want && (i >= names.size() || names[i] != key)) ++i;
    if (i == want) {
      throw ArgumentError(absl::StrCat(Sv(function), ": unexpected keyword argument '", Sv(key), "'",
                                       names.empty() ? " (the function names no parameters)" : ""));
    }
    if (filled[i]) {
      throw ArgumentError(absl::StrCat(Sv(function), ": argument ", i, " (", names[i], ") given twice"));
    }
    filled[i] = true;
  }
  for (size_t i = 0; i < want; ++i) {
    if (!filled[i]) {
      std::string name = i < names.size() ? absl::StrCat(" (", names[i], ")") : "";
      throw ArgumentError(absl::StrCat(Sv(function), ": missing argument ", i, name, " (expected ",
                                       want, " argument", want == 1 ? "" : "s", ", got ", given,
                                       " positional and ", call.kwarg_count(), " keyword)"));
    }
  }
}

Value ArgumentAt(const Call& call, size_t i, const std::vector<std::string>& names) {
  if (i < call.arg_count()) return call.arg(i);
  for (size_t k = 0; k < call.kwarg_count(); ++k) {
    if (i < names.size() && call.kwarg_name(k) == names[i]) return call.kwarg(k);
  }
  throw ArgumentError("argument " + std::to_string(i) + " missing");  // CheckArguments ran first
}

void ThrowArgType(std::string_view function, size_t index, const std::vector<std::string>& names,
                  const Error& cause) {
  std::string name = index < names.size() ? absl::StrCat(" (", names[index], ")") : "";
  throw ArgumentError(
      absl::StrCat(Sv(function), ": argument ", index, name, ": ", cause.what()));
}

}  // namespace internal

namespace {

uint64_t WallNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string Demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && out != nullptr ? out : name;
  std::free(out);
  return s;
}

std::string DefaultId() {
  static std::atomic<int> counter{0};
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, ":", getpid(), ":", counter.fetch_add(1));
}

// A function the engine serves (Engine::def), fixed once the engine runs.
struct FunctionEntry {
  std::string name;
  RawFunction fn;
  FunctionOptions options;
};

// A received message, the socket it came from and its routing frames; `message` is set
// once it is verified and decoded (on the I/O thread when that decides where it runs).
struct Job {
  size_t socket = 0;
  RoutingFrames routing;
  ReceivedMessage received;
  Message message;
  FunctionEntry* function = nullptr;  // its function, once looked up (null: not yet, or none)

  uint64_t bytes() const {
    uint64_t n = 0;
    for (const Buffer& f : received.frames) n += f.size();
    return n;
  }
};

// A reply ready to send.
struct Reply {
  size_t socket = 0;
  RoutingFrames routing;  // shares the call's received frames until the reply is sent
  Outgoing message;
  uint64_t ack_of = 0;  // a `started` for the call of this token (0: a reply)
  bool after_items = false;  // the end of a stream: queued items leave first
};

// A call a function is running now (for the drain's deadline).
struct Running {
  size_t socket = 0;
  RoutingFrames routing;
  uint64_t call_id = 0;
  std::string_view function;  // the registered name: outlives the call
};

// Cancel and credit envelopes are at most this big (72 and 80 bytes; the smallest apply
// is larger): the I/O thread reads messages this small itself (stream.h).
constexpr size_t kControlEnvelopeBytes = 96;

// Set on the engine's I/O thread: a stream writer there cannot wait for credit.
thread_local bool tls_engine_io_thread = false;

}  // namespace

uint64_t Call::payload_bytes() const noexcept {
  uint64_t n = 0;
  const FrameList& frames = message_.frames();
  for (size_t i = 1; i < frames.size(); ++i) n += frames[i].size();
  return n;
}

class Engine::Impl {
 public:
  explicit Impl(EngineOptions options) : options_(std::move(options)) {
    if (options_.shared_memory) options_.limits.shared_refs = DecodeLimits::SharedRefs::kMap;
    if (options_.id.empty()) options_.id = DefaultId();
    registry_ = options_.registry != nullptr ? options_.registry : &Registry::Default();
    context_ = &ChannelContext(options_.context, options_.io_cpus, "engine", &owned_context_);
    std::random_device rd;
    session_ = (uint64_t{rd()} << 32) ^ rd();
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw TransportError("engine: eventfd failed");
    if (options_.signer) replay_ = std::make_unique<ReplayGuard>(options_.replay);
    io_control_.cancellable = false;
    io_control_.engine_id = options_.id;
    io_control_.policy = &policy_;
    io_control_.registry = registry_;
  }

  ~Impl() {
    Stop(/*graceful=*/true, options_.drain_timeout);
    ::close(wake_fd_);
  }

  using Function = FunctionEntry;

  void Def(std::string_view name, RawFunction fn, FunctionOptions options) {
    if (running_) throw Error(absl::StrCat("engine ", options_.id, ": def(\"", internal::Sv(name),
                                           "\") after Start()"));
    auto f = std::make_shared<Function>();
    f->name = std::string(name);
    f->fn = std::move(fn);
    f->options = options;
    functions_[std::string(name)] = std::move(f);
    any_inline_ = std::any_of(functions_.begin(), functions_.end(), [](const auto& entry) {
      return entry.second->options.inline_execution;
    });
  }

  // The function named `name`, or null. functions_ is fixed once the engine runs.
  Function* Find(std::string_view name) const {
    auto it = functions_.find(absl::string_view(name.data(), name.size()));
    return it == functions_.end() ? nullptr : it->second.get();
  }

  // True when the decoded call of `job` runs on the I/O thread: its function asked for
  // it (FunctionOptions::inline_execution). Keeps the function found in the job.
  bool RunsInline(Job& job) const {
    if (job.message.body_kind() != BodyKind::kApply) return true;  // answered at once, if at all
    Function* f = Find(job.message.function());
    job.function = f;
    return f == nullptr || f->options.inline_execution;
  }

  std::vector<std::string> Functions() const {
    std::vector<std::string> out;
    for (const auto& [name, fn] : functions_) out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
  }

  void ChoosePolicy(const std::string& url) {
    if (!policy_chosen_) policy_ = options_.policy ? *options_.policy : Policy::ForTransport(url);
    policy_chosen_ = true;
  }

  void Bind(const std::string& url) {
    if (running_) throw Error("engine: Bind() after Start()");
    ChoosePolicy(url);
    if (router_index_ < 0) {
      zmq::socket_t router(*context_, zmq::socket_type::router);
      Configure(router);
      // Clients are unknown peers: bound their handshake and receive queue here; how long
      // and how much they hold, the connection guard (below) judges, with pings from here.
      ConnectionLimits limits = options_.connection_limits;
      limits.idle_timeout = std::chrono::milliseconds(0);
      ApplyLimits(router, options_.limits, limits);
      internal::ApplyIdlePings(router, options_.connection_limits.idle_timeout);
      if (options_.curve) ConfigureCurveServer(router, *options_.curve);  // may throw
      if (!options_.curve_allowed_clients.empty()) {
        if (!options_.curve) throw Error("engine: curve_allowed_clients needs curve (a key pair)");
        curve_allow_ = std::make_unique<CurveAllowList>(*context_, options_.curve_allowed_clients);
      }
      router_index_ = static_cast<int>(sockets_.size());
      sockets_.push_back(std::move(router));
      is_dealer_.push_back(false);
      broker_shares_memory_.push_back(std::make_unique<std::atomic<bool>>(false));
    }
    try {
      if (options_.unpace_local_tcp) {
        BindUnpaced(*context_, sockets_[router_index_], url);
      } else {
        sockets_[router_index_].bind(url);
      }
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("engine: cannot bind ", url, ": ", e.what()));
    }
    last_endpoint_ = sockets_[router_index_].get(zmq::sockopt::last_endpoint);
    if (!guard_) {
      guard_ = std::make_unique<internal::ConnectionGuard>(
          *context_, options_.connection_limits.receive_budget_bytes,
          options_.connection_limits.idle_timeout);
    }
    guard_->Watch(sockets_[router_index_], "engine");  // after the bind: it may replace monitors
  }

  void Connect(const std::string& url) {
    if (running_) throw Error("engine: Connect() after Start()");
    ChoosePolicy(url);
    zmq::socket_t dealer(*context_, zmq::socket_type::dealer);
    Configure(dealer);
    // The broker knows an engine by its routing id: make that the engine id, so its
    // errors ("engine host:123:0 sent no heartbeat...") name something a person knows.
    dealer.set(zmq::sockopt::routing_id, zmq::buffer(options_.id.substr(0, 255)));
    // Queues are unbounded, so a send only waits when the DEALER has no pipe at all: after
    // a failed handshake (a Curve or plain-text mismatch with the broker) libzmq drops
    // it. Waiting there would stall heartbeats and Stop() for ever; drop the message.
    dealer.set(zmq::sockopt::sndtimeo, 0);
    if (!options_.curve_server_key.empty()) {  // may throw: configure before keeping it
      if (!options_.curve && !curve_client_) curve_client_ = GenerateCurveKeyPair();
      ConfigureCurveClient(dealer, options_.curve ? *options_.curve : *curve_client_,
                           options_.curve_server_key);
    }
    sockets_.push_back(std::move(dealer));
    is_dealer_.push_back(true);
    broker_shares_memory_.push_back(std::make_unique<std::atomic<bool>>(false));
    try {
      sockets_.back().connect(url);
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("engine: cannot connect to ", url, ": ", e.what()));
    }
  }

  void Start() {
    if (running_) return;
    if (sockets_.empty()) throw Error("engine: Start() without Bind() or Connect()");
    running_ = true;
    stop_ = false;
    kill_ = false;
    workers_stop_ = false;
    for (int i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    io_thread_ = std::thread([this] { IoLoop(); });
  }

  // graceful: drain (take no new calls, finish and answer those held, for at most
  // `grace`), then goodbye. Otherwise: like a crash (TestHooks::KillEngine).
  void Stop(bool graceful, std::chrono::milliseconds grace = std::chrono::milliseconds(0)) {
    if (!running_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      kill_ = !graceful;
      grace_ = grace;
    }
    Wake();
    io_thread_.join();
    running_ = false;
  }

  // ---- the I/O thread -----------------------------------------------------------------

  void IoLoop() {
    tl_io_owner = this;
    tls_engine_io_thread = true;
    std::vector<std::string> names = Functions();
    for (size_t i = 0; i < sockets_.size(); ++i) {
      if (!is_dealer_[i]) continue;
      EnvelopeWriter w(policy_, registry_);
      w.SetHeader(NextHeader());
      w.SetHello(options_.id, "engine", names,
                 options_.shared_memory ? &HostIdentity::This() : nullptr);
      SendQuiet(i, w.Finish(), {});
    }
    Clock::time_point next_beat = Clock::now() + options_.heartbeat;
    // Items: the sockets (index i is sockets_[i]), the guard's monitor, wake_fd_.
    std::vector<zmq::pollitem_t> items;
    for (auto& s : sockets_) items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
    const size_t monitor_item = items.size();
    if (guard_) items.push_back(guard_->MonitorItem(0));
    items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
    wait_.emplace(items);
    Clock::time_point drain_until = Clock::time_point::max();
    while (true) {
      Clock::time_point wake_at = std::min(next_beat, drain_until);
      if (guard_) wake_at = std::min(wake_at, guard_->next_check());
      auto left = std::chrono::ceil<std::chrono::milliseconds>(wake_at - Clock::now());
      if (left.count() < 0) left = std::chrono::milliseconds(0);
      wait_->Wait(left);
      if (wait_->readable(items.size() - 1)) {
        uint64_t v;
        [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof(v));
      }
      if (guard_) {
        // Clients' connections: the monitor's events, idleness and the bytes they hold.
        guard_->Check();
        guard_->TakeClosed(0, wait_->readable(monitor_item));
        internal::ConnectionGuard::Closes closes = guard_->TakeCloses();
        closed_idle_.fetch_add(closes.idle, std::memory_order_relaxed);
        closed_over_budget_.fetch_add(closes.over_budget, std::memory_order_relaxed);
      }
      bool stopping, killed;
      std::chrono::milliseconds grace;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stop_;
        killed = kill_;
        grace = grace_;
      }
      if (killed) break;
      if (stopping && !draining_) {
        // Drain: take no new calls (the broker hears so now), keep heartbeating, answer
        // each held call as it finishes.
        draining_ = true;
        drain_until = Clock::now() + grace;
        for (size_t i = 0; i < sockets_.size(); ++i) {
          if (!is_dealer_[i]) continue;
          EnvelopeWriter w(policy_, registry_);
          w.SetHeader(NextHeader());
          w.SetDraining();
          SendQuiet(i, w.Finish(), {});
        }
      }
      for (size_t i = 0; i < sockets_.size(); ++i) {
        if (wait_->readable(i) && Drain(i)) wait_->Settled(i);
      }
      SendReplies();
      if (Clock::now() >= next_beat) {
        Heartbeat();
        // Let go of the arenas of clients that stopped sending (or are gone), and of
        // result blocks no caller claimed within shared_result_wait.
        if (options_.shared_memory) {
          internal::ProcessSegments().Sweep();
          std::shared_ptr<SharedArena> arena;
          {
            std::lock_guard<std::mutex> lock(arena_mu_);
            arena = result_arena_;
          }
          if (arena != nullptr) arena->lent();  // ends the loans past their time
        }
        next_beat = Clock::now() + options_.heartbeat;
      }
      if (draining_) {
        bool idle;
        {
          std::lock_guard<std::mutex> lock(mu_);
          idle = jobs_.empty() && running_calls_.empty() && replies_.empty();
        }
        if (idle) break;
        if (Clock::now() >= drain_until) {
          FailRemaining(grace);
          break;
        }
      }
    }
    // Stopping: workers finish the queue (graceful) or drop it (kill); streams waiting
    // for credit end (nobody will grant more now).
    live_.StopAll();
    {
      std::lock_guard<std::mutex> lock(mu_);
      workers_stop_ = true;
      if (kill_) {
        jobs_.clear();
        queued_bytes_ = 0;
      }
    }
    jobs_cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    if (!kill_) {
      SendReplies();
      draining_ = false;
      for (size_t i = 0; i < sockets_.size(); ++i) {
        if (!is_dealer_[i]) continue;
        EnvelopeWriter w(policy_, registry_);
        w.SetHeader(NextHeader());
        w.SetGoodbye();
        SendQuiet(i, w.Finish(), {});
      }
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      replies_.clear();
    }
    wait_.reset();
    guard_.reset();  // its monitor goes before the socket it watches
    for (auto& s : sockets_) {
      // Graceful: give queued replies a moment to leave; killed: drop them.
      s.set(zmq::sockopt::linger, kill_ ? 0 : 1000);
      s.close();
    }
    sockets_.clear();
    is_dealer_.clear();
    broker_shares_memory_.clear();
    router_index_ = -1;
  }

  // Receives from socket `index` until it has nothing; false when it stopped early on a
  // transport error.
  bool Drain(size_t index) {
    bool guarded = guard_ && static_cast<int>(index) == router_index_;
    while (true) {
      std::optional<ReceivedMessage> received;
      Arrival arrival{.curve = options_.curve.has_value()};
      try {
        received = Receive(sockets_[index], options_.limits, zmq::recv_flags::dontwait,
                           /*expect_routing=*/true, guarded ? &arrival : nullptr);
      } catch (const DecodeError&) {
        if (guarded) guard_->Delivered(arrival);
        Bump(dropped_);  // over a limit before the sender could be named
        continue;
      } catch (const TransportError&) {
        return false;
      }
      if (guarded) guard_->Delivered(arrival);
      if (!received) return true;
      if (draining_) {
        RefuseWhileDraining(index, std::move(*received));
        continue;
      }
      Job job{index, std::move(received->routing), std::move(*received), Message()};
      if (HandleControl(job)) continue;  // a cancel or credit (stream.h)
      bool here = options_.threads <= 0 || options_.inline_execution;
      if (!here && any_inline_) {
        // Where it runs depends on its function: decode it here, once.
        std::optional<Reply> refusal;
        if (!job.message && !Admit(job, &refusal)) {
          if (refusal) SendQuiet(refusal->socket, std::move(refusal->message), refusal->routing);
          continue;
        }
        here = RunsInline(job);
      }
      if (here) {
        std::optional<Reply> reply = Process(std::move(job));
        if (reply && reply->after_items) SendReplies();  // a stream's items, then its end
        if (reply) SendQuiet(reply->socket, std::move(reply->message), reply->routing);
      } else {
        uint64_t bytes = job.bytes();
        bool full;
        size_t queued;
        {
          std::lock_guard<std::mutex> lock(mu_);
          queued = jobs_.size();
          full = (options_.max_queued_calls > 0 && queued + 1 > options_.max_queued_calls) ||
                 (options_.max_queued_bytes > 0 && queued > 0 &&
                  queued_bytes_ + bytes > options_.max_queued_bytes);
          if (!full) {
            queued_bytes_ += bytes;
            jobs_.push_back(std::move(job));
          }
        }
        if (full) {
          Refuse(index, job.received, job.routing, kErrorBusy,
                 absl::StrCat("engine ", options_.id, " is busy: ", queued,
                              " calls wait for a worker (limits ", options_.max_queued_calls,
                              " calls, ", options_.max_queued_bytes,
                              " bytes); this call did not start"));
        } else {
          jobs_cv_.notify_one();
        }
      }
    }
  }

  void SendReplies() {
    // Called once per loop turn: the queue's storage is reused turn after turn.
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (replies_.empty()) return;
      ready_.swap(replies_);
    }
    for (Reply& r : ready_) SendQuiet(r.socket, std::move(r.message), r.routing);
    ready_.clear();
    // A burst (a stream's items) does not pin its peak: the two vectors swap each turn.
    if (ready_.capacity() > kKeptReplies) std::vector<Reply>().swap(ready_);
  }

  void Heartbeat() {
    for (size_t i = 0; i < sockets_.size(); ++i) {
      if (!is_dealer_[i]) continue;
      EnvelopeWriter w(policy_, registry_);
      w.SetHeader(NextHeader());
      w.SetHeartbeat(options_.id, WallNs());
      SendQuiet(i, w.Finish(), {});
    }
  }

  void SendQuiet(size_t socket, Outgoing&& out, std::span<const Buffer> routing) {
    try {
      if (options_.signer) options_.signer->Sign(&out);
      if (wait_) wait_->Touched(socket);
      Send(sockets_[socket], std::move(out), routing);
    } catch (const TransportError&) {
      Bump(dropped_);  // peer gone (ROUTER with an unknown identity drops silently anyway)
    }
  }

  // ---- cancel and credit (stream.h) ---------------------------------------------------

  // Handles `job` when it is a cancel or a credit (small enough to be one: read here);
  // true when it was one, or was refused. Otherwise `job` goes on, maybe decoded.
  bool HandleControl(Job& job) {
    if (job.received.frames.empty() || job.received.frames[0].size() > kControlEnvelopeBytes) {
      return false;
    }
    std::optional<Reply> refusal;
    if (!Admit(job, &refusal)) {
      if (refusal) SendQuiet(refusal->socket, std::move(refusal->message), refusal->routing);
      return true;
    }
    BodyKind kind = job.message.body_kind();
    if (kind != BodyKind::kCancel && kind != BodyKind::kCredit) return false;
    uint64_t id = job.message.target_call_id();
    std::string key = internal::LiveCalls::Key(job.routing, id);
    if (kind == BodyKind::kCredit) {
      live_.Grant(key, job.message.credit_items());
      return true;
    }
    {
      // Still queued: dropped, never run or answered.
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
        if (it->socket != job.socket || QueuedCallId(*it) != id ||
            internal::LiveCalls::Key(it->routing, id) != key) {
          continue;
        }
        queued_bytes_ -= it->bytes();
        jobs_.erase(it);
        return true;
      }
    }
    live_.Cancel(key);  // running: its stop is requested; not yet: remembered
    return true;
  }

  // The id of the apply whose envelope this is, read from its header; 0 for anything else.
  static uint64_t ApplyIdOf(const Buffer& envelope) {
    if (envelope.empty()) return 0;
    std::optional<internal::Peek> peek = internal::PeekEnvelope(envelope, {});
    return peek && peek->kind == BodyKind::kApply ? peek->message_id : 0;
  }

  static uint64_t QueuedCallId(const Job& job) {
    if (job.message) return job.message.message_id();
    return job.received.frames.empty() ? 0 : ApplyIdOf(job.received.frames[0]);
  }

  // The control block of a call about to run (nullptr: cancelled while queued). For a
  // stream call, items go to the I/O thread through the reply queue.
  std::shared_ptr<internal::CallControl> StartCall(const Reply& reply, const Message& message,
                                                   const std::string& function,
                                                   const std::string& key, bool stream) {
    std::shared_ptr<internal::CallControl> control = live_.Start(key);
    if (control == nullptr) return nullptr;
    control->call_id = message.message_id();
    control->engine_id = options_.id;
    control->function = function;
    control->policy = &policy_;
    control->registry = registry_;
    if (stream) {
      control->stream = true;
      {
        // The block is in live_ already: a credit a peer sent early (Grant) is kept.
        std::lock_guard<std::mutex> lock(control->mu);
        control->credits += message.stream_credits();
      }
      control->wait_for_credit = !tls_engine_io_thread;
      control->next_header = [this] { return NextHeader(); };
      control->send = [this, socket = reply.socket, routing = reply.routing](Outgoing&& item) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (kill_) return;
          replies_.push_back(Reply{socket, routing, std::move(item)});
        }
        Wake();
      };
    }
    return control;
  }

  // ---- workers ----------------------------------------------------------------------

  void WorkerLoop() {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        jobs_cv_.wait(lock, [&] { return !jobs_.empty() || workers_stop_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        queued_bytes_ -= job.bytes();
      }
      std::optional<Reply> reply = Process(std::move(job));
      if (!reply) continue;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (kill_) continue;
        DropUnsentAck(reply->ack_of);
        reply->ack_of = 0;
        replies_.push_back(std::move(*reply));
      }
      Wake();
    }
  }

  // Verifies and decodes `job.received` into `job.message`. False when it is refused;
  // `refusal` is then the reply it deserves, if any.
  bool Admit(Job& job, std::optional<Reply>* refusal) {
    Buffer envelope;  // kept (shared, not copied) to name the call if decoding fails
    try {
      if (options_.signer) options_.signer->Verify(&job.received);
      if (!job.received.frames.empty()) envelope = job.received.frames[0];
      job.message = Message::Decode(std::move(job.received), options_.limits);
      if (replay_) replay_->Check(job.message);
      return true;
    } catch (const AuthError&) {
      // Unsigned, forged or replayed: counted and dropped, never answered (docs/SECURITY.md).
      // A reply would cost a signature per flood message and tell a forger what failed.
      Bump(errors_);
      return false;
    } catch (const DecodeError& e) {
      // Answered to the call when its header could be read (a reference into shared
      // memory that cannot be mapped, a bad argument), else to call id 0: either way the
      // sender learns why. Counted.
      Bump(errors_);
      refusal->emplace();
      (*refusal)->socket = job.socket;
      (*refusal)->routing = std::move(job.routing);
      (*refusal)->message =
          ErrorReply(ApplyIdOf(envelope), {kErrorDecode, e.what(), "", options_.id});
      return false;
    }
  }

  // Decodes (unless Admit did) and runs one message; returns the reply, if it deserves one.
  // The message, and with it any lease on the caller's shared memory, is released before
  // the reply leaves. A caller in this process that has its reply then finds its blocks
  // held only by views the function kept (SharedArena::holds_on). From another process
  // the release travels to the arena's owner on its own socket, and may arrive just
  // after the reply.
  std::optional<Reply> Process(Job&& job) {
    if (!job.message) {
      std::optional<Reply> refusal;
      if (!Admit(job, &refusal)) return refusal;
    }
    Reply reply;
    reply.socket = job.socket;
    reply.routing = std::move(job.routing);
    Message message = std::move(job.message);
    Function* known = job.function;
    if (message.body_kind() == BodyKind::kHello && !is_dealer_[reply.socket] &&
        options_.shared_memory && !reply.routing.empty()) {
      // A client's: it may read results from this engine's arena when it runs here.
      if (FromThisHost(message)) {
        std::lock_guard<std::mutex> lock(mu_);
        if (clients_sharing_memory_.size() < kMaxClientsSharingMemory) {
          clients_sharing_memory_.insert(std::string(RoutingKey(reply.routing)));
        }
      }
    }
    if (message.body_kind() == BodyKind::kHello && is_dealer_[reply.socket] &&
        reply.routing.empty() && options_.shared_memory) {
      // The broker's: where it runs. A caller of this host behind it may read results
      // from this engine's arena only when the broker shares this host too.
      broker_shares_memory_[reply.socket]->store(FromThisHost(message),
                                                 std::memory_order_relaxed);
    }
    if (message.body_kind() == BodyKind::kHello &&
        (is_dealer_[reply.socket] ? reply.routing.empty() : options_.shared_memory)) {
      // A client asks where this engine runs, to pass arguments in shared memory when
      // both are on one host (zerocan/shared.h); or a broker that started after this
      // engine's hello asks again (no routing frames: the broker itself).
      EnvelopeWriter w(policy_, registry_);
      w.SetHeader(NextHeader());
      w.SetHello(options_.id, "engine", Functions(),
                 options_.shared_memory ? &HostIdentity::This() : nullptr);
      reply.message = w.Finish();
      return reply;
    }
    if (message.body_kind() != BodyKind::kApply) return std::nullopt;  // not a call
    Bump(calls_);
    Function* f = known != nullptr ? known : Find(message.function());
    if (f == nullptr) {
      std::string function(message.function());
      Bump(errors_);
      reply.message = ErrorReply(
          message.message_id(),
          {kErrorUnknownFunction,
           absl::StrCat("no function \"", function, "\" on this engine (have: ",
                        absl::StrJoin(Functions(), ", "), ")"),
           function, options_.id});
      return reply;
    }
    // Cancel and streams (stream.h): the call's control block, in the table of running
    // calls while it runs; a cancelled call gets no reply at all.
    const bool stream = message.stream_credits() != 0;
    const std::string& function = f->name;
    if (stream != f->options.stream) {
      Bump(errors_);
      reply.message = ErrorReply(
          message.message_id(),
          {kErrorArgument,
           absl::StrCat(function, stream ? ": does not stream its result (call it with apply)"
                                         : ": streams its result (call it with stream)"),
           function, options_.id},
          stream);
      return reply;
    }
    if (!stream && tl_io_owner == this) {
      // Runs to its end here on the I/O thread, which reads nothing meanwhile: no cancel
      // and no drain deadline can reach it. So it is not tracked; its control block is
      // reused and never cancelled (its stop token has no stop state). A broker still
      // learns first that it began.
      if (is_dealer_[reply.socket]) {
        SendQuiet(reply.socket, StartedAck(message.message_id()), reply.routing);
      }
      io_control_.call_id = message.message_id();
      io_control_.function = function;
      reply.message = *RunCall(*f, message, function, io_control_, false,
                               SharedResults(reply.socket, reply.routing, message));
      return reply;
    }
    std::string live_key = internal::LiveCalls::Key(reply.routing, message.message_id());
    std::shared_ptr<internal::CallControl> control =
        StartCall(reply, message, function, live_key, stream);
    if (control == nullptr) return std::nullopt;
    internal::LiveCalls::Scope running(live_, live_key);
    reply.after_items = stream;
    uint64_t token = BeginCall(reply.socket, reply.routing, message.message_id(), function);
    std::optional<Outgoing> result = RunCall(*f, message, function, *control, stream,
                                             !stream && SharedResults(reply.socket, reply.routing, message));
    if (!EndCall(token)) return std::nullopt;  // abandoned at the drain's deadline
    if (!result) return std::nullopt;          // cancelled: no reply at all
    reply.message = std::move(*result);
    reply.ack_of = token;
    return reply;
  }

  // Whether the caller of `message` (on socket `socket`, from `routing`) reads results
  // from this engine's arena: it asked to, and it is on this host: a direct caller whose
  // hello said so, or one behind a broker whose hello said it shares this engine's host
  // (the caller asked only because it shares its broker's host).
  bool SharedResults(size_t socket, const RoutingFrames& routing, const Message& message) {
    if (!options_.shared_memory || !message.shared_results()) return false;
    if (is_dealer_[socket]) return broker_shares_memory_[socket]->load(std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    return !routing.empty() && clients_sharing_memory_.contains(RoutingKey(routing));
  }
  // The peer's routing id, the key of clients_sharing_memory_ (a view of the frame).
  static absl::string_view RoutingKey(const RoutingFrames& routing) {
    return {reinterpret_cast<const char*>(routing[0].data()), routing[0].size()};
  }
  // Whether a hello says its sender runs on this host (shares memory with this process);
  // false for a hello without a host or with one that cannot be read.
  static bool FromThisHost(const Message& hello) {
    try {
      std::optional<HostIdentity> host = hello.hello_host();
      return host && HostIdentity::This().SharesMemoryWith(*host);
    } catch (const Error&) {
      return false;
    }
  }
  static constexpr size_t kMaxClientsSharingMemory = 65536;

  // The arena results are lent from: made on first use, then kept for the engine's life
  // (so a call takes it without the lock). Throws Error where none can be made.
  SharedArena* ResultArena() {
    if (SharedArena* arena = result_arena_ready_.load(std::memory_order_acquire)) return arena;
    std::lock_guard<std::mutex> lock(arena_mu_);
    if (!result_arena_) {
      result_arena_ = options_.shared_arena ? options_.shared_arena
                                            : SharedArena::Create(SharedArena::DefaultCapacity());
      result_arena_ready_.store(result_arena_.get(), std::memory_order_release);
    }
    return result_arena_.get();
  }

  // Runs the function: its result, its error reply, or nothing when the call was
  // cancelled (a stream's items leave on their own, through `control`).
  std::optional<Outgoing> RunCall(Function& f, const Message& message,
                                  const std::string& function, internal::CallControl& control,
                                  bool stream, bool shared_results) {
    RemoteErrorInfo error;
    try {
      // A result that is (part of) an argument from the caller's arena goes back as a
      // reference to it: the caller keeps its blocks until its reply (and with it).
      std::vector<SharedOrigin> returns = message.shared_origins();
      Policy policy = policy_;
      if (!returns.empty() && !stream) policy.shared_returns = &returns;
      // Any other large payload, for a caller that reads results in place: a block of
      // the engine's arena, lent to the caller until it holds it.
      SharedArena* arena = nullptr;
      if (shared_results) {
        try {
          arena = ResultArena();
          policy.shared_arena = arena;
        } catch (const Error&) {
          // No arena (no memfd, no memory): frames, as for any other caller.
        }
      }
      EnvelopeWriter w(policy, registry_);
      w.SetHeader(NextHeader());
      ValueWriter out = w.StartResult(message.message_id(), options_.id);
      StreamWriter items(control);
      Call call(message, options_.id, *registry_, &control, stream ? &items : nullptr);
      f.fn(call, out);
      if (control.cancelled()) return std::nullopt;
      if (stream) w.SetStreamPart(StreamPart::kEnd);
      Outgoing reply = w.Finish();
      if (arena != nullptr) {
        std::vector<Buffer> blocks = reply.TakeSharedBlocks();
        if (!blocks.empty()) {
          arena->Lend(std::move(blocks), Clock::now() + options_.shared_result_wait);
        }
      }
      return reply;
    } catch (const RemoteError& e) {
      error = e.info();
      if (error.function.empty()) error.function = function;
    } catch (const ArgumentError& e) {
      error = {kErrorArgument, e.what(), function, ""};
    } catch (const DecodeError& e) {
      error = {kErrorDecode, e.what(), function, ""};
    } catch (const std::exception& e) {
      const Error* ours = dynamic_cast<const Error*>(&e);
      std::string type = Demangle(typeid(e).name());
      if (ours != nullptr && type.rfind("zerocan::", 0) == 0) {
        type = "zerocan." + type.substr(9);
      }
      error = {type, e.what(), function, ""};
    } catch (...) {
      error = {"unknown", "a non-standard exception was thrown", function, ""};
    }
    if (control.cancelled()) return std::nullopt;  // cancelled: no reply
    Bump(errors_);
    error.where = options_.id;
    return ErrorReply(message.message_id(), error, stream);
  }

  // ---- call tracking: acknowledgements and the drain ----------------------------------

  // A call is about to run: tracked until EndCall, and acknowledged to a broker (a
  // `started` with the call's routing frames) so that it knows the call began.
  uint64_t BeginCall(size_t socket, const RoutingFrames& routing, uint64_t call_id,
                     std::string_view function) {
    bool on_io = tl_io_owner == this;
    uint64_t token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      token = ++next_token_;
      running_calls_.emplace(token, Running{socket, routing, call_id, function});
    }
    if (!is_dealer_[socket]) return token;
    if (on_io) {
      SendQuiet(socket, StartedAck(call_id), routing);
      return token;
    }
    Reply ack{socket, routing, StartedAck(call_id), token};
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies_.push_back(std::move(ack));
    }
    Wake();
    return token;
  }

  // Tells a broker that call `call_id` began: a `started`, sent with the call's routing
  // frames. A call lost with this engine after it runs again elsewhere only if its caller
  // allowed retries (Apply.retries).
  Outgoing StartedAck(uint64_t call_id) {
    EnvelopeWriter w(policy_, registry_);
    w.SetHeader(NextHeader());
    w.SetStarted(call_id);
    return w.Finish();
  }

  // The call finished; false when it was abandoned (answered at the drain's deadline).
  bool EndCall(uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    return running_calls_.erase(token) == 1;
  }

  // mu_ held. A result about to be queued makes its own `started` unnecessary when that
  // has not left yet (the usual case for a short call): the broker learns from the result.
  void DropUnsentAck(uint64_t token) {
    if (token == 0) return;
    size_t looked = 0;
    for (auto it = replies_.rbegin(); it != replies_.rend() && looked < 16; ++it, ++looked) {
      if (it->ack_of == token) {
        replies_.erase(std::next(it).base());
        return;
      }
    }
  }

  // While draining: an apply gets an EngineStopping error (a broker sends it elsewhere,
  // since it never started); anything else is ignored.
  void RefuseWhileDraining(size_t socket, ReceivedMessage&& received) {
    Refuse(socket, received, received.routing, kErrorEngineStopping,
           absl::StrCat("engine ", options_.id,
                        " is stopping and takes no new calls; this call did not start"));
  }

  // Answers the call in `received` (if it is one, and signed where the engine checks
  // signatures: an unsigned message is never answered) with error `type`.
  void Refuse(size_t socket, const ReceivedMessage& received,
              std::span<const Buffer> routing, const char* type, std::string message) {
    if (received.frames.empty()) return;
    if (options_.signer && options_.signer->Check(std::span<const Buffer>(
                               received.frames.data(), received.frames.size())) !=
                               Signer::Verdict::kOk) {
      Bump(errors_);
      return;
    }
    std::optional<internal::Peek> peek =
        internal::PeekEnvelope(received.frames[0], options_.limits);
    if (!peek || peek->kind != BodyKind::kApply) return;
    Bump(errors_);
    SendQuiet(socket,
              ErrorReply(peek->message_id,
                         {type, std::move(message), peek->function, options_.id}),
              routing);
  }

  // The drain's deadline passed: every call still queued or running is answered with
  // EngineStopping; a running function's eventual result is dropped.
  void FailRemaining(std::chrono::milliseconds grace) {
    internal::Fifo<Job> queued;
    std::vector<Running> running;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued.swap(jobs_);
      queued_bytes_ = 0;
      for (auto& [token, r] : running_calls_) running.push_back(std::move(r));
      running_calls_.clear();
    }
    for (Job& job : queued) {
      // A queued job is decoded already when the I/O thread chose where it runs.
      uint64_t call_id = 0;
      std::string function;
      if (job.message) {
        if (job.message.body_kind() != BodyKind::kApply) continue;
        call_id = job.message.message_id();
        function = std::string(job.message.function());
      } else {
        if (job.received.frames.empty()) continue;
        std::optional<internal::Peek> peek =
            internal::PeekEnvelope(job.received.frames[0], options_.limits);
        if (!peek || peek->kind != BodyKind::kApply) continue;
        call_id = peek->message_id;
        function = std::move(peek->function);
      }
      Bump(errors_);
      SendQuiet(job.socket,
                ErrorReply(call_id,
                           {kErrorEngineStopping,
                            absl::StrCat("engine ", options_.id, " stopped before this call "
                                         "started (drain grace period of ", grace.count(),
                                         " ms passed)"),
                            function, options_.id}),
                job.routing);
    }
    for (Running& r : running) {
      Bump(errors_);
      SendQuiet(r.socket,
                ErrorReply(r.call_id,
                           {kErrorEngineStopping,
                            absl::StrCat("engine ", options_.id, " stopped while running this "
                                         "call (it did not finish within the drain grace "
                                         "period of ", grace.count(), " ms)"),
                            std::string(r.function), options_.id}),
                r.routing);
    }
  }

  // `stream_end`: the error ends a stream call (Result.stream = end).
  Outgoing ErrorReply(uint64_t call_id, const RemoteErrorInfo& error, bool stream_end = false) {
    EnvelopeWriter w(policy_, registry_);
    w.SetHeader(NextHeader());
    w.SetError(call_id, options_.id, error);
    if (stream_end) w.SetStreamPart(StreamPart::kEnd);
    return w.Finish();
  }

  Header NextHeader() {
    uint64_t n = next_id_.fetch_add(1, std::memory_order_relaxed);
    Header h;
    h.message_id = n;
    h.session_id = session_;
    h.sequence = n;
    return h;
  }

  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }

  void Configure(zmq::socket_t& s) {
    s.set(zmq::sockopt::sndhwm, 0);
    s.set(zmq::sockopt::rcvhwm, 0);
    s.set(zmq::sockopt::linger, 0);
    ApplyLimits(s, options_.limits);
  }

  static void Bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

  EngineOptions options_;
  Policy policy_ = Policy::Default();  // ChoosePolicy: options_.policy or the first endpoint's
  // Per socket: a DEALER's broker said in its hello that it shares this host.
  std::vector<std::unique_ptr<std::atomic<bool>>> broker_shares_memory_;
  std::mutex arena_mu_;
  std::shared_ptr<SharedArena> result_arena_;  // arena_mu_; never reset once made
  std::atomic<SharedArena*> result_arena_ready_{nullptr};  // result_arena_.get() once made
  // Direct callers (routing ids) whose hello said they run on this host (mu_); at most
  // kMaxClientsSharingMemory: others get frames.
  absl::flat_hash_set<std::string> clients_sharing_memory_;
  bool policy_chosen_ = false;
  const Registry* registry_ = nullptr;
  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  absl::flat_hash_map<std::string, std::shared_ptr<Function>> functions_;
  bool any_inline_ = false;  // a function of functions_ asked for inline_execution
  std::unique_ptr<ReplayGuard> replay_;  // with a signer only
  std::unique_ptr<CurveAllowList> curve_allow_;  // with curve_allowed_clients only
  internal::LiveCalls live_;  // running calls, for cancel and credit (stream.h)
  std::vector<zmq::socket_t> sockets_;
  std::vector<bool> is_dealer_;
  int router_index_ = -1;
  // The bound socket's connections (after sockets_: destroyed first, as it must be).
  std::unique_ptr<internal::ConnectionGuard> guard_;
  // The I/O loop's wait on the sockets (index i is sockets_[i]); I/O thread only.
  std::optional<internal::SocketWait> wait_;
  std::optional<CurveKeyPair> curve_client_;  // a fresh pair, when connecting without `curve`
  std::string last_endpoint_;
  uint64_t session_ = 0;
  std::atomic<uint64_t> next_id_{1};
  int wake_fd_ = -1;

  std::atomic<bool> running_{false};
  std::thread io_thread_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable jobs_cv_;
  internal::Fifo<Job> jobs_;   // mu_
  uint64_t queued_bytes_ = 0;  // mu_: of jobs_' frames
  // Vectors: filled, swapped and emptied each turn, they keep their storage (up to
  // kKeptReplies).
  static constexpr size_t kKeptReplies = 1024;
  std::vector<Reply> replies_;  // mu_
  std::vector<Reply> ready_;    // the I/O thread's: replies being sent
  bool stop_ = false;          // mu_
  bool kill_ = false;          // mu_
  bool workers_stop_ = false;  // mu_
  std::chrono::milliseconds grace_{0};  // mu_
  absl::flat_hash_map<uint64_t, Running> running_calls_;  // mu_
  uint64_t next_token_ = 0;                               // mu_
  bool draining_ = false;  // the I/O thread's

  std::atomic<uint64_t> calls_{0}, errors_{0}, dropped_{0};
  std::atomic<uint64_t> closed_idle_{0}, closed_over_budget_{0};  // by guard_
  static thread_local const Impl* tl_io_owner;  // the engine whose I/O thread this is
  // The control block of the calls run untracked on the I/O thread (Process): without a
  // stop state, so their stop token never fires.
  internal::CallControl io_control_;

  friend class Engine;
};

thread_local const Engine::Impl* Engine::Impl::tl_io_owner = nullptr;

Engine::Engine(EngineOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  if (impl_->options_.builtins) AddBuiltins(*this);
}
Engine::~Engine() = default;

Engine& Engine::DefRaw(std::string_view name, RawFunction fn, FunctionOptions options) {
  impl_->Def(name, std::move(fn), options);
  return *this;
}
std::vector<std::string> Engine::functions() const { return impl_->Functions(); }
void Engine::Bind(const std::string& url) { impl_->Bind(url); }
void Engine::Connect(const std::string& url) { impl_->Connect(url); }
std::string Engine::last_endpoint() const { return impl_->last_endpoint_; }
void Engine::Start() { impl_->Start(); }
void Engine::Stop() { impl_->Stop(true, impl_->options_.drain_timeout); }
void Engine::Stop(std::chrono::milliseconds grace) {
  impl_->Stop(true, std::max(grace, std::chrono::milliseconds(0)));
}
void internal::TestHooks::KillEngine(Engine& engine) { engine.impl_->Stop(false); }
bool Engine::running() const noexcept { return impl_->running_; }
const std::string& Engine::id() const noexcept { return impl_->options_.id; }
std::shared_ptr<SharedArena> Engine::shared_arena() {
  impl_->ResultArena();
  std::lock_guard<std::mutex> lock(impl_->arena_mu_);
  return impl_->result_arena_;
}
EngineCounters Engine::counters() const noexcept {
  return EngineCounters{impl_->calls_.load(), impl_->errors_.load(), impl_->dropped_.load(),
                        impl_->closed_idle_.load(), impl_->closed_over_budget_.load()};
}

// ---- plugins ---------------------------------------------------------------------------

void LoadPlugin(Engine& engine, const std::string& path) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw Error(absl::StrCat("plugin ", path, ": cannot load: ", why ? why : "unknown error"));
  }
  using Entry = void (*)(Engine&);
  auto entry = reinterpret_cast<Entry>(dlsym(handle, kPluginEntryPoint));
  if (entry == nullptr) {
    dlclose(handle);
    throw Error(absl::StrCat("plugin ", path, ": no entry point extern \"C\" void ",
                             kPluginEntryPoint, "(zerocan::Engine&)"));
  }
  // Deliberately never dlclose()d: the functions it registered live in it.
  entry(engine);
}

}  // namespace zerocan
