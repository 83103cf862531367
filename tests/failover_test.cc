// Failures at the edges, over real TCP connections and real processes: a killed or
// stopped engine, an engine draining on SIGTERM, a broker restart, a full broker queue.
// Each test prints its figures (detection times, failures) on stderr.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/tool_process.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using Process = testing::ToolProcess;

constexpr milliseconds kBeat{100};
constexpr int kLiveness = 3;  // 300 ms

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t).count();
}

std::unique_ptr<Broker> StartBroker(const std::string& front = "tcp://127.0.0.1:*",
                                    const std::string& back = "tcp://127.0.0.1:*",
                                    BrokerOptions bo = {}) {
  bo.heartbeat = kBeat;
  bo.liveness = kLiveness;
  auto broker = std::make_unique<Broker>(front, back, bo);
  broker->Start();
  return broker;
}

bool WaitFor(const std::function<bool()>& done, milliseconds limit = milliseconds(5000)) {
  auto until = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

std::unique_ptr<Process> EngineProcess(const std::string& backend, const std::string& id,
                                       int threads = 2) {
  return std::make_unique<Process>(std::vector<std::string>{
      "engine", "--connect", backend, "--id", id, "--heartbeat-ms", "100", "--builtins",
      "--threads", std::to_string(threads), "--drain-timeout-ms", "1000"});
}

ClientOptions FastClient(int retries = 0) {
  ClientOptions co;
  co.timeout = milliseconds(10000);
  co.heartbeat = kBeat;
  co.liveness = kLiveness;
  co.retries = retries;
  return co;
}

std::string ErrorText(const Result& r) {
  try {
    r.ThrowIfError();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(FailoverTest, KilledEngineIsForgottenAtOnceAndLaterCallsAllSucceed) {
  auto broker = StartBroker();
  auto a = EngineProcess(broker->backend_endpoint(), "proc-a");
  auto b = EngineProcess(broker->backend_endpoint(), "proc-b");
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 2; }));
  Client client(broker->frontend_endpoint(), FastClient());
  for (int i = 0; i < 10; ++i) ASSERT_EQ(client.apply("add", i, 1).get().as<int>(), i + 1);
  Clock::time_point killed = Clock::now();
  a->Kill();
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  int64_t detected_ms = MsSince(killed);
  std::this_thread::sleep_for(milliseconds(1000) - milliseconds(detected_ms));
  int ok = 0;
  for (int i = 0; i < 100; ++i) {
    Result r = client.apply("add", i, i).get();
    if (r.ok() && r.as<int>() == 2 * i) ++ok;
  }
  std::fprintf(stderr, "[figures] kill -9: detected after %lld ms; 100 sequential calls 1 s later: %d ok\n",
               static_cast<long long>(detected_ms), ok);
  EXPECT_EQ(ok, 100);
  EXPECT_LT(detected_ms, 250);  // the connection closed: no heartbeat window needed
}

// Calls every 50 ms (each sleeping 0.2 s) across a kill -9 of one of two engines. Only
// the calls the dead engine was running may fail, each with EngineLost saying so; with
// retries = 1 none fails.
void CallsAcrossAKill(int retries, int* failed, int* total, std::vector<std::string>* errors) {
  auto broker = StartBroker();
  auto a = EngineProcess(broker->backend_endpoint(), "proc-a");
  auto b = EngineProcess(broker->backend_endpoint(), "proc-b");
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 2; }));
  Client client(broker->frontend_endpoint(), FastClient(retries));
  ASSERT_TRUE(client.apply("add", 1, 1).get().ok());
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 30; ++i) {
    if (i == 15) a->Kill();
    calls.push_back(client.apply("sleep", 0.2));
    std::this_thread::sleep_for(milliseconds(50));
  }
  *total = static_cast<int>(calls.size());
  for (auto& f : calls) {
    Result r = f.get();
    if (!r.ok()) {
      ++*failed;
      errors->push_back(ErrorText(r));
    }
  }
}

TEST(FailoverTest, CallsAcrossAKillFailOnlyIfTheyWereRunning) {
  int failed = 0, total = 0;
  std::vector<std::string> errors;
  CallsAcrossAKill(0, &failed, &total, &errors);
  std::fprintf(stderr, "[figures] calls every 50 ms across kill -9, retries 0: %d of %d failed\n",
               failed, total);
  EXPECT_LE(failed, 2);  // at most the 2 the engine's 2 threads were running
  for (const std::string& e : errors) {
    EXPECT_THAT(e, HasSubstr("zerocan.EngineLost"));
    EXPECT_THAT(e, HasSubstr("while running this call (1 attempt"));
  }
}

TEST(FailoverTest, CallsAcrossAKillWithOneRetryAllSucceed) {
  int failed = 0, total = 0;
  std::vector<std::string> errors;
  CallsAcrossAKill(1, &failed, &total, &errors);
  std::fprintf(stderr, "[figures] calls every 50 ms across kill -9, retries 1: %d of %d failed\n",
               failed, total);
  EXPECT_EQ(failed, 0) << (errors.empty() ? "" : errors[0]);
}

