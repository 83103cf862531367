// Encoding: EnvelopeWriter builds one message in one pass; ValueWriter writes one value
// into it. The envelope is built with the builders generated from schema/zerocan.capnp
// (src/wire/values.cc, src/wire/envelope.cc), objects in the canonical order of
// docs/FORMAT.md. A writer that threw (an EncodeError from any call) is spent: start a new
// one rather than write on.
//
// Payload bytes are placed by the writer's Policy: at or above the inline threshold
// they become a payload frame of their own, below it they are copied into the envelope.
// Who owns a payload that becomes a frame is chosen at the call site:
//   - Bytes(Buffer) / Array(..., Buffer): the Buffer's keep-alive travels with the frame
//     (Buffer::Adopt of an rvalue container, a received payload, Buffer::Allocate). A
//     Buffer with no keep-alive (Buffer::Borrow) is LENT: the caller keeps the bytes
//     alive and unchanged until the send's Tracker completes.
//   - CopyBytes(span) / CopyArray(..., span): bytes valid only during the call; a frame
//     gets its own copy (counted in Stats::buffer_copies), an inline payload is copied
//     into the envelope as always.
// The codecs (codec.h) follow the same rule: an rvalue container is adopted, an lvalue
// one is copied, and zerocan::Borrow(x) lends explicitly.
//
// Threading: an EnvelopeWriter and its ValueWriters belong to one thread. A small
// envelope is built in a reusable per-thread first segment and copied once into its own
// Buffer by Finish().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "zerocan/buffer.h"
#include "zerocan/opaque.h"
#include "zerocan/policy.h"
#include "zerocan/tensor.h"

namespace zerocan {

class Registry;
class Value;
enum class StreamPart : uint8_t;
class EnvelopeWriter;
class ListWriter;
class MapWriter;

// The built-in codecs (codec.h) and the registry's fallback: one specialisation per
// type. Declared here so that Write<T> can be defined beside its declaration.
template <class T, class Enable = void>
struct Codec;

// Identity fields of every envelope (see schema/zerocan.capnp).
struct Header {
  uint64_t message_id = 0;
  uint64_t session_id = 0;
  uint64_t sequence = 0;
  uint64_t sent_at_ns = 0;  // 0 = let Finish() stamp the wall clock
};

// An encoded message, ready to send or to hand to a decoder: the envelope's bytes, the
// payloads that travel as frames of their own, and an optional trailer frame after them
// (a signature: Signer::Sign adds it). All still owned, none yet given to a transport.
// Move-only.
class Outgoing {
 public:
  Outgoing() = default;
  Outgoing(Buffer envelope, std::vector<Buffer>&& payloads,
           std::vector<Buffer>&& shared_blocks = {})
      : envelope_(std::move(envelope)),
        payloads_(std::move(payloads)),
        shared_blocks_(std::move(shared_blocks)) {}
  Outgoing(Outgoing&&) noexcept = default;
  Outgoing& operator=(Outgoing&&) noexcept = default;

  const Buffer& envelope() const noexcept { return envelope_; }
  const std::vector<Buffer>& payload_frames() const noexcept { return payloads_; }
  // The frame after the payloads (empty: none).
  const Buffer& trailer() const noexcept { return trailer_; }
  void SetTrailer(Buffer trailer) noexcept { trailer_ = std::move(trailer); }
  size_t frame_count() const noexcept { return 1 + payloads_.size() + (trailer_.empty() ? 0 : 1); }
  // Moves the envelope out, for whoever turns this message into frames; envelope() is
  // empty afterwards.
  Buffer TakeEnvelope() noexcept { return std::exchange(envelope_, Buffer()); }
  // The arena blocks the envelope refers to (Payload.shared; Policy::shared_arena). They
  // travel by reference, not as frames: whoever sends the message keeps them until the
  // receiver is done with them (a client: until the call's reply).
  const std::vector<Buffer>& shared_blocks() const noexcept { return shared_blocks_; }
  std::vector<Buffer> TakeSharedBlocks() noexcept { return std::exchange(shared_blocks_, {}); }

  // Envelopes smaller than this are copied into their frame at Send.
  static constexpr size_t kEnvelopeCopyBelow = 1024;

