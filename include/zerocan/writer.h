// Encoding: EnvelopeWriter builds one message in one pass; ValueWriter writes one
// value into it. Payload bytes are placed by the writer's Policy: at or above the
// inline threshold they become their own ZeroMQ frame (no copy: the Buffer's owner is
// kept until libzmq releases the frame), below it they are copied into the envelope.
//
// The envelope is written straight in Cap'n Proto's wire format, one segment, objects in
// the order they are started (what Cap'n Proto's own builder lays out for a message that
// fits its first segment, so small envelopes match pycapnp's byte for byte). Why not the
// generated builders: in Cap'n Proto 0.9.2 each init/set of a pointer field is an
// out-of-line call of 100+ instructions; a small apply spent ~2,000 instructions there.
//
// Threading: an EnvelopeWriter and its ValueWriters belong to one thread. The envelope's
// words come from a reusable, per-thread scratch area, so building a small message
// allocates nothing until Finish() makes the frame; a large envelope's words become the
// frame itself (no copy).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <memory>
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

// An encoded message, ready to send or to hand to a decoder: the envelope's bytes and
// the payloads that travel as frames of their own (all still owned, none yet given to
// libzmq). Move-only.
//
// The envelope is a Buffer rather than a libzmq frame: a small one sits in a block from
// a per-thread cache, and becomes a frame only where it meets a socket (Send copies it
// into one, below kEnvelopeCopyBelow bytes, as cheaper than a zero-copy frame; larger
// ones go zero-copy). A message decoded in process (LoopbackFrames) never pays for a
// libzmq allocation.
class Outgoing {
 public:
  Outgoing() = default;
  Outgoing(Outgoing&&) noexcept = default;
  Outgoing& operator=(Outgoing&&) noexcept = default;

  const Buffer& envelope() const noexcept { return envelope_; }
  const std::vector<Buffer>& payload_frames() const noexcept { return payloads_; }
  size_t frame_count() const noexcept { return 1 + payloads_.size(); }
  // Moves the envelope out, for whoever turns this message into frames; envelope() is
  // empty afterwards.
  Buffer TakeEnvelope() noexcept { return std::exchange(envelope_, Buffer()); }

  // Envelopes smaller than this are copied into their frame at Send.
  static constexpr size_t kEnvelopeCopyBelow = 1024;

 private:
  friend class EnvelopeWriter;
  Outgoing(Buffer envelope, std::vector<Buffer>&& payloads)
      : envelope_(std::move(envelope)), payloads_(std::move(payloads)) {}
  Buffer envelope_;
  std::vector<Buffer> payloads_;
};

class ListWriter;
class MapWriter;

// Writes one Value. Cheap to copy; valid while its EnvelopeWriter lives.
class ValueWriter {
 public:
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

 private:
  friend class EnvelopeWriter;
  friend class ListWriter;
  friend class MapWriter;
  friend class ApplyWriter;
  // `at`: word index of the Value struct in the envelope's segment.
  ValueWriter(EnvelopeWriter* message, uint32_t at, uint32_t depth) noexcept
      : message_(message), at_(at), depth_(depth) {}
  uint32_t InitPointer(uint16_t which, uint32_t data_words, uint32_t pointers);
  // Sets the union tag and the 8-byte scalar of the Value struct (inline below: these
  // are the calls an encode makes most).
  template <class T>
  void SetScalar(uint16_t which, T value) noexcept;

  EnvelopeWriter* message_;
  uint32_t at_;
  uint32_t depth_;
};

class ListWriter {
 public:
  size_t size() const noexcept { return count_; }
  ValueWriter operator[](size_t i) const;

 private:
  friend class ValueWriter;
  ListWriter(EnvelopeWriter* message, uint32_t first, uint32_t count, uint32_t depth) noexcept
      : message_(message), first_(first), count_(count), depth_(depth) {}
  EnvelopeWriter* message_;
  uint32_t first_;  // word index of element 0
  uint32_t count_;
  uint32_t depth_;
};

