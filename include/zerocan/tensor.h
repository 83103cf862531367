// zerocan::Tensor (an owned, typed, contiguous n-d array) and TensorView<T> (a typed
// view that keeps its bytes alive).
//
// On the wire every tensor is contiguous in C or Fortran order; a strided source is
// made contiguous by its codec with exactly one copy. Received tensors are views into
// the received frames (no copy) whenever the bytes are aligned for the element type
// and in native byte order; otherwise Value::AsTensor() makes one counted copy.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "zerocan/buffer.h"
#include "zerocan/dtype.h"

namespace zerocan {

enum class Order : uint8_t { kC = 0, kFortran = 1 };
using Shape = absl::InlinedVector<uint64_t, 4>;

// Product of the dimensions, or nullopt on overflow of 64 bits.
std::optional<uint64_t> ElementCount(const Shape& shape) noexcept;

class Tensor {
 public:
  Tensor() = default;
  // Checks that data.size() == product(shape) * ItemSize(dtype); throws EncodeError
  // naming both sizes when not.
  Tensor(DType dtype, Shape shape, Buffer data, Order order = Order::kC);

  // A tensor owning a moved-in std::vector (no copy).
  template <class T>
  static Tensor FromVector(std::vector<T> values, Shape shape = {}) {
    if (shape.empty()) shape.push_back(values.size());
    return Tensor(DTypeOf<T>::value, std::move(shape), Buffer::Adopt(std::move(values)));
  }

  DType dtype() const noexcept { return dtype_; }
  const Shape& shape() const noexcept { return shape_; }
  Order order() const noexcept { return order_; }
  const Buffer& data() const noexcept { return data_; }
  uint64_t size() const noexcept;  // number of elements
  size_t nbytes() const noexcept { return data_.size(); }

  // Typed access. Throws DecodeError (kTypeMismatch) if T does not match dtype(), and
  // (kMalformed) if the data is not aligned for T.
  template <class T>
  const T* data_as() const {
    CheckAccess(DTypeOf<std::remove_cv_t<T>>::value, alignof(T));
    return reinterpret_cast<const T*>(data_.data());
  }
  template <class T>
  T* mutable_data_as() const {
    CheckAccess(DTypeOf<std::remove_cv_t<T>>::value, alignof(T));
    return reinterpret_cast<T*>(data_.mutable_data());
  }

  std::string Describe() const;  // "3x4 float64 (C order, 96 bytes)"

 private:
  void CheckAccess(DType want, size_t alignment) const;

  DType dtype_ = DType::kUInt8;
  Order order_ = Order::kC;
  Shape shape_;
  Buffer data_;
};

// A typed view of a Tensor's elements; keeps the bytes alive. T may be const.
template <class T>
class TensorView {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  TensorView() = default;
  explicit TensorView(const Tensor& tensor)
      : data_(tensor.mutable_data_as<value_type>()),
        size_(tensor.size()),
        shape_(tensor.shape()),
        order_(tensor.order()),
        keep_alive_(tensor.data()) {}

  T* data() const noexcept { return data_; }
  uint64_t size() const noexcept { return size_; }
  const Shape& shape() const noexcept { return shape_; }
  Order order() const noexcept { return order_; }
  T* begin() const noexcept { return data_; }
  T* end() const noexcept { return data_ + size_; }
  T& operator[](uint64_t i) const noexcept { return data_[i]; }
  // The Buffer that holds the bytes (shares ownership of the received frame).
  const Buffer& buffer() const noexcept { return keep_alive_; }
  Tensor tensor() const {
    return Tensor(DTypeOf<value_type>::value, shape_, keep_alive_, order_);
  }

 private:
  T* data_ = nullptr;
  uint64_t size_ = 0;
  Shape shape_;
  Order order_ = Order::kC;
  Buffer keep_alive_;
};

}  // namespace zerocan
