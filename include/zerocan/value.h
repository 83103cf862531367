// zerocan::Value: a read-only, dynamically typed view of one value in a received
// message, read in place through the generated Cap'n Proto readers.
//
// A Value borrows from its Message: it is valid while that Message (or a copy of it)
// lives, on any thread that does not race with the Message's destruction. Payload
// accessors (AsBytes, AsTensor) return Buffers that *share ownership* of the received
// frames, so those may outlive the Message. Accessors never throw for malformed data
// (Message::Decode has already walked and checked the whole envelope); they throw
// DecodeError(kTypeMismatch) when asked for a kind the value is not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "zerocan/buffer.h"
#include "zerocan/opaque.h"
#include "zerocan/registry.h"
#include "zerocan/tensor.h"

namespace zerocan {

class Registry;
class ValueList;
class ValueMap;
template <class T, class Enable>
struct Codec;
namespace internal {
class MessageState;
// Throws std::out_of_range: "<what> index <i> out of range (size <n>)".
[[noreturn]] void ThrowValueIndex(const char* what, size_t i, size_t n);
}

enum class Kind : uint8_t {
  kNull,
  kBool,
  kInt,
  kUInt,
  kFloat,
  kText,
  kBytes,
  kList,
  kMap,
  kTensor,
  kExtension,
};
std::string_view KindName(Kind kind) noexcept;

class Value {
 public:
  Value() = default;

  // The union tag as read (the decoder rejected members this reader does not know).
  Kind kind() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind() == Kind::kNull; }

  bool AsBool() const;
  // Signed or unsigned integer that fits in int64.
  int64_t AsInt() const;
  // Signed (non-negative) or unsigned integer.
  uint64_t AsUInt() const;
  // Any float or integer (integers convert as static_cast<double>).
  double AsDouble() const;
  // Borrowed from the message; valid while it lives.
  std::string_view AsText() const;
  // Shares ownership of the frame (or of the envelope, for an inline payload).
  Buffer AsBytes() const;

  // A list's elements or a map's entries, resolved once: the way to loop over them.
  // Throw kTypeMismatch for other kinds.
  ValueList AsList() const;
  ValueMap AsMap() const;
  // Lists and maps: element count. Throws kTypeMismatch for other kinds.
  size_t size() const;
  // One element or entry (checked; throws std::out_of_range). Each call resolves the
  // list again: prefer AsList()/AsMap() in loops.
  Value operator[](size_t i) const;
  Value key(size_t i) const;
  Value value(size_t i) const;
  // First map entry whose key is the text `key`.
  std::optional<Value> Find(std::string_view key) const;

  // Tensor metadata without touching the data.
  DType dtype() const;
  Shape shape() const;
  // The tensor as a view into the received frame (no copy) when its bytes are aligned
  // for the element type and in native order and not packed; otherwise one copy,
  // counted in Stats (payload_realigned / payload_converted).
  Tensor AsTensor() const;
  // The tensor's bytes exactly as on the wire (possibly packed, misaligned or
  // big-endian): for forwarding, not for typed access.
  Buffer TensorBytes() const;
  // True when AsTensor() would be a view without a copy.
  bool TensorIsZeroCopy() const;
  // True when the tensor's bytes travel in a separate frame (not inline).
  bool InFrame() const;
  // True when the bytes (tensor or bytes) lie in a peer's shared-memory arena: mapped
  // read-only, so a writable view of them is a copy (Codec<TensorView<T>> makes one).
  bool InSharedMemory() const;

  std::string_view extension_name() const;
  Value extension_state() const;

  // Converts through the built-in codecs or `registry`; see codec.h.
  template <class T>
  T As() const;
  template <class T>
  T As(const Registry& registry) const;

  // Short type description for error messages: "text", "list[3]", "tensor 3x4 float64".
  std::string Describe() const;
  // Throws DecodeError(kTypeMismatch): "expected <what>, got <Describe()>".
  [[noreturn]] void Mismatch(std::string_view expected) const;

  const internal::MessageState* message() const noexcept { return message_; }

 private:
  friend struct internal::WireAccess;
  friend class ValueList;
  friend class ValueMap;
  Value(const internal::OpaqueWire& reader, Kind kind, const internal::MessageState* message) noexcept
      : reader_(reader), message_(message), kind_(kind) {}

  internal::OpaqueWire reader_;  // wire::Value::Reader (src/wire/access.h)
  const internal::MessageState* message_ = nullptr;
  Kind kind_ = Kind::kNull;
};

