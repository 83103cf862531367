// EnvelopeWriter: payload placement by policy (threshold n-1 / n), the envelope size
// targets of the issue, packing, header stamping and encode-side errors.
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_support.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using testing::DecodeOutgoing;
using testing::EncodeArg;
using testing::FixedPolicy;

class ThresholdTest : public ::testing::TestWithParam<size_t> {};

TEST_P(ThresholdTest, BytesBelowThresholdInlineAtThresholdFrame) {
  const size_t n = GetParam();
  for (size_t size : {n - 1, n, n + 1}) {
    std::vector<std::byte> bytes(size, std::byte{7});
    Outgoing out = EncodeArg(bytes, FixedPolicy(n));
    size_t expected_frames = size >= n ? 2 : 1;
    EXPECT_EQ(out.frame_count(), expected_frames) << "size " << size << " threshold " << n;
    Message m = DecodeOutgoing(std::move(out));
    EXPECT_EQ(m.arg(0).InFrame(), size >= n);
    EXPECT_EQ(m.frames().size(), expected_frames);
    EXPECT_EQ(m.arg(0).AsBytes().size(), size);
  }
}

TEST_P(ThresholdTest, ArraysBelowThresholdInlineAtThresholdFrame) {
  const size_t n = GetParam();
  // uint8 elements: the byte count is the element count and packing does not apply.
  for (size_t size : {n - 1, n}) {
    std::vector<uint8_t> values(size, 9);
    Outgoing out = EncodeArg(values, FixedPolicy(n));
    EXPECT_EQ(out.frame_count(), size >= n ? 2u : 1u) << size;
    if (size >= n) {
      EXPECT_EQ(out.payload_frames()[0].size(), size);
    }
  }
  // float64: the same rule on the byte count, n rounded to whole elements.
  size_t elements_at = (n + 7) / 8;  // smallest count whose bytes reach n
  for (size_t count : {elements_at - 1, elements_at}) {
    std::vector<double> values(count, 1.25);
    Outgoing out = EncodeArg(values, FixedPolicy(n));
    EXPECT_EQ(out.frame_count(), count * 8 >= n ? 2u : 1u) << count;
  }
}

INSTANTIATE_TEST_SUITE_P(Thresholds, ThresholdTest, ::testing::Values(2, 64, 1000, 1024, 4096, 65536));

TEST(WriterTest, ThresholdZeroSendsEveryNonEmptyPayloadAsFrame) {
  Outgoing one = EncodeArg(std::vector<std::byte>(1), FixedPolicy(0));
  EXPECT_EQ(one.frame_count(), 2u);
  // Empty payloads never become frames.
  Outgoing empty = EncodeArg(std::vector<std::byte>(), FixedPolicy(0));
  EXPECT_EQ(empty.frame_count(), 1u);
}

TEST(WriterTest, InlineAndZeroCopyCounters) {
  StatsSnapshot before = GlobalStats().Snapshot();
  Outgoing out = EncodeArg(std::vector<std::byte>(10), FixedPolicy(1024));
  EXPECT_EQ(GlobalStats().Snapshot().payloads_inlined, before.payloads_inlined + 1);
  Outgoing frame = EncodeArg(std::vector<std::byte>(2000), FixedPolicy(1024));
  EXPECT_EQ(GlobalStats().Snapshot().payloads_inlined, before.payloads_inlined + 1);
}

TEST(WriterTest, IntsZeroTo999EnvelopeAtMost2752Bytes) {
  std::vector<int64_t> ints(1000);
  std::iota(ints.begin(), ints.end(), 0);
  EnvelopeWriter w(FixedPolicy());
  w.StartApply("f", 1, 0).arg(0).Write(ints);
  Outgoing out = w.Finish();
  EXPECT_EQ(out.frame_count(), 1u);
  EXPECT_LE(out.envelope().size(), 2752u) << "pickle's figure from the audit";
  RecordProperty("ints_0_999_envelope_bytes", static_cast<int>(out.envelope().size()));
  Message m = DecodeOutgoing(std::move(out));
  EXPECT_EQ(m.arg(0).As<std::vector<int64_t>>(), ints);
  EXPECT_EQ(m.arg(0).dtype(), DType::kInt64);
}

TEST(WriterTest, IntsZeroTo999UnpackedStillSmallEnoughWhenInline) {
  // Without packing the 8000 bytes go to a frame at the default threshold; the envelope
  // itself stays tiny.
  std::vector<int64_t> ints(1000);
  std::iota(ints.begin(), ints.end(), 0);
  Outgoing out = EncodeArg(ints, FixedPolicy(4096, false));
  EXPECT_EQ(out.frame_count(), 2u);
  EXPECT_LE(out.envelope().size(), 2752u);
  Message m = DecodeOutgoing(std::move(out));
  EXPECT_EQ(m.arg(0).As<std::vector<int64_t>>(), ints);
}

