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

#include "zerocan/buffer.h"
#include "zerocan/internal/wire_view.h"
#include "zerocan/tensor.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {

class Registry;
class ValueList;
class ValueMap;
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
  Value(internal::ValueView reader, const internal::MessageState* message) noexcept
      : reader_(reader), message_(message) {}

  // The union tag as read (the walk rejected members this reader does not know).
  Kind kind() const noexcept { return static_cast<Kind>(reader_.which()); }
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

  // The checked view this Value reads (zerocan/internal/wire_view.h). For the
  // generated Cap'n Proto reader, navigate from Message::envelope().
  const internal::ValueView& reader() const noexcept { return reader_; }
  const internal::MessageState* message() const noexcept { return message_; }

 private:
  Buffer ResolvePayload(internal::PayloadView payload) const;

  internal::ValueView reader_;
  const internal::MessageState* message_ = nullptr;
};

// Kind mirrors the schema's union order, so kind() is the tag itself.
static_assert(static_cast<int>(Kind::kNull) == wire::Value::NULL_ &&
              static_cast<int>(Kind::kBool) == wire::Value::BOOL &&
              static_cast<int>(Kind::kInt) == wire::Value::INT &&
              static_cast<int>(Kind::kUInt) == wire::Value::UINT &&
              static_cast<int>(Kind::kFloat) == wire::Value::FLOAT &&
              static_cast<int>(Kind::kText) == wire::Value::TEXT &&
              static_cast<int>(Kind::kBytes) == wire::Value::BYTES &&
              static_cast<int>(Kind::kList) == wire::Value::LIST &&
              static_cast<int>(Kind::kMap) == wire::Value::MAP &&
              static_cast<int>(Kind::kTensor) == wire::Value::TENSOR &&
              static_cast<int>(Kind::kExtension) == wire::Value::EXTENSION);

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
  IndexIterator(const Container* container, size_t i) noexcept : container_(container), i_(i) {}
  Element operator*() const { return container_->Unchecked(i_); }
  IndexIterator& operator++() noexcept {
    ++i_;
    return *this;
  }
  bool operator==(const IndexIterator& o) const noexcept { return i_ == o.i_; }
  bool operator!=(const IndexIterator& o) const noexcept { return i_ != o.i_; }

 private:
  const Container* container_;
  size_t i_;
};
}  // namespace internal

// The elements of a list value (Value::AsList), borrowed from the message like a Value.
class ValueList {
 public:
  ValueList() = default;
  size_t size() const noexcept { return list_.size(); }
  bool empty() const noexcept { return list_.size() == 0; }
  // Checked: throws std::out_of_range.
  Value operator[](size_t i) const {
    if (i >= list_.size()) internal::ThrowValueIndex("list", i, list_.size());
    return Value(list_[i], message_);
  }

  using iterator = internal::IndexIterator<ValueList, Value>;
  iterator begin() const noexcept { return iterator(this, 0); }
  iterator end() const noexcept { return iterator(this, list_.size()); }

 private:
  friend class Value;
  friend class internal::IndexIterator<ValueList, Value>;
  Value Unchecked(size_t i) const noexcept { return Value(list_[i], message_); }
  ValueList(internal::StructListView<internal::ValueView> list, const internal::MessageState* message) noexcept
      : list_(list), message_(message) {}
  internal::StructListView<internal::ValueView> list_;
  const internal::MessageState* message_ = nullptr;
};

// The entries of a map value (Value::AsMap), in the sender's order.
class ValueMap {
 public:
  ValueMap() = default;
  size_t size() const noexcept { return map_.size(); }
  bool empty() const noexcept { return map_.size() == 0; }
  // Checked: throw std::out_of_range.
  Value key(size_t i) const {
    if (i >= map_.size()) internal::ThrowValueIndex("map", i, map_.size());
    return Value(map_[i].walkedKey(), message_);
  }
  Value value(size_t i) const {
    if (i >= map_.size()) internal::ThrowValueIndex("map", i, map_.size());
    return Value(map_[i].walkedValue(), message_);
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
  iterator end() const noexcept { return iterator(this, map_.size()); }

 private:
  friend class Value;
  friend class internal::IndexIterator<ValueMap, Entry>;
  Entry Unchecked(size_t i) const noexcept {
    internal::EntryView e = map_[i];
    return Entry{Value(e.walkedKey(), message_), Value(e.walkedValue(), message_)};
  }
  ValueMap(internal::StructListView<internal::EntryView> map, const internal::MessageState* message) noexcept
      : map_(map), message_(message) {}
  internal::StructListView<internal::EntryView> map_;
  const internal::MessageState* message_ = nullptr;
};

// ---- inline hot paths (the walk has checked every pointer they follow) ----------------

inline bool Value::AsBool() const {
  if (kind() != Kind::kBool) Mismatch("bool");
  return reader_.getBool();
}

inline int64_t Value::AsInt() const {
  if (kind() == Kind::kInt) return reader_.getInt();
  if (kind() != Kind::kUInt || reader_.getUint() > static_cast<uint64_t>(INT64_MAX)) {
    Mismatch(kind() == Kind::kUInt ? "int64 (value too large)" : "int");
  }
  return static_cast<int64_t>(reader_.getUint());
}

inline uint64_t Value::AsUInt() const {
  if (kind() == Kind::kUInt) return reader_.getUint();
  if (kind() != Kind::kInt || reader_.getInt() < 0) {
    Mismatch(kind() == Kind::kInt ? "uint (non-negative)" : "uint");
  }
  return static_cast<uint64_t>(reader_.getInt());
}

inline double Value::AsDouble() const {
  switch (kind()) {
    case Kind::kFloat: return reader_.getFloat();
    case Kind::kInt: return static_cast<double>(reader_.getInt());
    case Kind::kUInt: return static_cast<double>(reader_.getUint());
    default: Mismatch("float64");
  }
}

inline std::string_view Value::AsText() const {
  if (kind() != Kind::kText) Mismatch("text");
  return reader_.walkedText().view();
}

inline ValueList Value::AsList() const {
  if (kind() != Kind::kList) Mismatch("list");
  return ValueList(reader_.walkedList(), message_);
}

inline ValueMap Value::AsMap() const {
  if (kind() != Kind::kMap) Mismatch("map");
  return ValueMap(reader_.walkedMap(), message_);
}

inline size_t Value::size() const {
  if (kind() == Kind::kList) return reader_.walkedList().size();
  if (kind() != Kind::kMap) Mismatch("list or map");
  return reader_.walkedMap().size();
}

inline Value Value::operator[](size_t i) const { return AsList()[i]; }
inline Value Value::key(size_t i) const { return AsMap().key(i); }
inline Value Value::value(size_t i) const { return AsMap().value(i); }
inline std::optional<Value> Value::Find(std::string_view key) const { return AsMap().Find(key); }

}  // namespace zerocan
