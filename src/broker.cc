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
#include "absl/strings/str_cat.h"
#include "wire/peek.h"
#include "internal/strings.h"
#include "zerocan/capture.h"
#include "zerocan/pacing.h"
#include "zerocan/placement.h"
#include "zerocan/remote_error.h"
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

// A call the broker has sent to an engine.
struct InFlight {
  std::string engine;
  std::string client;  // routing frame of the client (the first one, for the map key)
  std::vector<std::string> client_routing;
  uint64_t call_id = 0;
  std::string function;
};

struct EngineState {
  Clock::time_point last_seen;
  uint64_t in_flight = 0;
};

// A call waiting for an engine.
struct Waiting {
  ReceivedMessage message;
  internal::Peek peek;
  Clock::time_point deadline;
};

std::string CallKey(const std::string& client, uint64_t call_id) {
  std::string key = client;
  key.append(reinterpret_cast<const char*>(&call_id), sizeof(call_id));
  return key;
}

}  // namespace

class Broker::Impl {
 public:
  Impl(const std::string& frontend, const std::string& backend, BrokerOptions options)
      : options_(std::move(options)) {
    context_ = &ChannelContext(options_.context, options_.io_cpus, "broker", &owned_context_);
    frontend_ = zmq::socket_t(*context_, zmq::socket_type::router);
    backend_ = zmq::socket_t(*context_, zmq::socket_type::router);
    for (zmq::socket_t* s : {&frontend_, &backend_}) {
      s->set(zmq::sockopt::sndhwm, 0);
      s->set(zmq::sockopt::rcvhwm, 0);
      s->set(zmq::sockopt::linger, 0);
      ApplyLimits(*s, options_.limits);
      if (options_.curve) ConfigureCurveServer(*s, *options_.curve);
    }
    // A dead engine reconnecting (after a restart) under the same identity would
    // otherwise be refused; engines have no fixed identity, but be safe.
    backend_.set(zmq::sockopt::router_handover, 1);
    Bind(frontend_, frontend, "frontend");
    Bind(backend_, backend, "backend");
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

  void RequestStop() noexcept {
    stop_ = true;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }

  void Run() {
    zmq::pollitem_t items[] = {{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                               {backend_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
    Clock::time_point next_check = Clock::now() + options_.heartbeat;
    while (!stop_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_check - Clock::now());
      if (left.count() < 0) left = std::chrono::milliseconds(0);
      zmq::poll(items, 3, left);
      if (items[2].revents & ZMQ_POLLIN) {
        uint64_t v;
        [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof(v));
      }
      if (stop_) break;
      // Replies first: they retire calls and free engines for the requests below.
      if (items[1].revents & ZMQ_POLLIN) DrainBackend();
      if (items[0].revents & ZMQ_POLLIN) DrainFrontend();
      if (Clock::now() >= next_check) {
        CheckEngines();
        next_check = Clock::now() + options_.heartbeat;
      }
      engines_live_.store(engines_.size(), std::memory_order_relaxed);
    }
  }

  // ---- clients -> engines --------------------------------------------------------------

  void DrainFrontend() {
    for (int n = 0; n < 1024; ++n) {  // bounded, so the backend is never starved
      std::optional<ReceivedMessage> m;
      try {
        m = Receive(frontend_, options_.limits, zmq::recv_flags::dontwait, true);
      } catch (const Error&) {
        ++dropped_;
        continue;
      }
      if (!m) return;
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
      if (!peek || peek->kind != BodyKind::kApply) {
        ++dropped_;  // clients only send calls; anything else is noise
        continue;
      }
      Clock::time_point deadline =
          peek->timeout_ms == 0 ? Clock::time_point::max()
                                : Clock::now() + std::chrono::milliseconds(peek->timeout_ms);
      Dispatch(Waiting{std::move(*m), std::move(*peek), deadline});
    }
  }

  // Sends `w` to the live engine with the fewest calls in flight, or queues it.
  void Dispatch(Waiting&& w) {
    // Fewest calls in flight; ties rotate (the next id after the last choice).
    uint64_t fewest = UINT64_MAX;
    for (auto& [id, state] : engines_) fewest = std::min(fewest, state.in_flight);
    const std::string* first = nullptr;
    const std::string* next = nullptr;
    for (auto& [id, state] : engines_) {
      if (state.in_flight != fewest) continue;
      if (first == nullptr || id < *first) first = &id;
      if (id > last_choice_ && (next == nullptr || id < *next)) next = &id;
    }
    const std::string* best_id = next != nullptr ? next : first;
    if (best_id == nullptr) {
      waiting_.push_back(std::move(w));
      return;
    }
    EngineState* best = &engines_[*best_id];
    last_choice_ = *best_id;
    InFlight f;
    f.engine = *best_id;
    f.client = FrameString(w.message.routing[0]);
    for (auto& r : w.message.routing) f.client_routing.push_back(FrameString(r));
    f.call_id = w.peek.message_id;
    f.function = std::move(w.peek.function);
    RoutingFrames routing;
    routing.push_back(Buffer::Borrow(best_id->data(), best_id->size()));  // copied by the send
    for (auto& r : w.message.routing) routing.push_back(std::move(r));
    if (!Forward(backend_, routing, w.message.frames)) {
      ++dropped_;
      return;
    }
    ++best->in_flight;
    in_flight_[CallKey(f.client, f.call_id)] = std::move(f);
    ++requests_;
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

  void DrainBackend() {
    for (int n = 0; n < 1024; ++n) {
      std::optional<ReceivedMessage> m;
      try {
        m = Receive(backend_, options_.limits, zmq::recv_flags::dontwait, true);
      } catch (const Error&) {
        ++dropped_;
        continue;
      }
      if (!m) return;
      if (m->routing.empty()) {
        ++dropped_;
        continue;
      }
      std::string engine = FrameString(m->routing[0]);
      std::optional<internal::Peek> peek = internal::PeekEnvelope(m->frames[0], options_.limits);
      if (m->routing.size() == 1) {
        // For the broker itself: hello, heartbeat, goodbye.
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
          Lose(engine, "said goodbye");
        } else {
          bool known = engines_.contains(engine);
          engines_[engine].last_seen = Clock::now();
          if (!known) DispatchWaiting();
        }
        continue;
      }
      Capture(*m, Direction::kReply, "backend");
      auto it = engines_.find(engine);
      if (it != engines_.end()) it->second.last_seen = Clock::now();
      if (!peek || peek->kind != BodyKind::kResult) {
        ++dropped_;
        continue;
      }
      std::string client = FrameString(m->routing[1]);
      if (peek->call_id != 0) {
        auto f = in_flight_.find(CallKey(client, peek->call_id));
        if (f == in_flight_.end() || f->second.engine != engine) {
          ++dropped_;  // its call was already failed (engine lost) or never ours
          continue;
        }
        // A stream's items pass; its end (or a plain result) retires the call.
        if (peek->stream != StreamPart::kItem) {
          if (it != engines_.end() && it->second.in_flight > 0) --it->second.in_flight;
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
  }

  void DispatchWaiting() {
    std::deque<Waiting> queue;
    queue.swap(waiting_);
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
    auto limit = options_.heartbeat * options_.liveness;
    std::vector<std::string> lost;
    for (auto& [id, state] : engines_) {
      if (now - state.last_seen > limit) lost.push_back(id);
    }
    for (const std::string& id : lost) {
      Lose(id, absl::StrCat("sent no heartbeat for ",
                            std::chrono::duration_cast<std::chrono::milliseconds>(limit).count(),
                            " ms"));
    }
    while (!waiting_.empty() && waiting_.front().deadline <= now) {
      waiting_.pop_front();
      ++dropped_;
    }
  }

  // Forgets `engine` and fails every call it held.
  void Lose(const std::string& engine, const std::string& why) {
    engines_.erase(engine);
    std::vector<std::string> keys;
    for (auto& [key, f] : in_flight_) {
      if (f.engine == engine) keys.push_back(key);
    }
    for (const std::string& key : keys) {
      InFlight f = std::move(in_flight_[key]);
      in_flight_.erase(key);
      EnvelopeWriter w;
      Header h;
      h.message_id = ++next_id_;
      h.session_id = session_;
      h.sequence = h.message_id;
      w.SetHeader(h);
      w.SetError(f.call_id, PrintableId(engine),
                 {kErrorEngineLost,
                  absl::StrCat("engine ", PrintableId(engine), " ", why,
                               " while running this call"),
                  f.function, "broker"});
      RoutingFrames routing;
      for (const std::string& r : f.client_routing) routing.push_back(FrameOf(r));
      Outgoing reply = w.Finish();
      if (capture_file_ != nullptr || capture_.handle() != nullptr) {
        // The broker's own replies are part of the conversation too: a capture lists
        // every call and the result it got, including EngineLost.
        ReceivedMessage shown;
        shown.routing = routing;
        shown.frames.push_back(reply.envelope());
        Capture(shown, Direction::kReply, "broker");
      }
      try {
        if (options_.signer) options_.signer->Sign(&reply);
        Send(frontend_, std::move(reply), routing);
        ++lost_;
      } catch (const TransportError&) {
        ++dropped_;
      }
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
  static bool Forward(zmq::socket_t& s, std::span<const Buffer> routing,
                      std::span<const Buffer> frames) {
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
                          engines_live_.load()};
  }

  BrokerOptions options_;
  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  zmq::socket_t frontend_, backend_, capture_;
  std::unique_ptr<CaptureWriter> capture_file_;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::flat_hash_map<std::string, EngineState> engines_;
  absl::flat_hash_map<std::string, InFlight> in_flight_;
  std::deque<Waiting> waiting_;
  std::string last_choice_;
  uint64_t next_id_ = 0;
  uint64_t session_ = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^
                      (uint64_t{static_cast<uint32_t>(getpid())} << 32);
  std::atomic<uint64_t> requests_{0}, replies_{0}, lost_{0}, dropped_{0}, engines_live_{0};
};

Broker::Broker(const std::string& frontend, const std::string& backend, BrokerOptions options)
    : impl_(std::make_unique<Impl>(frontend, backend, std::move(options))) {}
Broker::~Broker() = default;
void Broker::Start() { impl_->Start(); }
void Broker::Run() { impl_->Run(); }
void Broker::Stop() { impl_->Stop(); }
void Broker::RequestStop() noexcept { impl_->RequestStop(); }
std::string Broker::frontend_endpoint() const {
  return impl_->frontend_.get(zmq::sockopt::last_endpoint);
}
std::string Broker::backend_endpoint() const {
  return impl_->backend_.get(zmq::sockopt::last_endpoint);
}
BrokerCounters Broker::counters() const noexcept { return impl_->Counters(); }

}  // namespace zerocan