TEST(FailoverTest, StoppedEngineIsDetectedAndItsQueuedCallsRunElsewhere) {
  auto broker = StartBroker();
  auto a = EngineProcess(broker->backend_endpoint(), "proc-a", 1);
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  auto b = EngineProcess(broker->backend_endpoint(), "proc-b", 1);
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 2; }));
  Client client(broker->frontend_endpoint(), FastClient());
  // 6 calls, 3 to each engine: each runs one and holds two that have not started.
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 6; ++i) calls.push_back(client.apply("sleep", 0.3));
  std::this_thread::sleep_for(milliseconds(100));
  Clock::time_point stopped = Clock::now();
  a->Signal(SIGSTOP);
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  int64_t detected_ms = MsSince(stopped);
  int ok = 0, lost = 0;
  for (auto& f : calls) {
    Result r = f.get();
    if (r.ok()) {
      EXPECT_EQ(r.engine_id(), "proc-b");
      ++ok;
    } else {
      EXPECT_THAT(ErrorText(r), HasSubstr("while running this call"));
      ++lost;
    }
  }
  std::fprintf(stderr, "[figures] SIGSTOP: detected after %lld ms (liveness window %d ms); "
               "%d calls ran on the other engine, %d failed (were running)\n",
               static_cast<long long>(detected_ms), static_cast<int>(kBeat.count() * kLiveness),
               ok, lost);
  EXPECT_LT(detected_ms, kBeat.count() * kLiveness + 300);
  EXPECT_EQ(lost, 1);  // the one it was running; its two queued calls ran on proc-b
  EXPECT_EQ(ok, 5);
  a->Signal(SIGCONT);
  a->Kill();
}

// A TCP endpoint on a port free a moment ago.
std::string FreeEndpoint() {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.bind("tcp://127.0.0.1:*");
  std::string endpoint = s.get(zmq::sockopt::last_endpoint);
  s.close();
  return endpoint;
}

TEST(FailoverTest, SigtermDrainsAnEngineAnsweringEachCallAsItFinishes) {
  std::string url = FreeEndpoint();
  Process engine({"engine", "--bind", url, "--builtins", "--threads", "1",
                  "--drain-timeout-ms", "10000"});
  ClientOptions co = FastClient();
  Client client(url, co);
  ASSERT_TRUE(client.apply_for(milliseconds(5000), "add", 1, 1).get().ok());
  constexpr double kCall = 0.3;
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 10; ++i) calls.push_back(client.apply("sleep", kCall));
  std::this_thread::sleep_for(milliseconds(50));
  Clock::time_point start = Clock::now();
  engine.Signal(SIGTERM);
  std::this_thread::sleep_for(milliseconds(50));
  Client late(url, co);
  Result refused = late.apply_for(milliseconds(3000), "add", 2, 2).get();
  EXPECT_THAT(ErrorText(refused), HasSubstr("zerocan.EngineStopping"));
  int64_t worst_lag = 0;
  for (size_t i = 0; i < calls.size(); ++i) {
    Result r = calls[i].get();
    EXPECT_TRUE(r.ok()) << ErrorText(r);
    // Call i finishes about (i + 1) * kCall after the first started (50 ms before start).
    int64_t due = static_cast<int64_t>((i + 1) * kCall * 1000) - 50;
    worst_lag = std::max(worst_lag, MsSince(start) - due);
  }
  std::fprintf(stderr, "[figures] SIGTERM with 10 queued %.1f s calls: all answered, worst "
               "reply %lld ms after its call finished; a new call got EngineStopping\n",
               kCall, static_cast<long long>(worst_lag));
  EXPECT_LT(worst_lag, 250);
  EXPECT_EQ(engine.Wait(), 0);
}

TEST(FailoverTest, DrainingEngineBehindABrokerSendsNewCallsElsewhere) {
  auto broker = StartBroker();
  EngineOptions eo;
  eo.builtins = true;
  eo.heartbeat = kBeat;
  eo.threads = 1;
  eo.id = "draining";
  Engine draining(eo);
  draining.Connect(broker->backend_endpoint());
  draining.Start();
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  eo.id = "other";
  Engine other(eo);
  other.Connect(broker->backend_endpoint());
  other.Start();
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 2; }));
  Client client(broker->frontend_endpoint(), FastClient());
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 6; ++i) calls.push_back(client.apply("sleep", 0.2));
  std::this_thread::sleep_for(milliseconds(50));
  std::thread stopper([&] { draining.Stop(); });
  std::this_thread::sleep_for(milliseconds(50));
  std::vector<ResultFuture> more;
  for (int i = 0; i < 4; ++i) more.push_back(client.apply("add", i, 1));
  for (auto& f : calls) EXPECT_TRUE(f.get().ok());
  for (int i = 0; i < 4; ++i) {
    Result r = more[static_cast<size_t>(i)].get();
    ASSERT_TRUE(r.ok()) << ErrorText(r);
    EXPECT_EQ(r.engine_id(), "other");
  }
  stopper.join();
  EXPECT_EQ(broker->counters().lost, 0u);
}

