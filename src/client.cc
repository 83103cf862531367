// Client: one DEALER socket, no background thread.
//
// Two locks. `io_mu_` owns the socket: a sender takes it for the length of one Send, a
// waiter takes it to receive ("leader"). `mu_` guards the table of pending calls. A
// leader blocks in zmq_poll on the socket *and* an eventfd; a thread that wants to send
// while a leader waits bumps `senders_` and, if the leader is polling, writes the
// eventfd, so the leader steps aside at once. Waiters that are not the leader sleep on `cv_`; the leader wakes them
// after every batch it receives.
#include "zerocan/client.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "connection_watch.h"
#include "internal/block_cache.h"
#include "internal/strings.h"
#include "transport/socket_wait.h"
#include "wire/access.h"
#include "wire/peek.h"
#include "zerocan/placement.h"
#include "zerocan/shared.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/stats.h"

namespace zerocan {

using Clock = std::chrono::steady_clock;

namespace internal {

struct PendingCall {
  uint64_t id = 0;
  std::string function;
  Clock::time_point deadline;
  bool done = false;  // guarded by ClientCore::mu_
  Result result;
  // A stream call's (Client::stream) items, received and not yet read (mu_); each item
  // moves the deadline to one call timeout after it. Null for an ordinary call, which
  // then allocates nothing for them.
  struct Stream {
    std::chrono::milliseconds timeout{0};
    std::deque<Result> items;
  };
  std::unique_ptr<Stream> stream;
  bool has_items() const noexcept { return stream != nullptr && !stream->items.empty(); }
  // The arena blocks the call's arguments refer to (Payload.shared): the engine reads
  // them in place, so they stay allocated until it has answered (mu_).
  std::vector<Buffer> shared_blocks;
  // The call asked for results in shared memory (Apply.sharedResults).
  bool shared_results = false;
};

class ClientCore {
 public:
  ClientCore(const std::string& url, const ClientOptions& options, const Registry* registry)
      : limits_(options.limits),
        registry_(registry),
        signer_(options.signer),
        shared_arena_option_(options.shared_arena) {
    if (options.shared_memory) limits_.shared_refs = DecodeLimits::SharedRefs::kMap;
    context_ = &ChannelContext(options.context, options.io_cpus, "client", &owned_context_);
    socket_ = zmq::socket_t(*context_, zmq::socket_type::dealer);
    socket_.set(zmq::sockopt::linger, 0);
    // Unbounded queues: the number of calls in flight is the caller's choice, and a
    // full pipe would make a ROUTER peer drop replies silently.
    socket_.set(zmq::sockopt::sndhwm, 0);
    socket_.set(zmq::sockopt::rcvhwm, 0);
    ApplyLimits(socket_, limits_);
    // With unbounded queues a send only waits when the DEALER has no pipe at all (after a
    // failed handshake: Curve on one end only). Drop the call then; it times out.
    socket_.set(zmq::sockopt::sndtimeo, 0);
    if (!options.curve_server_key.empty()) {
      ConfigureCurveClient(socket_, options.curve ? *options.curve : GenerateCurveKeyPair(),
                           options.curve_server_key);
    }
    // Before connecting: the ZMTP heartbeat options apply to the connection.
    watch_ = std::make_unique<ConnectionWatch>(*context_, socket_, url, options.heartbeat,
                                               options.liveness);
    url_ = url;
    liveness_ms_ = options.heartbeat.count() * std::max(options.liveness, 1);
    try {
      socket_.connect(url);
    } catch (const zmq::error_t& e) {
      throw TransportError(absl::StrCat("client: cannot connect to ", url, ": ", e.what()));
    }
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw TransportError("client: eventfd failed");
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                               watch_->pollitem()};
    wait_ = std::make_unique<internal::SocketWait>(items);
    std::random_device rd;
    session_ = (uint64_t{rd()} << 32) ^ rd();
    if (options.shared_memory && url.rfind("inproc://", 0) != 0) {
      // Asks the peer where it runs; an engine on this host answers (AcceptHello), and
      // from then on arguments at or above the threshold travel in shared memory.
      SendControl([](EnvelopeWriter& w) {
        w.SetHello("client", "client", {}, &HostIdentity::This());
      });
      hello_pending_.store(true, std::memory_order_release);
    }
  }

