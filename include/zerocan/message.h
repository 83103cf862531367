// Decoding: ReceivedMessage (the frames as they came off the socket) and Message (the
// checked, decoded envelope with views into the frames).
//
// Message::Decode walks the whole envelope once, bounded by DecodeLimits, and checks
// every payload reference, tensor shape and dtype. After it returns, accessors on the
// Message and on its Values do not throw for malformed input. Nothing is copied except
// a misaligned envelope (one copy into word-aligned storage, counted in
// Stats::envelope_realigned).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include <zmq.hpp>

#include "absl/container/inlined_vector.h"
#include "zerocan/limits.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan {

using FrameList = absl::InlinedVector<zmq::message_t, 4>;

namespace internal {
// Where an apply's accessors look, filled by Message::Decode: part of the message's
// shared state, reachable from the inline accessors without its full definition.
struct ApplyIndex {
  bool is_apply = false;
  BlobView function;
  StructListView<ValueView> args;
  StructListView<FieldView> kwargs;
};
// Throw DecodeError(kTypeMismatch) "message is not <wanted>" / std::out_of_range.
[[noreturn]] void ThrowWrongBody(const char* wanted);
[[noreturn]] void ThrowArgIndex(const char* what, size_t i, size_t n);
}  // namespace internal

// The frames of one multipart message, owned. Move-only.
struct ReceivedMessage {
  // Frames before the empty delimiter (ROUTER identities); sent back with a reply.
  absl::InlinedVector<zmq::message_t, 2> routing;
  // Frames after the delimiter: envelope, payload frames, then a signature if signed.
  FrameList frames;
  // Owns frame 0's bytes when libzmq does not: LoopbackFrames makes frame 0 a constant
  // frame over the Outgoing's envelope and keeps that envelope here. Empty for frames
  // received from a socket. Move a ReceivedMessage whole, or use DetachFrames. Such a
  // frame 0 is a constant libzmq frame: a zmq copy() or send of it shares the bytes
  // without owning them (PublishCaptured copies it for that reason).
  Buffer envelope_owner;
};

// Turns an encoded message into received frames without a socket and without a copy:
// frame 0 refers to the Outgoing's envelope (kept in envelope_owner), the payload frames
// share its buffers. For tests, benchmarks and in-process calls.
ReceivedMessage LoopbackFrames(Outgoing&& outgoing);

// The frames alone, each owning its bytes: frame 0 is copied when it borrows
// envelope_owner. For code that keeps frames without their ReceivedMessage (taking
// `.frames` by itself would leave such a frame 0 pointing at freed bytes).
FrameList DetachFrames(ReceivedMessage&& received);

enum class BodyKind : uint8_t { kApply, kResult, kHello, kHeartbeat, kGoodbye, kUnknown };

class Message {
 public:
  Message() = default;
  Message(const Message&) = default;
  Message& operator=(const Message&) = default;
  Message(Message&& other) noexcept
      : state_(std::move(other.state_)), apply_(std::exchange(other.apply_, nullptr)) {}
  Message& operator=(Message&& other) noexcept {
    state_ = std::move(other.state_);
    apply_ = std::exchange(other.apply_, nullptr);
    return *this;
  }

  // Checks and decodes. Throws DecodeError naming the frame and the field path.
  static Message Decode(ReceivedMessage&& received, const DecodeLimits& limits = {});

  // The generated reader over the envelope frame's memory (in place; built on first
  // use, since the accessors below read through faster checked views).
  wire::Envelope::Reader envelope() const noexcept;
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
  const internal::ApplyIndex& Apply() const {
    if (apply_ == nullptr) internal::ThrowWrongBody("an apply");
    return *apply_;
  }

  std::shared_ptr<internal::MessageState> state_;
  // Inside *state_, for an apply only (null otherwise, and in a moved-from Message).
  const internal::ApplyIndex* apply_ = nullptr;
};

// The apply accessors are inline: an engine calls them once per argument.
inline std::string_view Message::function() const { return Apply().function.view(); }
inline size_t Message::arg_count() const { return Apply().args.size(); }
inline Value Message::arg(size_t i) const {
  const internal::ApplyIndex& a = Apply();
  if (i >= a.args.size()) internal::ThrowArgIndex("argument", i, a.args.size());
  return Value(a.args[i], state_.get());
}
inline size_t Message::kwarg_count() const { return Apply().kwargs.size(); }
inline std::string_view Message::kwarg_name(size_t i) const {
  const internal::ApplyIndex& a = Apply();
  if (i >= a.kwargs.size()) internal::ThrowArgIndex("keyword argument", i, a.kwargs.size());
  return a.kwargs[i].walkedKey().view();
}
inline Value Message::kwarg(size_t i) const {
  const internal::ApplyIndex& a = Apply();
  if (i >= a.kwargs.size()) internal::ThrowArgIndex("keyword argument", i, a.kwargs.size());
  return Value(a.kwargs[i].walkedValue(), state_.get());
}

}  // namespace zerocan