 private:
  Buffer envelope_;
  std::vector<Buffer> payloads_;
  std::vector<Buffer> shared_blocks_;
  Buffer trailer_;
};

// Writes one Value. Cheap to copy; valid while its EnvelopeWriter lives.
class ValueWriter {
 public:
  void Null();
  void Bool(bool value);
  void Int(int64_t value);
  void UInt(uint64_t value);
  void Float(double value);
  void Text(std::string_view value);
  // Bytes: a frame of their own or an inline copy, by size (see Policy). Ownership as
  // in the header comment: the Buffer's keep-alive, or lent when it has none.
  void Bytes(Buffer data);
  // Bytes valid only during this call: copied (inline, or into a frame of their own).
  void CopyBytes(std::span<const std::byte> data);
  // A contiguous typed array or tensor; the same placement and ownership rules. Integer
  // arrays small enough are packed (Policy::pack_integers).
  void Array(DType dtype, const Shape& shape, Buffer data, Order order = Order::kC);
  void CopyArray(DType dtype, const Shape& shape, std::span<const std::byte> data,
                 Order order = Order::kC);
  void WriteTensor(const Tensor& tensor) {
    Array(tensor.dtype(), tensor.shape(), tensor.data(), tensor.order());
  }
  ListWriter List(size_t length);
  MapWriter Map(size_t length);
  // An extension value; write its state through the returned writer.
  ValueWriter Extension(std::string_view type_name);
  // Re-encodes a received value. Payloads in frames are forwarded without a copy (the
  // new message shares ownership of the received frame); a reference into this writer's
  // own shared arena (Policy::shared_arena) stays that reference, any other is placed
  // again from its mapped bytes; the value's sequenceType marker (list, tuple) is kept at
  // every level.
  void Copy(const Value& value);

  // Writes `value` through its codec (codec.h): built-in types, else the registry. An
  // rvalue container is adopted (no copy); an lvalue is copied; zerocan::Borrow lends.
  template <class T>
  void Write(T&& value);

  EnvelopeWriter& message() const noexcept { return *message_; }
  uint32_t depth() const noexcept { return depth_; }

 private:
  friend class EnvelopeWriter;
  friend class ListWriter;
  friend class MapWriter;
  friend class ApplyWriter;
  friend struct internal::WireAccess;
  ValueWriter(EnvelopeWriter* message, const internal::OpaqueWire& builder, uint32_t depth) noexcept
      : message_(message), builder_(builder), depth_(depth) {}

  EnvelopeWriter* message_;
  internal::OpaqueWire builder_;  // wire::Value::Builder
  uint32_t depth_;
};

class ListWriter {
 public:
  size_t size() const noexcept { return count_; }
  ValueWriter operator[](size_t i) const;

 private:
  friend class ValueWriter;
  friend struct internal::WireAccess;
  ListWriter(EnvelopeWriter* message, const internal::OpaqueWire& list, size_t count,
             uint32_t depth) noexcept
      : message_(message), list_(list), count_(count), depth_(depth) {}
  EnvelopeWriter* message_;
  internal::OpaqueWire list_;  // capnp::List<wire::Value>::Builder
  size_t count_;
  uint32_t depth_;
};

class MapWriter {
 public:
  size_t size() const noexcept { return count_; }
  ValueWriter key(size_t i) const;
  ValueWriter value(size_t i) const;
  // key(i).Text(text) in one step: the common key.
  void TextKey(size_t i, std::string_view text) const;

 private:
  friend class ValueWriter;
  friend struct internal::WireAccess;
  MapWriter(EnvelopeWriter* message, const internal::OpaqueWire& entries, size_t count,
            uint32_t depth) noexcept
      : message_(message), entries_(entries), count_(count), depth_(depth) {}
  EnvelopeWriter* message_;
  internal::OpaqueWire entries_;  // capnp::List<wire::Entry>::Builder
  size_t count_;
  uint32_t depth_;
};

// Arguments of an apply being written.
class ApplyWriter {
 public:
  ValueWriter arg(size_t i) const;
  // Sets keyword i's name and returns its value writer.
  ValueWriter kwarg(size_t i, std::string_view name) const;

