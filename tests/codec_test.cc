// Round trips of every built-in codec (codec.h), inline and in frames, and of nesting.
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/container/flat_hash_map.h"
#include "test_support.h"
#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::DecodeOutgoing;
using testing::EncodeArg;
using testing::FixedPolicy;
using testing::RoundTrip;

TEST(CodecTest, Bool) {
  EXPECT_TRUE(RoundTrip(true));
  EXPECT_FALSE(RoundTrip(false));
}

template <class T>
class IntegerCodecTest : public ::testing::Test {};
using IntegerTypes = ::testing::Types<int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t,
                                      uint32_t, uint64_t, long long, unsigned long long>;
TYPED_TEST_SUITE(IntegerCodecTest, IntegerTypes);

TYPED_TEST(IntegerCodecTest, ExtremesRoundTrip) {
  using T = TypeParam;
  for (T v : {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), T{0}, T{1}}) {
    EXPECT_EQ(RoundTrip(v), v);
  }
}

TEST(CodecTest, SignedAndUnsignedKinds) {
  Message m = DecodeOutgoing(EncodeArg(int64_t{-5}));
  EXPECT_EQ(m.arg(0).kind(), Kind::kInt);
  Message u = DecodeOutgoing(EncodeArg(uint64_t{5}));
  EXPECT_EQ(u.arg(0).kind(), Kind::kUInt);
  // An integer decoded into a narrower type that cannot hold it is a type mismatch,
  // never a silent truncation.
  Message big = DecodeOutgoing(EncodeArg(int64_t{300}));
  try {
    (void)big.arg(0).As<int8_t>();
    FAIL() << "expected DecodeError";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kTypeMismatch);
    EXPECT_THAT(e.what(), HasSubstr("int8"));
    EXPECT_THAT(e.what(), HasSubstr("out of range"));
  }
  Message neg = DecodeOutgoing(EncodeArg(int64_t{-1}));
  EXPECT_THROW((void)neg.arg(0).As<uint32_t>(), DecodeError);
  Message huge = DecodeOutgoing(EncodeArg(std::numeric_limits<uint64_t>::max()));
  EXPECT_THROW((void)huge.arg(0).As<int64_t>(), DecodeError);
}

TEST(CodecTest, Floats) {
  EXPECT_EQ(RoundTrip(1.5f), 1.5f);
  EXPECT_EQ(RoundTrip(-0.1), -0.1);
  EXPECT_EQ(RoundTrip(std::numeric_limits<double>::max()), std::numeric_limits<double>::max());
  EXPECT_EQ(RoundTrip(std::numeric_limits<double>::denorm_min()),
            std::numeric_limits<double>::denorm_min());
  EXPECT_TRUE(std::isnan(RoundTrip(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_EQ(RoundTrip(-std::numeric_limits<double>::infinity()),
            -std::numeric_limits<double>::infinity());
  // Integers read as doubles.
  Message m = DecodeOutgoing(EncodeArg(int64_t{7}));
  EXPECT_EQ(m.arg(0).As<double>(), 7.0);
}

TEST(CodecTest, Null) {
  Message m = DecodeOutgoing(EncodeArg(nullptr));
  EXPECT_TRUE(m.arg(0).is_null());
  EXPECT_EQ(m.arg(0).As<std::nullptr_t>(), nullptr);
}

TEST(CodecTest, Text) {
  EXPECT_EQ(RoundTrip(std::string("héllo")), "héllo");
  EXPECT_EQ(RoundTrip(std::string()), "");
  std::string with_nul("a\0b", 3);
  EXPECT_EQ(RoundTrip(with_nul), with_nul);
  std::string long_text(100000, 'x');  // text is always in the envelope, whatever its size
  EXPECT_EQ(RoundTrip(long_text), long_text);

  Message m = DecodeOutgoing(EncodeArg(std::string_view("view")));
  EXPECT_EQ(m.arg(0).As<std::string_view>(), "view");
  Message c = DecodeOutgoing(EncodeArg("literal"));
  EXPECT_EQ(c.arg(0).As<std::string>(), "literal");
  EXPECT_EQ(c.arg(0).kind(), Kind::kText);
}

TEST(CodecTest, BytesInlineAndInFrame) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, size_t{10000}}) {
    std::vector<std::byte> bytes(n);
    for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<std::byte>(i * 7);
    Outgoing out = EncodeArg(bytes, FixedPolicy(1024));
    EXPECT_EQ(out.frame_count(), n >= 1024 ? 2u : 1u) << n;
    Message m = DecodeOutgoing(std::move(out));
    EXPECT_EQ(m.arg(0).kind(), Kind::kBytes);
    EXPECT_EQ(m.arg(0).InFrame(), n >= 1024);
    EXPECT_EQ(m.arg(0).As<std::vector<std::byte>>(), bytes);
    EXPECT_EQ(testing::Bytes(m.arg(0).As<Buffer>()), bytes);
  }
  // Rvalue vectors are adopted: the frame is the vector's own storage.
  std::vector<std::byte> owned(5000, std::byte{3});
  const std::byte* address = owned.data();
  Outgoing out = EncodeArg(std::move(owned), FixedPolicy(1024));
  ASSERT_EQ(out.payload_frames().size(), 1u);
  EXPECT_EQ(out.payload_frames()[0].data(), address);
  EXPECT_FALSE(out.payload_frames()[0].borrowed());
  Message m = DecodeOutgoing(std::move(out));
  EXPECT_EQ(m.arg(0).AsBytes().data(), address);
}

