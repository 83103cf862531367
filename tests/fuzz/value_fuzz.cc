// Fuzz target: the dynamic value walker. Every accessor and built-in codec on every
// value of a decoded message returns or throws DecodeError(kTypeMismatch), nothing else.
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zerocan;
  std::optional<Message> decoded = fuzz::DecodeInput(data, size);
  if (!decoded) return 0;
  const Message& m = *decoded;
  volatile uint64_t sink = fuzz::WalkMessage(m, /*deep=*/true);
  (void)sink;
  // Re-encoding what was received must work for anything the decoder accepted.
  if (m.body_kind() == BodyKind::kApply) {
    EnvelopeWriter writer;
    ApplyWriter apply = writer.StartApply(m.function(), m.arg_count(), 0);
    for (size_t i = 0; i < m.arg_count(); ++i) apply.arg(i).Copy(m.arg(i));
    Message again = Message::Decode(LoopbackFrames(writer.Finish()), fuzz::FuzzLimits());
    sink = fuzz::WalkMessage(again, /*deep=*/false);
  }
  return 0;
}
