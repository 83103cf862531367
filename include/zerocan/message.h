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
#include <string_view>
#include <utility>

#include <zmq.hpp>

#include "absl/container/inlined_vector.h"
#include "zerocan/buffer.h"
#include "zerocan/limits.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan {

using FrameList = absl::InlinedVector<zmq::message_t, 4>;

namespace internal {
class MessageState;
}  // namespace internal

// The frames of one multipart message, owned. Move-only.
struct ReceivedMessage {
  // Frames before the empty delimiter (ROUTER identities); sent back with a reply.
  absl::InlinedVector<zmq::message_t, 2> routing;
  // Frames after the delimiter: envelope, payload frames, then a signature if signed.
  FrameList frames;
  // Owns frame 0's bytes when libzmq does not (a message handed to the decoder in
  // process, without a socket: frame 0 is then a constant libzmq frame over these
  // bytes, and a zmq copy() or send of it shares them without owning them). Empty for
  // frames received from a socket. Move a ReceivedMessage whole.
  Buffer envelope_owner;
};

enum class BodyKind : uint8_t { kApply, kResult, kHello, kHeartbeat, kGoodbye, kUnknown };

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

  // Result accessors (body_kind() == kResult).
  uint64_t call_id() const;
  bool ok() const;
  Value result() const;             // ok() only
  RemoteErrorInfo error() const;    // !ok() only
  std::string_view engine_id() const;

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
