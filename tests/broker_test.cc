// Broker over real sockets: routing to live engines, engines joining and leaving, a lost
// engine failing its calls once, a broker restart, the capture socket, and the
// concurrency test (8 clients x 2 engines, 10^5 calls, each answered once and right).
#include "zerocan/transport/zmq.h"
#include "zerocan/broker.h"

#include <unistd.h>

#include <atomic>
#include <set>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/capture.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;

constexpr milliseconds kBeat{100};
// Generous, so slow runs (sanitizers, valgrind, a loaded CI machine) never lose an
// engine by accident; the tests of lost engines set 3.
constexpr int kLiveness = 10;

struct Cluster {
  explicit Cluster(int engines, std::string frontend = "inproc://front",
                   std::string backend = "inproc://back", int liveness = kLiveness) {
    BrokerOptions bo;
    bo.context = &context;
    bo.heartbeat = kBeat;
    bo.liveness = liveness;
    broker = std::make_unique<Broker>(frontend, backend, bo);
    broker->Start();
    front = broker->frontend_endpoint();
    back = broker->backend_endpoint();
    for (int i = 0; i < engines; ++i) AddEngine();
    WaitForEngines(engines);
  }
  ~Cluster() {
    clients.clear();
    engines.clear();
    broker.reset();
  }
  Engine& AddEngine(int threads = 2) {
    EngineOptions eo;
    eo.builtins = true;
    eo.context = &context;
    eo.heartbeat = kBeat;
    eo.threads = threads;
    eo.id = "engine-" + std::to_string(engines.size());
    engines.push_back(std::make_unique<Engine>(eo));
    engines.back()->def("whoami", [id = eo.id](int64_t x) { return std::make_pair(id, x); });
    engines.back()->Connect(back);
    engines.back()->Start();
    return *engines.back();
  }
  Client& AddClient(milliseconds timeout = milliseconds(10000), bool shared_memory = true) {
    ClientOptions co;
    co.context = &context;
    co.timeout = timeout;
    co.shared_memory = shared_memory;
    clients.push_back(std::make_unique<Client>(front, co));
    return *clients.back();
  }
  void WaitForEngines(uint64_t n) {
    for (int i = 0; i < 1000 && broker->counters().engines_live != n; ++i) {
      std::this_thread::sleep_for(milliseconds(5));
    }
    ASSERT_EQ(broker->counters().engines_live, n);
  }
  zmq::context_t context{1};
  std::unique_ptr<Broker> broker;
  std::string front, back;
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<std::unique_ptr<Client>> clients;
};

TEST(BrokerTest, CallsReachLiveEnginesAndSpreadOverThem) {
  Cluster c(2);
  Client& client = c.AddClient();
  EXPECT_EQ(client.apply("add", 40, 2).get().as<int>(), 42);
  EXPECT_FALSE(client.apply("fail", std::string("no")).get().ok());
  std::vector<ResultFuture> futures;
  for (int i = 0; i < 200; ++i) futures.push_back(client.apply("whoami", i));
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    auto [id, x] = futures[i].get().as<std::pair<std::string, int64_t>>();
    EXPECT_EQ(x, i);
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 2u);
  std::vector<double> big(1 << 18, 3.0);
  EXPECT_DOUBLE_EQ(client.apply("sum", big).get().as<double>(), 3.0 * big.size());
}