 private:
  friend class EnvelopeWriter;
  friend struct internal::WireAccess;
  ApplyWriter(EnvelopeWriter* message, const internal::OpaqueWire& args, size_t arg_count,
              const internal::OpaqueWire& kwargs, size_t kwarg_count) noexcept
      : message_(message), args_(args), kwargs_(kwargs), arg_count_(arg_count),
        kwarg_count_(kwarg_count) {}
  EnvelopeWriter* message_;
  internal::OpaqueWire args_;    // capnp::List<wire::Value>::Builder
  internal::OpaqueWire kwargs_;  // capnp::List<wire::Field>::Builder
  size_t arg_count_, kwarg_count_;
};

struct RemoteErrorInfo {
  std::string type;
  std::string message;
  std::string function;
  std::string where;
};

class EnvelopeWriter {
 public:
  explicit EnvelopeWriter(const Policy& policy = Policy::Default(),
                          const Registry* registry = nullptr);
  ~EnvelopeWriter();
  EnvelopeWriter(const EnvelopeWriter&) = delete;
  EnvelopeWriter& operator=(const EnvelopeWriter&) = delete;

  void SetHeader(const Header& header);

  ApplyWriter StartApply(std::string_view function, size_t arg_count, size_t kwarg_count,
                         uint32_t timeout_ms = 0);
  // A result whose value the caller writes through the returned writer.
  ValueWriter StartResult(uint64_t call_id, std::string_view engine_id);
  void SetError(uint64_t call_id, std::string_view engine_id, const RemoteErrorInfo& error);
  // `host`: where this process runs (HostIdentity::This()), for peers that may share
  // memory with it; null leaves Hello.host unset.
  void SetHello(std::string_view peer_id, std::string_view role,
                const std::vector<std::string>& functions = {},
                const HostIdentity* host = nullptr);
  void SetHeartbeat(std::string_view peer_id, uint64_t now_ns);
  void SetGoodbye();
  // Engine -> broker: the call `call_id` has begun running (sent with its routing frames).
  void SetStarted(uint64_t call_id);
  // Engine -> broker: stopping; send no new calls.
  void SetDraining();
  // After StartApply: how many more engines a broker may try when the one running the
  // call is lost (Apply.retries; capped at 65535). 0 (the default) writes nothing.
  void SetApplyRetries(uint32_t retries);
  // After StartApply: the caller reads result payloads in place from arenas of its host
  // (Apply.sharedResults; set only when its peer answered its hello from this host).
  void SetApplySharedResults(bool shared);
  // Streams (docs/FORMAT.md "Cancel and streams"): an apply asking for a stream of
  // results, an item or the end of a stream, a cancel, a credit grant.
  void SetStreamCredits(uint32_t credits);  // after StartApply; at most 65535
  void SetStreamPart(StreamPart part);      // after StartResult / SetError
  void SetCancel(uint64_t call_id);
  void SetCredit(uint64_t call_id, uint32_t items);

  // Makes the envelope's bytes and hands over the payload frames. The writer is spent
  // afterwards.
  Outgoing Finish();

  const Policy& policy() const noexcept { return policy_; }
  const Registry& registry() const noexcept;

 private:
  friend class ValueWriter;
  friend class ListWriter;
  friend class MapWriter;
  friend class ApplyWriter;
  friend struct internal::WireAccess;
  struct Impl;  // src/wire/encoding.h: the generated message builder and its segment

  Policy policy_;
  const Registry* registry_;
  std::unique_ptr<Impl> impl_;
};

// ---- Write<T> -----------------------------------------------------------------------

namespace internal {
template <class T, class = void>
struct HasEncodeOwned : std::false_type {};
template <class T>
struct HasEncodeOwned<T, std::void_t<decltype(Codec<T>::EncodeOwned(
                             std::declval<ValueWriter&>(), std::declval<T&&>()))>>
    : std::true_type {};
}  // namespace internal

template <class T>
void ValueWriter::Write(T&& value) {
  using D = std::decay_t<T>;
  if constexpr (!std::is_lvalue_reference_v<T> && !std::is_const_v<std::remove_reference_t<T>> &&
                internal::HasEncodeOwned<D>::value) {
    Codec<D>::EncodeOwned(*this, std::move(value));
  } else {
    Codec<D>::Encode(*this, value);
  }
}

}  // namespace zerocan

// The codecs Write<T> dispatches on.
#include "zerocan/codec.h"