class MapWriter {
 public:
  size_t size() const noexcept { return count_; }
  ValueWriter key(size_t i) const;
  ValueWriter value(size_t i) const;
  // key(i).Text(text) in one step (one bounds and capacity check): the common key.
  void TextKey(size_t i, std::string_view text) const;

 private:
  friend class ValueWriter;
  MapWriter(EnvelopeWriter* message, uint32_t first, uint32_t count, uint32_t depth) noexcept
      : message_(message), first_(first), count_(count), depth_(depth) {}
  EnvelopeWriter* message_;
  uint32_t first_;  // word index of entry 0
  uint32_t count_;
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
  ApplyWriter(EnvelopeWriter* message, uint32_t args, uint32_t arg_count, uint32_t kwargs,
              uint32_t kwarg_count) noexcept
      : message_(message), args_(args), arg_count_(arg_count), kwargs_(kwargs), kwarg_count_(kwarg_count) {}
  EnvelopeWriter* message_;
  uint32_t args_, arg_count_, kwargs_, kwarg_count_;  // first element's word index, count
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

  // The generated builder, for fields this API does not wrap (and for tests that craft
  // malformed messages). The first call copies what has been written into a Cap'n Proto
  // builder; from then on only that builder may be used, then Finish().
  wire::Envelope::Builder envelope();

  // Makes the envelope frame and hands over the payload frames. Small envelopes are
  // copied once into the frame; large ones become the frame (no copy). The writer is
  // spent afterwards.
  Outgoing Finish();

  const Policy& policy() const noexcept { return policy_; }
  const Registry& registry() const noexcept;

 private:
  friend class ValueWriter;
  friend class ListWriter;
  friend class MapWriter;
  friend class ApplyWriter;

  // Words of the envelope's one segment; index 0 is the root pointer.
  uint64_t* Word(uint32_t index) noexcept { return words_ + 1 + index; }
  // Appends `count` words, zeroed (or, with zero = false, only the last one: for blobs
  // the caller fills); returns the index of the first.
  uint32_t Allocate(uint64_t count, bool zero = true);
  void Grow(uint64_t needed);
  // Points pointer word `at` at a new struct / list / text / data; returns its index.
  // NewData's bytes are not zeroed: the caller writes all of them.
  uint32_t NewStruct(uint32_t at, uint32_t data_words, uint32_t pointers);
  uint32_t NewStructList(uint32_t at, uint32_t count, uint32_t data_words, uint32_t pointers);
  uint32_t NewList(uint32_t at, unsigned element_size, uint32_t count, uint64_t words, bool zero = true);
  void NewText(uint32_t at, std::string_view text);
  std::byte* NewData(uint32_t at, size_t size);
  // Starts the Result body (callId, engineId, union tag `which`); returns the word index
  // of its ok/error pointer.
  uint32_t NewResult(uint64_t call_id, std::string_view engine_id, uint16_t which);
  // Places `data` inline or as a frame, per policy, into the Payload struct at `payload`.
  void PlacePayload(uint32_t payload, Buffer data);

  Policy policy_;
  const Registry* registry_;
  // Word 0: the segment table; then the segment. In `block_` while the envelope fits a
  // pooled block (then Finish hands the block over, no copy), else in the thread's scratch
  // (scratch_taken_) or in words of its own.
  uint64_t* words_ = nullptr;
  uint64_t capacity_ = 0;      // words after the table
  uint64_t used_ = 0;
  std::shared_ptr<void> block_;
  bool scratch_taken_ = false;
  std::unique_ptr<capnp::MallocMessageBuilder> generated_;
  std::vector<Buffer> payloads_;
  bool finished_ = false;
};

// ---- inline hot paths ----------------------------------------------------------------