TEST(BrokerTest, WorksOverTcp) {
  Cluster c(1, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  Client& client = c.AddClient(milliseconds(10000), /*shared_memory=*/false);  // frames
  std::vector<int64_t> xs(100000, 7);
  Result r = client.apply("echo", xs).get();
  EXPECT_EQ(r.as<std::vector<int64_t>>(), xs);
}

TEST(BrokerTest, CallWaitsForAnEngineToJoin) {
  Cluster c(0);
  Client& client = c.AddClient();
  ResultFuture f = client.apply("add", 1, 2);
  std::this_thread::sleep_for(milliseconds(50));
  c.AddEngine();
  EXPECT_EQ(f.get().as<int>(), 3);
}

TEST(BrokerTest, CallWithoutEngineTimesOut) {
  Cluster c(0);
  Client& client = c.AddClient();
  Result r = client.apply_for(milliseconds(100), "add", 1, 2).get();
  EXPECT_THROW(r.ThrowIfError(), TimeoutError);
}

TEST(BrokerTest, LostEngineFailsItsCallsOnceAndOthersCarryOn) {
  Cluster c(2, "inproc://front", "inproc://back", /*liveness=*/3);
  Client& client = c.AddClient(milliseconds(20000));
  // Enough slow calls that both engines hold some.
  std::vector<ResultFuture> slow;
  for (int i = 0; i < 4; ++i) slow.push_back(client.apply("sleep", 0.3));
  std::this_thread::sleep_for(milliseconds(50));
  internal::TestHooks::KillEngine(*c.engines[0]);  // like a crash: no replies, no goodbye, heartbeats stop
  auto start = std::chrono::steady_clock::now();
  int lost = 0, ok = 0;
  for (auto& f : slow) {
    Result r = f.get();
    if (r.ok()) {
      ++ok;
      continue;
    }
    try {
      r.ThrowIfError();
    } catch (const RemoteError& e) {
      EXPECT_EQ(e.type(), kErrorEngineLost);
      EXPECT_THAT(e.message(), HasSubstr("engine-0"));
      EXPECT_EQ(e.function(), "sleep");
      ++lost;
    }
  }
  EXPECT_EQ(lost, 2);
  EXPECT_EQ(ok, 2);
  // Well within the call timeout: the broker noticed after a few heartbeats.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  c.WaitForEngines(1);
  for (int i = 0; i < 20; ++i) {
    auto [id, x] = client.apply("whoami", i).get().as<std::pair<std::string, int64_t>>();
    EXPECT_EQ(id, "engine-1");
  }
  EXPECT_EQ(c.broker->counters().lost, 2u);
  EXPECT_EQ(client.counters().late, 0u);
}

// A function declared inline holds its engine's I/O thread while it runs, so the
// engine's heartbeats stop and the broker loses it. The engine said the call started
// before running it, so the broker fails the call (EngineLost) instead of running it a
// second time on the other engine.
TEST(BrokerTest, InlineCallBehindABrokerIsAcknowledgedBeforeItRuns) {
  // (Before the cluster: its engines' threads read them until they are joined.)
  std::atomic<int> runs{0};
  std::atomic<bool> answered{false};
  Cluster c(0, "inproc://front", "inproc://back", /*liveness=*/3);
  for (int i = 0; i < 2; ++i) {
    EngineOptions eo;
    eo.context = &c.context;
    eo.heartbeat = kBeat;
    eo.id = "inline-" + std::to_string(i);
    auto engine = std::make_unique<Engine>(eo);
    engine->def(
        "hold",
        [&runs, &answered] {
          ++runs;
          // Until the caller has its answer (its engine lost): far more than 3 heartbeats.
          auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
          while (!answered && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(milliseconds(5));
          }
          return 1;
        },
        FunctionOptions{.inline_execution = true});
    engine->Connect(c.back);
    engine->Start();
    c.engines.push_back(std::move(engine));
  }
  c.WaitForEngines(2);
  Client& client = c.AddClient(milliseconds(20000));
  Result r = client.apply("hold").get();
  answered = true;
  ASSERT_FALSE(r.ok());
  try {
    r.ThrowIfError();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorEngineLost);
    EXPECT_THAT(e.message(), HasSubstr("while running this call"));
  }
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(c.broker->counters().lost, 1u);
  EXPECT_EQ(c.broker->counters().rerouted, 0u);
}

// Speaks to the broker as an engine does (hello, then heartbeats) and never answers a
// call. kCrashAtCall: at its first call it closes its socket without a word, like an
// engine that crashes on the call before its `started` leaves. kFallSilent: it keeps
// what it gets and stops heartbeating when told to, like a host that stops.
class FakeEngine {
 public:
  enum class Mode { kCrashAtCall, kFallSilent };
  FakeEngine(zmq::context_t& ctx, const std::string& backend, const std::string& id, Mode mode)
      : thread_([this, &ctx, backend, id, mode] { Run(ctx, backend, id, mode); }) {}
  ~FakeEngine() {
    stop_ = true;
    thread_.join();
  }
  bool got_call() const { return got_call_; }
  void FallSilent() { silent_ = true; }

 private:
  static std::string Bytes(Outgoing&& out) {
    return std::string(reinterpret_cast<const char*>(out.envelope().data()),
                       out.envelope().size());
  }
  void Run(zmq::context_t& ctx, const std::string& backend, const std::string& id, Mode mode) {
    zmq::socket_t socket(ctx, zmq::socket_type::dealer);
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::routing_id, zmq::buffer(id));
    socket.connect(backend);
    EnvelopeWriter hello;
    hello.SetHello(id, "engine", {"add"});
    socket.send(zmq::message_t(), zmq::send_flags::sndmore);
    socket.send(zmq::buffer(Bytes(hello.Finish())));
    auto next_beat = std::chrono::steady_clock::now();
    while (!stop_) {
      if (!silent_ && std::chrono::steady_clock::now() >= next_beat) {
        EnvelopeWriter beat;
        beat.SetHeartbeat(id, 0);
        socket.send(zmq::message_t(), zmq::send_flags::sndmore);
        socket.send(zmq::buffer(Bytes(beat.Finish())));
        next_beat += kBeat / 2;
      }
      zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, milliseconds(10));
      zmq::message_t first;
      while (socket.recv(first, zmq::recv_flags::dontwait)) {
        bool call = first.size() != 0;  // [client][""][envelope]; the broker's own: [""]...
        while (first.more()) (void)socket.recv(first);
        if (call) {
          got_call_ = true;
          if (mode == Mode::kCrashAtCall) return;  // the socket closes, nothing sent
        }
      }
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<bool> silent_{false};
  std::atomic<bool> got_call_{false};
  std::thread thread_;
};

