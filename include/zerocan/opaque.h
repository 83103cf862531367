// Fixed-size storage for a generated Cap'n Proto reader or builder inside a public type,
// so that the public headers need no Cap'n Proto include. Only src/wire/ puts a reader or
// builder in or takes one out (src/wire/handles.h), and it checks there, at compile
// time, that the generated type fits and is trivially copyable.
#pragma once

#include <cstddef>

namespace zerocan::internal {

// The one door from src/wire/ into the public types' private parts (src/wire/access.h).
struct WireAccess;

struct alignas(8) OpaqueWire {
  static constexpr size_t kBytes = 48;
  unsigned char bytes[kBytes] = {};
};

}  // namespace zerocan::internal
