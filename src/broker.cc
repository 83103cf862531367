// Broker: ROUTER frontend, ROUTER backend, engines tracked by heartbeat (see broker.h
// for why this and not zmq_proxy's DEALER backend).
#include "zerocan/broker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>
#include <vector>

#include <capnp/serialize.h>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "wire/materialize.h"
#include "wire/peek.h"
#include "transport/connection_guard.h"
#include "transport/shared_segments.h"
#include "transport/tcp_activity.h"
#include "transport/socket_wait.h"
#include "internal/strings.h"
#include "zerocan/capture.h"
#include "zerocan/pacing.h"
#include "zerocan/placement.h"
#include "zerocan/remote_error.h"
#include "zerocan/shared.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/version.h"
#include "zerocan/writer.h"

namespace zerocan {

using Clock = std::chrono::steady_clock;

namespace {

std::string FrameString(const Buffer& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

Buffer FrameOf(const std::string& s) { return Buffer::CopyOf(s.data(), s.size()); }

// A call fails (EngineLost) when the third engine holding it unstarted is lost (Lose).
constexpr uint32_t kMaxLostUnstarted = 3;

// A call the broker has sent to an engine.
struct InFlight {
  std::string engine;
  std::vector<std::string> client_routing;
  internal::Peek peek;  // message_id, function, timeout_ms, retries
  Clock::time_point deadline;
  bool started = false;   // the engine said so (a `started`)
  uint32_t attempts = 0;  // engines that started it, this one included once started
  uint32_t lost_unstarted = 0;  // engines lost while they held it, before it started
  // The request, kept while the call may be sent again (until it starts and no retry is
  // left); its frames are shared with the send, not copied.
  std::optional<ReceivedMessage> message;
};

struct EngineState {
  Clock::time_point last_seen;
  // Its connection, by the kernel's counters: a result frame crossing a slow link keeps
  // an engine alive although its heartbeats wait behind the frame.
  internal::TcpActivity connection;
  uint64_t in_flight = 0;
  bool draining = false;  // said `draining`: no new calls
  // Its hello said it runs on this host as this user: it maps the arenas clients here
  // refer to, so their references reach it as they are.
  bool shares_memory = false;
  // When the broker last sent it its own hello: where the broker runs, so that the
  // engine knows whether callers behind the broker may read results in its arena.
  std::optional<Clock::time_point> hello_sent;
};

// A call waiting for an engine.
struct Waiting {
  ReceivedMessage message;
  internal::Peek peek;
  Clock::time_point deadline;
  uint32_t attempts = 0;  // engines that started it already (it was lost with them)
  uint64_t bytes = 0;
  uint32_t lost_unstarted = 0;  // engines lost while they held it, before it started
};

std::string CallKey(const std::string& client, uint64_t call_id) {
  std::string key = client;
  key.append(reinterpret_cast<const char*>(&call_id), sizeof(call_id));
  return key;
}

uint64_t MessageBytes(const ReceivedMessage& m) {
  uint64_t n = 0;
  for (const Buffer& f : m.frames) n += f.size();
  return n;
}

}  // namespace

class Broker::Impl {
 public:
  Impl(const std::string& frontend, const std::string& backend, BrokerOptions options)
      : options_(std::move(options)) {
    context_ = &ChannelContext(options_.context, options_.io_cpus, "broker", &owned_context_);
    frontend_ = zmq::socket_t(*context_, zmq::socket_type::router);
    backend_ = zmq::socket_t(*context_, zmq::socket_type::router);
    // How long and how much peers hold, the connection guard judges (below): clients by
    // the idle timeout, engines by CheckEngines. ApplyLimits bounds handshakes and queues.
    ConnectionLimits without_idle = options_.connection_limits;
    without_idle.idle_timeout = std::chrono::milliseconds(0);
    for (zmq::socket_t* s : {&frontend_, &backend_}) {
      s->set(zmq::sockopt::sndhwm, 0);
      s->set(zmq::sockopt::linger, 0);
      // A send to a peer that is gone fails (instead of vanishing): a call is never
      // handed to an engine whose connection closed, and probes find who left.
      s->set(zmq::sockopt::router_mandatory, 1);
      ApplyLimits(*s, options_.limits, without_idle);
      if (options_.curve) ConfigureCurveServer(*s, *options_.curve);
    }
    // Engines get pings at their heartbeat interval, but libzmq's verdict on them counts
    // complete frames only and would cut an engine whose result takes longer than the
    // window to arrive: CheckEngines decides (the engine's heartbeats, else its
    // connection's activity); libzmq's timeout is only a far backstop.
    backend_.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(options_.heartbeat.count()));
    backend_.set(zmq::sockopt::heartbeat_timeout, 1 << 30);
    internal::ApplyIdlePings(frontend_, options_.connection_limits.idle_timeout);
    // A dead engine reconnecting (after a restart) under the same identity would
    // otherwise be refused; engines have no fixed identity, but be safe.
    backend_.set(zmq::sockopt::router_handover, 1);
    if (!options_.curve_allowed_clients.empty()) {
      if (!options_.curve) throw Error("broker: curve_allowed_clients needs curve (a key pair)");
      curve_allow_ = std::make_unique<CurveAllowList>(*context_, options_.curve_allowed_clients);
    }
    Bind(frontend_, frontend, "frontend");
    Bind(backend_, backend, "backend");
    // One guard over clients and engines; its monitors (after the binds, which may
    // replace them) also say when a peer's connection closed.
    guard_.emplace(*context_, options_.connection_limits.receive_budget_bytes,
                   options_.connection_limits.idle_timeout);
    guard_->Watch(frontend_, "frontend");  // index kFrontend
    // Engines' results do not count against the budget: clients must not get them cut.
    guard_->Watch(backend_, "backend", /*budgeted=*/false);  // index kBackend
    if (!options_.capture.empty()) {
      capture_ = zmq::socket_t(*context_, zmq::socket_type::pub);
      capture_.set(zmq::sockopt::linger, 0);
      if (options_.curve) ConfigureCurveServer(capture_, *options_.curve);
      Bind(capture_, options_.capture, "capture");
    }
    if (!options_.capture_file.empty()) {
      capture_file_ = CaptureWriter::Open(options_.capture_file);
    }
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw TransportError("broker: eventfd failed");
  }

