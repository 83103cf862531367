#include <gtest/gtest.h>
#include "zerocan/zerocan.h"
TEST(Smoke, RoundTrip) {
  zerocan::EnvelopeWriter w;
  auto a = w.StartApply("f", 1, 0);
  a.arg(0).Write(int64_t{7});
  auto m = zerocan::Message::Decode(zerocan::LoopbackFrames(w.Finish()));
  EXPECT_EQ(m.arg(0).As<int64_t>(), 7);
}