  // Takes the peer's answer to the hello if it came (without waiting): this client has no
  // thread of its own, and the first call should not wait for a reply to learn it.
  void PollHello() {
    if (!hello_pending_.load(std::memory_order_acquire)) return;
    if (!io_mu_.try_lock()) return;
    if (socket_.handle() != nullptr) ReceiveBatch();
    io_mu_.unlock();
    cv_.notify_all();
  }

  // The arena calls place their large arguments in: set once the peer's hello said it
  // shares this host; null before (and always, without shared memory).
  SharedArena* shared_arena() const noexcept {
    return shared_arena_raw_.load(std::memory_order_acquire);
  }

  ~ClientCore() {
    Close();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  // Closes the socket (under io_mu_) and fails every pending call.
  void Close() {
    WantIo();
    {
      std::lock_guard<std::mutex> io(io_mu_);
      DoneIo();
      if (watch_ != nullptr) watch_->Close();
      if (socket_.handle() != nullptr) socket_.close();
      wait_.reset();  // its descriptors are closed
    }
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    for (auto& [id, call] : pending_) {
      Finish(*call, Result::Failed(std::make_exception_ptr(TransportError(
                        absl::StrCat(internal::Sv(call->function), ": client closed")))));
    }
    pending_.clear();
    expired_blocks_.clear();
    cv_.notify_all();
  }

  ResultFuture Submit(std::shared_ptr<ClientCore> self, EnvelopeWriter& writer,
                      std::string_view function, std::chrono::milliseconds timeout,
                      uint32_t stream_credits = 0) {
    auto call = std::allocate_shared<PendingCall>(internal::CachingAllocator<PendingCall>());
    // The peer answered our hello from this host: results may come in its arena.
    if (shared_arena() != nullptr && stream_credits == 0) {
      writer.SetApplySharedResults(true);
      call->shared_results = true;
    }
    call->id = next_id_.fetch_add(1, std::memory_order_relaxed);
    call->function = std::string(function);
    call->deadline = Clock::now() + timeout;
    if (stream_credits != 0) {  // a stream call (ResultStream)
      writer.SetStreamCredits(stream_credits);
      call->stream = std::make_unique<PendingCall::Stream>();
      call->stream->timeout = timeout;
    }
    Header header;
    header.message_id = call->id;
    header.session_id = session_;
    header.sequence = call->id;
    writer.SetHeader(header);
    Outgoing out = writer.Finish();
    call->shared_blocks = out.TakeSharedBlocks();
    // The caller's own blocks, passed in place: a copy made for the call (or a block
    // the caller let go of) is kept by the call alone, and nobody else writes it.
    std::vector<LentBlock> lent;
    for (const Buffer& b : call->shared_blocks) {
      if (b.keep_alive().use_count() > 1) {
        lent.push_back(LentBlock{b.keep_alive(), b.mutable_data(), b.size()});
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) throw TransportError("client closed");
      ReleaseHeldBlocks();
      pending_.emplace(call->id, call);
    }
    Tracker tracker;
    WantIo();
    {
      std::lock_guard<std::mutex> io(io_mu_);
      DoneIo();
      try {
        if (signer_) signer_->Sign(&out);
        tracker = Send(socket_, std::move(out));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.erase(call->id);
        throw;
      }
    }
    sent_.fetch_add(1, std::memory_order_relaxed);
    if (!lent.empty()) tracker = TrackBlocks(self, call, std::move(tracker), std::move(lent));
    return ResultFuture(std::move(self), std::move(call), std::move(tracker));
  }

  // A call's arena blocks (Payload.shared), as the tracker watches them: without keeping
  // them (a block nobody else keeps is written by nobody).
  struct LentBlock {
    std::weak_ptr<const void> keep;
    std::byte* data;
    size_t size;
  };

  // The call's tracker: done when its frames are released, the call is over (answered,
  // or given up and its blocks no longer kept for a late reader), and no receiver holds
  // any of its blocks (SharedArena::holds_on; a result handed back in place is one).
  // Waiting receives for the Client, as ResultFuture::wait does.
  static Tracker TrackBlocks(const std::shared_ptr<ClientCore>& self,
                             std::shared_ptr<PendingCall> call, Tracker frames,
                             std::vector<LentBlock> lent) {
    auto state = std::make_shared<Tracker::State>();
    std::shared_ptr<SharedArena> arena;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      arena = self->shared_arena_;
    }
    std::weak_ptr<ClientCore> weak = self;
    state->rest = [frames = std::move(frames), weak, call = std::move(call), arena,
                   lent = std::move(lent)](std::chrono::nanoseconds wait) noexcept -> bool {
      try {
        Clock::time_point until = Clock::now() + wait;
        if (!frames.WaitFor(wait)) return false;
        if (std::shared_ptr<ClientCore> core = weak.lock()) {
          if (!core->Wait(*call, until)) return false;
          // Given up (timeout, cancel): a late reader may still come, until the late
          // reply (received here) or kHoldGivenUpBlocks let its blocks go.
          while (core->KeepsBlocksOf(call->id)) {
            if (Clock::now() >= until) return false;
            core->ReceiveUntil(until);
          }
        }
        while (true) {
          bool held = false;
          for (const LentBlock& b : lent) {
            std::shared_ptr<const void> keep = b.keep.lock();
            if (keep != nullptr && arena != nullptr &&
                arena->holds_on(Buffer(b.data, b.size, std::move(keep))) != 0) {
              held = true;
              break;
            }
          }
          if (!held) return true;
          if (Clock::now() >= until) return false;
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      } catch (...) {
        return false;  // (not expected: nothing here throws but allocation)
      }
    };
    return Tracker(std::move(state));
  }

  // Waits for `call` until it is done or `until`; returns whether it is done.
  bool Wait(PendingCall& call, Clock::time_point until) {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        ReleaseHeldBlocks();
        if (call.done || call.has_items()) return true;  // (items: a stream's)
        Clock::time_point now = Clock::now();
        if (now >= call.deadline) {
          Expire(call);
          return true;
        }
        if (now >= until) return false;
      }
      ReceiveUntil(std::min(until, call.deadline), &call);
    }
  }