// A plain lvalue is copied once into a frame the message owns: clearing or freeing the
// vector right after the call cannot reach the bytes being sent.
TEST(CodecTest, LvalueArrayIsCopiedIntoAnOwnedFrame) {
  std::vector<double> values(1000, 2.5);  // 8000 bytes: a frame at threshold 1024
  uint64_t copies = GlobalStats().Snapshot().buffer_copies;
  Outgoing out = EncodeArg(values, FixedPolicy(1024));
  ASSERT_EQ(out.payload_frames().size(), 1u);
  EXPECT_FALSE(out.payload_frames()[0].borrowed());
  EXPECT_NE(out.payload_frames()[0].data(), reinterpret_cast<const std::byte*>(values.data()));
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies, copies + 1);
  values.assign(values.size(), -1.0);
  values.clear();
  values.shrink_to_fit();
  Message m = DecodeOutgoing(std::move(out));
  auto view = m.arg(0).As<TensorView<const double>>();
  ASSERT_EQ(view.size(), 1000u);
  EXPECT_EQ(view[999], 2.5);
}

TEST(CodecTest, LvalueSpanAndBytesAreCopied) {
  std::vector<int32_t> ints(4096, 7);
  Outgoing a = EncodeArg(std::span<const int32_t>(ints), FixedPolicy(1024));
  ASSERT_EQ(a.payload_frames().size(), 1u);
  EXPECT_NE(a.payload_frames()[0].data(), reinterpret_cast<const std::byte*>(ints.data()));
  std::vector<std::byte> bytes(4096, std::byte{3});
  Outgoing b = EncodeArg(bytes, FixedPolicy(1024));
  ASSERT_EQ(b.payload_frames().size(), 1u);
  EXPECT_FALSE(b.payload_frames()[0].borrowed());
  EXPECT_NE(b.payload_frames()[0].data(), bytes.data());
}

// zerocan::Borrow lends without a copy: the frame is the caller's own bytes.
TEST(CodecTest, BorrowLendsWithoutACopy) {
  std::vector<double> values(1000, 2.5);
  uint64_t copies = GlobalStats().Snapshot().buffer_copies;
  Outgoing out = EncodeArg(Borrow(values), FixedPolicy(1024));
  ASSERT_EQ(out.payload_frames().size(), 1u);
  EXPECT_TRUE(out.payload_frames()[0].borrowed());
  EXPECT_EQ(out.payload_frames()[0].data(), reinterpret_cast<const std::byte*>(values.data()));
  EXPECT_EQ(GlobalStats().Snapshot().buffer_copies, copies);
  std::vector<std::byte> bytes(4096, std::byte{3});
  Outgoing b = EncodeArg(Borrow(bytes), FixedPolicy(1024));
  ASSERT_EQ(b.payload_frames().size(), 1u);
  EXPECT_EQ(b.payload_frames()[0].data(), bytes.data());
  // Below the threshold a lent array is copied inline like any other.
  std::vector<double> small(4, 1.0);
  EXPECT_EQ(EncodeArg(Borrow(small), FixedPolicy(1024)).payload_frames().size(), 0u);
}

