// zerocan::Map: ordered results, the in-flight bound, progress, and the first failure
// ending the map with the item named.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/map.h"

namespace zerocan {
namespace {

class MapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_.def("add", [](int64_t a, int64_t b) { return a + b; }, {"a", "b"});
    engine_.def("checked", [this](int64_t i) {
      int now = ++running_;
      int seen = max_running_.load();
      while (now > seen && !max_running_.compare_exchange_weak(seen, now)) {
      }
      --running_;
      if (i == 5000) throw std::invalid_argument("item 5000 is not wanted");
      return i;
    }, {"i"});
    engine_.Bind("tcp://127.0.0.1:*");
    engine_.Start();
  }
  Engine engine_{EngineOptions{.threads = 4}};
  std::atomic<int> running_{0}, max_running_{0};
};

TEST_F(MapTest, TenThousandCallsInOrderWithProgress) {
  Client client(engine_.last_endpoint());
  std::vector<std::tuple<int64_t, int64_t>> items;
  for (int64_t i = 0; i < 10000; ++i) items.emplace_back(i, 1);
  size_t calls = 0, last = 0;
  std::vector<Result> results = Map(client, "add", items,
      {.max_in_flight = 256, .progress = [&](size_t done, size_t total) {
         EXPECT_EQ(total, 10000u);
         EXPECT_EQ(done, last + 1);
         last = done;
         ++calls;
       }});
  ASSERT_EQ(results.size(), 10000u);
  for (int64_t i = 0; i < 10000; ++i) ASSERT_EQ(results[i].as<int64_t>(), i + 1) << i;
  EXPECT_EQ(calls, 10000u);
  EXPECT_EQ(client.counters().sent, 10000u);
}

TEST_F(MapTest, FirstFailureNamesItsItemAndStopsSending) {
  Client client(engine_.last_endpoint());
  std::vector<int64_t> items(10000);
  for (int64_t i = 0; i < 10000; ++i) items[i] = i;
  try {
    Map(client, "checked", items, {.max_in_flight = 256});
    FAIL() << "item 5000 fails";
  } catch (const MapError& e) {
    EXPECT_EQ(e.index(), 5000u);
    EXPECT_NE(std::string(e.what()).find("item 5000 failed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not wanted"), std::string::npos) << e.what();
    EXPECT_THROW(std::rethrow_exception(e.cause()), RemoteError);
  }
  // Nothing sent after the failure was seen: at most the window beyond item 5000.
  EXPECT_LE(client.counters().sent, 5001u + 256u);
  EXPECT_GE(client.counters().sent, 5001u);
}

TEST_F(MapTest, ASingleArgumentPerItemAndAWindowOfOne) {
  Client client(engine_.last_endpoint());
  std::vector<int64_t> items{3, 1, 2};
  std::vector<Result> results = Map(client, "checked", items, {.max_in_flight = 0});
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].as<int64_t>(), 3);
  EXPECT_EQ(results[2].as<int64_t>(), 2);
  EXPECT_EQ(max_running_.load(), 1) << "a window of one runs one call at a time";
}

}  // namespace
}  // namespace zerocan
