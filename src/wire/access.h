// The generated readers and builders behind the public types (Value, ValueList,
// ValueMap, Message, EnvelopeWriter), for code inside the library and for
// zerocan/generated.h. Nothing here is API.
#pragma once

#include <memory>

#include "wire/handles.h"
#include "zerocan/message.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan::internal {

// The public enums number their members as the schema does, so a tag converts by value.
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
              static_cast<int>(Kind::kExtension) == wire::Value::EXTENSION,
              "zerocan::Kind must number its members as the schema's Value union does");
static_assert(static_cast<int>(DType::kBool) == static_cast<int>(wire::DType::BOOL) &&
              static_cast<int>(DType::kInt8) == static_cast<int>(wire::DType::INT8) &&
              static_cast<int>(DType::kInt16) == static_cast<int>(wire::DType::INT16) &&
              static_cast<int>(DType::kInt32) == static_cast<int>(wire::DType::INT32) &&
              static_cast<int>(DType::kInt64) == static_cast<int>(wire::DType::INT64) &&
              static_cast<int>(DType::kUInt8) == static_cast<int>(wire::DType::UINT8) &&
              static_cast<int>(DType::kUInt16) == static_cast<int>(wire::DType::UINT16) &&
              static_cast<int>(DType::kUInt32) == static_cast<int>(wire::DType::UINT32) &&
              static_cast<int>(DType::kUInt64) == static_cast<int>(wire::DType::UINT64) &&
              static_cast<int>(DType::kFloat16) == static_cast<int>(wire::DType::FLOAT16) &&
              static_cast<int>(DType::kFloat32) == static_cast<int>(wire::DType::FLOAT32) &&
              static_cast<int>(DType::kFloat64) == static_cast<int>(wire::DType::FLOAT64) &&
              static_cast<int>(DType::kComplex64) == static_cast<int>(wire::DType::COMPLEX64) &&
              static_cast<int>(DType::kComplex128) == static_cast<int>(wire::DType::COMPLEX128),
              "zerocan::DType must number its members as the schema does");

struct WireAccess {
  static Kind KindOf(wire::Value::Reader r) noexcept { return static_cast<Kind>(r.which()); }
  static Value MakeValue(wire::Value::Reader r, const MessageState* message) noexcept {
    return Value(Wrap(r), KindOf(r), message);
  }
  static ValueList MakeList(capnp::List<wire::Value>::Reader r, const MessageState* message) noexcept {
    return ValueList(Wrap(r), r.size(), message);
  }
  static ValueMap MakeMap(capnp::List<wire::Entry>::Reader r, const MessageState* message) noexcept {
    return ValueMap(Wrap(r), r.size(), message);
  }
  static wire::Value::Reader Reader(const Value& v) noexcept {
    return Unwrap<wire::Value::Reader>(v.reader_);
  }
  static capnp::List<wire::Value>::Reader Reader(const ValueList& l) noexcept {
    return Unwrap<capnp::List<wire::Value>::Reader>(l.list_);
  }
  static capnp::List<wire::Entry>::Reader Reader(const ValueMap& m) noexcept {
    return Unwrap<capnp::List<wire::Entry>::Reader>(m.entries_);
  }
  static wire::Envelope::Reader Root(const Message& m) noexcept;
  static const MessageState& State(const Message& m) noexcept;
  // Keeps `blocks` (of this process's arena) as long as any view of `m`: a result whose
  // references name the caller's own argument blocks.
  static void KeepReturnedBlocks(const Message& m, std::vector<Buffer>&& blocks);
  static wire::Envelope::Builder Root(EnvelopeWriter& writer);
  // The thread's spare EnvelopeWriter state (src/wire/envelope.cc).
  static std::unique_ptr<EnvelopeWriter::Impl>& SpareWriter();
};

}  // namespace zerocan::internal
