// Element types of typed arrays and tensors, as on the wire (wire::DType numbering).
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

namespace zerocan {

enum class DType : uint8_t {
  kBool = 0,
  kInt8 = 1,
  kInt16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kUInt8 = 5,
  kUInt16 = 6,
  kUInt32 = 7,
  kUInt64 = 8,
  kFloat16 = 9,
  kFloat32 = 10,
  kFloat64 = 11,
  kComplex64 = 12,
  kComplex128 = 13,
};
inline constexpr int kDTypeCount = 14;

// IEEE half precision, carried as its bit pattern (C++17 has no half type).
struct Float16 {
  uint16_t bits;
};

// Bytes per element.
size_t ItemSize(DType dtype) noexcept;
// Required alignment of an element in memory (complex: that of its component).
size_t ItemAlignment(DType dtype) noexcept;
// numpy-style name: "bool", "int8", ..., "float64", "complex128".
std::string_view DTypeName(DType dtype) noexcept;
// Inverse of DTypeName.
std::optional<DType> DTypeFromName(std::string_view name) noexcept;
bool IsInteger(DType dtype) noexcept;
bool IsSigned(DType dtype) noexcept;

template <class T>
struct DTypeOf;
template <> struct DTypeOf<bool> { static constexpr DType value = DType::kBool; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <> struct DTypeOf<int16_t> { static constexpr DType value = DType::kInt16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kInt64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kUInt8; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::kUInt16; };
template <> struct DTypeOf<uint32_t> { static constexpr DType value = DType::kUInt32; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::kUInt64; };
template <> struct DTypeOf<Float16> { static constexpr DType value = DType::kFloat16; };
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kFloat64; };
template <> struct DTypeOf<std::complex<float>> { static constexpr DType value = DType::kComplex64; };
template <> struct DTypeOf<std::complex<double>> { static constexpr DType value = DType::kComplex128; };
// `long long` and `long` are distinct types on LP64; map whichever is not int64_t.
template <> struct DTypeOf<long long> {
  static constexpr DType value = sizeof(long long) == 8 ? DType::kInt64 : DType::kInt32;
};
template <> struct DTypeOf<unsigned long long> {
  static constexpr DType value = sizeof(long long) == 8 ? DType::kUInt64 : DType::kUInt32;
};

template <class T, class = void>
struct HasDType : std::false_type {};
template <class T>
struct HasDType<T, std::void_t<decltype(DTypeOf<std::remove_cv_t<T>>::value)>> : std::true_type {};

}  // namespace zerocan
