// Results in shared memory (docs/FORMAT.md "Shared memory arenas"): an engine places a
// large result in its arena for a caller of its host that asked (Apply.sharedResults),
// in place when the function allocated it there, else copied once; lends the block
// until the caller holds it; and sends frames to anyone else.
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/error.h"
#include "zerocan/shared.h"
#include "zerocan/stats.h"

namespace zerocan {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using testing::WaitUntil;
using testing::Why;

bool AllBytesAre(const Buffer& b, uint8_t value) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (static_cast<uint8_t>(b.data()[i]) != value) return false;
  }
  return true;
}

// An engine whose results go to `arena`: "fill" allocates its result there (4s), "plain"
// returns ordinary memory (5s).
void DefineResults(Engine& engine, std::shared_ptr<SharedArena> arena) {
  engine.def("fill", [arena](int64_t n) {
    Buffer block = *arena->Allocate(static_cast<size_t>(n));
    std::memset(block.mutable_data(), 4, block.size());
    return block;
  });
  engine.def("plain", [](int64_t n) { return std::vector<uint8_t>(static_cast<size_t>(n), 5); });
}

ClientOptions SharingClient(milliseconds timeout = milliseconds(10000)) {
  ClientOptions co;
  co.shared_arena = SharedArena::Create(16 << 20);  // the client's own, for its arguments
  co.shared_memory = true;
  co.timeout = timeout;
  return co;
}

constexpr int64_t kSize = 8 << 20;

// An engine with DefineResults' functions and a 64 MiB arena of its own for results,
// bound on tcp loopback, or connected to a broker's backend `connect`.
struct ResultEngine {
  explicit ResultEngine(milliseconds wait = milliseconds(60000), const std::string& connect = "")
      : options([wait] {
          EngineOptions eo;
          eo.shared_arena = SharedArena::Create(64 << 20);
          eo.shared_result_wait = wait;
          return eo;
        }()),
        engine(options) {
    DefineResults(engine, options.shared_arena);
    if (connect.empty()) {
      engine.Bind("tcp://127.0.0.1:*");
    } else {
      engine.Connect(connect);
    }
    engine.Start();
  }
  EngineOptions options;
  Engine engine;
};

TEST(SharedResultTest, ANewResultTravelsInTheEnginesArenaAndIsReadInPlace) {
  ResultEngine results;
  EngineOptions& eo = results.options;
  Engine& engine = results.engine;
  EXPECT_EQ(engine.shared_arena(), eo.shared_arena);
  Client client(engine.last_endpoint(), SharingClient());
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); })) << "no hello from the engine";
  SharedArena& arena = *eo.shared_arena;

  // Allocated in the arena by the function: no byte copied, no frame.
  StatsSnapshot before = GlobalStats().Snapshot();
  Result r = client.apply("fill", kSize).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  StatsSnapshot after = GlobalStats().Snapshot();
  ASSERT_TRUE(r.value().InSharedMemory());
  Buffer got = r.value().AsBytes();
  EXPECT_EQ(got.size(), static_cast<size_t>(kSize));
  EXPECT_TRUE(AllBytesAre(got, 4));
  EXPECT_EQ(after.shared_bytes_copied, before.shared_bytes_copied);
  EXPECT_EQ(after.frames_sent_zero_copy, before.frames_sent_zero_copy);
  EXPECT_EQ(after.shared_refs_received, before.shared_refs_received + 1);
  EXPECT_TRUE(arena.Find(got));  // the engine's block itself
  EXPECT_EQ(arena.used(), static_cast<size_t>(kSize));
  EXPECT_EQ(arena.lent(), 0u);  // the caller holds it: the engine's loan ended
  got = Buffer();
  r = Result();
  EXPECT_EQ(arena.used(), 0u);  // the caller let go: the block went back

  // Ordinary memory: copied into the arena once.
  before = GlobalStats().Snapshot();
  r = client.apply("plain", kSize).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  ASSERT_TRUE(r.value().InSharedMemory());
  EXPECT_TRUE(AllBytesAre(r.value().TensorBytes(), 5));
  EXPECT_EQ(GlobalStats().Snapshot().shared_bytes_copied,
            before.shared_bytes_copied + static_cast<uint64_t>(kSize));
  EXPECT_EQ(arena.used(), static_cast<size_t>(kSize));
  r = Result();
  EXPECT_EQ(arena.used(), 0u);

  // Small results stay inline.
  r = client.apply("plain", 16).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_FALSE(r.value().InSharedMemory());
}

