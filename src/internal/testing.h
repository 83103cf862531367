// Hooks for zerocan's own tests, fuzz targets and benchmarks. Not API: nothing here is
// installed, and each hook does something a real program must not (crash an engine on
// purpose, reuse a nonce, hand a message to the decoder without a transport).
#pragma once

#include <cstdint>

#include "zerocan/engine.h"
#include "zerocan/message.h"
#include "zerocan/shared.h"
#include "zerocan/signing.h"
#include "zerocan/writer.h"

namespace zerocan {

// Turns an encoded message into received frames without a transport and without a
// copy: frame 0 is the Outgoing's envelope, the payload frames are its Buffers.
ReceivedMessage LoopbackFrames(Outgoing&& outgoing);

namespace internal {

struct TestHooks {
  // Stops `engine` like a crash would: drops queued calls and unsent replies, sends no
  // goodbye. Functions already running finish, unobserved.
  static void KillEngine(Engine& engine);
  // Signer::Begin with a caller-chosen nonce, for known-answer tests. Signing two
  // different messages with one nonce reveals its one-time key (docs/SECURITY.md).
  static Signer::Hasher BeginWithNonce(const Signer& signer, uint64_t frame_count,
                                       const unsigned char nonce[kNonceSize]);
  // An arena under a name chosen by the caller (the golden vectors' fixed one) that only
  // this process reads: no peer is served (a fixed name is no capability, and two
  // processes could not both serve it).
  static std::shared_ptr<SharedArena> LocalArenaNamed(size_t capacity, std::string name);
};

}  // namespace internal
}  // namespace zerocan