// ---- typed arrays -------------------------------------------------------------------

template <class T>
std::vector<T> Sample(size_t n) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, std::complex<float>> || std::is_same_v<T, std::complex<double>>) {
      v[i] = T(static_cast<typename T::value_type>(i), -static_cast<typename T::value_type>(i));
    } else if constexpr (std::is_same_v<T, Float16>) {
      v[i] = Float16{static_cast<uint16_t>(0x3c00 + i)};
    } else if constexpr (std::is_signed_v<T> && std::is_integral_v<T>) {
      // Alternating signs and the type's extremes, so packing has to pick a wide form.
      v[i] = (i % 2 == 0) ? static_cast<T>(i % 100) : static_cast<T>(-static_cast<T>(i % 100));
      if (i == 3) v[i] = std::numeric_limits<T>::min();
      if (i == 4) v[i] = std::numeric_limits<T>::max();
    } else if constexpr (std::is_integral_v<T>) {
      v[i] = static_cast<T>(i * 3);
      if (i == 4) v[i] = std::numeric_limits<T>::max();
    } else {
      v[i] = static_cast<T>(i) / 3;
    }
  }
  return v;
}

template <class T>
bool SameElements(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  return a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
class ArrayCodecTest : public ::testing::Test {};
using ArrayTypes = ::testing::Types<int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                                    uint64_t, Float16, float, double, std::complex<float>,
                                    std::complex<double>>;
TYPED_TEST_SUITE(ArrayCodecTest, ArrayTypes);

TYPED_TEST(ArrayCodecTest, VectorInlineAndInFrame) {
  using T = TypeParam;
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{300}, size_t{5000}}) {
    std::vector<T> v = Sample<T>(n);
    Outgoing out = EncodeArg(v, FixedPolicy(1024));
    bool in_frame = n * sizeof(T) >= 1024;
    if (!in_frame) {
      EXPECT_EQ(out.frame_count(), 1u);
    }
    Message m = DecodeOutgoing(std::move(out));
    Value arg = m.arg(0);
    ASSERT_EQ(arg.kind(), Kind::kTensor);
    EXPECT_EQ(arg.dtype(), DTypeOf<T>::value);
    EXPECT_THAT(arg.shape(), ElementsAre(n));
    EXPECT_TRUE(SameElements(arg.As<std::vector<T>>(), v)) << n;
  }
}

TYPED_TEST(ArrayCodecTest, SpanEncodesAsArray) {
  using T = TypeParam;
  std::vector<T> v = Sample<T>(600);
  Message m = DecodeOutgoing(EncodeArg(std::span<const T>(v), FixedPolicy(1024)));
  EXPECT_EQ(m.arg(0).dtype(), DTypeOf<T>::value);
  EXPECT_TRUE(SameElements(m.arg(0).As<std::vector<T>>(), v));
  Message mut = DecodeOutgoing(EncodeArg(std::span<T>(v), FixedPolicy(1 << 20)));
  EXPECT_TRUE(SameElements(mut.arg(0).As<std::vector<T>>(), v));
}

TYPED_TEST(ArrayCodecTest, TensorEveryShape) {
  using T = TypeParam;
  const std::vector<Shape> shapes = {Shape{}, Shape{0}, Shape{5}, Shape{2, 3}, Shape{2, 0, 3},
                                     Shape{2, 3, 4}, Shape{1, 1, 1, 1, 7}, Shape{32, 32}};
  for (const Shape& shape : shapes) {
    for (Order order : {Order::kC, Order::kFortran}) {
      uint64_t n = *ElementCount(shape);
      // Built directly: FromVector would turn an empty shape into a 1-d one.
      Tensor t(DTypeOf<T>::value, shape, Buffer::Adopt(Sample<T>(n)), order);
      Message m = DecodeOutgoing(EncodeArg(t, FixedPolicy(1024)));
      Tensor back = m.arg(0).As<Tensor>();
      EXPECT_EQ(back.dtype(), DTypeOf<T>::value);
      EXPECT_EQ(back.shape(), shape);
      EXPECT_EQ(back.order(), order);
      EXPECT_EQ(back.size(), n);
      ASSERT_EQ(back.nbytes(), t.nbytes());
      EXPECT_EQ(testing::Bytes(back.data()), testing::Bytes(t.data()));
    }
  }
}