TEST(FailoverTest, BrokerRestartFailsCallsInFlightWithBrokerLostAndClientsCarryOn) {
  auto broker = StartBroker();
  std::string front = broker->frontend_endpoint(), back = broker->backend_endpoint();
  EngineOptions eo;
  eo.builtins = true;
  eo.heartbeat = kBeat;
  eo.threads = 24;
  Engine engine(eo);
  engine.Connect(back);
  engine.Start();
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 20; ++i) {
    clients.push_back(std::make_unique<Client>(front, FastClient()));
    ASSERT_TRUE(clients.back()->apply("add", 1, 1).get().ok());
  }
  for (auto& c : clients) calls.push_back(c->apply("sleep", 1.0));
  std::this_thread::sleep_for(milliseconds(100));
  Clock::time_point gone = Clock::now();
  broker.reset();
  int64_t worst = 0;
  int broker_lost = 0;
  for (auto& f : calls) {
    Result r = f.get();
    worst = std::max(worst, MsSince(gone));
    try {
      r.ThrowIfError();
    } catch (const BrokerLost& e) {
      EXPECT_EQ(e.type(), kErrorBrokerLost);
      ++broker_lost;
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  }
  std::fprintf(stderr, "[figures] broker restart: %d of 20 calls in flight failed with "
               "BrokerLost, the last %lld ms after the broker went (liveness window %d ms)\n",
               broker_lost, static_cast<long long>(worst),
               static_cast<int>(kBeat.count() * kLiveness));
  EXPECT_EQ(broker_lost, 20);
  EXPECT_LT(worst, 2 * kBeat.count() * kLiveness);
  broker = StartBroker(front, back);
  ASSERT_TRUE(WaitFor([&] { return broker->counters().engines_live == 1; }));
  for (auto& c : clients) {
    Result r = c->apply("add", 2, 3).get();
    ASSERT_TRUE(r.ok()) << ErrorText(r);
    EXPECT_EQ(r.as<int>(), 5);
  }
}

TEST(FailoverTest, FullBrokerQueueAnswersBusyAndGoneClientsLeaveIt) {
  BrokerOptions bo;
  bo.max_queued_calls = 2;
  auto broker = StartBroker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  std::string front = broker->frontend_endpoint();
  auto leaving = std::make_unique<Client>(front, FastClient());
  ResultFuture q1 = leaving->apply_for(milliseconds(0), "add", 1, 1);  // no deadline
  Client client(front, FastClient());
  ResultFuture q2 = client.apply("add", 2, 2);
  ASSERT_TRUE(WaitFor([&] { return broker->counters().queued == 2; }));
  Result busy = client.apply("add", 3, 3).get();
  try {
    busy.ThrowIfError();
    ADD_FAILURE() << "not Busy";
  } catch (const Busy& e) {
    EXPECT_EQ(e.type(), kErrorBusy);
    EXPECT_THAT(e.message(), HasSubstr("full"));
  }
  leaving.reset();  // its queued call must not be delivered
  ASSERT_TRUE(WaitFor([&] { return broker->counters().queued == 1; }));
  EngineOptions eo;
  eo.builtins = true;
  eo.heartbeat = kBeat;
  Engine engine(eo);
  engine.Connect(broker->backend_endpoint());
  engine.Start();
  EXPECT_EQ(q2.get().as<int>(), 4);
  EXPECT_EQ(engine.counters().calls, 1u);
}

// Frames: a call whose arguments are in the client's shared memory queues a few bytes.
ClientOptions FramesOnly() {
  ClientOptions co = FastClient();
  co.shared_memory = false;
  return co;
}

TEST(FailoverTest, QueueByteBoundAnswersBusy) {
  BrokerOptions bo;
  bo.max_queued_bytes = 64 * 1024;
  auto broker = StartBroker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  Client client(broker->frontend_endpoint(), FramesOnly());
  ResultFuture small = client.apply("add", 1, 1);
  Result big = client.apply("echo", std::vector<double>(16 * 1024, 1.0)).get();
  EXPECT_THAT(ErrorText(big), HasSubstr("zerocan.Busy"));
  EXPECT_EQ(broker->counters().busy, 1u);
}

TEST(FailoverTest, ACancelledQueuedCallGivesItsBytesBack) {
  BrokerOptions bo;
  bo.max_queued_bytes = 192 * 1024;
  auto broker = StartBroker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  Client client(broker->frontend_endpoint(), FramesOnly());
  std::vector<double> bytes_128k(16 * 1024, 1.0);
  for (int i = 0; i < 3; ++i) {  // each waits (no engine), is cancelled, and leaves room
    ResultFuture queued = client.apply("echo", bytes_128k);
    for (int t = 0; t < 500 && broker->counters().queued == 0; ++t) {
      std::this_thread::sleep_for(milliseconds(2));
    }
    ASSERT_EQ(broker->counters().queued, 1u);
    EXPECT_TRUE(queued.Cancel());
    for (int t = 0; t < 500 && broker->counters().queued != 0; ++t) {
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  EXPECT_EQ(broker->counters().busy, 0u);
}

}  // namespace
}  // namespace zerocan
