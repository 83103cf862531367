// zerocan::Value: the dynamic view over a received message (kinds, typed access,
// indexing, maps, tensors incl. packed and big-endian ones, Describe, forwarding).
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_support.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::DecodeOutgoing;
using testing::FixedPolicy;

// An apply with one argument of every kind.
Message EveryKind() {
  EnvelopeWriter w(FixedPolicy(1024));
  ApplyWriter a = w.StartApply("every", 11, 0);
  a.arg(0).Null();
  a.arg(1).Bool(true);
  a.arg(2).Int(-7);
  a.arg(3).UInt(UINT64_MAX);
  a.arg(4).Float(2.5);
  a.arg(5).Text("hi");
  a.arg(6).Bytes(Buffer::Adopt(std::vector<std::byte>(3, std::byte{1})));
  ListWriter list = a.arg(7).List(2);
  list[0].Int(1);
  list[1].Text("two");
  MapWriter map = a.arg(8).Map(2);
  map.key(0).Text("a");
  map.value(0).Int(1);
  map.key(1).Int(5);  // keys may be any value on the wire
  map.value(1).Text("five");
  a.arg(9).Write(Tensor::FromVector(std::vector<float>{1, 2, 3, 4, 5, 6}, Shape{2, 3}));
  a.arg(10).Extension("x.Y").Write(std::string("state"));
  return DecodeOutgoing(w.Finish());
}

TEST(ValueTest, KindsAndAccessors) {
  Message m = EveryKind();
  std::vector<Kind> kinds;
  for (size_t i = 0; i < m.arg_count(); ++i) kinds.push_back(m.arg(i).kind());
  EXPECT_THAT(kinds, ElementsAre(Kind::kNull, Kind::kBool, Kind::kInt, Kind::kUInt, Kind::kFloat,
                                 Kind::kText, Kind::kBytes, Kind::kList, Kind::kMap, Kind::kTensor,
                                 Kind::kExtension));
  EXPECT_TRUE(m.arg(0).is_null());
  EXPECT_TRUE(m.arg(1).AsBool());
  EXPECT_EQ(m.arg(2).AsInt(), -7);
  EXPECT_EQ(m.arg(2).AsDouble(), -7.0);
  EXPECT_EQ(m.arg(3).AsUInt(), UINT64_MAX);
  EXPECT_EQ(m.arg(4).AsDouble(), 2.5);
  EXPECT_EQ(m.arg(5).AsText(), "hi");
  EXPECT_EQ(m.arg(6).AsBytes().size(), 3u);
  EXPECT_EQ(m.arg(7).size(), 2u);
  EXPECT_EQ(m.arg(7)[1].AsText(), "two");
  EXPECT_EQ(m.arg(8).size(), 2u);
  EXPECT_EQ(m.arg(8).key(1).AsInt(), 5);
  EXPECT_EQ(m.arg(8).value(1).AsText(), "five");
  EXPECT_EQ(m.arg(8).Find("a")->AsInt(), 1);
  EXPECT_FALSE(m.arg(8).Find("five").has_value());
  EXPECT_EQ(m.arg(9).dtype(), DType::kFloat32);
  EXPECT_THAT(m.arg(9).shape(), ElementsAre(2, 3));
  EXPECT_FALSE(m.arg(9).InFrame());
  EXPECT_EQ(m.arg(10).extension_name(), "x.Y");
  EXPECT_EQ(m.arg(10).extension_state().AsText(), "state");
}