TEST(CodecTest, BoolArrays) {
  std::vector<bool> bits = {true, false, true, true, false};
  EXPECT_EQ(RoundTrip(bits), bits);
  std::vector<bool> many(5000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = (i % 3) == 0;
  EXPECT_EQ(RoundTrip(many, FixedPolicy(1024)), many);
  Message m = DecodeOutgoing(EncodeArg(bits));
  EXPECT_EQ(m.arg(0).dtype(), DType::kBool);
  Tensor t = Tensor::FromVector(std::vector<uint8_t>{1, 0, 1}, Shape{3});
  Tensor as_bool(DType::kBool, t.shape(), t.data());
  Message mt = DecodeOutgoing(EncodeArg(as_bool));
  EXPECT_EQ(mt.arg(0).As<std::vector<bool>>(), (std::vector<bool>{true, false, true}));
}

TEST(CodecTest, TensorViews) {
  Tensor t = Tensor::FromVector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3});
  TensorView<const double> view(t);
  Message m = DecodeOutgoing(EncodeArg(view));
  auto back = m.arg(0).As<TensorView<const double>>();
  EXPECT_THAT(back.shape(), ElementsAre(2, 3));
  EXPECT_EQ(std::vector<double>(back.begin(), back.end()), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  // The receiver owns what it received: a mutable view writes into the message.
  auto writable = m.arg(0).As<TensorView<double>>();
  writable[0] = 42;
  EXPECT_EQ(m.arg(0).As<TensorView<const double>>()[0], 42);
  EXPECT_THROW((void)m.arg(0).As<TensorView<float>>(), DecodeError);
}

