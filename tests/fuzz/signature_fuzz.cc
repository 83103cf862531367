// Fuzz target: signature verification. Arbitrary frames never verify (nor crash); the
// same frames signed do verify, and then any single altered byte chosen by the input,
// a dropped frame or a swapped pair of frames does not.
#include <cstdlib>

#include "zerocan/transport/zmq.h"
#include "tests/fuzz/fuzz_common.h"
#include "zerocan/signing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zerocan;
  static const Signer signer("zerocan-fuzz-key");
  FrameList frames = fuzz::ParseFrames(data, size);
  auto check = [&](const FrameList& f) {
    return signer.Check(std::span<const Buffer>(f.data(), f.size()));
  };
  if (check(frames) == Signer::Verdict::kOk) std::abort();  // forged without the key

  ReceivedMessage received;
  received.frames = fuzz::ParseFrames(data, size);
  try {
    signer.Verify(&received);
    std::abort();
  } catch (const AuthError&) {
  }
  if (frames.empty()) return 0;

  signer.SignFrames(&frames);
  if (check(frames) != Signer::Verdict::kOk) std::abort();
  uint64_t seed = size;
  for (size_t i = 0; i < std::min<size_t>(size, 16); ++i) seed = seed * 131 + data[i];
  size_t f = seed % frames.size();
  if (frames[f].size() > 0) {
    size_t at = (seed / 7) % frames[f].size();
    auto* bytes = reinterpret_cast<uint8_t*>(frames[f].mutable_data());
    bytes[at] ^= static_cast<uint8_t>(1 + (seed >> 8) % 255);
    if (check(frames) == Signer::Verdict::kOk) std::abort();
    bytes[at] ^= static_cast<uint8_t>(1 + (seed >> 8) % 255);
  }
  if (frames.size() > 2) {
    std::swap(frames[0], frames[1]);
    bool same = frames[0].size() == frames[1].size() &&
                std::memcmp(frames[0].data(), frames[1].data(), frames[0].size()) == 0;
    if (!same && check(frames) == Signer::Verdict::kOk) std::abort();
    std::swap(frames[0], frames[1]);
    frames.erase(frames.begin() + static_cast<ptrdiff_t>(f % (frames.size() - 1)));
    if (check(frames) == Signer::Verdict::kOk) std::abort();
  }
  return 0;
}