  ClientCounters counters() const {
    return ClientCounters{sent_.load(), received_.load(), late_.load(), rejected_.load()};
  }

  // Whether the blocks of given-up call `id` are still kept for a late reader.
  bool KeepsBlocksOf(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseHeldBlocks();
    return expired_blocks_.contains(id);
  }

  // Receives for every call until `until`, or waits a moment while another thread does
  // (not past the end of `call`, when given).
  void ReceiveUntil(Clock::time_point until, const PendingCall* call = nullptr) {
    if (io_mu_.try_lock()) {
      Pump(until, call);
      io_mu_.unlock();
      cv_.notify_all();
      // Let a sender that asked for the socket have it before leading again.
      while (senders_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
    } else {
      std::unique_lock<std::mutex> lock(mu_);
      if (call != nullptr && (call->done || call->has_items())) return;
      // The leader notifies after each batch; the bound covers a missed notify and the
      // moment the leader steps down.
      cv_.wait_until(lock, std::min(until, Clock::now() + std::chrono::milliseconds(2)));
    }
  }

  void Finish(PendingCall& call, Result result) {  // mu_ held
    std::vector<SharedOrigin> origins;
    if (result.ok() && result.reply()) origins = result.reply().shared_origins();
    if (!origins.empty()) {
      if (std::optional<std::string> stray = StrayReference(origins, call)) {
        result = Result::Failed(std::make_exception_ptr(DecodeError(
                                    DecodeError::Code::kMalformed, *stray)),
                                result.reply());
      } else {
        // The engine handed (part of) an argument back in place: the result reads the
        // argument's blocks, and keeps them.
        internal::WireAccess::KeepReturnedBlocks(result.reply(),
                                                 std::move(call.shared_blocks));
      }
    }
    call.result = std::move(result);
    call.done = true;
    call.shared_blocks.clear();  // answered (or the engine is gone): it reads them no more
  }

  // A result may refer to this client's arena only where the call's own references did,
  // and to another arena (the engine's results, held through a lease as decoded) only
  // when the call asked for shared results (docs/FORMAT.md, "Payloads in shared
  // memory"): the reason when it does not.
  std::optional<std::string> StrayReference(const std::vector<SharedOrigin>& origins,
                                            const PendingCall& call) const {  // mu_ held
    // Where the call's own blocks lie, looked up once for every origin.
    std::vector<SharedArena::Location> spans;
    if (shared_arena_ != nullptr) {
      for (const Buffer& block : call.shared_blocks) {
        if (std::optional<SharedArena::Location> at = shared_arena_->Find(block)) {
          spans.push_back(*at);
        }
      }
    }
    for (const SharedOrigin& origin : origins) {
      bool inside = false;
      if (shared_arena_ != nullptr && origin.arena != shared_arena_->name()) {
        inside = call.shared_results;
      } else if (shared_arena_ != nullptr) {
        uint64_t length = origin.view.size();
        for (const SharedArena::Location& at : spans) {
          if (origin.offset >= at.offset && length <= at.length &&
              origin.offset - at.offset <= at.length - length) {
            inside = true;
            break;
          }
        }
      }
      if (!inside) {
        return absl::StrCat(internal::Sv(call.function),
                            ": the result refers to shared memory the call did not pass (arena \"",
                            origin.arena, "\", ", origin.view.size(), " bytes at offset ",
                            origin.offset, ")");
      }
    }
    return std::nullopt;
  }

  // A call given up before its answer (timeout, cancel, a lost connection) may still be
  // running on the engine, reading its arguments in place: their blocks wait for the late
  // reply, at most kHoldGivenUpBlocks (a cancelled call gets no reply at all), or the
  // client's close (mu_ held).
  static constexpr std::chrono::seconds kHoldGivenUpBlocks{60};
  void KeepBlocksUntilAnswered(PendingCall& call) {
    if (call.shared_blocks.empty()) return;
    expired_blocks_[call.id] = {Clock::now() + kHoldGivenUpBlocks,
                                std::move(call.shared_blocks)};
    call.shared_blocks.clear();
  }
  void ReleaseHeldBlocks() {  // mu_ held
    if (expired_blocks_.empty()) return;
    Clock::time_point now = Clock::now();
    absl::erase_if(expired_blocks_, [now](const auto& entry) {
      return entry.second.first <= now;
    });
  }

  void Expire(PendingCall& call) {  // mu_ held
    KeepBlocksUntilAnswered(call);
    pending_.erase(call.id);
    Finish(call, Result::Failed(std::make_exception_ptr(TimeoutError(absl::StrCat(
                     internal::Sv(call.function), ": no reply within the call's timeout")))));
  }

  // ---- cancel and streams -------------------------------------------------------------

  // Ends `call` as cancelled (unless done) and tells the engine; true when it did.
  bool Cancel(PendingCall& call) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call.done || closed_) return false;
      KeepBlocksUntilAnswered(call);
      pending_.erase(call.id);
      if (call.stream) call.stream->items.clear();
      Finish(call, Result::Failed(std::make_exception_ptr(CancelledError(
                       absl::StrCat(internal::Sv(call.function), ": call ", call.id,
                                    " was cancelled")))));
    }
    cv_.notify_all();
    SendControl([&](EnvelopeWriter& w) { w.SetCancel(call.id); });
    return true;
  }

  // Sends a message that is not a call (cancel, credit); best effort (a lost one is
  // like a lost call: the engine's timeout or the client's deadline covers it).
  void SendControl(const std::function<void(EnvelopeWriter&)>& body) {
    EnvelopeWriter writer;
    Header header;
    header.message_id = next_id_.fetch_add(1, std::memory_order_relaxed);
    header.session_id = session_;
    header.sequence = header.message_id;
    writer.SetHeader(header);
    body(writer);
    Outgoing out = writer.Finish();
    WantIo();
    std::lock_guard<std::mutex> io(io_mu_);
    DoneIo();
    if (socket_.handle() == nullptr) return;
    try {
      if (signer_) signer_->Sign(&out);
      Send(socket_, std::move(out));
    } catch (const Error&) {
    }
  }

  std::mutex mu_;

 private:
  void WantIo() {
    senders_.fetch_add(1, std::memory_order_seq_cst);
    // Wakes a leader blocked in poll; a full counter (impossible in practice) only
    // means it is already signalled. Only when one may be polling: a thread that sends
    // and then waits itself (the common call-and-wait) pays no write, read and extra
    // poll round per call. Both sides use seq_cst (store, then load the other's flag),
    // so either the leader sees this sender before it polls or this sees the leader.
    if (polling_.load(std::memory_order_seq_cst)) {
      uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    }
  }
  void DoneIo() { senders_.fetch_sub(1, std::memory_order_acq_rel); }

  // Leader: receives until `stop`, a sender wants the socket, or one batch has been
  // received (see ReceiveBatch for `awaited`). io_mu_ held.
  void Pump(Clock::time_point stop, const PendingCall* awaited = nullptr) {
    if (socket_.handle() == nullptr) return;
    while (true) {
      if (ReceiveBatch(awaited) > 0) return;
      if (senders_.load(std::memory_order_acquire) > 0) return;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(stop - Clock::now());
      if (left.count() < 0) return;
      // ReceiveBatch found nothing, and nothing touched the socket since: sends take
      // io_mu_, which this leader holds from that receive through the wait.
      wait_->Settled(kSocketItem);
      polling_.store(true, std::memory_order_seq_cst);
      if (senders_.load(std::memory_order_seq_cst) > 0) {
        polling_.store(false, std::memory_order_seq_cst);
        return;
      }
      // +1: poll has millisecond granularity; never spin on a 0 ms timeout. At least
      // every check interval the watch looks at the connection's silence.
      wait_->Wait(std::min(std::chrono::milliseconds(left.count() + 1),
                           watch_->check_interval()));
      polling_.store(false, std::memory_order_seq_cst);
      // (The wait asks the monitor itself again after its events were read.)
      if (watch_->Lost(wait_->readable(kMonitorItem))) {
        // Replies that arrived before the connection closed are still queued on the
        // socket (libzmq delivers a pipe's messages before its end): take them first,
        // so only calls that really got no answer fail.
        ReceiveBatch();
        FailPending();
        return;
      }
      if (wait_->readable(kWakeItem)) {
        uint64_t value;
        [[maybe_unused]] ssize_t n = ::read(wake_fd_, &value, sizeof(value));
      }
      if (Clock::now() >= stop && !wait_->readable(kSocketItem)) return;
    }
  }

  // The connection was lost: every call in flight fails with BrokerLost (io_mu_ held).
  void FailPending() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, call] : pending_) {
      KeepBlocksUntilAnswered(*call);  // the engine may still be running it
      Finish(*call, Result::Failed(MakeRemoteError(
                        {kErrorBrokerLost,
                         absl::StrCat("the connection to ", url_,
                                      " was lost while this call was in flight (the broker or "
                                      "engine there stopped, restarted, or was silent for ",
                                      liveness_ms_, " ms); the call may or may not have run"),
                         call->function, url_})));
    }
    pending_.clear();
  }

  // Receives every message pending on the socket without blocking; returns how many.
  // Replies are matched to their calls in groups, under one lock per group. Once
  // `awaited` (the leader's own call) is answered and no other call waits, it stops
  // there: its caller goes on at once, and the receive that would find the socket empty
  // is left to the next wait, which begins with one anyway.
  size_t ReceiveBatch(const PendingCall* awaited = nullptr) {
    size_t n = 0;
    try {
      while (true) {
        std::optional<ReceivedMessage> received;
        try {
          received = Receive(socket_, limits_, zmq::recv_flags::dontwait);
        } catch (const DecodeError&) {
          rejected_.fetch_add(1, std::memory_order_relaxed);
          ++n;
          continue;
        }
        if (!received) break;
        ++n;
        if (std::optional<Arrived> reply = Read(std::move(*received))) {
          // (A stream's item does not end its call: items are matched in groups.)
          const bool answers_awaited = awaited != nullptr && reply->call_id == awaited->id &&
                                       reply->part != StreamPart::kItem;
          arrived_.push_back(std::move(*reply));
          if (answers_awaited) {
            if (MatchArrived() == 0) return n;
          } else if (arrived_.size() >= kMatchGroup) {
            MatchArrived();
          }
        }
      }
    } catch (...) {
      MatchArrived();
      throw;
    }
    MatchArrived();
    return n;
  }

  // A result read off the socket, not yet matched to its call (io_mu_).
  struct Arrived {
    uint64_t call_id;
    StreamPart part;
    Result result;
  };
  static constexpr size_t kMatchGroup = 64;

  // Verifies and decodes one received message: the result it carries, if any (a hello
  // is taken here; anything unreadable is counted, and fails its call when it names one).
  std::optional<Arrived> Read(ReceivedMessage&& received) {
    Buffer envelope = received.frames.empty() ? Buffer() : received.frames[0];
    try {
      if (signer_) signer_->Verify(&received);
    } catch (const Error&) {  // AuthError: not from our peer, nothing of ours
      rejected_.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    Message reply;
    try {
      reply = Message::Decode(std::move(received), limits_);
    } catch (const DecodeError& e) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      FailUnreadable(envelope, e);
      return std::nullopt;
    }
    if (reply.body_kind() == BodyKind::kHello) {
      AcceptHello(reply);
      return std::nullopt;
    }
    if (reply.body_kind() != BodyKind::kResult) return std::nullopt;  // not for us
    Arrived arrived{reply.call_id(), reply.stream_part(), Result()};
    if (reply.ok()) {
      arrived.result = Result::Ok(std::move(reply), registry_);
    } else {
      RemoteErrorInfo error = reply.error();
      // The engine could not map our arena (another host after a reconnect, a policy
      // of its own): later calls send frames.
      if (error.type == kErrorDecode &&
          (error.message.find("shared memory") != std::string::npos ||
           error.message.find("shared-memory") != std::string::npos)) {
        shared_arena_raw_.store(nullptr, std::memory_order_release);
      }
      arrived.result = Result::Failed(MakeRemoteError(std::move(error)), std::move(reply));
    }
    return arrived;
  }

  // Hands each arrived result to its call (io_mu_ held; takes mu_ once). Returns how
  // many calls still wait for their answer.
  size_t MatchArrived() {
    if (arrived_.empty()) return 1;  // (not known without the lock: as if one did)
    struct Clear {
      std::vector<Arrived>& group;
      ~Clear() { group.clear(); }
    } clear{arrived_};
    // Once a call is answered, calls stop looking for the hello's answer on their own:
    // a peer that never answers (a broker, an engine without shared memory) costs
    // nothing more, and a late answer is still taken with later replies.
    hello_pending_.store(false, std::memory_order_relaxed);
    received_.fetch_add(arrived_.size(), std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    for (Arrived& reply : arrived_) {
      auto it = pending_.find(reply.call_id);
      if (it == pending_.end()) {
        late_.fetch_add(1, std::memory_order_relaxed);
        if (reply.part != StreamPart::kItem) expired_blocks_.erase(reply.call_id);
        continue;
      }
      PendingCall& call = *it->second;
      if (call.stream && reply.part == StreamPart::kItem) {
        // One item of a stream: queued for its reader; the call goes on.
        call.stream->items.push_back(std::move(reply.result));
        call.deadline = Clock::now() + call.stream->timeout;
        continue;
      }
      Finish(call, std::move(reply.result));
      pending_.erase(it);
    }
    return pending_.size();
  }

  // A reply that could not be read (a result referring to an arena block gone meanwhile,
  // or malformed): the call it names fails with the reason, rather than waiting for its
  // timeout.
  void FailUnreadable(const Buffer& envelope, const DecodeError& e) {
    std::optional<internal::Peek> peek = internal::PeekEnvelope(envelope, limits_);
    if (!peek || peek->kind != BodyKind::kResult || peek->stream != StreamPart::kNone) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(peek->call_id);
    if (it == pending_.end() || it->second->stream) return;
    Finish(*it->second, Result::Failed(std::make_exception_ptr(
                            DecodeError(e.code(), absl::StrCat("the reply to ", it->second->function,
                                                               " could not be read: ", e.what())))));
    pending_.erase(it);
  }

  // The peer's hello: when it runs on this host, calls from now on place large arguments
  // in the arena (ClientOptions::shared_arena, or the process's default one).
  void AcceptHello(const Message& hello) {
    hello_pending_.store(false, std::memory_order_relaxed);
    std::optional<HostIdentity> host = hello.hello_host();
    if (!host || !host->SharesMemoryWith(HostIdentity::This())) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (shared_arena_ != nullptr) return;
    try {
      shared_arena_ = shared_arena_option_ ? shared_arena_option_ : SharedArena::ProcessDefault();
    } catch (const Error&) {
      return;  // no arena (no memfd, no memory): calls keep sending frames
    }
    shared_arena_raw_.store(shared_arena_.get(), std::memory_order_release);
  }

  DecodeLimits limits_;
  const Registry* registry_;
  std::optional<Signer> signer_;
  std::shared_ptr<SharedArena> shared_arena_option_;
  std::shared_ptr<SharedArena> shared_arena_;            // mu_
  std::atomic<SharedArena*> shared_arena_raw_{nullptr};  // shared_arena_, for writers
  std::atomic<bool> hello_pending_{false};  // a hello went out, no answer or result yet
  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  std::mutex io_mu_;
  zmq::socket_t socket_;
  std::unique_ptr<ConnectionWatch> watch_;  // io_mu_
  // Pump's wait on the socket, wake_fd_ and the watch's monitor (io_mu_).
  static constexpr size_t kSocketItem = 0, kWakeItem = 1, kMonitorItem = 2;
  std::unique_ptr<internal::SocketWait> wait_;
  std::string url_;
  int64_t liveness_ms_ = 0;
  int wake_fd_ = -1;
  std::atomic<int> senders_{0};
  std::atomic<bool> polling_{false};  // a leader is in (or about to enter) zmq_poll
  std::condition_variable cv_;
  std::vector<Arrived> arrived_;                                         // io_mu_
  absl::flat_hash_map<uint64_t, std::shared_ptr<PendingCall>> pending_;  // mu_
  // Blocks of calls given up, by call id: until when they are kept, and the blocks (mu_).
  absl::flat_hash_map<uint64_t, std::pair<Clock::time_point, std::vector<Buffer>>>
      expired_blocks_;
  bool closed_ = false;                                                  // mu_
  uint64_t session_ = 0;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> sent_{0}, received_{0}, late_{0}, rejected_{0};
};

}  // namespace internal