TEST(SharedResultTest, ACallerWithoutSharedMemoryGetsFrames) {
  ResultEngine results;
  EngineOptions& eo = results.options;
  Engine& engine = results.engine;
  ClientOptions co;
  co.shared_memory = false;
  Client client(engine.last_endpoint(), co);
  Result r = client.apply("plain", kSize).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_FALSE(r.value().InSharedMemory());
  EXPECT_TRUE(AllBytesAre(r.value().TensorBytes(), 5));
  EXPECT_EQ(eo.shared_arena->used(), 0u);
  EXPECT_EQ(eo.shared_arena->lent(), 0u);
}

TEST(SharedResultTest, AResultReadAfterTheEngineStoppedWaitingFailsSayingWhy) {
  ResultEngine results(milliseconds(50));
  EngineOptions& eo = results.options;
  Engine& engine = results.engine;
  Client client(engine.last_endpoint(), SharingClient());
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
  ResultFuture late = client.apply("plain", kSize);
  // The reply waits in the client's queue, unread; the engine lends its block 50 ms.
  ASSERT_TRUE(WaitUntil([&] { return eo.shared_arena->used() == static_cast<size_t>(kSize); }));
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(eo.shared_arena->lent(), 0u);  // expired (and the block returned)
  EXPECT_EQ(eo.shared_arena->used(), 0u);
  Result r = late.get();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(Why(r), HasSubstr("in no block of the arena that is in use"));
  // The next call, read at once, is fine.
  r = client.apply("plain", kSize).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  EXPECT_TRUE(AllBytesAre(r.value().TensorBytes(), 5));
}

TEST(SharedResultTest, AnEngineInAnotherProcessLendsItsBlockUntilTheCallerLetsGo) {
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  if (pid == 0) {
    // The engine's process: reports its arena's state when asked.
    ResultEngine results;
    EngineOptions& eo = results.options;
    Engine& engine = results.engine;
    std::string endpoint = engine.last_endpoint() + "\n";
    if (write(to_parent[1], endpoint.data(), endpoint.size()) !=
        static_cast<ssize_t>(endpoint.size())) {
      _exit(1);
    }
    for (char ask; read(to_child[0], &ask, 1) == 1 && ask != 'q';) {
      // 'h': until it holds one block (the caller's hold); 'd': until all is back.
      bool ok = WaitUntil([&] {
        return ask == 'h' ? eo.shared_arena->holds() == 1 && eo.shared_arena->lent() == 0
                          : eo.shared_arena->holds() == 0 && eo.shared_arena->used() == 0;
      });
      char answer = ok ? 'y' : 'n';
      if (write(to_parent[1], &answer, 1) != 1) _exit(1);
    }
    engine.Stop();
    _exit(0);
  }
  std::string endpoint;
  for (char ch; read(to_parent[0], &ch, 1) == 1 && ch != '\n';) endpoint += ch;
  ASSERT_FALSE(endpoint.empty());
  auto ask = [&](char question) {
    EXPECT_EQ(write(to_child[1], &question, 1), 1);
    char answer = 0;
    EXPECT_EQ(read(to_parent[0], &answer, 1), 1);
    return answer == 'y';
  };
  {
    Client client(endpoint, SharingClient());
    ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); }));
    Result r = client.apply("fill", kSize).get();
    ASSERT_TRUE(r.ok()) << Why(r);
    ASSERT_TRUE(r.value().InSharedMemory());
    EXPECT_TRUE(AllBytesAre(r.value().AsBytes(), 4));
    EXPECT_TRUE(ask('h')) << "the engine's arena does not show the caller's hold";
    r = Result();
    EXPECT_TRUE(ask('d')) << "the block did not go back when the caller let go";
  }
  EXPECT_EQ(write(to_child[1], "q", 1), 1);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(SharedResultTest, ThroughABrokerOnThisHostResultsTravelInPlace) {
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  broker.Start();
  ResultEngine results(milliseconds(60000), broker.backend_endpoint());
  EngineOptions& eo = results.options;
  Client client(broker.frontend_endpoint(), SharingClient(milliseconds(20000)));
  ASSERT_TRUE(WaitUntil([&] { return client.shares_memory(); })) << "no hello from the broker";
  // The engine learns where the broker runs from the broker's hello; until then its
  // results go as frames.
  ASSERT_TRUE(WaitUntil([&] {
    Result r = client.apply("plain", kSize).get();
    return r.ok() && r.value().InSharedMemory();
  })) << "results never came in shared memory through the broker";
  Result r = client.apply("fill", kSize).get();
  ASSERT_TRUE(r.ok()) << Why(r);
  ASSERT_TRUE(r.value().InSharedMemory());
  EXPECT_TRUE(AllBytesAre(r.value().AsBytes(), 4));
  EXPECT_EQ(broker.counters().materialized, 0u);
  r = Result();
  EXPECT_TRUE(WaitUntil([&] { return eo.shared_arena->used() == 0; }));
}

}  // namespace
}  // namespace zerocan