namespace internal {
// Words of one Value struct in a list of them (data section, then its pointer).
inline constexpr uint32_t kValueWords =
    wire::Value::_capnpPrivate::dataWordSize + wire::Value::_capnpPrivate::pointerCount;
// Throws EncodeError: "<what> index <i> out of range (size <n>)".
[[noreturn]] void ThrowIndexOutOfRange(const char* what, size_t i, size_t n);
// Throws EncodeError: "<what> of <n> elements exceeds the format's bound of ...".
[[noreturn]] void ThrowListTooLong(const char* what, uint64_t n);
// A list's element count is 29 bits in a Cap'n Proto list pointer.
inline constexpr uint64_t kMaxListElements = (uint64_t{1} << 29) - 1;

// Pointer words (Cap'n Proto encoding): offset in words from the word after the pointer.
constexpr uint64_t StructPointer(int64_t offset, uint32_t data_words, uint32_t pointers) noexcept {
  return static_cast<uint64_t>(static_cast<uint32_t>(offset) << 2) | uint64_t{data_words} << 32 |
         uint64_t{pointers} << 48;
}
constexpr uint64_t ListPointer(int64_t offset, unsigned element_size, uint64_t count) noexcept {
  return static_cast<uint64_t>(static_cast<uint32_t>(offset) << 2) | 1 | uint64_t{element_size} << 32 |
         count << 35;
}
inline constexpr unsigned kByteElements = 2, kEightByteElements = 5, kPointerElements = 6, kComposite = 7;

// memcpy for the short strings most messages carry (names, keys): two overlapping
// fixed-size copies instead of a call into libc that dispatches on the size.
inline void CopyShort(void* dst, const void* src, size_t n) noexcept {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  if (n >= 8 && n <= 16) {
    std::memcpy(d, s, 8);
    std::memcpy(d + n - 8, s + n - 8, 8);
  } else if (n >= 4 && n < 8) {
    std::memcpy(d, s, 4);
    std::memcpy(d + n - 4, s + n - 4, 4);
  } else if (n > 16) {
    std::memcpy(d, s, n);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
  }
}
}  // namespace internal

// The word allocator and the calls an encode makes per value are inline: with the
// sizes known at the call site, a struct's zeroing is a few stores, not a loop.
inline uint32_t EnvelopeWriter::Allocate(uint64_t count, bool zero) {
  uint64_t start = used_;
  if (count > capacity_ - used_) Grow(count);
  uint64_t* w = Word(static_cast<uint32_t>(start));
  if (!zero) {
    // The caller fills every byte but the padding: only the last word needs zeroes.
    if (count != 0) w[count - 1] = 0;
  } else {
    std::memset(w, 0, count * sizeof(uint64_t));
  }
  used_ += count;
  return static_cast<uint32_t>(start);
}

inline uint32_t EnvelopeWriter::NewStruct(uint32_t at, uint32_t data_words, uint32_t pointers) {
  uint32_t s = Allocate(uint64_t{data_words} + pointers);
  *Word(at) = internal::StructPointer(int64_t{s} - at - 1, data_words, pointers);
  return s;
}

inline uint32_t EnvelopeWriter::NewStructList(uint32_t at, uint32_t count, uint32_t data_words,
                                              uint32_t pointers) {
  uint64_t words = uint64_t{count} * (data_words + pointers);
  // The list pointer's 29-bit count is the words after the tag.
  if (words > internal::kMaxListElements) internal::ThrowListTooLong("list (in words)", words);
  uint32_t tag = Allocate(1 + words);
  *Word(at) = internal::ListPointer(int64_t{tag} - at - 1, internal::kComposite, words);
  *Word(tag) = internal::StructPointer(count, data_words, pointers);  // the tag: element count
  return tag + 1;
}

inline uint32_t EnvelopeWriter::NewList(uint32_t at, unsigned element_size, uint32_t count, uint64_t words,
                                        bool zero) {
  uint32_t first = Allocate(words, zero);
  *Word(at) = internal::ListPointer(int64_t{first} - at - 1, element_size, count);
  return first;
}

inline void EnvelopeWriter::NewText(uint32_t at, std::string_view text) {
  uint64_t bytes = uint64_t{text.size()} + 1;  // with its NUL
  if (bytes > internal::kMaxListElements) internal::ThrowListTooLong("text", bytes);
  // Not zeroed first: the text fills it, and the last word (NUL, padding) is zeroed.
  uint32_t first = NewList(at, internal::kByteElements, static_cast<uint32_t>(bytes), (bytes + 7) / 8, false);
  internal::CopyShort(Word(first), text.data(), text.size());
}

