// Encoding: EnvelopeWriter builds one message in one pass; ValueWriter writes one
// value into it. Payload bytes are placed by the writer's Policy: at or above the
// inline threshold they become their own ZeroMQ frame (no copy: the Buffer's owner is
// kept until libzmq releases the frame), below it they are copied into the envelope.
//
// Threading: an EnvelopeWriter and its ValueWriters belong to one thread. The envelope's
// first segment comes from a reusable, per-thread scratch area, so building a small
// message allocates nothing until Finish() makes the frame.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/message.h>
#include <zmq.hpp>

#include "absl/container/inlined_vector.h"
#include "zerocan/buffer.h"
#include "zerocan/policy.h"
#include "zerocan/tensor.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {

class Registry;
class Value;
class EnvelopeWriter;

// Identity fields of every envelope (see schema/zerocan.capnp).
struct Header {
  uint64_t message_id = 0;
  uint64_t session_id = 0;
  uint64_t sequence = 0;
  uint64_t sent_at_ns = 0;  // 0 = let Finish() stamp the wall clock
};

// An encoded message, ready to send or to hand to a decoder: the envelope frame and the
// payloads that travel as frames of their own (still owned, not yet given to libzmq).
// Move-only.
class Outgoing {
 public:
  Outgoing() = default;
  Outgoing(Outgoing&&) noexcept = default;
  Outgoing& operator=(Outgoing&&) noexcept = default;

  zmq::message_t& envelope() noexcept { return envelope_; }
  const zmq::message_t& envelope() const noexcept { return envelope_; }
  const std::vector<Buffer>& payload_frames() const noexcept { return payloads_; }
  size_t frame_count() const noexcept { return 1 + payloads_.size(); }

 private:
  friend class EnvelopeWriter;
  friend class Sender;
  zmq::message_t envelope_;
  std::vector<Buffer> payloads_;
};

class ListWriter;
class MapWriter;

// Writes one Value. Cheap to copy; valid while its EnvelopeWriter lives.
class ValueWriter {
 public:
  ValueWriter(wire::Value::Builder builder, EnvelopeWriter* message, uint32_t depth) noexcept
      : builder_(builder), message_(message), depth_(depth) {}

  void Null();
  void Bool(bool value);
  void Int(int64_t value);
  void UInt(uint64_t value);
  void Float(double value);
  void Text(std::string_view value);
  // Bytes: zero-copy frame or inline copy by size (see Policy). A borrowed Buffer must
  // stay alive until the send's Tracker completes.
  void Bytes(Buffer data);
  // A contiguous typed array or tensor; same placement rule. Integer arrays small enough
  // are packed (Policy::pack_integers).
  void Array(DType dtype, const Shape& shape, Buffer data, Order order = Order::kC);
  void WriteTensor(const Tensor& tensor) {
    Array(tensor.dtype(), tensor.shape(), tensor.data(), tensor.order());
  }
  ListWriter List(size_t length);
  MapWriter Map(size_t length);
  // An extension value; write its state through the returned writer.
  ValueWriter Extension(std::string_view type_name);
  // Re-encodes a received value. Payloads in frames are forwarded without a copy (the
  // new message shares ownership of the received frame).
  void Copy(const Value& value);

  // Writes `value` through its codec (codec.h): built-in types, else the registry.
  // An rvalue container is adopted (no copy, owned by the message); an lvalue one is
  // borrowed when it goes out as a frame.
  template <class T>
  void Write(T&& value);

  EnvelopeWriter& message() const noexcept { return *message_; }
  uint32_t depth() const noexcept { return depth_; }
  wire::Value::Builder builder() const noexcept { return builder_; }

 private:
  wire::Value::Builder builder_;
  EnvelopeWriter* message_;
  uint32_t depth_;
};

class ListWriter {
 public:
  ListWriter(capnp::List<wire::Value>::Builder list, EnvelopeWriter* message, uint32_t depth)
      : list_(list), message_(message), depth_(depth) {}
  size_t size() const noexcept { return list_.size(); }
  ValueWriter operator[](size_t i) const {
    return ValueWriter(list_[static_cast<unsigned>(i)], message_, depth_);
  }

 private:
  mutable capnp::List<wire::Value>::Builder list_;
  EnvelopeWriter* message_;
  uint32_t depth_;
};

class MapWriter {
 public:
  MapWriter(capnp::List<wire::Entry>::Builder entries, EnvelopeWriter* message, uint32_t depth)
      : entries_(entries), message_(message), depth_(depth) {}
  size_t size() const noexcept { return entries_.size(); }
  ValueWriter key(size_t i) const;
  ValueWriter value(size_t i) const;

 private:
  mutable capnp::List<wire::Entry>::Builder entries_;
  EnvelopeWriter* message_;
  uint32_t depth_;
};

// Arguments of an apply being written.
class ApplyWriter {
 public:
  ApplyWriter(wire::Apply::Builder apply, EnvelopeWriter* message)
      : apply_(apply), args_(apply.getArgs()), kwargs_(apply.getKwargs()), message_(message) {}
  // With the argument lists already at hand (saves re-reading them per argument).
  ApplyWriter(wire::Apply::Builder apply, capnp::List<wire::Value>::Builder args,
              capnp::List<wire::Field>::Builder kwargs, EnvelopeWriter* message)
      : apply_(apply), args_(args), kwargs_(kwargs), message_(message) {}
  ValueWriter arg(size_t i) const;
  // Sets keyword i's name and returns its value writer.
  ValueWriter kwarg(size_t i, std::string_view name) const;

 private:
  mutable wire::Apply::Builder apply_;
  mutable capnp::List<wire::Value>::Builder args_;
  mutable capnp::List<wire::Field>::Builder kwargs_;
  EnvelopeWriter* message_;
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
  void SetHello(std::string_view peer_id, std::string_view role,
                const std::vector<std::string>& functions = {});
  void SetHeartbeat(std::string_view peer_id, uint64_t now_ns);
  void SetGoodbye();

  // Raw generated builder, for fields this API does not wrap.
  wire::Envelope::Builder envelope() noexcept { return envelope_; }

  // Serialises the envelope into its frame (the one copy of envelope bytes) and hands
  // over the payload frames. The writer is spent afterwards.
  Outgoing Finish();

  // Places `data` inline or as a frame, per policy. Used by ValueWriter and codecs.
  void PlacePayload(wire::Payload::Builder payload, Buffer data);
  const Policy& policy() const noexcept { return policy_; }
  const Registry& registry() const noexcept;

 private:
  Policy policy_;
  const Registry* registry_;
  bool scratch_taken_ = false;
  std::optional<capnp::MallocMessageBuilder> builder_;
  wire::Envelope::Builder envelope_{nullptr};
  std::vector<Buffer> payloads_;
  bool finished_ = false;
};

}  // namespace zerocan