// AsList/AsMap resolve the list once; they agree with the per-index accessors, check
// their indices and refuse other kinds.
TEST(ValueTest, ListAndMapViews) {
  Message m = EveryKind();
  ValueList list = m.arg(7).AsList();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_FALSE(list.empty());
  std::vector<Kind> kinds;
  for (Value v : list) kinds.push_back(v.kind());
  EXPECT_THAT(kinds, ElementsAre(Kind::kInt, Kind::kText));
  EXPECT_EQ(list[1].AsText(), "two");
  EXPECT_EQ(m.arg(7)[1].AsText(), "two");
  try {
    list[2];
    ADD_FAILURE() << "no exception";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "list index 2 out of range (size 2)");
  }

  ValueMap map = m.arg(8).AsMap();
  ASSERT_EQ(map.size(), 2u);
  EXPECT_EQ(map.key(0).AsText(), "a");
  EXPECT_EQ(map.value(0).AsInt(), 1);
  EXPECT_EQ(map.key(1).AsInt(), 5);
  EXPECT_EQ(map.value(1).AsText(), "five");
  std::vector<std::string> seen;
  for (auto [k, v] : map) seen.push_back(k.Describe() + "=" + v.Describe());
  EXPECT_THAT(seen, ElementsAre("text \"a\"=int 1", "int 5=text \"five\""));
  EXPECT_EQ(map.Find("a")->AsInt(), 1);
  EXPECT_FALSE(map.Find("five").has_value());  // values are not keys
  EXPECT_FALSE(map.Find("5").has_value());     // an int key is not the text "5"
  EXPECT_THROW(map.key(2), std::out_of_range);
  EXPECT_THROW(map.value(7), std::out_of_range);
  EXPECT_THROW(m.arg(8).key(2), std::out_of_range);

  for (size_t i : {size_t{0}, size_t{5}, size_t{9}}) {
    try {
      m.arg(i).AsList();
      ADD_FAILURE() << "no exception for arg " << i;
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), DecodeError::Code::kTypeMismatch);
      EXPECT_THAT(e.what(), HasSubstr("expected list, got"));
    }
    EXPECT_THROW(m.arg(i).AsMap(), DecodeError);
  }
  EXPECT_THROW(m.arg(7).AsMap(), DecodeError);
  EXPECT_THROW(m.arg(8).AsList(), DecodeError);

  EnvelopeWriter w;
  ApplyWriter a = w.StartApply("empty", 2, 0);
  a.arg(0).List(0);
  a.arg(1).Map(0);
  Message empty = DecodeOutgoing(w.Finish());
  EXPECT_TRUE(empty.arg(0).AsList().empty());
  EXPECT_EQ(empty.arg(0).AsList().begin(), empty.arg(0).AsList().end());
  EXPECT_TRUE(empty.arg(1).AsMap().empty());
  EXPECT_FALSE(empty.arg(1).AsMap().Find("a").has_value());
}

TEST(ValueTest, Describe) {
  Message m = EveryKind();
  EXPECT_EQ(m.arg(0).Describe(), "null");
  EXPECT_EQ(m.arg(2).Describe(), "int -7");
  EXPECT_EQ(m.arg(5).Describe(), "text \"hi\"");
  EXPECT_EQ(m.arg(6).Describe(), "bytes[3]");
  EXPECT_EQ(m.arg(7).Describe(), "list[2]");
  EXPECT_EQ(m.arg(8).Describe(), "map[2]");
  EXPECT_EQ(m.arg(9).Describe(), "tensor 2x3 float32");
  EXPECT_EQ(m.arg(10).Describe(), "extension x.Y");
  for (Kind k : {Kind::kNull, Kind::kBool, Kind::kInt, Kind::kUInt, Kind::kFloat, Kind::kText,
                 Kind::kBytes, Kind::kList, Kind::kMap, Kind::kTensor, Kind::kExtension}) {
    EXPECT_NE(KindName(k), "unknown");
  }
}

TEST(ValueTest, MismatchesAreTypeErrors) {
  Message m = EveryKind();
  auto expect_mismatch = [](auto&& fn, const std::string& expected) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected " << expected;
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), DecodeError::Code::kTypeMismatch);
      EXPECT_THAT(e.what(), HasSubstr(expected));
    }
  };
  expect_mismatch([&] { (void)m.arg(0).AsBool(); }, "expected bool, got null");
  expect_mismatch([&] { (void)m.arg(2).AsUInt(); }, "non-negative");
  expect_mismatch([&] { (void)m.arg(3).AsInt(); }, "too large");
  expect_mismatch([&] { (void)m.arg(5).AsDouble(); }, "expected float64");
  expect_mismatch([&] { (void)m.arg(5).size(); }, "list or map");
  expect_mismatch([&] { (void)m.arg(8)[0]; }, "expected list, got map[2]");
  expect_mismatch([&] { (void)m.arg(7).key(0); }, "expected map");
  expect_mismatch([&] { (void)m.arg(7).Find("a"); }, "expected map");
  expect_mismatch([&] { (void)m.arg(7).AsTensor(); }, "expected tensor");
  expect_mismatch([&] { (void)m.arg(7).dtype(); }, "expected tensor");
  expect_mismatch([&] { (void)m.arg(9).extension_name(); }, "expected extension");
  expect_mismatch([&] { (void)m.arg(9).AsBytes(); }, "expected bytes");
  EXPECT_THROW((void)m.arg(7)[2], std::out_of_range);
  EXPECT_THROW((void)m.arg(8).key(2), std::out_of_range);
  EXPECT_THROW((void)m.arg(8).value(2), std::out_of_range);
  EXPECT_FALSE(m.arg(7).TensorIsZeroCopy());
}