// A call whose engines are lost one after another before it starts goes on to the next
// engine only until three were lost; then it fails with EngineLost, and the fourth
// engine never sees it.
TEST(BrokerTest, ACallThatThreeEnginesDieOnFailsInsteadOfReachingAFourth) {
  Cluster c(0, "inproc://front", "inproc://back", /*liveness=*/3);
  std::vector<std::unique_ptr<FakeEngine>> crashing;
  for (int i = 0; i < 4; ++i) {
    crashing.push_back(std::make_unique<FakeEngine>(
        c.context, c.back, "crashing-" + std::to_string(i), FakeEngine::Mode::kCrashAtCall));
  }
  c.WaitForEngines(4);
  Client& client = c.AddClient(milliseconds(20000));
  Result r = client.apply("add", 1, 2).get();
  ASSERT_FALSE(r.ok());
  try {
    r.ThrowIfError();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorEngineLost);
    EXPECT_THAT(e.message(), HasSubstr("3 engines were lost holding it unstarted"));
    EXPECT_EQ(e.function(), "add");
  }
  int reached = 0;
  for (auto& e : crashing) reached += e->got_call() ? 1 : 0;
  EXPECT_EQ(reached, 3);
  EXPECT_EQ(c.broker->counters().lost, 1u);
  EXPECT_EQ(c.broker->counters().rerouted, 2u);
}

// Engines that fall silent together (one host, one cut link) are lost together: none of
// their calls is handed to another of them, so none counts a loss it did not cause, and
// every one runs on the live engine.
TEST(BrokerTest, CallsOfEnginesFallingSilentTogetherRunOnALiveOne) {
  // Liveness 6: the live engine, beating every 100 ms, is never near being passed over.
  Cluster c(1, "inproc://front", "inproc://back", /*liveness=*/6);
  Client& client = c.AddClient(milliseconds(20000));
  // The live engine busy with 8 calls: the broker (fewest calls in flight first) sends
  // the next three to the three engines that join now, one each.
  std::vector<ResultFuture> busy;
  for (int i = 0; i < 8; ++i) busy.push_back(client.apply("sleep", 0.3));
  for (int i = 0; i < 1000 && c.broker->counters().requests < 8; ++i) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_EQ(c.broker->counters().requests, 8u);  // all at the live engine
  std::vector<std::unique_ptr<FakeEngine>> silent;
  for (int i = 0; i < 3; ++i) {
    silent.push_back(std::make_unique<FakeEngine>(
        c.context, c.back, "silent-" + std::to_string(i), FakeEngine::Mode::kFallSilent));
  }
  c.WaitForEngines(4);
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 3; ++i) calls.push_back(client.apply("add", i, 1));
  for (int i = 0; i < 1000; ++i) {
    if (silent[0]->got_call() && silent[1]->got_call() && silent[2]->got_call()) break;
    std::this_thread::sleep_for(milliseconds(5));
  }
  for (auto& e : silent) ASSERT_TRUE(e->got_call());
  for (auto& e : silent) e->FallSilent();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(calls[i].get().as<int>(), i + 1) << "call " << i;
  for (auto& f : busy) EXPECT_TRUE(f.get().ok());
  EXPECT_EQ(c.broker->counters().lost, 0u);
  EXPECT_EQ(c.broker->counters().rerouted, 3u);
}

TEST(BrokerTest, EngineLeavingGracefullyFinishesItsCalls) {
  Cluster c(2);
  Client& client = c.AddClient();
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 4; ++i) calls.push_back(client.apply("sleep", 0.1));
  std::this_thread::sleep_for(milliseconds(20));
  c.engines[0]->Stop();
  for (auto& f : calls) EXPECT_TRUE(f.get().ok());
  c.WaitForEngines(1);
  EXPECT_EQ(client.apply("add", 1, 1).get().as<int>(), 2);
}