namespace internal {
// Forward iterator over positions 0..size-1 of a ValueList or ValueMap; the container
// makes each element (Unchecked: the position is in range by construction).
template <class Container, class Element>
class IndexIterator {
 public:
  using iterator_category = std::forward_iterator_tag;
  using value_type = Element;
  using difference_type = std::ptrdiff_t;
  using pointer = void;
  using reference = Element;
  IndexIterator() = default;
  IndexIterator(const Container* container, size_t i) noexcept : container_(container), i_(i) {}
  Element operator*() const { return container_->Unchecked(i_); }
  IndexIterator& operator++() noexcept {
    ++i_;
    return *this;
  }
  IndexIterator operator++(int) noexcept {
    IndexIterator before = *this;
    ++i_;
    return before;
  }
  bool operator==(const IndexIterator& o) const noexcept { return i_ == o.i_; }
  bool operator!=(const IndexIterator& o) const noexcept { return i_ != o.i_; }

 private:
  const Container* container_ = nullptr;
  size_t i_ = 0;
};
}  // namespace internal

// The elements of a list value (Value::AsList), borrowed from the message like a Value.
class ValueList {
 public:
  ValueList() = default;
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Checked: throws std::out_of_range.
  Value operator[](size_t i) const {
    if (i >= size_) internal::ThrowValueIndex("list", i, size_);
    return Unchecked(i);
  }

  using iterator = internal::IndexIterator<ValueList, Value>;
  iterator begin() const noexcept { return iterator(this, 0); }
  iterator end() const noexcept { return iterator(this, size_); }

 private:
  friend struct internal::WireAccess;
  friend class internal::IndexIterator<ValueList, Value>;
  Value Unchecked(size_t i) const noexcept;
  ValueList(const internal::OpaqueWire& list, size_t size, const internal::MessageState* message) noexcept
      : list_(list), size_(size), message_(message) {}
  internal::OpaqueWire list_;  // capnp::List<wire::Value>::Reader
  size_t size_ = 0;
  const internal::MessageState* message_ = nullptr;
};

// The entries of a map value (Value::AsMap), in the sender's order.
class ValueMap {
 public:
  ValueMap() = default;
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Checked: throw std::out_of_range.
  Value key(size_t i) const {
    if (i >= size_) internal::ThrowValueIndex("map", i, size_);
    return UncheckedKey(i);
  }
  Value value(size_t i) const {
    if (i >= size_) internal::ThrowValueIndex("map", i, size_);
    return UncheckedValue(i);
  }
  // First entry whose key is the text `key`.
  std::optional<Value> Find(std::string_view key) const;

  // Range-for over the entries: `for (auto [k, v] : value.AsMap())`.
  struct Entry {
    Value key;
    Value value;
  };
  using iterator = internal::IndexIterator<ValueMap, Entry>;
  iterator begin() const noexcept { return iterator(this, 0); }
  iterator end() const noexcept { return iterator(this, size_); }

 private:
  friend struct internal::WireAccess;
  friend class internal::IndexIterator<ValueMap, Entry>;
  Entry Unchecked(size_t i) const noexcept { return Entry{UncheckedKey(i), UncheckedValue(i)}; }
  Value UncheckedKey(size_t i) const noexcept;
  Value UncheckedValue(size_t i) const noexcept;
  ValueMap(const internal::OpaqueWire& entries, size_t size, const internal::MessageState* message) noexcept
      : entries_(entries), size_(size), message_(message) {}
  internal::OpaqueWire entries_;  // capnp::List<wire::Entry>::Reader
  size_t size_ = 0;
  const internal::MessageState* message_ = nullptr;
};

inline Value Value::operator[](size_t i) const { return AsList()[i]; }
inline Value Value::key(size_t i) const { return AsMap().key(i); }
inline Value Value::value(size_t i) const { return AsMap().value(i); }
inline std::optional<Value> Value::Find(std::string_view key) const { return AsMap().Find(key); }

// ---- As<T> ----------------------------------------------------------------------------

template <class T>
T Value::As(const Registry& registry) const {
  return Codec<std::remove_cv_t<T>, void>::Decode(*this, registry);
}
template <class T>
T Value::As() const {
  using D = std::remove_cv_t<T>;
  // Scalars never consult a registry: skip finding the default one (an engine converts
  // every argument through here).
  if constexpr (std::is_arithmetic_v<D>) {
    return Codec<D, void>::Decode(*this);
  } else {
    return Codec<D, void>::Decode(*this, Registry::Default());
  }
}

}  // namespace zerocan

// The codecs As<T> dispatches on.
#include "zerocan/codec.h"
