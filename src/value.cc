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

Kind Value::kind() const noexcept {
  // Message::Decode rejected unknown union members, so every case is covered.
  switch (reader_.which()) {
    case wire::Value::NULL_: return Kind::kNull;
    case wire::Value::BOOL: return Kind::kBool;
    case wire::Value::INT: return Kind::kInt;
    case wire::Value::UINT: return Kind::kUInt;
    case wire::Value::FLOAT: return Kind::kFloat;
    case wire::Value::TEXT: return Kind::kText;
    case wire::Value::BYTES: return Kind::kBytes;
    case wire::Value::LIST: return Kind::kList;
    case wire::Value::MAP: return Kind::kMap;
    case wire::Value::TENSOR: return Kind::kTensor;
    case wire::Value::EXTENSION: return Kind::kExtension;
  }
  return Kind::kNull;
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

bool Value::AsBool() const {
  if (kind() != Kind::kBool) Mismatch("bool");
  return reader_.getBool();
}

int64_t Value::AsInt() const {
  switch (kind()) {
    case Kind::kInt: return reader_.getInt();
    case Kind::kUInt:
      if (reader_.getUint() > static_cast<uint64_t>(INT64_MAX)) Mismatch("int64 (value too large)");
      return static_cast<int64_t>(reader_.getUint());
    default: Mismatch("int");
  }
}

uint64_t Value::AsUInt() const {
  switch (kind()) {
    case Kind::kUInt: return reader_.getUint();
    case Kind::kInt:
      if (reader_.getInt() < 0) Mismatch("uint (non-negative)");
      return static_cast<uint64_t>(reader_.getInt());
    default: Mismatch("uint");
  }
}

double Value::AsDouble() const {
  switch (kind()) {
    case Kind::kFloat: return reader_.getFloat();
    case Kind::kInt: return static_cast<double>(reader_.getInt());
    case Kind::kUInt: return static_cast<double>(reader_.getUint());
    default: Mismatch("float64");
  }
}

std::string_view Value::AsText() const {
  if (kind() != Kind::kText) Mismatch("text");
  auto t = reader_.getText();
  return std::string_view(t.begin(), t.size());
}

Buffer Value::ResolvePayload(internal::PayloadView payload) const {
  if (message_ == nullptr) throw Error("Value: no message behind this value");
  if (payload.isInline()) return message_->InlineBytes(payload.getInline());
  auto ref = payload.getFrame();
  return message_->FrameSlice(ref.getIndex(), ref.getOffset(), ref.getLength());
}

Buffer Value::AsBytes() const {
  if (kind() != Kind::kBytes) Mismatch("bytes");
  return ResolvePayload(reader_.getBytes());
}

size_t Value::size() const {
  switch (kind()) {
    case Kind::kList: return reader_.getList().size();
    case Kind::kMap: return reader_.getMap().size();
    default: Mismatch("list or map");
  }
}

Value Value::operator[](size_t i) const {
  if (kind() != Kind::kList) Mismatch("list");
  auto list = reader_.getList();
  if (i >= list.size()) {
    throw std::out_of_range(absl::StrCat("list index ", i, " out of range (size ", list.size(), ")"));
  }
  return Value(list[static_cast<unsigned>(i)], message_);
}

Value Value::key(size_t i) const {
  if (kind() != Kind::kMap) Mismatch("map");
  auto map = reader_.getMap();
  if (i >= map.size()) throw std::out_of_range(absl::StrCat("map index ", i, " out of range"));
  return Value(map[static_cast<unsigned>(i)].getKey(), message_);
}

Value Value::value(size_t i) const {
  if (kind() != Kind::kMap) Mismatch("map");
  auto map = reader_.getMap();
  if (i >= map.size()) throw std::out_of_range(absl::StrCat("map index ", i, " out of range"));
  return Value(map[static_cast<unsigned>(i)].getValue(), message_);
}

std::optional<Value> Value::Find(std::string_view key) const {
  if (kind() != Kind::kMap) Mismatch("map");
  auto map = reader_.getMap();
  for (size_t i = 0; i < map.size(); ++i) {
    auto k = map[i].getKey();
    if (k.which() == wire::Value::TEXT && k.getText().view() == key) {
      return Value(map[i].getValue(), message_);
    }
  }
  return std::nullopt;
}

DType Value::dtype() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return static_cast<DType>(reader_.getTensor().getDtype());
}

Shape Value::shape() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  Shape out;
  for (uint64_t d : reader_.getTensor().getShape()) out.push_back(d);
  return out;
}

Buffer Value::TensorBytes() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return ResolvePayload(reader_.getTensor().getData());
}

bool Value::InFrame() const {
  switch (kind()) {
    case Kind::kTensor: return reader_.getTensor().getData().isFrame();
    case Kind::kBytes: return reader_.getBytes().isFrame();
    default: return false;
  }
}

bool Value::TensorIsZeroCopy() const {
  if (kind() != Kind::kTensor) return false;
  auto t = reader_.getTensor();
  if (t.getPacking() != wire::Packing::NONE || t.getByteOrder() != wire::ByteOrder::LITTLE) {
    return false;
  }
  Buffer raw = ResolvePayload(t.getData());
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
  auto t = reader_.getTensor();
  DType dtype = static_cast<DType>(t.getDtype());
  Shape dims;
  for (uint64_t d : t.getShape()) dims.push_back(d);
  Order order = t.getOrder() == wire::Order::FORTRAN ? Order::kFortran : Order::kC;
  Buffer raw = ResolvePayload(t.getData());
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
  auto t = reader_.getExtension().getTypeName();
  return std::string_view(t.begin(), t.size());
}

Value Value::extension_state() const {
  if (kind() != Kind::kExtension) Mismatch("extension");
  return Value(reader_.getExtension().getState(), message_);
}

}  // namespace zerocan
