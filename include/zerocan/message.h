// Decoding: ReceivedMessage (the frames as they came off the socket) and Message (the
// checked, decoded envelope with views into the frames).
//
// Message::Decode walks the whole envelope once through the generated Cap'n Proto
// readers, bounded by DecodeLimits, and checks every payload reference, tensor shape
// and dtype. After it returns, accessors on the Message and on its Values do not throw
// for malformed input. Nothing is copied except
// a misaligned envelope (one copy into word-aligned storage, counted in
// Stats::envelope_realigned).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "zerocan/buffer.h"
#include "zerocan/limits.h"
#include "zerocan/shared.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan {

// Frames of a received message, each a Buffer whose keep-alive is whatever the transport
// received them into (for ZeroMQ: the message's libzmq frames, one holder per message).
using FrameList = absl::InlinedVector<Buffer, 4>;
// Routing frames (ROUTER identities): small, sent back with a reply.
using RoutingFrames = absl::InlinedVector<Buffer, 2>;

namespace internal {
class MessageState;
}  // namespace internal

// The frames of one multipart message, as a transport delivered them. Transport-neutral:
// any Channel (zerocan/transport.h) produces and consumes these.
struct ReceivedMessage {
  // Frames before the empty delimiter (ROUTER identities); sent back with a reply.
  RoutingFrames routing;
  // Frames after the delimiter: envelope, payload frames, then a signature if signed.
  FrameList frames;
};

enum class BodyKind : uint8_t {
  kApply, kResult, kHello, kHeartbeat, kGoodbye, kUnknown,
  kStarted,   // engine -> broker: a call began running (Message::call_id() names it)
  kDraining,  // engine -> broker: stopping, takes no new calls
  kCancel,    // client -> engine: give up a call (Message::target_call_id())
  kCredit,    // client -> engine: grant more stream items
};

// Where a result stands in a stream call (Result.stream): the one result of a plain
// call, one item of a stream, or the stream's end (ok = null, or an error).
enum class StreamPart : uint8_t { kNone, kItem, kEnd };

class Message {
 public:
  Message() = default;

  // Checks and decodes. Throws DecodeError naming the frame and the field path.
  static Message Decode(ReceivedMessage&& received, const DecodeLimits& limits = {});

  // (The generated Cap'n Proto reader over the envelope: zerocan/generated.h.)
  BodyKind body_kind() const noexcept;
  uint64_t message_id() const noexcept;
  uint64_t session_id() const noexcept;
  uint64_t sequence() const noexcept;
  uint64_t sent_at_ns() const noexcept;

  // Apply accessors (body_kind() == kApply; otherwise they throw DecodeError).
  std::string_view function() const;
  size_t arg_count() const;
  Value arg(size_t i) const;
  size_t kwarg_count() const;
  std::string_view kwarg_name(size_t i) const;
  Value kwarg(size_t i) const;
  uint32_t timeout_ms() const;
  // Apply.retries: further attempts a broker may make on other engines (0 = none).
  uint32_t retries() const;
  // Apply.sharedResults: the caller reads result payloads in shared memory of its host.
  bool shared_results() const;
  // Items the engine may send before the client grants more; 0 = a plain call.
  uint32_t stream_credits() const;

  // Result accessors (body_kind() == kResult; call_id() also for kStarted).
  uint64_t call_id() const;
  bool ok() const;
  Value result() const;             // ok() only
  RemoteErrorInfo error() const;    // !ok() only
  std::string_view engine_id() const;
  StreamPart stream_part() const;

  // Cancel and credit accessors (kCancel: target(); kCredit: target() and credit_items()).
  uint64_t target_call_id() const;
  uint32_t credit_items() const;

  // Hello accessor (kHello): where the sender runs (Hello.host), unset when it did not say.
  std::optional<HostIdentity> hello_host() const;

  // The payloads that lie in their sender's arena (Payload.shared), as mapped by a
  // decode with DecodeLimits::SharedRefs::kMap; empty otherwise.
  std::vector<SharedOrigin> shared_origins() const;

  // The frames, still owned by this message (shared by every payload Buffer).
  const FrameList& frames() const noexcept;
  const ReceivedMessage& received() const noexcept;
  // True when the envelope had to be copied for alignment.
  bool envelope_copied() const noexcept;
  explicit operator bool() const noexcept { return state_ != nullptr; }

 private:
  friend struct internal::WireAccess;
  // The state of an apply; throws DecodeError(kTypeMismatch) for any other message.
  const internal::MessageState& Apply() const;
  std::shared_ptr<internal::MessageState> state_;
};

}  // namespace zerocan