TEST(CodecTest, ArrayConversions) {
  // Arrays convert between numeric dtypes on decode (explicitly requested by the type).
  Message m = DecodeOutgoing(EncodeArg(std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(m.arg(0).As<std::vector<double>>(), (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(m.arg(0).As<std::vector<int64_t>>(), (std::vector<int64_t>{1, -2, 3}));
  // A float array is not silently truncated into integers.
  Message f = DecodeOutgoing(EncodeArg(std::vector<double>{1.5}));
  EXPECT_THROW((void)f.arg(0).As<std::vector<int32_t>>(), DecodeError);
  // A list of numbers also reads as an array.
  Message l = DecodeOutgoing(EncodeArg(std::vector<std::optional<int>>{1, 2}));
  EXPECT_EQ(l.arg(0).kind(), Kind::kList);
  EXPECT_EQ(l.arg(0).As<std::vector<int64_t>>(), (std::vector<int64_t>{1, 2}));
}

TEST(CodecTest, PackedIntegersRoundTrip) {
  // Small ranges are packed inline; every packing width must widen back exactly.
  std::vector<std::vector<int64_t>> cases = {
      {0, 255, 7},             {-128, 127},           {0, 65535},
      {-32768, 32767},         {0, 4294967295LL},     {-2147483648LL, 2147483647LL},
      {0, 4294967296LL},       {std::numeric_limits<int64_t>::min()}};
  for (const auto& c : cases) {
    EXPECT_EQ(RoundTrip(c), c);
    EXPECT_EQ(RoundTrip(c, FixedPolicy(4096, false)), c);
  }
  std::vector<uint64_t> u = {0, 1, std::numeric_limits<uint64_t>::max()};
  EXPECT_EQ(RoundTrip(u), u);
  std::vector<uint32_t> u32 = {1, 2, 3};
  EXPECT_EQ(RoundTrip(u32), u32);
  std::vector<int16_t> i16 = {-1, 1};
  EXPECT_EQ(RoundTrip(i16), i16);
}

// ---- containers ---------------------------------------------------------------------

TEST(CodecTest, ListsOfStrings) {
  std::vector<std::string> v = {"a", "", "ccc"};
  EXPECT_EQ(RoundTrip(v), v);
  Message m = DecodeOutgoing(EncodeArg(v));
  ASSERT_EQ(m.arg(0).kind(), Kind::kList);
  EXPECT_EQ(m.arg(0).size(), 3u);
  EXPECT_EQ(m.arg(0)[2].AsText(), "ccc");
  EXPECT_EQ(RoundTrip(std::vector<std::string>{}), std::vector<std::string>{});
}

TEST(CodecTest, NestedVectors) {
  std::vector<std::vector<int32_t>> v = {{1, 2}, {}, {3}};
  EXPECT_EQ(RoundTrip(v), v);
  std::vector<std::vector<std::string>> s = {{"x"}, {"y", "z"}};
  EXPECT_EQ(RoundTrip(s), s);
  std::vector<std::vector<std::vector<double>>> d = {{{1.5}, {2.5, 3.5}}, {}};
  EXPECT_EQ(RoundTrip(d), d);
}

TEST(CodecTest, StdMapKeepsOrder) {
  std::map<std::string, int64_t> m = {{"b", 2}, {"a", 1}, {"c", 3}};
  EXPECT_EQ(RoundTrip(m), m);
  Message msg = DecodeOutgoing(EncodeArg(m));
  Value v = msg.arg(0);
  ASSERT_EQ(v.kind(), Kind::kMap);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v.key(0).AsText(), "a");
  EXPECT_EQ(v.key(1).AsText(), "b");
  EXPECT_EQ(v.key(2).AsText(), "c");
  EXPECT_EQ(v.Find("c")->AsInt(), 3);
  EXPECT_FALSE(v.Find("z").has_value());
}

TEST(CodecTest, HashMapsKeepIterationOrder) {
  std::unordered_map<std::string, std::string> u;
  absl::flat_hash_map<std::string, double> f;
  for (int i = 0; i < 20; ++i) {
    u["k" + std::to_string(i)] = std::to_string(i);
    f["k" + std::to_string(i)] = i * 0.5;
  }
  EXPECT_EQ(RoundTrip(u), u);
  EXPECT_EQ(RoundTrip(f), f);
  // The wire order is the container's iteration order.
  Message msg = DecodeOutgoing(EncodeArg(u));
  size_t i = 0;
  for (const auto& [k, v] : u) {
    EXPECT_EQ(msg.arg(0).key(i).AsText(), k);
    EXPECT_EQ(msg.arg(0).value(i).AsText(), v);
    ++i;
  }
}

TEST(CodecTest, MapsOfContainers) {
  std::map<std::string, std::vector<std::string>> m = {{"x", {"1", "2"}}, {"y", {}}};
  EXPECT_EQ(RoundTrip(m), m);
  std::map<std::string, std::map<std::string, std::vector<double>>> deep = {
      {"outer", {{"inner", {1.0, 2.0}}}}};
  EXPECT_EQ(RoundTrip(deep), deep);
}

TEST(CodecTest, Optional) {
  EXPECT_EQ(RoundTrip(std::optional<int>(5)), std::optional<int>(5));
  EXPECT_EQ(RoundTrip(std::optional<int>()), std::nullopt);
  EXPECT_EQ(RoundTrip(std::optional<std::string>("s")), std::optional<std::string>("s"));
  std::vector<std::optional<double>> v = {1.0, std::nullopt, 3.0};
  EXPECT_EQ(RoundTrip(v), v);
}

TEST(CodecTest, PairAndTuple) {
  std::pair<int, std::string> p{1, "one"};
  EXPECT_EQ(RoundTrip(p), p);
  std::tuple<bool, int64_t, double, std::string, std::vector<int32_t>> t{true, -3, 2.5, "t",
                                                                          {1, 2, 3}};
  EXPECT_EQ(RoundTrip(t), t);
  EXPECT_EQ(RoundTrip(std::tuple<>()), std::tuple<>());
  // Arity is checked.
  Message m = DecodeOutgoing(EncodeArg(p));
  EXPECT_THROW((void)(m.arg(0).As<std::tuple<int, std::string, int>>()), DecodeError);
}

TEST(CodecTest, MixedNesting) {
  using Record = std::tuple<std::string, std::optional<int64_t>, std::vector<double>>;
  std::map<std::string, std::vector<Record>> data = {
      {"r", {Record{"a", 1, {1.0}}, Record{"b", std::nullopt, {}}}},
      {"s", {}},
  };
  EXPECT_EQ(RoundTrip(data), data);
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.emplace_back("t", Tensor::FromVector(std::vector<float>(3000, 1.0f)));
  Message m = DecodeOutgoing(EncodeArg(tensors, FixedPolicy(1024)));
  Tensor back = m.arg(0)[0][1].As<Tensor>();
  EXPECT_EQ(back.size(), 3000u);
  EXPECT_TRUE(m.arg(0)[0][1].InFrame());
}

TEST(CodecTest, RvalueContainersAdoptTheirArrays) {
  // A temporary container dies at the end of the Write statement, before any send; its
  // arrays must be adopted (owned by the message), never borrowed from it.
  auto big = [] { return std::vector<int16_t>(3000, 7); };
  std::vector<Outgoing> outs;
  outs.push_back(EncodeArg(std::map<std::string, std::vector<int16_t>>{{"a", big()}},
                           FixedPolicy(1024)));
  outs.push_back(EncodeArg(std::unordered_map<std::string, std::vector<int16_t>>{{"a", big()}},
                           FixedPolicy(1024)));
  outs.push_back(EncodeArg(absl::flat_hash_map<std::string, std::vector<int16_t>>{{"a", big()}},
                           FixedPolicy(1024)));
  outs.push_back(EncodeArg(std::optional<std::vector<int16_t>>(big()), FixedPolicy(1024)));
  outs.push_back(EncodeArg(std::make_pair(std::string("p"), big()), FixedPolicy(1024)));
  outs.push_back(EncodeArg(std::make_tuple(1, big()), FixedPolicy(1024)));
  outs.push_back(EncodeArg(std::vector<std::vector<int16_t>>{big()}, FixedPolicy(1024)));
  for (size_t i = 0; i < outs.size(); ++i) {
    ASSERT_EQ(outs[i].payload_frames().size(), 1u) << i;
    EXPECT_FALSE(outs[i].payload_frames()[0].borrowed()) << "case " << i;
    Message m = DecodeOutgoing(std::move(outs[i]));
    testing::WalkMessage(m);  // reads the payload (ASan: no use after free)
  }
}

// Nested one-element lists `levels` deep around an int.
void WriteNested(ValueWriter w, int levels) {
  for (int i = 0; i < levels; ++i) w = w.List(1)[0];
  w.Int(1);
}

TEST(CodecTest, DeepNestingWithinDefaultLimit) {
  // Every message the writer accepts must decode with the default DecodeLimits.
  int deepest_encoded = -1;
  for (int levels : {10, 50, 62, 63, 64, 65, 80}) {
    EnvelopeWriter w(FixedPolicy());
    try {
      WriteNested(w.StartApply("f", 1, 0).arg(0), levels);
    } catch (const EncodeError& e) {
      EXPECT_THAT(e.what(), HasSubstr("nested deeper"));
      continue;
    }
    deepest_encoded = levels;
    Message m = DecodeOutgoing(w.Finish());
    Value v = m.arg(0);
    for (int i = 0; i < levels; ++i) v = v[0];
    EXPECT_EQ(v.AsInt(), 1) << levels;
  }
  EXPECT_GE(deepest_encoded, 62);
  EXPECT_LT(deepest_encoded, 80);
}

// What the decoder accepts, Copy re-encodes (found by the value fuzz target): an empty
// list or map at the deepest level the decoder allows has no elements below it.
TEST(CodecTest, CopyReencodesTheDeepestEmptyContainers) {
  // The argument is level 1, so `steps` one-element lists put a value at the last level.
  const int steps = static_cast<int>(DecodeLimits{}.max_depth) - 1;
  for (bool map : {false, true}) {
    EnvelopeWriter w(FixedPolicy());
    ValueWriter v = w.StartApply("f", 1, 0).arg(0);
    for (int i = 0; i < steps; ++i) v = v.List(1)[0];
    if (map) {
      v.Map(0);
    } else {
      v.List(0);
    }
    Message received = DecodeOutgoing(w.Finish());
    EnvelopeWriter again(FixedPolicy());
    again.StartApply("f", 1, 0).arg(0).Copy(received.arg(0));
    Message copied = DecodeOutgoing(again.Finish());
    Value c = copied.arg(0);
    for (int i = 0; i < steps; ++i) c = c[0];
    EXPECT_EQ(c.kind(), map ? Kind::kMap : Kind::kList);
    EXPECT_EQ(c.size(), 0u);
    // One element there would sit past the limit: refused when written.
    EnvelopeWriter deeper(FixedPolicy());
    ValueWriter d = deeper.StartApply("f", 1, 0).arg(0);
    for (int i = 0; i < steps; ++i) d = d.List(1)[0];
    EXPECT_THROW(map ? (void)d.Map(1) : (void)d.List(1), EncodeError);
  }
}

TEST(CodecTest, NoCodecIsEncodeError) {
  struct Unknown {
    int x;
  };
  EnvelopeWriter w(FixedPolicy());
  try {
    w.StartApply("f", 1, 0).arg(0).Write(Unknown{1});
    FAIL() << "expected EncodeError";
  } catch (const EncodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no codec"));
  }
}

TEST(CodecTest, ValueReencodes) {
  std::map<std::string, std::vector<int32_t>> src = {{"a", {1, 2}}};
  Message first = DecodeOutgoing(EncodeArg(src));
  Message second = DecodeOutgoing(EncodeArg(first.arg(0)));
  EXPECT_EQ((second.arg(0).As<std::map<std::string, std::vector<int32_t>>>()), src);
  EXPECT_EQ(second.arg(0).As<Value>().kind(), Kind::kMap);
}

TEST(CodecTest, KindMismatchNamesBothSides) {
  Message m = DecodeOutgoing(EncodeArg(std::string("hello")));
  try {
    (void)m.arg(0).As<int64_t>();
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kTypeMismatch);
    EXPECT_THAT(e.what(), HasSubstr("expected int"));
    EXPECT_THAT(e.what(), HasSubstr("text \"hello\""));
  }
  EXPECT_THROW((void)m.arg(0).As<std::vector<std::string>>(), DecodeError);
  EXPECT_THROW((void)(m.arg(0).As<std::map<std::string, int>>()), DecodeError);
  EXPECT_THROW((void)m.arg(0).As<Tensor>(), DecodeError);
  EXPECT_THROW((void)m.arg(0).As<bool>(), DecodeError);
}

}  // namespace
}  // namespace zerocan