TEST(WriterTest, ThousandSmallTensorsAtMostTwoFrames) {
  std::vector<Tensor> tensors;
  for (int i = 0; i < 1000; ++i) {
    tensors.push_back(Tensor::FromVector(std::vector<float>(256, static_cast<float>(i))));
  }
  ASSERT_EQ(tensors[0].nbytes(), 1024u);
  Outgoing out = EncodeArg(tensors, FixedPolicy());
  EXPECT_LE(out.frame_count(), 2u);
  Message m = DecodeOutgoing(std::move(out));
  ASSERT_EQ(m.arg(0).size(), 1000u);
  for (size_t i = 0; i < 1000; i += 111) {
    Tensor t = m.arg(0)[i].As<Tensor>();
    EXPECT_EQ(t.data_as<float>()[255], static_cast<float>(i));
  }
}

TEST(WriterTest, HeaderKeptAndClockStampedOnlyWhenZero) {
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetHeader(Header{11, 22, 33, 44});
    w.SetGoodbye();
    Message m = DecodeOutgoing(w.Finish());
    EXPECT_EQ(m.message_id(), 11u);
    EXPECT_EQ(m.session_id(), 22u);
    EXPECT_EQ(m.sequence(), 33u);
    EXPECT_EQ(GeneratedEnvelope(m).getSentAtNs(), 44u);
    EXPECT_EQ(GeneratedEnvelope(m).getVersion(), kProtocolVersion);
    EXPECT_EQ(m.body_kind(), BodyKind::kGoodbye);
  }
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetGoodbye();
    Message m = DecodeOutgoing(w.Finish());
    EXPECT_GT(GeneratedEnvelope(m).getSentAtNs(), uint64_t{1'600'000'000} * 1'000'000'000);
  }
}

// MapWriter::TextKey (what the map codecs use) writes the same words, in the same order,
// as key(i).Text(k): short keys around the word boundaries, embedded NULs, long keys and
// enough entries to grow the writer's buffer.
TEST(WriterTest, TextKeyIsByteIdenticalToKeyThenText) {
  std::vector<std::string> keys;
  for (size_t n = 0; n <= 17; ++n) keys.push_back(std::string(n, static_cast<char>('a' + n)));
  keys.push_back(std::string(64, 'x'));
  keys.push_back(std::string("nul\0inside", 10));
  keys.push_back(std::string(5000, 'y'));
  for (int i = 0; i < 20000; ++i) keys.push_back("k" + std::to_string(i));
  auto encode = [&](bool fused) {
    EnvelopeWriter w;
    w.SetHeader(Header{1, 2, 3, 4});
    MapWriter map = w.StartApply("f", 1, 0).arg(0).Map(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (fused) {
        map.TextKey(i, keys[i]);
      } else {
        map.key(i).Text(keys[i]);
      }
      map.value(i).Int(static_cast<int64_t>(i));
    }
    Outgoing out = w.Finish();
    const auto* p = reinterpret_cast<const char*>(out.envelope().data());
    return std::string(p, out.envelope().size());
  };
  std::string fused = encode(true), separate = encode(false);
  EXPECT_EQ(fused.size(), separate.size());
  EXPECT_TRUE(fused == separate);
  Message m = DecodeOutgoing([&] {
    EnvelopeWriter w;
    MapWriter map = w.StartApply("f", 1, 0).arg(0).Map(3);
    for (size_t i = 0; i < 3; ++i) {
      map.TextKey(i, keys[i + 16]);
      map.value(i).Int(static_cast<int64_t>(i));
    }
    return w.Finish();
  }());
  std::vector<std::string> read;
  for (auto [k, v] : m.arg(0).AsMap()) read.push_back(std::string(k.AsText()));
  EXPECT_EQ(read, (std::vector<std::string>{keys[16], keys[17], keys[18]}));
  EnvelopeWriter w;
  MapWriter one = w.StartApply("f", 1, 0).arg(0).Map(1);
  EXPECT_THROW(one.TextKey(1, "past the end"), EncodeError);
}

TEST(WriterTest, FinishTwiceThrows) {
  EnvelopeWriter w(FixedPolicy());
  w.SetGoodbye();
  (void)w.Finish();
  EXPECT_THROW((void)w.Finish(), EncodeError);
}

