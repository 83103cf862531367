#include "zerocan/codec.h"

#include <complex>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"

namespace zerocan::internal {

void ThrowNoCodec(const std::type_info& type) {
  throw EncodeError(absl::StrCat("no codec for C++ type ", type.name(),
                                 ": register one with Registry::Register"));
}

void ThrowOutOfRange(const Value& value, std::string_view target) {
  throw DecodeError(DecodeError::Code::kTypeMismatch,
                    absl::StrCat("expected ", Sv(target), ", got ", value.Describe(),
                                 " (out of range)"));
}

const Registry& RegistryOf(const ValueWriter& writer) { return writer.message().registry(); }

namespace {

// Reads element i of a numeric tensor as To. Tensors handed here are aligned and in
// native order (Value::AsTensor guarantees it).
template <class To, class From>
void ConvertFrom(const std::byte* src, uint64_t n, To* out) {
  const From* p = reinterpret_cast<const From*>(src);
  for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<To>(p[i]);
}

template <class To>
bool ConvertTo(const Tensor& source, To* out) {
  const std::byte* src = source.data().data();
  uint64_t n = source.size();
  switch (source.dtype()) {
    case DType::kBool: ConvertFrom<To, uint8_t>(src, n, out); return true;
    case DType::kInt8: ConvertFrom<To, int8_t>(src, n, out); return true;
    case DType::kInt16: ConvertFrom<To, int16_t>(src, n, out); return true;
    case DType::kInt32: ConvertFrom<To, int32_t>(src, n, out); return true;
    case DType::kInt64: ConvertFrom<To, int64_t>(src, n, out); return true;
    case DType::kUInt8: ConvertFrom<To, uint8_t>(src, n, out); return true;
    case DType::kUInt16: ConvertFrom<To, uint16_t>(src, n, out); return true;
    case DType::kUInt32: ConvertFrom<To, uint32_t>(src, n, out); return true;
    case DType::kUInt64: ConvertFrom<To, uint64_t>(src, n, out); return true;
    case DType::kFloat32: ConvertFrom<To, float>(src, n, out); return true;
    case DType::kFloat64: ConvertFrom<To, double>(src, n, out); return true;
    default: return false;  // float16 and complex: no implicit conversion
  }
}

}  // namespace

void ConvertElements(const Tensor& source, DType target, void* out) {
  bool ok = false;
  // Integer targets accept only integer sources (a float tensor is not silently
  // truncated); float targets accept any real source.
  bool integer_target = IsInteger(target);
  bool integer_source = IsInteger(source.dtype()) || source.dtype() == DType::kBool;
  if (!integer_target || integer_source) {
    switch (target) {
      case DType::kInt8: ok = ConvertTo(source, static_cast<int8_t*>(out)); break;
      case DType::kInt16: ok = ConvertTo(source, static_cast<int16_t*>(out)); break;
      case DType::kInt32: ok = ConvertTo(source, static_cast<int32_t*>(out)); break;
      case DType::kInt64: ok = ConvertTo(source, static_cast<int64_t*>(out)); break;
      case DType::kUInt8: ok = ConvertTo(source, static_cast<uint8_t*>(out)); break;
      case DType::kUInt16: ok = ConvertTo(source, static_cast<uint16_t*>(out)); break;
      case DType::kUInt32: ok = ConvertTo(source, static_cast<uint32_t*>(out)); break;
      case DType::kUInt64: ok = ConvertTo(source, static_cast<uint64_t*>(out)); break;
      case DType::kFloat32: ok = ConvertTo(source, static_cast<float*>(out)); break;
      case DType::kFloat64: ok = ConvertTo(source, static_cast<double*>(out)); break;
      default: break;
    }
  }
  if (!ok) {
    throw DecodeError(DecodeError::Code::kTypeMismatch,
                      absl::StrCat("expected array of ", internal::Sv(DTypeName(target)), ", got tensor ",
                                   source.Describe()));
  }
}

}  // namespace zerocan::internal
