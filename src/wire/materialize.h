// Shared-memory references (Payload.shared) for a forwarder whose next hop cannot map
// them: a broker sending a call to an engine on another host.
#pragma once

#include <cstdint>
#include <optional>

#include "zerocan/buffer.h"
#include "zerocan/message.h"
#include "zerocan/policy.h"
#include "zerocan/writer.h"

namespace zerocan::internal {

// Whether `envelope` may hold a shared-memory reference. false is certain: a reference
// names an arena, and no arena name appears in these bytes. true: decode and look.
bool MayReferToArenas(const Buffer& envelope) noexcept;

struct Materialized {
  Outgoing message;    // the apply again, every reference replaced by a frame
  uint64_t bytes = 0;  // the referenced bytes those frames hold
};

// `apply` (decoded with DecodeLimits::SharedRefs::kMap) re-encoded with `policy`, each
// shared-memory reference replaced by its bytes: payload frames that are views of the
// mapped arena (no copy here; the transport's send is the one copy), or inline below
// the threshold. The header is kept. nullopt when `apply` holds no reference.
std::optional<Materialized> MaterializeApply(const Message& apply, const Policy& policy);

}  // namespace zerocan::internal
