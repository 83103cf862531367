// internal::Fifo: order, erasing from the middle, and a queue that never empties
// staying in order through its compactions.
#include "internal/fifo.h"

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace zerocan::internal {
namespace {

TEST(FifoTest, PopsInTheOrderPushedAndReleasesWhatItPopped) {
  Fifo<std::shared_ptr<int>> queue;
  auto first = std::make_shared<int>(1);
  queue.push_back(std::shared_ptr<int>(first));
  queue.push_back(std::make_shared<int>(2));
  ASSERT_EQ(queue.size(), 2u);
  EXPECT_EQ(*queue.front(), 1);
  EXPECT_EQ(first.use_count(), 2);
  // Popped in place (not moved out first), with an element still queued behind it: only
  // the reset of the popped slot can let go of it.
  queue.pop_front();
  EXPECT_EQ(first.use_count(), 1) << "the popped slot still holds the element";
  EXPECT_EQ(*queue.front(), 2);
  queue.pop_front();
  EXPECT_TRUE(queue.empty());
}

TEST(FifoTest, EraseRemovesOneElementAndKeepsTheOthersInOrder) {
  Fifo<int> queue;
  for (int i = 0; i < 5; ++i) queue.push_back(int{i});
  queue.pop_front();
  for (auto it = queue.begin(); it != queue.end(); ++it) {
    if (*it == 2) {
      queue.erase(it);
      break;
    }
  }
  std::vector<int> rest(queue.begin(), queue.end());
  EXPECT_EQ(rest, (std::vector<int>{1, 3, 4}));
}

TEST(FifoTest, AQueueThatNeverEmptiesStaysInOrderThroughCompactions) {
  Fifo<std::string> queue;
  int next_in = 0, next_out = 0;
  for (int i = 0; i < 10; ++i) queue.push_back(std::to_string(next_in++));
  for (int round = 0; round < 10000; ++round) {
    queue.push_back(std::to_string(next_in++));
    ASSERT_EQ(queue.front(), std::to_string(next_out++));
    queue.pop_front();
    ASSERT_EQ(queue.size(), 10u);
  }
  std::vector<std::string> rest(queue.begin(), queue.end());
  ASSERT_EQ(rest.size(), 10u);
  for (size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(rest[i], std::to_string(next_out + i));
}

TEST(FifoTest, ErasingTheLastLiveElementEmptiesItAndItFillsAgain) {
  Fifo<int> queue;
  for (int i = 0; i < 100; ++i) queue.push_back(int{i});
  for (int i = 0; i < 99; ++i) queue.pop_front();  // compacts on the way
  ASSERT_EQ(queue.size(), 1u);
  queue.erase(queue.begin());
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(queue.begin(), queue.end());
  queue.push_back(7);
  ASSERT_EQ(queue.size(), 1u);
  EXPECT_EQ(queue.front(), 7);
}

TEST(FifoTest, ABurstDrainedToEmptyLeavesAUsableQueue) {
  Fifo<int> queue;
  for (int i = 0; i < 5000; ++i) queue.push_back(int{i});
  for (int i = 0; i < 5000; ++i) {
    ASSERT_EQ(queue.front(), i);
    queue.pop_front();
  }
  EXPECT_TRUE(queue.empty());
  queue.push_back(1);
  queue.push_back(2);
  EXPECT_EQ(queue.front(), 1);
  EXPECT_EQ(queue.size(), 2u);
}

TEST(FifoTest, SwapExchangesContents) {
  Fifo<int> a, b;
  a.push_back(1);
  a.push_back(2);
  a.pop_front();
  b.swap(a);
  EXPECT_TRUE(a.empty());
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b.front(), 2);
}

}  // namespace
}  // namespace zerocan::internal
