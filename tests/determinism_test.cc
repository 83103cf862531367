// An envelope's bytes depend only on what was written: not on the thread's history, not on
// whether another writer is alive on the thread. Python re-encodes byte for byte only
// because of this (clients/python/zerocan/wire.py uses the same first-segment size).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

std::string EnvelopeBytes(size_t inline_items) {
  Policy policy;
  policy.inline_threshold = 4096;
  EnvelopeWriter writer(policy);
  writer.SetHeader(Header{1, 2, 3, 4});
  auto apply = writer.StartApply("echo", 1, 0);
  auto list = apply.arg(0).List(inline_items);
  for (size_t i = 0; i < inline_items; ++i) {
    list[i].Write(std::vector<double>(100, static_cast<double>(i)));  // 800 B: inline
  }
  Outgoing out = writer.Finish();
  return std::string(reinterpret_cast<const char*>(out.envelope().data()), out.envelope().size());
}

TEST(DeterminismTest, LargeEnvelopeSameBytesTwiceOnOneThread) {
  // ~80 KB: more than the 64 KiB first segment, so the envelope has several segments.
  std::string first = EnvelopeBytes(100);
  std::string second = EnvelopeBytes(100);
  ASSERT_GT(first.size(), size_t{64} << 10);
  EXPECT_EQ(first, second);
  // A much larger message in between must not change the next one either.
  EnvelopeBytes(2000);
  EXPECT_EQ(EnvelopeBytes(100), first);
}

TEST(DeterminismTest, SecondWriterOnThreadWritesSameBytes) {
  std::string alone = EnvelopeBytes(100);
  Policy policy;
  EnvelopeWriter outer(policy);  // holds the thread's scratch segment
  EXPECT_EQ(EnvelopeBytes(100), alone);
  EXPECT_EQ(EnvelopeBytes(3), EnvelopeBytes(3));
}

}  // namespace
}  // namespace zerocan