template <class T>
void ValueWriter::SetScalar(uint16_t which, T value) noexcept {
  static_assert(sizeof(T) == 8);
  char* v = reinterpret_cast<char*>(message_->Word(at_));
  std::memcpy(v, &which, sizeof which);    // union tag: bytes 0-1
  std::memcpy(v + 8, &value, sizeof value);  // int, uint, float: word 1
}
inline void ValueWriter::Int(int64_t value) { SetScalar(wire::Value::INT, value); }
inline void ValueWriter::Text(std::string_view value) {
  uint16_t which = wire::Value::TEXT;
  std::memcpy(message_->Word(at_), &which, sizeof which);
  message_->NewText(at_ + wire::Value::_capnpPrivate::dataWordSize, value);
}
inline void ValueWriter::UInt(uint64_t value) { SetScalar(wire::Value::UINT, value); }
inline void ValueWriter::Float(double value) { SetScalar(wire::Value::FLOAT, value); }

inline ValueWriter ApplyWriter::arg(size_t i) const {
  if (i >= arg_count_) internal::ThrowIndexOutOfRange("argument", i, arg_count_);
  return ValueWriter(message_, args_ + static_cast<uint32_t>(i) * internal::kValueWords, 0);
}

// Entry: pointer 0 = key, pointer 1 = value (each a Value struct, made when started).
inline ValueWriter MapWriter::key(size_t i) const {
  if (i >= count_) internal::ThrowIndexOutOfRange("map entry", i, count_);
  uint32_t entry = first_ + static_cast<uint32_t>(i) * wire::Entry::_capnpPrivate::pointerCount;
  return ValueWriter(message_,
                     message_->NewStruct(entry, wire::Value::_capnpPrivate::dataWordSize,
                                         wire::Value::_capnpPrivate::pointerCount),
                     depth_);
}
inline ValueWriter MapWriter::value(size_t i) const {
  if (i >= count_) internal::ThrowIndexOutOfRange("map entry", i, count_);
  uint32_t entry = first_ + static_cast<uint32_t>(i) * wire::Entry::_capnpPrivate::pointerCount;
  return ValueWriter(message_,
                     message_->NewStruct(entry + 1, wire::Value::_capnpPrivate::dataWordSize,
                                         wire::Value::_capnpPrivate::pointerCount),
                     depth_);
}

inline void MapWriter::TextKey(size_t i, std::string_view text) const {
  if (i >= count_) internal::ThrowIndexOutOfRange("map entry", i, count_);
  uint64_t bytes = uint64_t{text.size()} + 1;  // with its NUL
  if (bytes > internal::kMaxListElements) internal::ThrowListTooLong("text", bytes);
  constexpr uint32_t kData = wire::Value::_capnpPrivate::dataWordSize;
  constexpr uint32_t kPointers = wire::Value::_capnpPrivate::pointerCount;
  // The same words, in the same order, as key(i) then Text(): the Value struct, then
  // the text's bytes right after it.
  uint64_t text_words = (bytes + 7) / 8;
  uint32_t entry = first_ + static_cast<uint32_t>(i) * wire::Entry::_capnpPrivate::pointerCount;
  uint32_t key = message_->Allocate(kData + kPointers + text_words, false);
  uint64_t* k = message_->Word(key);
  for (uint32_t w = 0; w < kData + kPointers; ++w) k[w] = 0;
  k[kData + kPointers + text_words - 1] = 0;  // the text's last word: NUL and padding
  uint16_t which = wire::Value::TEXT;
  std::memcpy(k, &which, sizeof which);
  *message_->Word(entry) = internal::StructPointer(int64_t{key} - entry - 1, kData, kPointers);
  k[kData] = internal::ListPointer(kPointers - 1, internal::kByteElements, bytes);  // text follows at once
  internal::CopyShort(k + kData + kPointers, text.data(), text.size());
}

inline ValueWriter ListWriter::operator[](size_t i) const {
  if (i >= count_) internal::ThrowIndexOutOfRange("list element", i, count_);
  return ValueWriter(message_, first_ + static_cast<uint32_t>(i) * internal::kValueWords, depth_);
}

}  // namespace zerocan
