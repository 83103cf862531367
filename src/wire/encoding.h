// What src/wire/'s files share: the encoder's bounds and helpers, the EnvelopeWriter's
// state, and the one checked walk of a received envelope. Internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <capnp/message.h>

#include "zerocan/buffer.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/shared.h"
#include "zerocan/writer.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {

namespace internal {

// Deeper values are refused at encode time, matching DecodeLimits' default, so we never
// produce a message a default receiver would reject for depth. The decoder counts an
// argument as level 1 while a ValueWriter's depth starts at 0.
inline constexpr uint32_t kMaxEncodeDepth = 64;
// Cap'n Proto lists, text and data hold fewer than 2^29 elements.
inline constexpr uint64_t kMaxCapnpList = (uint64_t{1} << 29) - 1;

// `n` as a Cap'n Proto element count; throws EncodeError naming `what` beyond the bound.
unsigned CheckedLength(size_t n, const char* what);
// `text`'s size for a generated initX(size) (checked against the format's bound).
unsigned TextSize(std::string_view text);
// Copies `text` into `dst`, made by initX(TextSize(text)). (A std::string_view need not
// be NUL-terminated, so it never goes through Cap'n Proto's Text::Reader.)
void CopyText(capnp::Text::Builder dst, std::string_view text) noexcept;
// Throws EncodeError: "<what> index <i> out of range (size <n>)".
[[noreturn]] void ThrowIndex(const char* what, size_t i, size_t n);

// The checked walk of a received envelope (src/wire/values.cc): every rule of
// docs/FORMAT.md "Decoding", within a traversal budget of `budget` units. Throws
// DecodeError naming the field path.
// Payload.shared references met on the way are mapped into `shared_views` (keyed by
// MessageState::Key). Returns the body's readers the walk followed, for the decoded
// message to keep (following a pointer again costs another bounds check).
using SharedViews = absl::flat_hash_map<const void*, SharedOrigin>;
struct WalkedBody {
  bool is_apply = false;
  wire::Apply::Reader apply;
  capnp::Text::Reader function;
  capnp::List<wire::Value>::Reader args;
  capnp::List<wire::Field>::Reader kwargs;
  bool is_result = false;
  wire::Result::Reader result;
  wire::Value::Reader ok;  // a successful result's value
};
WalkedBody WalkEnvelope(const ReceivedMessage& received, uint32_t payload_frames,
                        const DecodeLimits& limits, uint64_t budget,
                        wire::Envelope::Reader envelope, SharedViews* shared_views);

}  // namespace internal

// The message being built: a generated builder over a first segment of the canonical
// size that this state owns (zeroed between messages, reused by the thread), and the
// payloads that will travel as frames.
struct EnvelopeWriter::Impl {
  Impl();
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  // Starts a fresh envelope: the root struct with its version set.
  void Start();

  capnp::word* first_segment;  // calloc'd, kFirstSegmentWords words
  std::optional<capnp::MallocMessageBuilder> builder;
  wire::Envelope::Builder root = nullptr;
  std::vector<Buffer> payloads;
  std::vector<Buffer> shared_blocks;  // referenced by Payload.shared (Outgoing::shared_blocks)
  bool finished = false;
};

}  // namespace zerocan
