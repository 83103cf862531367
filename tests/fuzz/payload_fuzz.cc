// Fuzz target: payload references and tensor views. After a successful decode, AsBytes,
// AsTensor (with typed views) and TensorBytes on every value must stay inside the frames.
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zerocan;
  std::optional<Message> decoded = fuzz::DecodeInput(data, size);
  if (!decoded) return 0;
  const Message& m = *decoded;
  volatile uint64_t sink = fuzz::WalkMessage(m, /*deep=*/false);
  (void)sink;
  return 0;
}