// Writers index into the envelope's words: an index past what was started must throw,
// not write over a neighbouring value.
TEST(WriterTest, IndexPastTheStartedCountThrows) {
  EnvelopeWriter w;
  ApplyWriter apply = w.StartApply("f", 2, 1);
  apply.arg(1).Int(7);
  EXPECT_THROW(apply.arg(2), EncodeError);
  EXPECT_THROW(apply.kwarg(1, "k"), EncodeError);
  ListWriter list = apply.arg(0).List(3);
  list[2].Int(1);
  EXPECT_THROW(list[3], EncodeError);
  MapWriter map = apply.kwarg(0, "m").Map(1);
  map.key(0).Text("a");
  map.value(0).Int(2);
  EXPECT_THROW(map.key(1), EncodeError);
  EXPECT_THROW(map.value(1), EncodeError);
  try {
    apply.arg(5);
    ADD_FAILURE() << "arg(5) of 2 did not throw";
  } catch (const EncodeError& e) {
    EXPECT_STREQ(e.what(), "argument index 5 out of range (size 2)");
  }
  for (int i = 0; i < 3; ++i) {
    if (i != 2) list[static_cast<size_t>(i)].Null();
  }
  Message m = testing::DecodeOutgoing(w.Finish());
  EXPECT_EQ(m.arg(1).AsInt(), 7);
  EXPECT_EQ(m.arg(0)[2].AsInt(), 1);
  EXPECT_EQ(m.kwarg(0).Find("a")->AsInt(), 2);
}

TEST(WriterTest, NestedWritersOnOneThread) {
  // The first writer takes the thread's scratch segment; a second, alive at the same
  // time, must work on its own allocation.
  EnvelopeWriter a(FixedPolicy());
  EnvelopeWriter b(FixedPolicy());
  a.StartApply("a", 1, 0).arg(0).Write(std::string(5000, 'a'));
  b.StartApply("b", 1, 0).arg(0).Write(std::string(100000, 'b'));
  Message mb = DecodeOutgoing(b.Finish());
  Message ma = DecodeOutgoing(a.Finish());
  EXPECT_EQ(ma.function(), "a");
  EXPECT_EQ(mb.function(), "b");
  EXPECT_EQ(ma.arg(0).AsText(), std::string(5000, 'a'));
  EXPECT_EQ(mb.arg(0).AsText(), std::string(100000, 'b'));
}

TEST(WriterTest, ScratchIsCleanForTheNextMessage) {
  // A big message followed by a small one: the small one must not carry leftovers.
  Outgoing first;
  {
    EnvelopeWriter w(FixedPolicy());
    w.SetHeader(Header{1, 2, 3, 4});
    w.StartApply("f", 1, 0).arg(0).Write(std::string(20000, 'z'));
    first = w.Finish();
  }
  auto make_small = [] {
    EnvelopeWriter w(FixedPolicy());
    w.SetHeader(Header{1, 2, 3, 4});
    w.StartApply("g", 1, 0).arg(0).Write(int64_t{5});
    return w.Finish();
  };
  Outgoing a = make_small();
  Outgoing b = make_small();
  EXPECT_EQ(testing::Bytes(a.envelope()), testing::Bytes(b.envelope()));
}

TEST(WriterTest, ArrayShapeMismatchIsEncodeError) {
  EnvelopeWriter w(FixedPolicy());
  std::vector<double> v(10);
  try {
    w.StartApply("f", 1, 0).arg(0).Array(DType::kFloat64, Shape{3, 4},
                                         Buffer::Borrow(v.data(), 80));
    FAIL();
  } catch (const EncodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("3x4 float64 needs 96 bytes"));
  }
  EXPECT_THROW(Tensor(DType::kFloat32, Shape{3}, Buffer::Allocate(8)), EncodeError);
  EXPECT_THROW(Tensor(DType::kFloat32, Shape{UINT64_MAX, 4}, Buffer::Allocate(8)), EncodeError);
}

TEST(WriterTest, KwargsAndTimeout) {
  EnvelopeWriter w(FixedPolicy());
  ApplyWriter a = w.StartApply("mod.fn", 2, 3, 1500);
  a.arg(0).Write(int64_t{1});
  a.arg(1).Write(std::string("two"));
  a.kwarg(0, "zeta").Write(3.0);
  a.kwarg(1, "alpha").Write(true);
  a.kwarg(2, "").Write(nullptr);
  Message m = DecodeOutgoing(w.Finish());
  EXPECT_EQ(m.function(), "mod.fn");
  EXPECT_EQ(m.timeout_ms(), 1500u);
  ASSERT_EQ(m.arg_count(), 2u);
  ASSERT_EQ(m.kwarg_count(), 3u);
  // Keyword order is the caller's, not sorted.
  EXPECT_EQ(m.kwarg_name(0), "zeta");
  EXPECT_EQ(m.kwarg_name(1), "alpha");
  EXPECT_EQ(m.kwarg_name(2), "");
  EXPECT_EQ(m.kwarg(0).AsDouble(), 3.0);
  EXPECT_TRUE(m.kwarg(1).AsBool());
  EXPECT_TRUE(m.kwarg(2).is_null());
  EXPECT_THROW((void)m.arg(2), std::out_of_range);
  EXPECT_THROW((void)m.kwarg(3), std::out_of_range);
  EXPECT_THROW((void)m.kwarg_name(3), std::out_of_range);
}

}  // namespace
}  // namespace zerocan