TEST(ValueTest, PackedIntegersWidenWithOneCountedCopy) {
  std::vector<int64_t> small = {0, 1, 2, 250};
  Message m = DecodeOutgoing(testing::EncodeArg(small));
  Value v = m.arg(0);
  EXPECT_EQ(v.dtype(), DType::kInt64);
  EXPECT_EQ(v.TensorBytes().size(), 4u) << "packed to uint8 on the wire";
  EXPECT_FALSE(v.TensorIsZeroCopy());
  uint64_t before = GlobalStats().Snapshot().payload_converted;
  Tensor t = v.AsTensor();
  EXPECT_EQ(GlobalStats().Snapshot().payload_converted, before + 1);
  EXPECT_EQ(t.dtype(), DType::kInt64);
  EXPECT_EQ(t.nbytes(), 32u);
  EXPECT_EQ(t.data_as<int64_t>()[3], 250);
  // Unpacked when packing is off.
  Message plain = DecodeOutgoing(testing::EncodeArg(small, FixedPolicy(4096, false)));
  EXPECT_EQ(plain.arg(0).TensorBytes().size(), 32u);
  EXPECT_TRUE(plain.arg(0).TensorIsZeroCopy());
}

TEST(ValueTest, BigEndianTensorsAreSwapped) {
  // A big-endian sender (byteOrder = big), built with the raw builder.
  std::vector<std::byte> be = {std::byte{0x01}, std::byte{0x02}, std::byte{0x03},
                               std::byte{0x04}, std::byte{0x00}, std::byte{0x00},
                               std::byte{0x00}, std::byte{0x05}};
  EnvelopeWriter w(FixedPolicy());
  w.StartApply("f", 1, 0).arg(0).Array(DType::kUInt32, Shape{2}, Buffer::Borrow(be.data(), 8));
  GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().setPacking(wire::Packing::NONE);
  GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().setByteOrder(wire::ByteOrder::BIG);
  Message m = DecodeOutgoing(w.Finish());
  EXPECT_FALSE(m.arg(0).TensorIsZeroCopy());
  Tensor t = m.arg(0).AsTensor();
  EXPECT_EQ(t.data_as<uint32_t>()[0], 0x01020304u);
  EXPECT_EQ(t.data_as<uint32_t>()[1], 5u);
}

TEST(ValueTest, ForwardingEveryKindWithCopy) {
  Message m = EveryKind();
  EnvelopeWriter w(FixedPolicy(1024));
  ApplyWriter a = w.StartApply("every", m.arg_count(), 0);
  for (size_t i = 0; i < m.arg_count(); ++i) a.arg(i).Copy(m.arg(i));
  Message copy = DecodeOutgoing(w.Finish());
  for (size_t i = 0; i < m.arg_count(); ++i) {
    EXPECT_EQ(copy.arg(i).kind(), m.arg(i).kind());
    EXPECT_EQ(copy.arg(i).Describe(), m.arg(i).Describe());
  }
  EXPECT_EQ(testing::Bytes(copy.arg(9).AsTensor().data()), testing::Bytes(m.arg(9).AsTensor().data()));
  EXPECT_EQ(copy.arg(8).value(1).AsText(), "five");
}

TEST(ValueTest, CopyOfPackedTensorKeepsItPacked) {
  std::vector<int32_t> small = {1, 2, 3};
  Message m = DecodeOutgoing(testing::EncodeArg(small));
  EnvelopeWriter w(FixedPolicy());
  w.StartApply("f", 1, 0).arg(0).Copy(m.arg(0));
  Message copy = DecodeOutgoing(w.Finish());
  EXPECT_EQ(copy.arg(0).TensorBytes().size(), m.arg(0).TensorBytes().size());
  EXPECT_EQ(copy.arg(0).As<std::vector<int32_t>>(), small);
}

TEST(ValueTest, DefaultValueHasNoMessage) {
  Value v;
  EXPECT_EQ(v.message(), nullptr);
}

}  // namespace
}  // namespace zerocan
