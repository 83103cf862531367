#include "zerocan/dtype.h"

#include <array>

namespace zerocan {

namespace {
struct DTypeInfo {
  std::string_view name;
  uint8_t size;
  uint8_t alignment;
  bool integer;
  bool is_signed;
};
constexpr std::array<DTypeInfo, kDTypeCount> kInfo = {{
    {"bool", 1, 1, false, false},
    {"int8", 1, 1, true, true},
    {"int16", 2, 2, true, true},
    {"int32", 4, 4, true, true},
    {"int64", 8, 8, true, true},
    {"uint8", 1, 1, true, false},
    {"uint16", 2, 2, true, false},
    {"uint32", 4, 4, true, false},
    {"uint64", 8, 8, true, false},
    {"float16", 2, 2, false, true},
    {"float32", 4, 4, false, true},
    {"float64", 8, 8, false, true},
    {"complex64", 8, 4, false, true},
    {"complex128", 16, 8, false, true},
}};
const DTypeInfo& Info(DType d) noexcept { return kInfo[static_cast<size_t>(d) % kDTypeCount]; }
}  // namespace

size_t ItemSize(DType d) noexcept { return Info(d).size; }
size_t ItemAlignment(DType d) noexcept { return Info(d).alignment; }
std::string_view DTypeName(DType d) noexcept {
  return static_cast<size_t>(d) < kDTypeCount ? Info(d).name : std::string_view("unknown");
}
bool IsInteger(DType d) noexcept { return Info(d).integer; }
bool IsSigned(DType d) noexcept { return Info(d).is_signed; }

std::optional<DType> DTypeFromName(std::string_view name) noexcept {
  for (size_t i = 0; i < kInfo.size(); ++i) {
    if (kInfo[i].name == name) return static_cast<DType>(i);
  }
  return std::nullopt;
}

}  // namespace zerocan