TEST(BrokerTest, SurvivesABrokerRestart) {
  // Two ports free now and below the kernel's ephemeral range (32768 and up by
  // default), so that no other test binding "*" in parallel takes them while the
  // broker is down. (The probe context's destruction waits until they are closed.)
  std::string front, back;
  {
    zmq::context_t probe_ctx(1);
    std::mt19937 random(std::random_device{}());
    auto free_port = [&] {
      for (int attempt = 0; attempt < 100; ++attempt) {
        std::string url = "tcp://127.0.0.1:" + std::to_string(20000 + random() % 12000);
        try {
          zmq::socket_t probe(probe_ctx, zmq::socket_type::router);
          probe.bind(url);
          return url;
        } catch (const zmq::error_t&) {
        }
      }
      return std::string();
    };
    front = free_port();
    back = free_port();
    if (back == front) back = free_port();
  }
  ASSERT_FALSE(front.empty() || back.empty() || front == back)
      << "no two free ports in 20000-31999";
  Cluster c(1, front, back);
  Client& client = c.AddClient();
  EXPECT_EQ(client.apply("add", 1, 2).get().as<int>(), 3);
  c.broker.reset();
  // With no broker the call fails: BrokerLost once the client has seen its connection
  // close (usually during this call), else its own short timeout.
  Result during = client.apply_for(milliseconds(100), "add", 1, 2).get();
  EXPECT_FALSE(during.ok());
  try {
    during.ThrowIfError();
  } catch (const BrokerLost&) {
  } catch (const TimeoutError&) {
  }
  BrokerOptions bo;
  bo.context = &c.context;
  bo.heartbeat = kBeat;
  bo.liveness = kLiveness;
  // libzmq closes a closed socket's listener on its I/O thread, after zmq_close
  // returns: on a loaded machine the port can still be taken for a moment.
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
       c.broker == nullptr;) {
    try {
      c.broker = std::make_unique<Broker>(front, back, bo);
    } catch (const TransportError& e) {
      if (std::chrono::steady_clock::now() > deadline ||
          std::string(e.what()).find("Address already in use") == std::string::npos) {
        throw;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  c.broker->Start();
  c.WaitForEngines(1);  // the engine's heartbeats register it again
  EXPECT_EQ(client.apply_for(milliseconds(5000), "add", 2, 3).get().as<int>(), 5);
}

TEST(BrokerTest, CapturePublishesEveryMessage) {
  zmq::context_t ctx(1);
  BrokerOptions bo;
  bo.context = &ctx;
  bo.heartbeat = kBeat;
  bo.liveness = kLiveness;
  bo.capture = "inproc://capture";
  Broker broker("inproc://cfront", "inproc://cback", bo);
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect("inproc://capture");
  broker.Start();
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx;
  eo.heartbeat = kBeat;
  Engine engine(eo);
  engine.Connect("inproc://cback");
  engine.Start();
  ClientOptions co;
  co.context = &ctx;
  Client client("inproc://cfront", co);
  EXPECT_EQ(client.apply("add", 1, 2).get().as<int>(), 3);
  bool saw_request = false, saw_reply = false;
  for (int i = 0; i < 100 && !(saw_request && saw_reply); ++i) {
    std::optional<CaptureRecord> rec = ReceiveCaptured(sub, 100);
    if (!rec) continue;
    saw_request |= rec->direction == Direction::kRequest;
    saw_reply |= rec->direction == Direction::kReply;
  }
  EXPECT_TRUE(saw_request);
  EXPECT_TRUE(saw_reply);
}

TEST(BrokerTest, EightClientsTwoEnginesHundredThousandCalls) {
  Cluster c(2);
  constexpr int kClients = 8, kPerClient = 12500, kWindow = 256;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) c.AddClient(milliseconds(60000));
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      Client& client = *c.clients[t];
      // A ring of kWindow calls in flight: call i waits for call i - kWindow first.
      std::vector<ResultFuture> ring(kWindow);
      for (int i = 0; i < kPerClient + kWindow; ++i) {
        int slot = i % kWindow;
        if (i >= kWindow) {
          int j = i - kWindow;
          Result r = ring[slot].get();
          if (!r.ok()) {
            ++failed;
          } else if (r.as<int64_t>() != (int64_t{t} << 32) + j) {
            ++wrong;
          }
        }
        if (i < kPerClient) ring[slot] = client.apply("add", int64_t{t} << 32, i);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  uint64_t received = 0, late = 0;
  for (auto& client : c.clients) {
    received += client->counters().received;
    late += client->counters().late;
  }
  EXPECT_EQ(received, uint64_t{kClients} * kPerClient);  // none lost, none twice
  EXPECT_EQ(late, 0u);
  EXPECT_EQ(c.broker->counters().requests, uint64_t{kClients} * kPerClient);
  // The broker counts a reply just after forwarding it: its client may be faster.
  for (int i = 0; i < 100 && c.broker->counters().replies < uint64_t{kClients} * kPerClient; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(c.broker->counters().replies, uint64_t{kClients} * kPerClient);
  EXPECT_GT(c.engines[0]->counters().calls, 0u);
  EXPECT_GT(c.engines[1]->counters().calls, 0u);
}

}  // namespace
}  // namespace zerocan