// ---- Result ----------------------------------------------------------------------------

Result Result::Ok(Message reply, const Registry* registry) {
  Result r;
  r.reply_ = std::move(reply);
  r.registry_ = registry != nullptr ? registry : &Registry::Default();
  return r;
}

Result Result::Failed(std::exception_ptr error, Message reply) {
  Result r;
  r.reply_ = std::move(reply);
  r.error_ = std::move(error);
  r.registry_ = &Registry::Default();
  return r;
}

Value Result::value() const {
  ThrowIfError();
  if (!reply_) throw Error("empty Result (default-constructed)");
  return reply_.result();
}

std::string_view Result::engine_id() const {
  if (!reply_ || reply_.body_kind() != BodyKind::kResult) return {};
  return reply_.engine_id();
}

RemoteError::RemoteError(RemoteErrorInfo info)
    : Error(absl::StrCat(internal::Sv(info.function), ": ", internal::Sv(info.type), ": ",
                         internal::Sv(info.message),
                         info.where.empty() ? "" : " (at ", internal::Sv(info.where),
                         info.where.empty() ? "" : ")")),
      info_(std::move(info)) {}

// ---- ResultFuture ------------------------------------------------------------------------

Result ResultFuture::get() {
  if (call_ == nullptr) throw Error("ResultFuture::get() on an empty future");
  core_->Wait(*call_, Clock::time_point::max());
  std::lock_guard<std::mutex> lock(core_->mu_);
  Result r = std::move(call_->result);
  call_.reset();
  return r;
}

