// The per-thread block cache (src/internal/block_cache.h): how many free blocks a thread
// keeps follows what it allocates itself, so a thread that only frees others' blocks
// holds no more than the minimum.
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "internal/block_cache.h"

namespace zerocan::internal {
namespace {

// A size no other cached type of the library has, so the caches seen here are this
// test's alone.
struct Block {
  char bytes[328];
};
using Cache = BlockCache<sizeof(Block)>;
constexpr size_t kBurst = 1000;
static_assert(kBurst <= Cache::kCacheBytes / sizeof(Block) || Cache::kCacheBytes == 0);

std::vector<Block*> AllocateBurst() {
  std::vector<Block*> blocks;
  for (size_t i = 0; i < kBurst; ++i) blocks.push_back(CachingAllocator<Block>().allocate(1));
  return blocks;
}
void FreeAll(const std::vector<Block*>& blocks) {
  for (Block* b : blocks) CachingAllocator<Block>().deallocate(b, 1);
}

TEST(BlockCacheTest, AThreadKeepsWhatItsOwnBurstsNeed) {
  if (Cache::kCacheBytes == 0) GTEST_SKIP() << "block cache off (ASan)";
  size_t kept = 0;
  std::thread([&] {
    FreeAll(AllocateBurst());
    kept = Cache::Mine().count;
  }).join();
  EXPECT_EQ(kept, kBurst);
}

TEST(BlockCacheTest, AThreadThatOnlyFreesKeepsTheMinimum) {
  if (Cache::kCacheBytes == 0) GTEST_SKIP() << "block cache off (ASan)";
  std::vector<Block*> blocks;
  std::thread([&] { blocks = AllocateBurst(); }).join();
  size_t kept = 0;
  std::thread([&] {
    FreeAll(blocks);
    kept = Cache::Mine().count;
  }).join();
  EXPECT_EQ(kept, Cache::kMinCachedBlocks);
}

}  // namespace
}  // namespace zerocan::internal
