// Engine + Client over real sockets (inproc, ipc, tcp): every built-in, typed functions
// and their argument errors, exceptions as remote errors, zero-copy both ways over
// inproc, plugins, pipelining and timeouts.
#include "zerocan/transport/zmq.h"
#include "zerocan/engine.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/client.h"
#include "zerocan/stats.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;

Policy TestPolicy() {
  Policy p;
  p.inline_threshold = 4096;
  return p;
}

// An engine bound to `url` and a client connected to it, sharing one context.
struct Pair {
  explicit Pair(const std::string& url, int threads = 2, EngineOptions options = {}) {
    options.context = &context;
    options.threads = threads;
    options.policy = TestPolicy();
    options.builtins = true;  // add, sleep, fail...
    engine = std::make_unique<Engine>(options);
    engine->def("scale",
                [](TensorView<const double> x, double k) {
                  std::vector<double> out(x.begin(), x.end());
                  for (double& v : out) v *= k;
                  return out;
                },
                {"x", "k"});
    engine->def("concat", [](std::string a, std::string_view b) { return a + std::string(b); });
    engine->def("throws", [](int code) -> int {
      if (code == 1) throw std::invalid_argument("code one is invalid");
      if (code == 2) throw 42;
      return code;
    });
    engine->def("nothing", [](int) {});
    engine->def("buffer_address", [](TensorView<const double> x) {
      return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(x.data()));
    });
    engine->Bind(url);
    engine->Start();
    ClientOptions copts;
    copts.context = &context;
    copts.policy = TestPolicy();
    copts.timeout = milliseconds(10000);
    // Large payloads as frames over the socket under test, not in shared memory.
    copts.shared_memory = false;
    client = std::make_unique<Client>(engine->last_endpoint(), copts);
  }
  ~Pair() {
    client.reset();
    engine.reset();
  }
  zmq::context_t context{1};
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Client> client;
};

std::string IpcUrl() { return "ipc:///tmp/zerocan-engine-test-" + std::to_string(getpid()); }

class TransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string Url() const {
    if (GetParam() == "inproc") return "inproc://engine-test";
    if (GetParam() == "ipc") return IpcUrl();
    return "tcp://127.0.0.1:*";
  }
};

TEST_P(TransportTest, EveryBuiltin) {
  Pair p(Url());
  Client& c = *p.client;
  EXPECT_EQ(c.apply("echo", std::string("hi")).get().as<std::string>(), "hi");
  EXPECT_TRUE(c.apply("echo").get().value().is_null());
  auto several = c.apply("echo", 1, std::string("two"), 3.5).get();
  EXPECT_EQ((several.as<std::tuple<int, std::string, double>>()),
            std::make_tuple(1, std::string("two"), 3.5));
  EXPECT_EQ(c.apply("add", 2, 3).get().as<int64_t>(), 5);
  EXPECT_DOUBLE_EQ(c.apply("add", 2, 0.5).get().as<double>(), 2.5);
  EXPECT_EQ(c.apply("add", -7, 3).get().as<int64_t>(), -4);
  std::vector<double> xs(10000);
  std::iota(xs.begin(), xs.end(), 0.0);
  EXPECT_DOUBLE_EQ(c.apply("sum", xs).get().as<double>(), 9999.0 * 10000 / 2);
  EXPECT_DOUBLE_EQ(c.apply("sum", std::vector<int32_t>{1, 2, 3}).get().as<double>(), 6.0);
  EXPECT_DOUBLE_EQ(
      c.apply("sum", std::make_tuple(1, 2.5, true)).get().as<double>(), 4.5);
  EXPECT_EQ(c.apply("nbytes", xs, std::vector<std::byte>(10)).get().as<uint64_t>(),
            xs.size() * 8 + 10);
  EXPECT_DOUBLE_EQ(c.apply("sleep", 0.01).get().as<double>(), 0.01);
  Result failed = c.apply("fail", std::string("boom")).get();
  ASSERT_FALSE(failed.ok());
  try {
    failed.as<int>();
    FAIL() << "expected RemoteError";
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorFail);
    EXPECT_EQ(e.message(), "boom");
    EXPECT_EQ(e.function(), "fail");
    EXPECT_EQ(e.where(), p.engine->id());
  }
}

