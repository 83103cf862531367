#include "zerocan/tensor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "absl/strings/str_join.h"
#include "zerocan/error.h"

namespace zerocan {

std::optional<uint64_t> ElementCount(const Shape& shape) noexcept {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / d) return std::nullopt;
    n *= d;
  }
  return n;
}

Tensor::Tensor(DType dtype, Shape shape, Buffer data, Order order)
    : dtype_(dtype), order_(order), shape_(std::move(shape)), data_(std::move(data)) {
  auto count = ElementCount(shape_);
  if (!count || *count > UINT64_MAX / ItemSize(dtype_) ||
      *count * ItemSize(dtype_) != data_.size()) {
    throw EncodeError(absl::StrCat("Tensor: shape ", absl::StrJoin(shape_, "x"), " ",
                                   internal::Sv(DTypeName(dtype_)), " needs ",
                                   count ? absl::StrCat(*count * ItemSize(dtype_)) : "overflowing",
                                   " bytes, buffer has ", data_.size()));
  }
}

uint64_t Tensor::size() const noexcept { return data_.size() / ItemSize(dtype_); }

std::string Tensor::Describe() const {
  return absl::StrCat(absl::StrJoin(shape_, "x"), " ", internal::Sv(DTypeName(dtype_)),
                      order_ == Order::kC ? " (C order, " : " (Fortran order, ", data_.size(),
                      " bytes)");
}

void Tensor::CheckAccess(DType want, size_t alignment) const {
  if (want != dtype_) {
    throw DecodeError(DecodeError::Code::kTypeMismatch,
                      absl::StrCat("expected ", internal::Sv(DTypeName(want)), " tensor, got ", Describe()));
  }
  if (!IsAligned(data_.data(), alignment)) {
    throw DecodeError(DecodeError::Code::kMalformed,
                      absl::StrCat("tensor data at ", reinterpret_cast<uintptr_t>(data_.data()),
                                   " is not aligned to ", alignment, " bytes"));
  }
}

}  // namespace zerocan
