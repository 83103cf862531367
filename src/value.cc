#include "zerocan/value.h"

#include <cstring>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "absl/strings/str_join.h"
#include "internal/message_state.h"
#include "zerocan/error.h"
#include "zerocan/stats.h"

namespace zerocan {

std::string_view KindName(Kind kind) noexcept {
  switch (kind) {
    case Kind::kNull: return "null";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kUInt: return "uint";
    case Kind::kFloat: return "float64";
    case Kind::kText: return "text";
    case Kind::kBytes: return "bytes";
    case Kind::kList: return "list";
    case Kind::kMap: return "map";
    case Kind::kTensor: return "tensor";
    case Kind::kExtension: return "extension";
  }
  return "unknown";
}


std::string Value::Describe() const {
  switch (kind()) {
    case Kind::kText: return absl::StrCat("text \"", internal::Sv(AsText().substr(0, 32)), "\"");
    case Kind::kInt: return absl::StrCat("int ", reader_.getInt());
    case Kind::kUInt: return absl::StrCat("uint ", reader_.getUint());
    case Kind::kBytes: return absl::StrCat("bytes[", AsBytes().size(), "]");
    case Kind::kList: return absl::StrCat("list[", size(), "]");
    case Kind::kMap: return absl::StrCat("map[", size(), "]");
    case Kind::kTensor:
      return absl::StrCat("tensor ", absl::StrJoin(shape(), "x"), " ", internal::Sv(DTypeName(dtype())));
    case Kind::kExtension: return absl::StrCat("extension ", internal::Sv(extension_name()));
    default: return std::string(KindName(kind()));
  }
}

void Value::Mismatch(std::string_view expected) const {
  throw DecodeError(DecodeError::Code::kTypeMismatch,
                    absl::StrCat("expected ", internal::Sv(expected), ", got ", Describe()));
}






namespace internal {
void ThrowValueIndex(const char* what, size_t i, size_t n) {
  throw std::out_of_range(absl::StrCat(what, " index ", i, " out of range (size ", n, ")"));
}
}  // namespace internal

std::optional<Value> ValueMap::Find(std::string_view key) const {
  for (size_t i = 0; i < map_.size(); ++i) {
    internal::ValueView k = map_[i].walkedKey();
    if (k.which() == wire::Value::TEXT && k.walkedText().view() == key) {
      return Value(map_[i].walkedValue(), message_);
    }
  }
  return std::nullopt;
}

Buffer Value::ResolvePayload(internal::PayloadView payload) const {
  if (message_ == nullptr) throw Error("Value: no message behind this value");
  if (payload.isInline()) return message_->InlineBytes(payload.walkedInline());
  auto ref = payload.walkedFrame();
  return message_->FrameSlice(ref.getIndex(), ref.getOffset(), ref.getLength());
}

Buffer Value::AsBytes() const {
  if (kind() != Kind::kBytes) Mismatch("bytes");
  return ResolvePayload(internal::PayloadView(reader_.walkedPointer()));
}


DType Value::dtype() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return static_cast<DType>(internal::TensorView(reader_.walkedPointer()).getDtype());
}

Shape Value::shape() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  Shape out;
  for (uint64_t d : internal::TensorView(reader_.walkedPointer()).walkedShape()) out.push_back(d);
  return out;
}

Buffer Value::TensorBytes() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return ResolvePayload(internal::TensorView(reader_.walkedPointer()).walkedData());
}

bool Value::InFrame() const {
  switch (kind()) {
    case Kind::kTensor: return internal::TensorView(reader_.walkedPointer()).getData().isFrame();
    case Kind::kBytes: return internal::PayloadView(reader_.walkedPointer()).isFrame();
    default: return false;
  }
}

bool Value::TensorIsZeroCopy() const {
  if (kind() != Kind::kTensor) return false;
  auto t = internal::TensorView(reader_.walkedPointer());
  if (t.getPacking() != wire::Packing::NONE || t.getByteOrder() != wire::ByteOrder::LITTLE) {
    return false;
  }
  Buffer raw = ResolvePayload(t.walkedData());
  return IsAligned(raw.data(), ItemAlignment(static_cast<DType>(t.getDtype())));
}