  ~Impl() {
    Stop();
    guard_.reset();  // its monitors go before the sockets they watch
    frontend_.close();
    backend_.close();
    if (capture_.handle() != nullptr) capture_.close();
    ::close(wake_fd_);
  }

  void Bind(zmq::socket_t& s, const std::string& url, const char* what) {
    try {
      if (options_.unpace_local_tcp) {
        BindUnpaced(*context_, s, url);
      } else {
        s.bind(url);
      }
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("broker: cannot bind ", what, " ", url, ": ", e.what()));
    }
  }

  void Start() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() {
    RequestStop();
    if (thread_.joinable()) thread_.join();
  }

  void Drain(std::chrono::milliseconds grace) {
    drain_grace_ms_ = std::max<int64_t>(grace.count(), 0);
    drain_ = true;
    Wake();
    if (thread_.joinable()) thread_.join();
  }

  void RequestStop() noexcept {
    stop_ = true;
    Wake();
  }

  void Wake() noexcept {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }

  void Run() {
    zmq::pollitem_t items[] = {{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                               {backend_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                               guard_->MonitorItem(kFrontend),
                               guard_->MonitorItem(kBackend)};
    wait_.emplace(items);
    Clock::time_point next_check = Clock::now() + options_.heartbeat;
    Clock::time_point drain_until = Clock::time_point::max();
    while (!stop_) {
      Clock::time_point wake_at = std::min(next_check, drain_until);
      if (probe_until_ > Clock::now()) wake_at = std::min(wake_at, next_probe_);
      wake_at = std::min(wake_at, guard_->next_check());
      auto left = std::chrono::ceil<std::chrono::milliseconds>(wake_at - Clock::now());
      if (left.count() < 0) left = std::chrono::milliseconds(0);
      wait_->Wait(left);
      if (wait_->readable(kWakeItem)) {
        uint64_t v;
        [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof(v));
      }
      if (stop_) break;
      Clock::time_point now = Clock::now();
      if (drain_ && !draining_) {
        draining_ = true;
        drain_until = now + std::chrono::milliseconds(drain_grace_ms_.load());
        FailWaiting(kErrorBrokerStopping,
                    "the broker is stopping; this call was still waiting for an engine and "
                    "did not start");
      }
      guard_->Check(now);  // may close idle connections and those holding too much
      internal::ConnectionGuard::Closes closes = guard_->TakeCloses();
      closed_idle_.fetch_add(closes.idle, std::memory_order_relaxed);
      closed_over_budget_.fetch_add(closes.over_budget, std::memory_order_relaxed);
      // A peer's connection closed: find out whose, now and for a short while (libzmq
      // retires the peer's pipe a moment after it reports the disconnect).
      if (guard_->TakeClosed(kFrontend, wait_->readable(kFrontendMonitorItem), now)) {
        StartProbing(&probe_clients_);
      }
      if (guard_->TakeClosed(kBackend, wait_->readable(kBackendMonitorItem), now)) {
        StartProbing(&probe_engines_);
      }
      // Replies first: they retire calls and free engines for the requests below.
      if (wait_->readable(kBackendItem) && DrainBackend()) wait_->Settled(kBackendItem);
      if (wait_->readable(kFrontendItem) && DrainFrontend()) wait_->Settled(kFrontendItem);
      now = Clock::now();
      if (probe_until_ > now && now >= next_probe_) Probe(now);
      if (now >= next_check) {
        CheckEngines();
        next_check = Clock::now() + options_.heartbeat;
      }
      engines_live_.store(engines_.size(), std::memory_order_relaxed);
      queued_.store(waiting_.size(), std::memory_order_relaxed);
      if (draining_) {
        if (in_flight_.empty()) break;
        if (Clock::now() >= drain_until) {
          FailInFlight(absl::StrCat("the broker stopped before this call finished (its drain "
                                    "grace period of ", drain_grace_ms_.load(), " ms passed)"));
          break;
        }
      }
    }
  }

  // ---- disconnect probes ----------------------------------------------------------------

  void StartProbing(bool* which) {
    *which = true;
    Clock::time_point now = Clock::now();
    probe_until_ = now + std::chrono::milliseconds(300);
    next_probe_ = now;
  }

  // Sends a heartbeat to every engine (and, after a client left, to every client with a
  // call waiting): a send that fails names a peer whose connection is gone.
  void Probe(Clock::time_point now) {
    next_probe_ = now + std::chrono::milliseconds(20);
    if (probe_engines_) {
      std::vector<std::string> gone;
      for (auto& [id, state] : engines_) {
        if (!SendProbe(backend_, {id})) gone.push_back(id);
      }
      Lose(gone, "closed its connection");
    }
    if (probe_clients_ && !waiting_.empty()) {
      absl::flat_hash_map<std::string, bool> alive;
      std::deque<Waiting> kept;
      for (Waiting& w : waiting_) {
        std::vector<std::string> routing;
        for (const Buffer& r : w.message.routing) routing.push_back(FrameString(r));
        auto [it, fresh] = alive.try_emplace(routing.empty() ? "" : routing[0], true);
        if (fresh) it->second = SendProbe(frontend_, routing);
        if (it->second) {
          kept.push_back(std::move(w));
        } else {
          ++dropped_;  // its client has gone: nobody would read the reply
          waiting_bytes_ -= w.bytes;
        }
      }
      waiting_.swap(kept);
    }
    if (now + std::chrono::milliseconds(20) >= probe_until_) {
      probe_engines_ = probe_clients_ = false;
    }
  }

  bool SendProbe(zmq::socket_t& s, const std::vector<std::string>& routing) {
    EnvelopeWriter w;
    w.SetHeader(NextHeader());
    w.SetHeartbeat("broker", 0);
    Outgoing out = w.Finish();
    RoutingFrames frames;
    for (const std::string& r : routing) frames.push_back(FrameOf(r));
    try {
      if (options_.signer) options_.signer->Sign(&out);
      Touched(s);
      Send(s, std::move(out), frames);
      return true;
    } catch (const TransportError&) {
      return false;
    }
  }

  // ---- clients -> engines --------------------------------------------------------------

  // Receives from the frontend until it has nothing (true) or for a bounded batch.
  bool DrainFrontend() {
    for (int n = 0; n < 1024; ++n) {  // bounded, so the backend is never starved
      std::optional<ReceivedMessage> m;
      Arrival arrival{.curve = options_.curve.has_value()};
      try {
        m = Receive(frontend_, options_.limits, zmq::recv_flags::dontwait, true, &arrival);
      } catch (const Error&) {
        guard_->Delivered(arrival);
        ++dropped_;
        continue;
      }
      guard_->Delivered(arrival);
      if (!m) return true;
      Capture(*m, Direction::kRequest, "frontend");
      if (m->routing.empty()) {
        ++dropped_;
        continue;
      }
      std::optional<internal::Peek> peek = internal::PeekEnvelope(m->frames[0], options_.limits);
      if (peek && (peek->kind == BodyKind::kCancel || peek->kind == BodyKind::kCredit)) {
        ClientControl(*m, *peek);  // cancel and streams
        continue;
      }
      if (peek && peek->kind == BodyKind::kHello) {
        // A client asking where its peer runs, to share memory. Unanswered, it sends
        // frames.
        // With a key, only a signed hello is answered (as engines do).
        if (options_.shared_memory &&
            (!options_.signer ||
             options_.signer->Check(std::span<const Buffer>(m->frames.data(), m->frames.size())) ==
                 Signer::Verdict::kOk)) {
          SendHello(frontend_, RoutingStrings(m->routing));
        }
        continue;
      }
      if (!peek || peek->kind != BodyKind::kApply) {
        ++dropped_;  // clients only send calls; anything else is noise
        continue;
      }
      if (draining_) {
        SendError(RoutingStrings(m->routing), peek->message_id, "",
                  {kErrorBrokerStopping, "the broker is stopping and takes no new calls",
                   peek->function, "broker"});
        continue;
      }
      Clock::time_point deadline =
          peek->timeout_ms == 0 ? Clock::time_point::max()
                                : Clock::now() + std::chrono::milliseconds(peek->timeout_ms);
      uint64_t bytes = MessageBytes(*m);
      Waiting w{std::move(*m), std::move(*peek), deadline, 0, bytes};
      // (The queue's bound first: an engine is chosen once, by Dispatch, unless it is full.)
      if ((waiting_.size() + 1 > options_.max_queued_calls ||
           waiting_bytes_ + bytes > options_.max_queued_bytes) &&
          ChooseEngine() == nullptr) {
        ++busy_;
        SendError(RoutingStrings(w.message.routing), w.peek.message_id, "",
                  {kErrorBusy,
                   absl::StrCat("the broker's queue of calls waiting for an engine is full (",
                                waiting_.size(), " calls, ", waiting_bytes_,
                                " bytes; limits ", options_.max_queued_calls, " calls, ",
                                options_.max_queued_bytes, " bytes); nothing ran"),
                   w.peek.function, "broker"});
        continue;
      }
      Dispatch(std::move(w));
    }
    return false;  // (the batch bound: more may wait)
  }

  // The live, not draining engine with the fewest calls in flight; ties rotate (the next
  // id after the last choice). nullptr when there is none. `prefer_shared` (a call that
  // may carry shared-memory references): among the engines on this host when there are
  // any, so that the call goes as it is rather than rewritten. Engines that would be lost
  // at the next check (silent for heartbeat x (liveness - 1), at least 1.5 heartbeats)
  // are passed over while another was heard from since: the engines of a host that
  // stopped fall silent one after another, and a call moved from one to the next would
  // count each loss.
  const std::string* ChooseEngine(bool prefer_shared = false) {
    bool only_shared = false;
    if (prefer_shared) {
      for (auto& [id, state] : engines_) only_shared |= !state.draining && state.shares_memory;
    }
    auto candidate = [only_shared](const EngineState& state) {
      return !state.draining && (!only_shared || state.shares_memory);
    };
    Clock::time_point quiet_since =
        Clock::now() - std::max(options_.heartbeat * (options_.liveness - 1),
                                options_.heartbeat * 3 / 2);
    bool only_heard = false;
    for (auto& [id, state] : engines_) {
      only_heard |= candidate(state) && state.last_seen >= quiet_since;
    }
    auto eligible = [&](const EngineState& state) {
      return candidate(state) && (!only_heard || state.last_seen >= quiet_since);
    };
    uint64_t fewest = UINT64_MAX;
    for (auto& [id, state] : engines_) {
      if (eligible(state)) fewest = std::min(fewest, state.in_flight);
    }
    const std::string* first = nullptr;
    const std::string* next = nullptr;
    for (auto& [id, state] : engines_) {
      if (!eligible(state) || state.in_flight != fewest) continue;
      if (first == nullptr || id < *first) first = &id;
      if (id > last_choice_ && (next == nullptr || id < *next)) next = &id;
    }
    return next != nullptr ? next : first;
  }

  // Sends `w` to the chosen engine, or queues it.
  void Dispatch(Waiting&& w) {
    bool may_refer = options_.shared_memory && !w.message.frames.empty() &&
                     internal::MayReferToArenas(w.message.frames[0]);
    while (true) {
      const std::string* chosen = ChooseEngine(may_refer);
      if (chosen == nullptr) {
        waiting_bytes_ += w.bytes;
        waiting_.push_back(std::move(w));
        return;
      }
      std::string engine = *chosen;
      RoutingFrames routing;
      routing.push_back(Buffer::Borrow(engine.data(), engine.size()));  // copied by the send
      for (const Buffer& r : w.message.routing) routing.push_back(r);
      std::vector<Buffer> materialized;
      if (options_.shared_memory && !engines_[engine].shares_memory) {
        std::optional<std::vector<Buffer>> frames = Materialize(w);
        if (!frames) return;  // answered with the reason
        materialized = std::move(*frames);
      }
      std::span<const Buffer> frames = materialized.empty()
                                           ? std::span<const Buffer>(w.message.frames)
                                           : std::span<const Buffer>(materialized);
      if (!Forward(backend_, routing, frames)) {
        // Its connection is gone (the send names no connected peer): it is lost, and
        // this call, which never reached it, goes to another.
        Lose({engine}, "closed its connection");
        continue;
      }
      last_choice_ = engine;
      ++engines_[engine].in_flight;
      InFlight f;
      f.engine = engine;
      f.client_routing = RoutingStrings(w.message.routing);
      f.peek = std::move(w.peek);
      f.deadline = w.deadline;
      f.attempts = w.attempts;
      f.lost_unstarted = w.lost_unstarted;
      f.message = std::move(w.message);
      in_flight_[CallKey(f.client_routing[0], f.peek.message_id)] = std::move(f);
      ++requests_;
      return;
    }
  }

  // A client's cancel or credit: a queued call is dropped (cancel); a call at an engine
  // gets the message forwarded there. A cancelled call is retired here at once: the
  // engine sends nothing more for it, and anything that comes is dropped as untracked.
  void ClientControl(const ReceivedMessage& m, const internal::Peek& peek) {
    std::string client = FrameString(m.routing[0]);
    auto f = in_flight_.find(CallKey(client, peek.call_id));
    if (f == in_flight_.end()) {
      if (peek.kind != BodyKind::kCancel) return;
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        if (it->peek.message_id == peek.call_id && FrameString(it->message.routing[0]) == client) {
          waiting_bytes_ -= std::min(waiting_bytes_, it->bytes);
          waiting_.erase(it);
          return;
        }
      }
      return;
    }
    RoutingFrames routing;
    routing.push_back(FrameOf(f->second.engine));
    for (const Buffer& r : m.routing) routing.push_back(r);
    if (!Forward(backend_, routing, m.frames)) ++dropped_;
    if (peek.kind == BodyKind::kCancel) {
      auto e = engines_.find(f->second.engine);
      if (e != engines_.end() && e->second.in_flight > 0) --e->second.in_flight;
      in_flight_.erase(f);
    }
  }

  // ---- engines -> broker / clients --------------------------------------------------------

  // Receives from the backend until it has nothing (true) or for a bounded batch.
  bool DrainBackend() {
    for (int n = 0; n < 1024; ++n) {
      std::optional<ReceivedMessage> m;
      Arrival arrival{.curve = options_.curve.has_value()};
      try {
        m = Receive(backend_, options_.limits, zmq::recv_flags::dontwait, true, &arrival);
      } catch (const Error&) {
        guard_->Delivered(arrival);
        ++dropped_;
        continue;
      }
      guard_->Delivered(arrival);
      if (!m) return true;
      if (m->routing.empty()) {
        ++dropped_;
        continue;
      }
      std::string engine = FrameString(m->routing[0]);
      std::optional<internal::Peek> peek = internal::PeekEnvelope(m->frames[0], options_.limits);
      if (m->routing.size() == 1) {
        // For the broker itself: hello, heartbeat, draining, goodbye.
        Capture(*m, Direction::kReceived, "backend");
        if (options_.signer && options_.signer->Check(std::span<const Buffer>(
                                   m->frames.data(), m->frames.size())) != Signer::Verdict::kOk) {
          ++dropped_;  // not from an engine holding our key
          continue;
        }
        if (!peek) {
          ++dropped_;
          continue;
        }
        if (peek->kind == BodyKind::kGoodbye) {
          Lose({engine}, "said goodbye", /*may_be_the_calls=*/false);
        } else {
          bool known = engines_.contains(engine);
          EngineState& state = engines_[engine];
          bool hello = peek->kind == BodyKind::kHello;
          if (hello) state.shares_memory = SharesMemory(std::move(*m));
          // Where this broker runs: for an engine known from a heartbeat (this broker
          // started after its hello) also a question, which its answering hello settles;
          // for one that said hello, the answer (again for an engine that restarted
          // under the same id, but not to the hello that answers ours).
          if (options_.shared_memory &&
              (!state.hello_sent ||
               (hello && Clock::now() - *state.hello_sent > std::chrono::seconds(1)))) {
            SendHello(backend_, {engine});
            state.hello_sent = Clock::now();
          }
          state.last_seen = Clock::now();
          if (arrival.fd != state.connection.fd()) state.connection.Watch(arrival.fd);
          if (peek->kind == BodyKind::kDraining) state.draining = true;
          if (!known && !state.draining) DispatchWaiting();
        }
        continue;
      }
      auto it = engines_.find(engine);
      if (it != engines_.end()) it->second.last_seen = Clock::now();
      std::string client = FrameString(m->routing[1]);
      if (peek && peek->kind == BodyKind::kStarted) {
        Capture(*m, Direction::kReceived, "backend");
        auto f = in_flight_.find(CallKey(client, peek->call_id));
        if (f != in_flight_.end() && f->second.engine == engine && !f->second.started) {
          InFlight& call = f->second;
          call.started = true;
          ++call.attempts;
          // No second run is allowed: stop holding the request's frames.
          if (call.attempts > call.peek.retries) call.message.reset();
        }
        continue;
      }
      Capture(*m, Direction::kReply, "backend");
      if (!peek || peek->kind != BodyKind::kResult) {
        ++dropped_;
        continue;
      }
      if (peek->call_id != 0) {
        auto f = in_flight_.find(CallKey(client, peek->call_id));
        if (f == in_flight_.end() || f->second.engine != engine) {
          ++dropped_;  // its call was already failed (engine lost) or never ours
          continue;
        }
        if (peek->stream == StreamPart::kItem) {
          // A stream's items pass on; the call runs, whatever its engine said so far.
          if (!f->second.started) {
            f->second.started = true;
            ++f->second.attempts;
          }
          f->second.message.reset();  // items were delivered: never run it again
        } else {
          // Its end, or a plain result, retires the call.
          if (it != engines_.end() && it->second.in_flight > 0) --it->second.in_flight;
          if (peek->error_type == kErrorEngineStopping && !f->second.started &&
              f->second.message) {
            // The engine is draining and refused the call before running it: elsewhere.
            InFlight call = std::move(f->second);
            in_flight_.erase(f);
            if (it != engines_.end()) it->second.draining = true;
            Redispatch(std::move(call));
            continue;
          }
          in_flight_.erase(f);
        }
      }
      std::span<const Buffer> routing(m->routing.data() + 1, m->routing.size() - 1);
      if (Forward(frontend_, routing, m->frames)) {
        ++replies_;
      } else {
        ++dropped_;
      }
      if (!waiting_.empty() && it != engines_.end()) DispatchWaiting();
    }
    return false;  // (the batch bound: more may wait)
  }

  void Redispatch(InFlight&& f) {
    if (f.deadline <= Clock::now()) {
      ++dropped_;  // its client has given up already
      return;
    }
    ++rerouted_;
    uint64_t bytes = MessageBytes(*f.message);
    Dispatch(Waiting{std::move(*f.message), std::move(f.peek), f.deadline, f.attempts, bytes,
                     f.lost_unstarted});
  }

  void DispatchWaiting() {
    std::deque<Waiting> queue;
    queue.swap(waiting_);
    waiting_bytes_ = 0;
    Clock::time_point now = Clock::now();
    while (!queue.empty()) {
      Waiting w = std::move(queue.front());
      queue.pop_front();
      if (w.deadline <= now) {
        ++dropped_;  // its client has given up already
        continue;
      }
      Dispatch(std::move(w));
    }
  }

  void CheckEngines() {
    Clock::time_point now = Clock::now();
    // Arenas mapped to rewrite calls for engines elsewhere, unused for a while: unmapped,
    // so that a client's arena does not outlive the client here.
    if (options_.shared_memory) internal::ProcessSegments().Sweep();
    auto limit = options_.heartbeat * options_.liveness;
    std::vector<std::string> lost;
    for (auto& [id, state] : engines_) {
      // Looked at every time (the kernel's counters are compared with the last look).
      std::optional<std::chrono::milliseconds> idle = state.connection.Idle(now);
      if (now - state.last_seen <= limit) continue;
      // Heartbeats wait behind a frame still arriving: silent only if the connection is.
      if (idle && *idle <= limit) continue;
      lost.push_back(id);
    }
    // Together: a call of one is never handed to another that is as silent.
    Lose(lost, absl::StrCat("sent no heartbeat for ",
                            std::chrono::duration_cast<std::chrono::milliseconds>(limit).count(),
                            " ms"));
    std::deque<Waiting> kept;
    for (Waiting& w : waiting_) {
      if (w.deadline <= now) {
        ++dropped_;  // its client has given up already
        waiting_bytes_ -= w.bytes;
      } else {
        kept.push_back(std::move(w));
      }
    }
    waiting_.swap(kept);
  }

  // Forgets `engines`, all of them before any of their calls moves. Their calls that had
  // not started go to other engines; those they were running fail with EngineLost, or
  // run again elsewhere when their caller allowed retries. A call that crashes its
  // engine before the `started` leaves looks like one that never ran, and would take
  // down every engine in turn: so a loss that may be the call's doing (anything but a
  // goodbye) counts, and the kMaxLostUnstarted-th engine lost holding a call unstarted
  // fails it instead.
  void Lose(const std::vector<std::string>& engines, const std::string& why,
            bool may_be_the_calls = true) {
    absl::flat_hash_set<std::string> gone;
    for (const std::string& engine : engines) {
      if (engines_.erase(engine)) gone.insert(engine);
    }
    if (gone.empty()) return;
    std::vector<std::string> keys;
    for (auto& [key, f] : in_flight_) {
      if (gone.contains(f.engine)) keys.push_back(key);
    }
    std::vector<InFlight> again;
    for (const std::string& key : keys) {
      InFlight f = std::move(in_flight_[key]);
      in_flight_.erase(key);
      if (!f.started && may_be_the_calls) ++f.lost_unstarted;
      bool again_ok = f.started ? f.attempts <= f.peek.retries
                                : f.lost_unstarted < kMaxLostUnstarted;
      if (f.message && again_ok) {
        if (f.started) ++retried_;
        again.push_back(std::move(f));
        continue;
      }
      std::string what;
      if (!f.started) {
        what = absl::StrCat(" holding this call; ", f.lost_unstarted,
                            " engines were lost holding it unstarted, so it is not sent to "
                            "another (it may be what stops them)");
      } else {
        what = absl::StrCat(
            " while running this call (",
            f.attempts <= 1 && f.peek.retries == 0
                ? std::string("1 attempt; the caller allowed no retries")
                : absl::StrCat(f.attempts, " attempts, the last on this engine; the caller "
                               "allowed ", f.peek.retries, " retries"),
            ")");
      }
      ++lost_;  // (before the error leaves: a caller that reads the counters sees it)
      SendError(f.client_routing, f.peek.message_id, PrintableId(f.engine),
                {kErrorEngineLost,
                 absl::StrCat("engine ", PrintableId(f.engine), " ", why, what),
                 f.peek.function, "broker"});
    }
    for (InFlight& f : again) Redispatch(std::move(f));
  }

  // Fails every call waiting for an engine (the broker is stopping).
  void FailWaiting(const char* type, const std::string& why) {
    std::deque<Waiting> queue;
    queue.swap(waiting_);
    waiting_bytes_ = 0;
    for (Waiting& w : queue) {
      SendError(RoutingStrings(w.message.routing), w.peek.message_id, "",
                {type, why, w.peek.function, "broker"});
    }
  }

  // Fails every call in flight (the drain's grace period passed).
  void FailInFlight(const std::string& why) {
    for (auto& [key, f] : in_flight_) {
      SendError(f.client_routing, f.peek.message_id, PrintableId(f.engine),
                {kErrorBrokerStopping, why, f.peek.function, "broker"});
    }
    in_flight_.clear();
  }

  static std::vector<std::string> RoutingStrings(const RoutingFrames& routing) {
    std::vector<std::string> out;
    for (const Buffer& r : routing) out.push_back(FrameString(r));
    return out;
  }

  Header NextHeader() {
    Header h;
    h.message_id = ++next_id_;
    h.session_id = session_;
    h.sequence = h.message_id;
    return h;
  }

  // Whether an engine's hello says it shares this broker's host and user.
  bool SharesMemory(ReceivedMessage&& hello) const {
    try {
      if (options_.signer) options_.signer->Verify(&hello);
      std::optional<HostIdentity> host = Message::Decode(std::move(hello), options_.limits)
                                             .hello_host();
      return host && host->SharesMemoryWith(HostIdentity::This());
    } catch (const Error&) {
      return false;
    }
  }

  // The broker's hello, where it runs: the answer to a client's, or a question to an
  // engine it knows only from heartbeats (which answers with its own).
  void SendHello(zmq::socket_t& socket, const std::vector<std::string>& routing) {
    EnvelopeWriter w;
    w.SetHeader(NextHeader());
    w.SetHello("broker", "broker", {}, &HostIdentity::This());
    SendOwn(socket, w.Finish(), routing);
  }

  // Call `w` for an engine that cannot map this host's arenas: empty when it has no
  // shared-memory reference (it goes as it is), else its frames with every reference
  // replaced by the mapped bytes, which the send hands to the kernel without a copy
  // here. nullopt: it cannot go that way, and its client was answered with the reason.
  std::optional<std::vector<Buffer>> Materialize(const Waiting& w) {
    if (w.message.frames.empty() || !internal::MayReferToArenas(w.message.frames[0])) {
      return std::vector<Buffer>{};
    }
    ReceivedMessage copy = w.message;
    // Rewritten only when the broker can sign the result as the engine expects it: a
    // signed call with the key, an unsigned one without. Any other goes as it is (the
    // engine refuses it as it would have anyway).
    if (LooksLikeSignature(copy.frames.back()) != options_.signer.has_value()) {
      return std::vector<Buffer>{};
    }
    DecodeLimits limits = options_.limits;
    limits.shared_refs = DecodeLimits::SharedRefs::kMap;
    try {
      if (options_.signer) options_.signer->Verify(&copy);
      std::optional<internal::Materialized> m =
          internal::MaterializeApply(Message::Decode(std::move(copy), limits), Policy::Default());
      if (!m) return std::vector<Buffer>{};
      uint64_t total = m->message.envelope().size();
      bool frame_too_large = false;
      for (const Buffer& b : m->message.payload_frames()) {
        total += b.size();
        frame_too_large |= b.size() > options_.limits.max_frame_bytes;
      }
      if (frame_too_large || total > options_.limits.max_message_bytes ||
          m->message.frame_count() + 1 > options_.limits.max_frames) {
        // As frames it would be refused on arrival (the same limits there): say so now.
        throw DecodeError(DecodeError::Code::kLimitExceeded,
                          absl::StrCat(m->bytes, " bytes in shared memory are more than one "
                                       "message may carry as frames (max_message_bytes ",
                                       options_.limits.max_message_bytes, ", max_frame_bytes ",
                                       options_.limits.max_frame_bytes, ")"));
      }
      if (options_.signer) options_.signer->Sign(&m->message);
      std::vector<Buffer> frames;
      frames.push_back(m->message.TakeEnvelope());
      for (const Buffer& b : m->message.payload_frames()) frames.push_back(b);
      if (!m->message.trailer().empty()) frames.push_back(m->message.trailer());
      ++materialized_;
      materialized_bytes_ += m->bytes;
      return frames;
    } catch (const Error& e) {
      // A reference this broker cannot map (another user's arena), or more than a message
      // may carry: the client learns why, and sends frames from then on.
      SendError(RoutingStrings(w.message.routing), w.peek.message_id, "",
                {kErrorDecode,
                 absl::StrCat("the broker could not pass this call's shared-memory "
                              "references to an engine on another host: ", e.what()),
                 w.peek.function, "broker"});
      return std::nullopt;
    }
  }

  // An error reply the broker makes itself (EngineLost, Busy, BrokerStopping).
  void SendError(const std::vector<std::string>& client_routing, uint64_t call_id,
                 const std::string& engine, const RemoteErrorInfo& info) {
    EnvelopeWriter w;
    w.SetHeader(NextHeader());
    w.SetError(call_id, engine, info);
    SendOwn(frontend_, w.Finish(), client_routing);
  }

  // A message of the broker's own (an error, a hello) to a client or an engine: captured,
  // since it is part of the conversation (a capture lists every call and the result it
  // got, including EngineLost), signed with the broker's key, sent.
  void SendOwn(zmq::socket_t& socket, Outgoing&& message,
               const std::vector<std::string>& routing_strings) {
    RoutingFrames routing;
    for (const std::string& r : routing_strings) routing.push_back(FrameOf(r));
    if (capture_file_ != nullptr || capture_.handle() != nullptr) {
      ReceivedMessage shown;
      shown.routing = routing;
      shown.frames.push_back(message.envelope());
      Capture(shown, &socket == &frontend_ ? Direction::kReply : Direction::kRequest,
              "broker");
    }
    try {
      if (options_.signer) options_.signer->Sign(&message);
      Touched(socket);
      Send(socket, std::move(message), routing);
    } catch (const TransportError&) {
      ++dropped_;
    }
  }

  static std::string PrintableId(const std::string& id) {
    std::string out;
    for (unsigned char c : id) {
      if (c >= 0x20 && c < 0x7f) {
        out += static_cast<char>(c);
      } else {
        absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
      }
    }
    return out;
  }

  // Forwards received frames; false when the socket refused them or failed.
  bool Forward(zmq::socket_t& s, std::span<const Buffer> routing,
               std::span<const Buffer> frames) {
    Touched(s);
    try {
      return SendFrames(s, routing, frames);
    } catch (const TransportError&) {
      return false;
    }
  }

  void Capture(const ReceivedMessage& m, Direction direction, const char* source) {
    if (capture_file_ != nullptr) {
      try {
        capture_file_->Write(m, direction, source);
      } catch (const Error&) {
        // Best effort, like the socket: a full disk never stops the forwarding.
      }
    }
    if (capture_.handle() == nullptr) return;
    try {
      PublishCaptured(capture_, m, direction, source);
    } catch (const Error&) {
      // The capture is best effort: it never stops the forwarding.
    }
  }

  BrokerCounters Counters() const noexcept {
    return BrokerCounters{requests_.load(), replies_.load(), lost_.load(), dropped_.load(),
                          engines_live_.load(), rerouted_.load(), retried_.load(),
                          busy_.load(), queued_.load(), closed_idle_.load(),
                          closed_over_budget_.load(), materialized_.load(),
                          materialized_bytes_.load()};
  }

  BrokerOptions options_;
  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  zmq::socket_t frontend_, backend_, capture_;
  // Run's wait on the sockets, wake_fd_ and the guard's monitors; the broker thread only.
  static constexpr size_t kFrontendItem = 0, kBackendItem = 1, kWakeItem = 2,
                          kFrontendMonitorItem = 3, kBackendMonitorItem = 4;
  std::optional<internal::SocketWait> wait_;
  // A send on `socket` (or anything but a receive that found nothing) since Run's last
  // wait: the wait asks libzmq about it first.
  void Touched(zmq::socket_t& socket) {
    if (wait_) wait_->Touched(&socket == &frontend_ ? kFrontendItem : kBackendItem);
  }
  // The connections of both sockets (indexes below): closes, and the bytes they hold.
  std::optional<internal::ConnectionGuard> guard_;
  static constexpr size_t kFrontend = 0, kBackend = 1;
  std::unique_ptr<CaptureWriter> capture_file_;
  std::unique_ptr<CurveAllowList> curve_allow_;  // with curve_allowed_clients only
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> drain_{false};
  std::atomic<int64_t> drain_grace_ms_{0};
  bool draining_ = false;  // the broker thread's
  bool probe_engines_ = false, probe_clients_ = false;
  Clock::time_point probe_until_{}, next_probe_{};
  uint64_t waiting_bytes_ = 0;
  std::thread thread_;
  absl::flat_hash_map<std::string, EngineState> engines_;
  absl::flat_hash_map<std::string, InFlight> in_flight_;
  std::deque<Waiting> waiting_;
  std::string last_choice_;
  uint64_t next_id_ = 0;
  uint64_t session_ = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^
                      (uint64_t{static_cast<uint32_t>(getpid())} << 32);
  std::atomic<uint64_t> requests_{0}, replies_{0}, lost_{0}, dropped_{0}, engines_live_{0};
  std::atomic<uint64_t> rerouted_{0}, retried_{0}, busy_{0}, queued_{0};
  std::atomic<uint64_t> closed_idle_{0}, closed_over_budget_{0};  // by guard_
  std::atomic<uint64_t> materialized_{0}, materialized_bytes_{0};
};

Broker::Broker(const std::string& frontend, const std::string& backend, BrokerOptions options)
    : impl_(std::make_unique<Impl>(frontend, backend, std::move(options))) {}
Broker::~Broker() = default;
void Broker::Start() { impl_->Start(); }
void Broker::Run() { impl_->Run(); }
void Broker::Stop() { impl_->Stop(); }
void Broker::Drain() { impl_->Drain(impl_->options_.drain_timeout); }
void Broker::Drain(std::chrono::milliseconds grace) { impl_->Drain(grace); }
void Broker::RequestStop() noexcept { impl_->RequestStop(); }
std::string Broker::frontend_endpoint() const {
  return impl_->frontend_.get(zmq::sockopt::last_endpoint);
}
std::string Broker::backend_endpoint() const {
  return impl_->backend_.get(zmq::sockopt::last_endpoint);
}
BrokerCounters Broker::counters() const noexcept { return impl_->Counters(); }

}  // namespace zerocan