TEST_P(TransportTest, EchoesLargeTensorIntact) {
  Pair p(Url());
  std::vector<float> big(1 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i % 1000);
  ResultFuture f = p.client->apply("echo", big);
  {
    Result r = f.get();
    TensorView<const float> back = r.as<TensorView<const float>>();
    ASSERT_EQ(back.size(), big.size());
    EXPECT_TRUE(std::equal(back.begin(), back.end(), big.begin()));
  }
  // Over inproc the reply *is* our frame, so the tracker completes only once the
  // result above is gone.
  EXPECT_TRUE(f.tracker().WaitFor(std::chrono::seconds(5)));
}

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportTest,
                         ::testing::Values("inproc", "ipc", "tcp"));

TEST(EngineTest, TypedFunctionsConvertArgumentsAndResults) {
  Pair p("inproc://typed");
  auto r = p.client->apply("scale", std::vector<double>{1, 2, 3}, 2.0).get();
  EXPECT_EQ(r.as<std::vector<double>>(), (std::vector<double>{2, 4, 6}));
  EXPECT_EQ(p.client->apply("concat", std::string("ab"), std::string("cd")).get()
                .as<std::string>(), "abcd");
  EXPECT_TRUE(p.client->apply("nothing", 1).get().value().is_null());
}

TEST(EngineTest, ArgumentErrorsNameTheArgument) {
  Pair p("inproc://argerrors");
  Result r = p.client->apply("scale", std::vector<double>{1.0}, std::string("a")).get();
  try {
    r.ThrowIfError();
    FAIL();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorArgument);
    EXPECT_THAT(e.message(), HasSubstr("scale: argument 1 (k): expected float64, got text"));
  }
  r = p.client->apply("scale", std::vector<int>{1}, 2.0).get();
  EXPECT_THROW(r.ThrowIfError(), RemoteError);
  try {
    r.ThrowIfError();
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.message(), HasSubstr("argument 0 (x): expected float64 tensor"));
  }
  r = p.client->apply("scale", 1.0).get();
  try {
    r.ThrowIfError();
    FAIL();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorArgument);
    EXPECT_THAT(e.message(), HasSubstr("scale: expected 2 arguments, got 1"));
  }
  // Unnamed parameters are named by position only.
  r = p.client->apply("throws", std::string("x")).get();
  try {
    r.ThrowIfError();
    FAIL();
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.message(), HasSubstr("throws: argument 0: expected int"));
  }
}

TEST(EngineTest, ExceptionsBecomeRemoteErrors) {
  Pair p("inproc://exceptions");
  Result r = p.client->apply("throws", 1).get();
  try {
    r.as<int>();
    FAIL();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "code one is invalid");
    EXPECT_EQ(e.function(), "throws");
    EXPECT_EQ(e.where(), p.engine->id());
    EXPECT_THAT(e.what(), HasSubstr("code one is invalid"));
  }
  r = p.client->apply("throws", 2).get();
  EXPECT_FALSE(r.ok());
  EXPECT_THROW(r.ThrowIfError(), RemoteError);
  r = p.client->apply("no_such_function", 1).get();
  try {
    r.ThrowIfError();
    FAIL();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), kErrorUnknownFunction);
    EXPECT_THAT(e.message(), HasSubstr("no_such_function"));
  }
  // The engine keeps serving after errors.
  EXPECT_EQ(p.client->apply("throws", 7).get().as<int>(), 7);
  EXPECT_GE(p.engine->counters().errors, 3u);
}

TEST(EngineTest, MalformedMessageGetsAnErrorReply) {
  zmq::context_t ctx(1);
  EngineOptions options;
  options.context = &ctx;
  Engine engine(options);
  engine.Bind("inproc://malformed");
  engine.Start();
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.connect("inproc://malformed");
  s.send(zmq::message_t(), zmq::send_flags::sndmore);
  s.send(zmq::buffer(std::string("garbage!")), zmq::send_flags::none);
  auto got = Receive(s);
  ASSERT_TRUE(got.has_value());
  Message reply = Message::Decode(std::move(*got));
  ASSERT_EQ(reply.body_kind(), BodyKind::kResult);
  EXPECT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().type, kErrorDecode);
  EXPECT_EQ(reply.call_id(), 0u);
  s.close();
}