namespace {

template <class From, class To>
void Widen(const std::byte* src, size_t n, std::byte* dst) {
  if (IsAligned(src, alignof(From)) && IsAligned(dst, alignof(To))) {
    // The usual case (inline data is word-aligned in an aligned envelope): a plain
    // typed loop the compiler vectorises.
    const From* s = reinterpret_cast<const From*>(src);
    To* d = reinterpret_cast<To*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<To>(s[i]);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    From v;
    std::memcpy(&v, src + i * sizeof(From), sizeof(From));
    To w = static_cast<To>(v);
    std::memcpy(dst + i * sizeof(To), &w, sizeof(To));
  }
}

template <class To>
void Unpack(wire::Packing p, const std::byte* src, size_t n, std::byte* dst) {
  switch (p) {
    case wire::Packing::INT8: return Widen<int8_t, To>(src, n, dst);
    case wire::Packing::UINT8: return Widen<uint8_t, To>(src, n, dst);
    case wire::Packing::INT16: return Widen<int16_t, To>(src, n, dst);
    case wire::Packing::UINT16: return Widen<uint16_t, To>(src, n, dst);
    case wire::Packing::INT32: return Widen<int32_t, To>(src, n, dst);
    case wire::Packing::UINT32: return Widen<uint32_t, To>(src, n, dst);
    default: return;
  }
}

}  // namespace

Tensor Value::AsTensor() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  auto t = internal::TensorView(reader_.walkedPointer());
  DType dtype = static_cast<DType>(t.getDtype());
  Shape dims;
  for (uint64_t d : t.walkedShape()) dims.push_back(d);
  Order order = t.getOrder() == wire::Order::FORTRAN ? Order::kFortran : Order::kC;
  Buffer raw = ResolvePayload(t.walkedData());
  size_t item = ItemSize(dtype);

  if (t.getPacking() != wire::Packing::NONE) {
    // Validated: integer dtype, count * packed size == raw.size().
    size_t n = static_cast<size_t>(*ElementCount(dims));
    Buffer wide = Buffer::Allocate(n * item);
    switch (dtype) {
      case DType::kInt16: Unpack<int16_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kInt32: Unpack<int32_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kInt64: Unpack<int64_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt16: Unpack<uint16_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt32: Unpack<uint32_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt64: Unpack<uint64_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      default: break;
    }
    Bump(GlobalStats().payload_converted);
    return Tensor(dtype, std::move(dims), std::move(wide), order);
  }
  if (t.getByteOrder() == wire::ByteOrder::BIG) {
    Buffer swapped = Buffer::Allocate(raw.size());
    // Complex values swap each component.
    size_t unit = (dtype == DType::kComplex64 || dtype == DType::kComplex128) ? item / 2 : item;
    for (size_t i = 0; i + unit <= raw.size(); i += unit) {
      for (size_t b = 0; b < unit; ++b) swapped.mutable_data()[i + b] = raw.data()[i + unit - 1 - b];
    }
    Bump(GlobalStats().payload_converted);
    return Tensor(dtype, std::move(dims), std::move(swapped), order);
  }
  if (!IsAligned(raw.data(), ItemAlignment(dtype))) {
    Buffer aligned = Buffer::Allocate(raw.size());
    if (raw.size() != 0) std::memcpy(aligned.mutable_data(), raw.data(), raw.size());
    Bump(GlobalStats().payload_realigned);
    return Tensor(dtype, std::move(dims), std::move(aligned), order);
  }
  return Tensor(dtype, std::move(dims), std::move(raw), order);
}

std::string_view Value::extension_name() const {
  if (kind() != Kind::kExtension) Mismatch("extension");
  auto t = internal::ExtensionView(reader_.walkedPointer()).getTypeName();
  return std::string_view(t.begin(), t.size());
}

Value Value::extension_state() const {
  if (kind() != Kind::kExtension) Mismatch("extension");
  return Value(internal::ExtensionView(reader_.walkedPointer()).getState(), message_);
}

}  // namespace zerocan