void ResultFuture::wait() const {
  if (call_ != nullptr) core_->Wait(*call_, Clock::time_point::max());
}

std::future_status ResultFuture::wait_for(std::chrono::nanoseconds timeout) const {
  if (call_ == nullptr) return std::future_status::ready;
  auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout);
  return core_->Wait(*call_, until) ? std::future_status::ready : std::future_status::timeout;
}

bool ResultFuture::ready() const { return wait_for(std::chrono::nanoseconds(0)) ==
                                          std::future_status::ready; }

uint64_t ResultFuture::call_id() const noexcept { return call_ ? call_->id : 0; }

bool ResultFuture::Cancel() { return call_ != nullptr && core_->Cancel(*call_); }

// ---- ResultStream --------------------------------------------------------------------------

ResultStream::~ResultStream() {
  if (call_ != nullptr) core_->Cancel(*call_);  // false (and silent) once it ended
}

std::optional<Result> ResultStream::Next() {
  if (call_ == nullptr) throw Error("ResultStream::Next() on an empty stream");
  core_->Wait(*call_, Clock::time_point::max());
  Result item;
  uint32_t grant = 0;
  {
    std::lock_guard<std::mutex> lock(core_->mu_);
    if (call_->stream->items.empty()) {  // the end: done, with nothing left to read
      Result end = std::move(call_->result);
      call_->result = Result();
      end.ThrowIfError();
      return std::nullopt;
    }
    item = std::move(call_->stream->items.front());
    call_->stream->items.pop_front();
    // Credit back in batches of half the window, while the stream runs.
    if (!call_->done && ++unacknowledged_ >= std::max<uint32_t>(1, window_ / 2)) {
      grant = std::exchange(unacknowledged_, 0);
    }
  }
  if (grant != 0) {
    uint64_t id = call_->id;
    core_->SendControl([&](EnvelopeWriter& w) { w.SetCredit(id, grant); });
  }
  return item;
}

