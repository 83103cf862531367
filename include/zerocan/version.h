// Library and protocol versions. kProtocolVersion must equal the schema's
// `protocolVersion` constant and docs/FORMAT.md (checked by tests/format_test.cc).
#pragma once

#include <cstdint>

namespace zerocan {
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr const char* kLibraryVersion = "0.2.0";
}  // namespace zerocan