namespace zerocan {
namespace {
// A tuple of references (std::tie) is an rvalue whose members are lvalues: they are
// copied, never moved from.
TEST(CodecTest, TupleOfReferencesLeavesTheCallersValuesAlone) {
  std::vector<double> a(5000, 1.0);
  std::string b = "kept";
  Outgoing out = EncodeArg(std::tie(a, b), FixedPolicy(1024));
  EXPECT_EQ(a.size(), 5000u);
  EXPECT_EQ(b, "kept");
  Message m = DecodeOutgoing(std::move(out));
  EXPECT_EQ(m.arg(0)[0].As<std::vector<double>>().size(), 5000u);
}

TEST(CodecTest, ConstRvalueIsCopied) {
  const std::vector<double> v(5000, 2.0);
  Outgoing out = EncodeArg(std::move(v), FixedPolicy(1024));
  ASSERT_EQ(out.payload_frames().size(), 1u);
  EXPECT_EQ(v.size(), 5000u);
}

TEST(CodecTest, TextFromAViewThatIsNotNulTerminated) {
  std::string whole = "function-name-and-more";
  std::string_view part(whole.data(), 8);
  Message m = DecodeOutgoing(EncodeArg(part));
  EXPECT_EQ(m.arg(0).AsText(), "function");
}
}  // namespace
}  // namespace zerocan
