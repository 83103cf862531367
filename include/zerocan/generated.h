// OPT-IN: the generated Cap'n Proto readers and builders behind zerocan's types, for
// code that wants to read or write a field this library does not wrap (and for tests
// that craft malformed messages). The only public header that includes Cap'n Proto.
//
// The readers borrow from their Message like a Value does. Cap'n Proto's own limits
// apply to them; the library's checks (Message::Decode) have already run.
#pragma once

#include "zerocan/message.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {

// The envelope of a decoded message, read in place.
wire::Envelope::Reader GeneratedEnvelope(const Message& message);
// The envelope being built: fields set here appear in Finish()'s bytes.
wire::Envelope::Builder GeneratedEnvelope(EnvelopeWriter& writer);
// The value a Value reads.
wire::Value::Reader GeneratedValue(const Value& value);

}  // namespace zerocan
