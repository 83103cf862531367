// zerocan::Buffer: ownership (adopt, borrow, slices sharing the keep-alive), aligned
// allocation and counted copies.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "zerocan/buffer.h"
#include "zerocan/stats.h"

namespace zerocan {
namespace {

TEST(BufferTest, AllocateIsAlignedAndOwned) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{1000}}) {
    Buffer b = Buffer::Allocate(size);
    EXPECT_EQ(b.size(), size);
    EXPECT_TRUE(IsAligned(b.data(), 64));
    EXPECT_FALSE(b.borrowed());
    if (size > 0) b.mutable_data()[size - 1] = std::byte{1};  // writable to the end (ASan)
  }
}

TEST(BufferTest, CopyOfCopiesAndCounts) {
  std::string text = "abcdef";
  uint64_t before = GlobalStats().Snapshot().buffer_copies;
  Buffer b = Buffer::CopyOf(text.data(), text.size());
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies, before + 1);
  EXPECT_NE(static_cast<const void*>(b.data()), static_cast<const void*>(text.data()));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), b.size()), text);
}

TEST(BufferTest, AdoptMovesWithoutCopy) {
  std::vector<double> v(100, 1.5);
  const double* address = v.data();
  uint64_t before = GlobalStats().Snapshot().buffer_copies;
  Buffer b = Buffer::Adopt(std::move(v));
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies, before);
  EXPECT_EQ(static_cast<const void*>(b.data()), static_cast<const void*>(address));
  EXPECT_EQ(b.size(), 800u);
  EXPECT_FALSE(b.borrowed());
  std::string s(100, 'x');  // beyond small-string storage
  const char* sp = s.data();
  Buffer bs = Buffer::Adopt(std::move(s));
  EXPECT_EQ(static_cast<const void*>(bs.data()), static_cast<const void*>(sp));
}

TEST(BufferTest, BorrowHasNoOwner) {
  int x = 5;
  Buffer b = Buffer::Borrow(&x, sizeof(x));
  EXPECT_TRUE(b.borrowed());
  EXPECT_EQ(b.keep_alive(), nullptr);
  EXPECT_EQ(static_cast<const void*>(b.data()), static_cast<const void*>(&x));
  EXPECT_TRUE(Buffer().empty());
  EXPECT_TRUE(Buffer().borrowed());
}

TEST(BufferTest, SlicesKeepTheParentAlive) {
  auto released = std::make_shared<int>(0);
  Buffer slice;
  {
    auto* storage = new std::vector<std::byte>(100, std::byte{7});
    std::shared_ptr<std::vector<std::byte>> owner(storage, [released](std::vector<std::byte>* p) {
      ++*released;
      delete p;
    });
    Buffer whole(storage->data(), storage->size(), owner);
    slice = whole.Slice(90, 10);
    EXPECT_EQ(slice.data(), whole.data() + 90);
    EXPECT_EQ(slice.keep_alive(), whole.keep_alive());
  }
  EXPECT_EQ(*released, 0);
  EXPECT_EQ(slice.data()[9], std::byte{7});
  slice = Buffer();
  EXPECT_EQ(*released, 1);
}

TEST(BufferTest, SliceBoundsAreCheckedWithoutOverflow) {
  Buffer b = Buffer::Allocate(10);
  EXPECT_NO_THROW(b.Slice(0, 10));
  EXPECT_NO_THROW(b.Slice(10, 0));
  EXPECT_THROW(b.Slice(0, 11), std::out_of_range);
  EXPECT_THROW(b.Slice(11, 0), std::out_of_range);
  EXPECT_THROW(b.Slice(5, SIZE_MAX), std::out_of_range);
  EXPECT_THROW(b.Slice(SIZE_MAX, 2), std::out_of_range);
}

TEST(BufferTest, IsAligned) {
  alignas(16) std::byte storage[32];
  EXPECT_TRUE(IsAligned(storage, 16));
  EXPECT_TRUE(IsAligned(storage, 8));
  EXPECT_FALSE(IsAligned(storage + 1, 2));
  EXPECT_TRUE(IsAligned(storage + 1, 1));
  EXPECT_FALSE(IsAligned(storage + 4, 8));
}

}  // namespace
}  // namespace zerocan
