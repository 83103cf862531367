// Fuzz target: envelope decoding. Any frame set must decode or raise DecodeError.
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zerocan;
  if (std::optional<Message> m = fuzz::DecodeInput(data, size)) {
    volatile uint64_t sink = m->message_id() + static_cast<uint64_t>(m->body_kind()) +
                             m->frames().size();
    (void)sink;
  }
  return 0;
}
