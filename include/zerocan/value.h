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

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "zerocan/buffer.h"
#include "zerocan/internal/wire_view.h"
#include "zerocan/tensor.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {

class Registry;
namespace internal {
class MessageState;
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

  Kind kind() const noexcept;
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

  // Lists and maps: element count. Throws kTypeMismatch for other kinds.
  size_t size() const;
  // List element i (checked; throws std::out_of_range).
  Value operator[](size_t i) const;
  // Map entry i.
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

}  // namespace zerocan
