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
  static wire::Envelope::Builder Root(EnvelopeWriter& writer);
  // The thread's spare EnvelopeWriter state (src/wire/envelope.cc).
  static std::unique_ptr<EnvelopeWriter::Impl>& SpareWriter();
};

}  // namespace zerocan::internal