TEST(EngineTest, InprocIsZeroCopyBothWays) {
  // The engine function sees the client's own buffer, and the client's result view has
  // the address of the vector the engine returned.
  zmq::context_t ctx(1);
  EngineOptions options;
  options.builtins = true;
  options.context = &ctx;
  options.policy = TestPolicy();
  Engine engine(options);
  std::atomic<uintptr_t> seen{0}, returned{0};
  engine.def("look", [&](TensorView<const double> x) {
    seen = reinterpret_cast<uintptr_t>(x.data());
    std::vector<double> out(x.size(), 1.5);
    returned = reinterpret_cast<uintptr_t>(out.data());
    return out;
  });
  engine.Bind("inproc://zerocopy");
  engine.Start();
  ClientOptions copts;
  copts.context = &ctx;
  copts.policy = TestPolicy();
  Client client("inproc://zerocopy", copts);
  std::vector<double> arg(1 << 16, 2.0);
  ResultFuture f = client.apply("look", Borrow(arg));
  Result r = f.get();
  EXPECT_EQ(seen.load(), reinterpret_cast<uintptr_t>(arg.data()));
  auto view = r.as<TensorView<const double>>();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data()), returned.load());
  EXPECT_EQ(view[0], 1.5);
  // echo forwards the received frame: the reply points at the client's own bytes.
  Result echoed = client.apply("echo", Borrow(arg)).get();
  EXPECT_EQ(echoed.as<TensorView<const double>>().data(), arg.data());
  EXPECT_TRUE(f.tracker().WaitFor(std::chrono::seconds(5)));
}

TEST(EngineTest, PipelinedCallsFromManyThreads) {
  Pair p("inproc://pipelined", 2);
  constexpr int kThreads = 4, kCalls = 500;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<ResultFuture> futures;
      for (int i = 0; i < kCalls; ++i) futures.push_back(p.client->apply("add", t * 100000, i));
      for (int i = 0; i < kCalls; ++i) {
        if (futures[i].get().as<int64_t>() != t * 100000 + i) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(p.client->counters().received, static_cast<uint64_t>(kThreads * kCalls));
  EXPECT_EQ(p.client->counters().late, 0u);
}

TEST(EngineTest, InlineModeServesOnTheIoThread) {
  Pair p("inproc://inline", 0);
  EXPECT_EQ(p.client->apply("add", 1, 2).get().as<int>(), 3);
  EXPECT_FALSE(p.client->apply("fail", std::string("x")).get().ok());
}

uint64_t ThisThread() { return std::hash<std::thread::id>()(std::this_thread::get_id()); }

// A function runs where it was declared to: on a worker by default, on the I/O thread
// when registered with inline_execution (however fast or slow its runs are).
TEST(EngineTest, FunctionsRunOnWorkersUnlessDeclaredInline) {
  zmq::context_t ctx(1);
  EngineOptions options;
  options.context = &ctx;
  options.threads = 2;
  Engine engine(options);
  engine.def("pooled", [] { return ThisThread(); });
  engine.def("inline", [] { return ThisThread(); }, FunctionOptions{.inline_execution = true});
  engine.def(
      "inline_slow",
      [](int ms) {
        std::this_thread::sleep_for(milliseconds(ms));
        return ThisThread();
      },
      {"ms"}, FunctionOptions{.inline_execution = true});
  engine.Bind("inproc://where-functions-run");
  engine.Start();
  ClientOptions copts;
  copts.context = &ctx;
  Client client("inproc://where-functions-run", copts);
  uint64_t io_thread = client.apply("inline").get().as<uint64_t>();
  EXPECT_NE(io_thread, ThisThread());
  for (int i = 0; i < 20; ++i) {
    EXPECT_NE(client.apply("pooled").get().as<uint64_t>(), io_thread) << "call " << i;
    EXPECT_EQ(client.apply("inline").get().as<uint64_t>(), io_thread) << "call " << i;
  }
  // No run time moves a function: a slow inline function stays on the I/O thread.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(client.apply("inline_slow", 30).get().as<uint64_t>(), io_thread);
  EXPECT_EQ(client.apply("inline").get().as<uint64_t>(), io_thread);
}

// A call on a worker can be cancelled, so its stop token has a stop state; one on the
// I/O thread cannot (nothing is read while it runs), and its token says so.
TEST(EngineTest, OnlyACallThatCanBeCancelledGetsAStoppableToken) {
  zmq::context_t ctx(1);
  EngineOptions options;
  options.context = &ctx;
  Engine engine(options);
  auto stoppable = [](std::stop_token stop) { return stop.stop_possible(); };
  engine.def("pooled", stoppable);
  engine.def("inline", stoppable, FunctionOptions{.inline_execution = true});
  engine.Bind("inproc://stoppable-tokens");
  engine.Start();
  ClientOptions copts;
  copts.context = &ctx;
  Client client("inproc://stoppable-tokens", copts);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(client.apply("pooled").get().as<bool>()) << "call " << i;
    EXPECT_FALSE(client.apply("inline").get().as<bool>()) << "call " << i;
  }
}

