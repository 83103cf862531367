// Cancel and streams (zerocan/stream.h, docs/FORMAT.md "Cancel and streams"), directly
// and through a broker: queued and running calls cancelled, stop tokens, stream items in
// order, a 100 MB item as a view of its frame, credits bounding an engine whose client
// stops reading, and a cancelled stream unwinding its function.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/transport/zmq.h"

namespace zerocan {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

template <class F>
bool WaitFor(F done, milliseconds limit = milliseconds(3000)) {
  auto until = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

struct Counters {
  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
  std::atomic<int64_t> produced{0};
  std::atomic<int> unwound{0};
  std::atomic<int64_t> stopped_at_ns{0};
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// One engine with one worker (so calls queue), reached directly or through a broker.
class StreamTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    bool brokered = GetParam();
    EngineOptions eo;
    eo.context = &context_;
    eo.threads = 1;
    eo.heartbeat = milliseconds(50);
    engine_ = std::make_unique<Engine>(eo);
    AddBuiltins(*engine_);
    Counters* c = &counters_;
    engine_->def("spin", [c](std::stop_token stop) {
      ++c->started;
      while (!stop.stop_requested()) std::this_thread::sleep_for(milliseconds(1));
      c->stopped_at_ns = NowNs();
      ++c->stopped;
      return 1;
    });
    // Sleeps on a condition variable that only its stop callback wakes. The callback
    // calls back into the call (its stop token), as a function's own cleanup may: the
    // cancel must run it outside the call's lock.
    engine_->DefRaw("wait_for_stop", [c](const Call& call, ValueWriter& out) {
      std::mutex mu;
      std::condition_variable cv;
      bool woken = false;
      std::stop_callback wake(call.stop_token(), [&] {
        bool stopped = call.stop_token().stop_requested();
        std::lock_guard<std::mutex> lock(mu);
        woken = stopped;
        cv.notify_all();
      });
      ++c->started;
      std::unique_lock<std::mutex> lock(mu);
      if (cv.wait_for(lock, std::chrono::seconds(5), [&] { return woken; })) ++c->stopped;
      out.Int(1);
    });
    // Looks at the call's cancel flag, and takes its stop token only once cancelled.
    engine_->DefRaw("token_after_cancel", [c](const Call& call, ValueWriter& out) {
      ++c->started;
      auto until = Clock::now() + std::chrono::seconds(5);
      while (!call.cancelled() && Clock::now() < until) {
        std::this_thread::sleep_for(milliseconds(1));
      }
      if (call.stop_token().stop_requested()) ++c->stopped;
      out.Int(1);
    });
    engine_->def("count", [](int64_t n, StreamWriter& out) {
      for (int64_t i = 0; i < n; ++i) out.Write(i);
    }, {"n"});
    engine_->def("big", [](StreamWriter& out) {
      std::vector<double> v(100 * 1024 * 1024 / sizeof(double));
      for (size_t i = 0; i < v.size(); i += 4096) v[i] = static_cast<double>(i);
      out.Write(int64_t{1});
      out.Write(std::move(v));
      out.Write(int64_t{3});
    });
    engine_->def("endless", [c](StreamWriter& out) {
      struct Finally {
        Counters* c;
        ~Finally() { ++c->unwound; }
      } finally{c};
      for (int64_t i = 0;; ++i) {
        out.Write(i);
        ++c->produced;
      }
    });
    if (brokered) {
      BrokerOptions bo;
      bo.context = &context_;
      bo.heartbeat = milliseconds(50);
      broker_ = std::make_unique<Broker>("inproc://stream-front", "inproc://stream-back", bo);
      broker_->Start();
      engine_->Connect("inproc://stream-back");
      url_ = "inproc://stream-front";
    } else {
      engine_->Bind("inproc://stream-engine");
      url_ = "inproc://stream-engine";
    }
    engine_->Start();
    ClientOptions co;
    co.context = &context_;
    co.timeout = milliseconds(20000);
    co.stream_credits = 16;
    client_ = std::make_unique<Client>(url_, co);
    if (brokered) {
      ASSERT_TRUE(WaitFor([&] { return broker_->counters().engines_live == 1; }));
    }
  }
  void TearDown() override {
    client_.reset();
    engine_.reset();
    broker_.reset();
  }

  zmq::context_t context_{1};
  Counters counters_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Client> client_;
  std::string url_;
};

void ExpectCancelled(const Result& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_THROW(r.ThrowIfError(), CancelledError);
}

TEST_P(StreamTest, QueuedCallIsDroppedAndRunningCallEndsAtOnce) {
  ResultFuture slow = client_->apply("sleep", 0.4);
  ResultFuture queued = client_->apply("add", 1, 2);
  std::this_thread::sleep_for(milliseconds(50));  // the sleep runs, the add waits
  auto t0 = Clock::now();
  EXPECT_TRUE(queued.Cancel());
  Result r = queued.get();
  double queued_ms = MsSince(t0);
  ExpectCancelled(r);
  EXPECT_LT(queued_ms, 100.0);
  // The running sleep ignores its stop token: its future still ends at once.
  t0 = Clock::now();
  EXPECT_TRUE(slow.Cancel());
  ExpectCancelled(slow.get());
  double running_ms = MsSince(t0);
  EXPECT_LT(running_ms, 100.0);
  EXPECT_FALSE(slow.Cancel());  // once only
  std::printf("cancel: queued call ended in %.2f ms, running non-cooperative in %.2f ms\n",
              queued_ms, running_ms);
  // The engine goes on: the next call is answered; neither cancelled call is.
  EXPECT_EQ(client_->apply("add", 40, 2).get().as<int>(), 42);
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(client_->counters().late, 0u);
  EXPECT_EQ(engine_->counters().calls, 2u);  // sleep and the last add; the queued add never ran
}

TEST_P(StreamTest, RunningCooperativeCallStopsAndTheEngineTakesTheNext) {
  ResultFuture f = client_->apply("spin");
  ASSERT_TRUE(WaitFor([&] { return counters_.started.load() == 1; }));
  auto t0 = Clock::now();
  int64_t cancel_ns = NowNs();
  EXPECT_TRUE(f.Cancel());
  ExpectCancelled(f.get());
  EXPECT_LT(MsSince(t0), 100.0);
  ASSERT_TRUE(WaitFor([&] { return counters_.stopped.load() == 1; }));
  double stop_ms = (counters_.stopped_at_ns.load() - cancel_ns) / 1e6;
  EXPECT_LT(stop_ms, 100.0);
  t0 = Clock::now();
  EXPECT_EQ(client_->apply("add", 1, 1).get().as<int>(), 2);
  std::printf("cancel: cooperative call stopped %.2f ms after cancel; next call took %.2f ms\n",
              stop_ms, MsSince(t0));
  EXPECT_EQ(client_->counters().late, 0u);
}

TEST_P(StreamTest, CancelRunsTheFunctionsStopCallbacks) {
  ResultFuture f = client_->apply("wait_for_stop");
  ASSERT_TRUE(WaitFor([&] { return counters_.started.load() == 1; }));
  EXPECT_TRUE(f.Cancel());
  ExpectCancelled(f.get());
  ASSERT_TRUE(WaitFor([&] { return counters_.stopped.load() == 1; }, milliseconds(2000)))
      << "the stop callback never ran";
  EXPECT_EQ(client_->apply_for(milliseconds(5000), "add", 1, 1).get().as<int>(), 2);
}

TEST_P(StreamTest, AStopTokenTakenAfterTheCancelIsAlreadyStopped) {
  ResultFuture f = client_->apply("token_after_cancel");
  ASSERT_TRUE(WaitFor([&] { return counters_.started.load() == 1; }));
  EXPECT_TRUE(f.Cancel());
  ExpectCancelled(f.get());
  ASSERT_TRUE(WaitFor([&] { return counters_.stopped.load() == 1; }, milliseconds(2000)))
      << "the token taken after the cancel was not stopped";
}

TEST_P(StreamTest, StreamDeliversItemsInOrder) {
  ResultStream s = client_->stream("count", int64_t{10000});
  int64_t expected = 0;
  while (std::optional<Result> item = s.Next()) {
    ASSERT_EQ(item->as<int64_t>(), expected);
    ++expected;
  }
  EXPECT_EQ(expected, 10000);
  // A plain apply of a streaming function is refused with a reason.
  Result r = client_->apply("count", int64_t{3}).get();
  ASSERT_FALSE(r.ok());
  EXPECT_THROW(r.ThrowIfError(), RemoteError);
}

TEST_P(StreamTest, LargeItemArrivesAsAViewOfItsFrame) {
  ResultStream s = client_->stream("big");
  EXPECT_EQ(s.Next()->as<int64_t>(), 1);
  std::optional<Result> big = s.Next();
  ASSERT_TRUE(big.has_value());
  auto view = big->as<TensorView<const double>>();
  ASSERT_EQ(view.size(), 100u * 1024 * 1024 / sizeof(double));
  EXPECT_EQ(view.data()[4096], 4096.0);
  const FrameList& frames = big->reply().frames();
  ASSERT_GE(frames.size(), 2u);
  EXPECT_EQ(static_cast<const void*>(view.data()), static_cast<const void*>(frames[1].data()));
  EXPECT_EQ(s.Next()->as<int64_t>(), 3);
  EXPECT_FALSE(s.Next().has_value());
}

TEST_P(StreamTest, SlowReaderHoldsTheEngineAtTheCreditBoundAndCancelUnwinds) {
  ResultStream s = client_->stream("endless");
  for (int i = 0; i < 3; ++i) ASSERT_EQ(s.Next()->as<int64_t>(), i);
  std::this_thread::sleep_for(milliseconds(200));
  int64_t held = counters_.produced.load();
  EXPECT_LE(held, 16);  // the window: 16 credits, none granted back yet
  for (int i = 3; i < 40; ++i) ASSERT_EQ(s.Next()->as<int64_t>(), i);
  std::this_thread::sleep_for(milliseconds(100));
  int64_t after = counters_.produced.load();
  EXPECT_LE(after, 40 + 16);
  std::printf("stream: engine held at %lld items with 16 credits (after reading 3), %lld after 40\n",
              static_cast<long long>(held), static_cast<long long>(after));
  auto t0 = Clock::now();
  EXPECT_TRUE(s.Cancel());
  ASSERT_TRUE(WaitFor([&] { return counters_.unwound.load() == 1; }));
  EXPECT_LT(MsSince(t0), 100.0);
  EXPECT_THROW(s.Next(), CancelledError);
  EXPECT_EQ(client_->apply("add", 2, 2).get().as<int>(), 4);
}

INSTANTIATE_TEST_SUITE_P(DirectAndBrokered, StreamTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Broker" : "Direct"; });

}  // namespace
}  // namespace zerocan
