// Client on its own: Result semantics, timeouts with nobody listening, argument
// tracking (borrowed vs adopted), one thread's get() serving another thread's call.
#include "zerocan/transport/zmq.h"
#include "zerocan/client.h"

#include <atomic>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/engine.h"
#include "zerocan/stats.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using std::chrono::milliseconds;

TEST(ResultTest, OkViewsTheReplyAndFailedRethrows) {
  EnvelopeWriter w;
  w.StartResult(7, "engine-x").Write(std::string("value"));
  Message reply = Message::Decode(LoopbackFrames(w.Finish()));
  Result ok = Result::Ok(reply, nullptr);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.as<std::string>(), "value");
  EXPECT_EQ(ok.engine_id(), "engine-x");

  Result failed = Result::Failed(std::make_exception_ptr(
      RemoteError({"ValueError", "bad value", "f", "engine-y"})));
  EXPECT_FALSE(failed.ok());
  EXPECT_THROW(failed.as<int>(), RemoteError);
  try {
    failed.value();
  } catch (const RemoteError& e) {
    EXPECT_EQ(e.type(), "ValueError");
    EXPECT_EQ(e.where(), "engine-y");
    EXPECT_STREQ(e.what(), "f: ValueError: bad value (at engine-y)");
  }
  EXPECT_THROW(Result().value(), Error);
  ResultFuture empty;
  EXPECT_FALSE(empty.valid());
  EXPECT_THROW(empty.get(), Error);
}

TEST(ClientTest, NobodyListeningTimesOut) {
  ClientOptions options;
  options.timeout = milliseconds(50);
  Client client("tcp://127.0.0.1:1", options);  // nothing listens on port 1
  auto start = std::chrono::steady_clock::now();
  Result r = client.apply("add", 1, 2).get();
  EXPECT_THROW(r.ThrowIfError(), TimeoutError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ClientTest, BorrowedArgumentIsTrackedAdoptedOneNeedsNoCare) {
  zmq::context_t ctx(1);
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx;
  Engine engine(eo);
  engine.Bind("inproc://client-track");
  engine.Start();
  ClientOptions co;
  co.context = &ctx;
  co.policy = Policy{.inline_threshold = 1024};
  Client client("inproc://client-track", co);
  uint64_t zero_copy_before = GlobalStats().Snapshot().frames_sent_zero_copy;
  std::vector<double> borrowed(100000, 1.0);
  ResultFuture f = client.apply("sum", borrowed);
  EXPECT_DOUBLE_EQ(f.get().as<double>(), 100000.0);
  EXPECT_TRUE(f.tracker().WaitFor(std::chrono::seconds(5)));
  // An rvalue is moved into the message: nothing for the caller to keep alive.
  ResultFuture g = client.apply("sum", std::vector<double>(100000, 2.0));
  EXPECT_DOUBLE_EQ(g.get().as<double>(), 200000.0);
  EXPECT_GE(GlobalStats().Snapshot().frames_sent_zero_copy - zero_copy_before, 2u);
  // Small arguments travel inline.
  ResultFuture h = client.apply("sum", std::vector<double>{1, 2});
  EXPECT_TRUE(h.tracker().done());
  EXPECT_DOUBLE_EQ(h.get().as<double>(), 3.0);
}

TEST(ClientTest, OneThreadReceivesForAnother) {
  zmq::context_t ctx(1);
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx;
  Engine engine(eo);
  engine.Bind("inproc://client-leader");
  engine.Start();
  ClientOptions co;
  co.context = &ctx;
  Client client("inproc://client-leader", co);
  // Thread A waits on a slow call (and so receives); thread B's fast call is answered
  // meanwhile and B, waiting without the socket, still gets it.
  ResultFuture slow = client.apply("sleep", 0.3);
  std::thread a([&] { EXPECT_TRUE(slow.get().ok()); });
  std::this_thread::sleep_for(milliseconds(20));
  std::atomic<bool> b_done{false};
  std::thread b([&] {
    EXPECT_EQ(client.apply("add", 2, 2).get().as<int>(), 4);
    b_done = true;
  });
  b.join();
  EXPECT_TRUE(b_done.load());
  a.join();
}

// A plain lvalue argument is copied when it becomes a frame, so clearing and freeing it
// right after apply() cannot reach the bytes libzmq is still sending.
TEST(ClientTest, LvalueArgumentClearedRightAfterApplyIsSafe) {
  EngineOptions eo;
  eo.builtins = true;
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  // Frames (with shared memory the one copy goes into the arena: shared_calls_test.cc).
  ClientOptions co;
  co.shared_memory = false;
  Client client(engine.last_endpoint(), co);
  std::vector<double> v(8 << 20, 1.0);  // 64 MiB: a frame at any threshold
  uint64_t copies = GlobalStats().Snapshot().buffer_copies;
  ResultFuture f = client.apply("sum", v);
  std::fill(v.begin(), v.end(), -7.0);
  v.clear();
  v.shrink_to_fit();
  EXPECT_DOUBLE_EQ(f.get().as<double>(), double(8 << 20));
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies - copies, 1u);
  // Borrow lends without a copy; the tracker says when the bytes may change.
  std::vector<double> lent(8 << 20, 2.0);
  copies = GlobalStats().Snapshot().buffer_copies;
  ResultFuture g = client.apply("sum", Borrow(lent));
  EXPECT_DOUBLE_EQ(g.get().as<double>(), 2.0 * (8 << 20));
  EXPECT_TRUE(g.tracker().WaitFor(std::chrono::seconds(5)));
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies, copies);
}