TEST(EngineTest, EngineWideInlineExecutionRunsEveryFunctionOnTheIoThread) {
  zmq::context_t ctx(1);
  EngineOptions options;
  options.context = &ctx;
  options.threads = 2;
  options.inline_execution = true;
  Engine engine(options);
  engine.def("a", [] { return ThisThread(); });
  engine.def("b", [] { return ThisThread(); });
  engine.Bind("inproc://engine-inline");
  engine.Start();
  ClientOptions copts;
  copts.context = &ctx;
  Client client("inproc://engine-inline", copts);
  uint64_t io_thread = client.apply("a").get().as<uint64_t>();
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(client.apply("a").get().as<uint64_t>(), io_thread) << "call " << i;
    EXPECT_EQ(client.apply("b").get().as<uint64_t>(), io_thread) << "call " << i;
  }
}

TEST(EngineTest, BuiltinsOnlyWhenAsked) {
  EngineOptions plain;
  EXPECT_TRUE(Engine(plain).functions().empty());
  EngineOptions with;
  with.builtins = true;
  EXPECT_THAT(Engine(with).functions(),
              ::testing::ElementsAre("add", "echo", "fail", "nbytes", "sleep", "sum"));
}

TEST(EngineTest, SignedEngineServesOnlyItsKeyHolders) {
  zmq::context_t ctx(1);
  EngineOptions options;
  options.builtins = true;
  options.context = &ctx;
  options.signer.emplace("engine-test-key");
  Engine engine(options);
  engine.Bind("inproc://signed");
  engine.Start();
  ClientOptions good;
  good.context = &ctx;
  good.signer.emplace("engine-test-key");
  Client client("inproc://signed", good);
  EXPECT_EQ(client.apply("add", 20, 22).get().as<int>(), 42);
  std::vector<double> big(100000, 0.5);
  EXPECT_DOUBLE_EQ(client.apply("sum", big).get().as<double>(), 50000.0);
  for (const char* key : {"", "another-key"}) {
    ClientOptions bad;
    bad.context = &ctx;
    bad.timeout = milliseconds(200);
    if (*key != 0) bad.signer.emplace(key);
    Client intruder("inproc://signed", bad);
    uint64_t errors = engine.counters().errors;
    Result r = intruder.apply("add", 1, 1).get();
    EXPECT_THROW(r.ThrowIfError(), TimeoutError) << key;
    EXPECT_EQ(engine.counters().errors, errors + 1);  // counted and dropped, not answered
  }
  EXPECT_EQ(client.apply("add", 1, 1).get().as<int>(), 2);
}

TEST(EngineTest, PerTimeoutErrorAndLateReplyDropped) {
  Pair p("inproc://timeout", 2);
  ResultFuture slow = p.client->apply_for(milliseconds(50), "sleep", 0.5);
  ResultFuture fast = p.client->apply("add", 1, 1);
  Result r = slow.get();
  EXPECT_FALSE(r.ok());
  EXPECT_THROW(r.as<double>(), TimeoutError);
  EXPECT_EQ(fast.get().as<int>(), 2);
  // The late reply to the timed-out call arrives and is dropped, not delivered.
  Result after = p.client->apply("sleep", 0.6).get();
  EXPECT_TRUE(after.ok());
  EXPECT_EQ(p.client->counters().late, 1u);
}

TEST(EngineTest, WaitForAndReady) {
  Pair p("inproc://waitfor", 1);
  ResultFuture f = p.client->apply("sleep", 0.2);
  EXPECT_EQ(f.wait_for(milliseconds(10)), std::future_status::timeout);
  EXPECT_FALSE(f.ready());
  EXPECT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_DOUBLE_EQ(f.get().as<double>(), 0.2);
}

TEST(EngineTest, FutureOutlivingItsClientFails) {
  Pair p("inproc://outlive", 1);
  ResultFuture f = p.client->apply("sleep", 0.2);
  p.client.reset();
  Result r = f.get();
  EXPECT_FALSE(r.ok());
  EXPECT_THROW(r.ThrowIfError(), TransportError);
}

TEST(EngineTest, PluginRegistersFunctions) {
  std::string tool = ZEROCAN_TOOL_PATH;
  std::string plugin = tool.substr(0, tool.rfind('/')) + "/examples/libzerocan_example_plugin.so";
  zmq::context_t ctx(1);
  EngineOptions options;
  options.context = &ctx;
  Engine engine(options);
  LoadPlugin(engine, plugin);
  EXPECT_THAT(engine.functions(), ::testing::Contains("norm"));
  engine.Bind("inproc://plugin");
  engine.Start();
  ClientOptions copts;
  copts.context = &ctx;
  Client client("inproc://plugin", copts);
  EXPECT_DOUBLE_EQ(client.apply("norm", std::vector<double>{3, 4}).get().as<double>(), 5.0);
  Result r = client.apply("greet", std::string("zerocan")).get();
  EXPECT_EQ(r.as<std::string>(), "hello, zerocan");
  EXPECT_THROW(LoadPlugin(engine, "/nonexistent/plugin.so"), Error);
}