bool ResultStream::Cancel() { return call_ != nullptr && core_->Cancel(*call_); }

uint64_t ResultStream::call_id() const noexcept { return call_ ? call_->id : 0; }

// ---- Client ------------------------------------------------------------------------------

Client::Client(const std::string& url, ClientOptions options)
    : options_(std::move(options)),
      policy_(options_.policy ? *options_.policy : Policy::ForTransport(url)),
      registry_(options_.registry != nullptr ? options_.registry : &Registry::Default()),
      core_(std::make_shared<internal::ClientCore>(url, options_, registry_)) {}

Client::~Client() { core_->Close(); }

ResultFuture Client::Submit(EnvelopeWriter& writer, std::string_view function,
                            std::chrono::milliseconds timeout) {
  if (options_.retries > 0) writer.SetApplyRetries(static_cast<uint32_t>(options_.retries));
  return core_->Submit(core_, writer, function, timeout);
}

ResultStream Client::SubmitStream(EnvelopeWriter& writer, std::string_view function,
                                  std::chrono::milliseconds timeout) {
  uint32_t credits = std::max<uint32_t>(1, options_.stream_credits);
  ResultFuture f = core_->Submit(core_, writer, function, timeout, credits);
  return ResultStream(core_, std::move(f.call_), credits);
}

ClientCounters Client::counters() const { return core_->counters(); }

Policy Client::call_policy() const {
  core_->PollHello();
  Policy p = policy_;
  p.shared_arena = core_->shared_arena();
  return p;
}

bool Client::shares_memory() const {
  core_->PollHello();
  return core_->shared_arena() != nullptr;
}

uint32_t Client::TimeoutMs(std::chrono::milliseconds t) noexcept {
  if (t.count() <= 0) return 1;
  if (t.count() > UINT32_MAX) return 0;
  return static_cast<uint32_t>(t.count());
}

}  // namespace zerocan