TEST(ClientTest, KeywordArgumentsBindByParameterName) {
  zmq::context_t ctx(1);
  EngineOptions eo;
  eo.context = &ctx;
  Engine engine(eo);
  engine.def("affine", [](double x, double k, double b) { return k * x + b; }, {"x", "k", "b"});
  engine.def("unnamed", [](double x) { return x; });
  engine.Bind("inproc://client-kwargs");
  engine.Start();
  ClientOptions co;
  co.context = &ctx;
  Client client("inproc://client-kwargs", co);
  EXPECT_EQ(client.apply("affine", 2.0, 3.0, 1.0).get().as<double>(), 7.0);
  EXPECT_EQ(client.apply("affine", 2.0, Kw("b", 1.0), Kw("k", 3.0)).get().as<double>(), 7.0);
  EXPECT_EQ(client.apply("affine", Kw("x", 2.0), Kw("k", 3.0), Kw("b", 1.0)).get().as<double>(), 7.0);
  auto error_of = [](Result r) {
    try {
      r.ThrowIfError();
    } catch (const RemoteError& e) {
      EXPECT_EQ(e.type(), kErrorArgument);
      return e.message();
    }
    ADD_FAILURE() << "no error";
    return std::string();
  };
  using testing::HasSubstr;
  EXPECT_THAT(error_of(client.apply("affine", 2.0, Kw("q", 1.0), Kw("k", 3.0)).get()),
              HasSubstr("unexpected keyword argument 'q'"));
  EXPECT_THAT(error_of(client.apply("affine", 2.0, 3.0, Kw("k", 3.0)).get()),
              HasSubstr("argument 1 (k) given twice"));
  EXPECT_THAT(error_of(client.apply("affine", 2.0, Kw("k", 3.0)).get()),
              HasSubstr("missing argument 2 (b)"));
  EXPECT_THAT(error_of(client.apply("unnamed", Kw("x", 1.0)).get()),
              HasSubstr("unexpected keyword argument 'x' (the function names no parameters)"));
}

}  // namespace
}  // namespace zerocan

namespace zerocan {
namespace {
// Keywords follow every positional argument on the wire whatever the caller's order, so
// the bytes are those of the canonical order (docs/FORMAT.md).
TEST(ClientTest, KeywordsAreWrittenAfterPositionalArguments) {
  auto envelope_of = [](auto&& write) {
    EnvelopeWriter w;
    w.SetHeader(Header{1, 1, 1, 1});
    ApplyWriter a = w.StartApply("f", 1, 1);
    write(a);
    Outgoing out = w.Finish();
    return std::string(reinterpret_cast<const char*>(out.envelope().data()), out.envelope().size());
  };
  std::string canonical = envelope_of([](ApplyWriter& a) {
    a.arg(0).Write(std::string("positional"));
    a.kwarg(0, "k").Write(std::string("keyword"));
  });
  std::string keyword_first_in_code = envelope_of([](ApplyWriter& a) {
    size_t p = 0, k = 0;
    auto kw = Kw("k", std::string("keyword"));
    std::string pos = "positional";
    internal::WritePositional(a, p, kw);
    internal::WritePositional(a, p, pos);
    internal::WriteKeyword(a, k, kw);
    internal::WriteKeyword(a, k, pos);
  });
  EXPECT_EQ(canonical, keyword_first_in_code);
}

// An rvalue keyword is held by value: it outlives the expression that made it.
TEST(ClientTest, RvalueKeywordIsHeldByValue) {
  auto kw = Kw("k", std::vector<double>(1000, 3.0));
  static_assert(std::is_same_v<decltype(kw.value), std::vector<double>>);
  std::vector<double> lvalue(3, 1.0);
  auto ref = Kw("k", lvalue);
  static_assert(std::is_same_v<decltype(ref.value), std::vector<double>&>);
  EXPECT_EQ(kw.value.size(), 1000u);
}
}  // namespace
}  // namespace zerocan