TEST(EngineTest, KilledEngineLeavesCallsToTimeOut) {
  Pair p("inproc://killed", 2);
  ResultFuture f = p.client->apply_for(milliseconds(300), "sleep", 0.1);
  std::this_thread::sleep_for(milliseconds(20));
  internal::TestHooks::KillEngine(*p.engine);
  Result r = f.get();
  EXPECT_THROW(r.ThrowIfError(), TimeoutError);
}

// The queue of calls waiting for a worker is bounded: a call past it is answered
// zerocan.Busy at once, without running, and the engine keeps serving the rest.
void ExpectBusy(Result r) {
  try {
    r.ThrowIfError();
    ADD_FAILURE() << "not Busy";
  } catch (const Busy& e) {
    EXPECT_EQ(e.type(), kErrorBusy);
    EXPECT_THAT(e.message(), HasSubstr("is busy"));
    EXPECT_THAT(e.message(), HasSubstr("did not start"));
  }
}

// An engine with the built-ins and "hold" (sleeps its argument in seconds, and says when
// it started), one worker thread, and `options`' queue bounds.
struct HoldingEngine {
  explicit HoldingEngine(EngineOptions options) {
    options.builtins = true;
    options.threads = 1;
    engine = std::make_unique<Engine>(options);
    engine->def("hold", [this](double seconds) {
      started = true;
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      return seconds;
    }, {"seconds"});
    engine->Bind("tcp://127.0.0.1:*");
    engine->Start();
  }
  // Waits until a "hold" call runs (it left the queue).
  bool Running() {
    for (int i = 0; i < 500 && !started; ++i) std::this_thread::sleep_for(milliseconds(10));
    return started;
  }
  std::atomic<bool> started{false};
  std::unique_ptr<Engine> engine;
};

TEST(EngineQueueTest, CallsPastTheQueuedCountAreAnsweredBusyAtOnce) {
  EngineOptions eo;
  eo.max_queued_calls = 2;
  HoldingEngine e(eo);
  Client client(e.engine->last_endpoint());
  std::vector<ResultFuture> calls;
  calls.push_back(client.apply("hold", 0.5));  // running (taken off the queue)
  ASSERT_TRUE(e.Running());
  for (int i = 0; i < 4; ++i) calls.push_back(client.apply("sleep", 0.01));
  ExpectBusy(calls[3].get());
  ExpectBusy(calls[4].get());
  EXPECT_FALSE(calls[0].ready());  // answered at once, while the first call still runs
  for (int i : {0, 1, 2}) EXPECT_TRUE(calls[i].get().ok());
  EXPECT_EQ(client.apply("add", 1, 2).get().as<int>(), 3);
}

TEST(EngineQueueTest, CallsPastTheQueuedBytesAreAnsweredBusy) {
  EngineOptions eo;
  eo.max_queued_bytes = 3 << 20;
  HoldingEngine e(eo);
  // Frames: arguments in the client's shared memory take none of the engine's.
  ClientOptions co;
  co.shared_memory = false;
  Client client(e.engine->last_endpoint(), co);
  ResultFuture running = client.apply("hold", 0.5);
  ASSERT_TRUE(e.Running());
  std::vector<double> mib(1 << 17, 1.0);  // 1 MiB, in a frame of its own
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 4; ++i) calls.push_back(client.apply("nbytes", mib));
  ExpectBusy(calls[2].get());  // 2 MiB queued and 1 MiB more: past 3 MiB with envelopes
  ExpectBusy(calls[3].get());
  EXPECT_TRUE(calls[0].get().ok());
  EXPECT_TRUE(calls[1].get().ok());
  EXPECT_TRUE(running.get().ok());
  EXPECT_TRUE(client.apply("nbytes", mib).get().ok());  // the queue emptied
  // A call larger than the bound on its own is taken when none wait: it could never run
  // otherwise.
  std::vector<double> four_mib(1 << 19, 1.0);
  EXPECT_TRUE(client.apply("nbytes", four_mib).get().ok());
}

}  // namespace
}  // namespace zerocan
