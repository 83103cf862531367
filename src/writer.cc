#include "zerocan/writer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <time.h>

#include <capnp/serialize.h>

#include "absl/strings/str_cat.h"
#include "internal/block_cache.h"
#include "internal/strings.h"
#include "absl/strings/str_join.h"
#include "zerocan/codec.h"
#include "zerocan/registry.h"
#include "zerocan/stats.h"
#include "zerocan/value.h"
#include "zerocan/version.h"

namespace zerocan {

static_assert(static_cast<int>(wire::DType::COMPLEX128) == static_cast<int>(DType::kComplex128),
              "zerocan::DType must number its members as the schema does");

namespace {

// Deeper values are refused at encode time, matching DecodeLimits' default, so we never
// produce a message a default receiver would reject for depth. The decoder counts an
// argument as level 1 while a ValueWriter's depth starts at 0, hence `depth_ + 1` below.
constexpr uint32_t kMaxEncodeDepth = 64;
// Cap'n Proto lists and Data hold fewer than 2^29 elements.
constexpr uint64_t kMaxCapnpList = internal::kMaxListElements;

// Per-thread scratch words, reused message after message, for an envelope that outgrows
// its blocks (below): it is written here and copied once into its own buffer. One
// that outgrows kHandOverWords keeps its (grown) words instead, and the thread starts a
// fresh scratch.
//
// The layout never depends on the scratch's size (always one segment, objects in the
// order started), so an envelope's bytes do not depend on what the thread sent before.
constexpr uint64_t kScratchWords = 8192;          // 64 KiB
constexpr uint64_t kHandOverWords = 32 * 1024;    // 256 KiB: above, no copy at Finish
// One segment's size is a 32-bit word count, and pointer offsets are 30-bit signed.
constexpr uint64_t kMaxSegmentWords = (uint64_t{1} << 29) - 1;

struct Scratch {
  uint64_t* words = nullptr;  // malloc'd; table word + capacity words
  uint64_t capacity = 0;
  bool in_use = false;
  ~Scratch() { std::free(words); }
};
thread_local Scratch tls_scratch;

// Where every envelope starts: a block from the thread's block cache, with its
// shared_ptr control block in the same allocation. Most envelopes (every small call and
// result) fit one, and Finish hands the block itself over as the envelope: no copy, no
// malloc. Three sizes, so that a message kept alive holds at most about four times its
// envelope's bytes; an envelope moves up a size as it grows, then to the thread's
// scratch. The constructor leaves the words uninitialised (the writer zeroes what it uses).
template <uint64_t kWords>
struct EnvelopeBlock {
  EnvelopeBlock() noexcept {}
  uint64_t words[kWords];  // the segment table, then the segment
};
constexpr uint64_t kBlockWords[] = {32, 128, 512};  // 256 B, 1 KiB, 4 KiB

template <uint64_t kWords>
std::shared_ptr<void> NewBlock(uint64_t** words) {
  auto block = std::allocate_shared<EnvelopeBlock<kWords>>(
      internal::CachingAllocator<EnvelopeBlock<kWords>>());
  *words = block->words;
  return block;
}

uint64_t* AllocateWords(uint64_t capacity) {
  auto* p = static_cast<uint64_t*>(std::malloc((capacity + 1) * sizeof(uint64_t)));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// Struct sizes from the generated code.
template <class T>
constexpr uint32_t kDataWords = T::_capnpPrivate::dataWordSize;
template <class T>
constexpr uint32_t kPointers = T::_capnpPrivate::pointerCount;

using internal::StructPointer;
using internal::ListPointer;
using internal::kByteElements;
using internal::kEightByteElements;
using internal::kPointerElements;
using internal::kComposite;

template <class T>
void Store(uint64_t* word, uint32_t byte_offset, T value) {
  std::memcpy(reinterpret_cast<char*>(word) + byte_offset, &value, sizeof value);
}

// The stamp for sentAtNs. The kernel's coarse wall clock (resolution: a scheduler tick,
// 1-4 ms) costs ~3 ns where the precise one costs ~22 ns on this VM, a tenth of a small
// apply's encode+decode; sentAtNs only serves windows of seconds (replay max_age and
// clock skew) and millisecond deadlines.
uint64_t NowNs() {
#ifdef CLOCK_REALTIME_COARSE
  timespec now;
  if (clock_gettime(CLOCK_REALTIME_COARSE, &now) == 0) {
    return static_cast<uint64_t>(now.tv_sec) * 1000000000u + static_cast<uint64_t>(now.tv_nsec);
  }
#endif
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

void CheckListLength(size_t n, const char* what) {
  if (n > kMaxCapnpList) internal::ThrowListTooLong(what, n);
}

// Smallest integer packing that holds [lo, hi], or NONE when it would not be narrower.
template <class T>
wire::Packing ChoosePacking(const T* p, size_t n, size_t item_size) {
  if (n == 0) return wire::Packing::NONE;
  // Four independent running bounds: the loop is latency-bound otherwise (no 64-bit
  // vector min/max in baseline x86-64).
  T lo[4] = {p[0], p[0], p[0], p[0]}, hi[4] = {p[0], p[0], p[0], p[0]};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (size_t k = 0; k < 4; ++k) {
      lo[k] = p[i + k] < lo[k] ? p[i + k] : lo[k];
      hi[k] = p[i + k] > hi[k] ? p[i + k] : hi[k];
    }
  }
  for (; i < n; ++i) {
    lo[0] = p[i] < lo[0] ? p[i] : lo[0];
    hi[0] = p[i] > hi[0] ? p[i] : hi[0];
  }
  for (size_t k = 1; k < 4; ++k) {
    lo[0] = lo[k] < lo[0] ? lo[k] : lo[0];
    hi[0] = hi[k] > hi[0] ? hi[k] : hi[0];
  }
  auto fits = [&](long double a, long double b) {
    return static_cast<long double>(lo[0]) >= a && static_cast<long double>(hi[0]) <= b;
  };
  struct Option {
    wire::Packing packing;
    size_t size;
    long double lo, hi;
  };
  static constexpr Option kOptions[] = {
      {wire::Packing::UINT8, 1, 0, 255},
      {wire::Packing::INT8, 1, -128, 127},
      {wire::Packing::UINT16, 2, 0, 65535},
      {wire::Packing::INT16, 2, -32768, 32767},
      {wire::Packing::UINT32, 4, 0, 4294967295.0L},
      {wire::Packing::INT32, 4, -2147483648.0L, 2147483647.0L},
  };
  for (const Option& o : kOptions) {
    if (o.size < item_size && fits(o.lo, o.hi)) return o.packing;
  }
  return wire::Packing::NONE;
}

size_t PackingSize(wire::Packing p) {
  switch (p) {
    case wire::Packing::INT8:
    case wire::Packing::UINT8:
      return 1;
    case wire::Packing::INT16:
    case wire::Packing::UINT16:
      return 2;
    case wire::Packing::INT32:
    case wire::Packing::UINT32:
      return 4;
    default:
      return 0;
  }
}

template <class From, class To>
void Narrow(const From* src, size_t n, std::byte* dst) {
  To* out = reinterpret_cast<To*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<To>(src[i]);
}

template <class T>
void WritePacked(const T* src, size_t n, wire::Packing p, std::byte* dst) {
  switch (p) {
    case wire::Packing::INT8: return Narrow<T, int8_t>(src, n, dst);
    case wire::Packing::UINT8: return Narrow<T, uint8_t>(src, n, dst);
    case wire::Packing::INT16: return Narrow<T, int16_t>(src, n, dst);
    case wire::Packing::UINT16: return Narrow<T, uint16_t>(src, n, dst);
    case wire::Packing::INT32: return Narrow<T, int32_t>(src, n, dst);
    case wire::Packing::UINT32: return Narrow<T, uint32_t>(src, n, dst);
    default: return;
  }
}

}  // namespace

// ---- EnvelopeWriter: words ---------------------------------------------------------


void EnvelopeWriter::Grow(uint64_t needed) {
  if (needed > kMaxSegmentWords - used_) {
    throw EncodeError(absl::StrCat("envelope of more than ", kMaxSegmentWords * 8,
                                   " bytes (put large payloads in frames: Policy::inline_threshold)"));
  }
  if (block_ != nullptr) {
    // Outgrew its block: on in the smallest larger block that fits, else in the thread's
    // scratch, or in words of its own when another writer on this thread holds it.
    uint64_t* to;
    uint64_t capacity;
    std::shared_ptr<void> block;
    const uint64_t want = used_ + needed;  // words after the table
    if (want < kBlockWords[1] && capacity_ < kBlockWords[1] - 1) {
      block = NewBlock<kBlockWords[1]>(&to);
      capacity = kBlockWords[1] - 1;
    } else if (want < kBlockWords[2]) {
      block = NewBlock<kBlockWords[2]>(&to);
      capacity = kBlockWords[2] - 1;
    } else if (!tls_scratch.in_use) {
      if (tls_scratch.words == nullptr) {
        tls_scratch.words = AllocateWords(kScratchWords);
        tls_scratch.capacity = kScratchWords;
      }
      tls_scratch.in_use = true;
      scratch_taken_ = true;
      to = tls_scratch.words;
      capacity = tls_scratch.capacity;
    } else {
      to = AllocateWords(kScratchWords);
      capacity = kScratchWords;
    }
    std::memcpy(to, words_, (used_ + 1) * sizeof(uint64_t));
    words_ = to;
    capacity_ = capacity;
    block_ = std::move(block);
    if (needed <= capacity_ - used_) return;
  }
  uint64_t capacity = std::max(capacity_ * 2, used_ + needed);
  capacity = std::min(capacity, kMaxSegmentWords);
  // realloc: a large block at the top of the heap (or a mapped one) grows in place
  // instead of being copied at every doubling.
  auto* grown = static_cast<uint64_t*>(std::realloc(words_, (capacity + 1) * sizeof(uint64_t)));
  if (grown == nullptr) throw std::bad_alloc();
  if (scratch_taken_) {
    // The thread's scratch grows with it (bounded: a hand-over at Finish drops it).
    tls_scratch.words = grown;
    tls_scratch.capacity = capacity;
  }
  words_ = grown;
  capacity_ = capacity;
}





std::byte* EnvelopeWriter::NewData(uint32_t at, size_t size) {
  CheckListLength(size, "data");
  // Not zeroed first: the caller writes all `size` bytes (the last word's padding is
  // zeroed), which saves clearing an inline payload just before copying it in.
  uint32_t first = NewList(at, kByteElements, static_cast<uint32_t>(size), (size + 7) / 8, false);
  return reinterpret_cast<std::byte*>(Word(first));
}

namespace {

// Tries to store an integer array packed inline; returns false to place it as is.
template <class T>
bool TryPack(EnvelopeWriter* w, uint32_t tensor, const Buffer& data, size_t threshold,
             uint32_t (*new_payload)(EnvelopeWriter*, uint32_t), std::byte* (*new_inline)(EnvelopeWriter*, uint32_t, size_t),
             void (*set_packing)(EnvelopeWriter*, uint32_t, wire::Packing)) {
  // Bytes forwarded as received (ValueWriter::Copy) may sit at any offset in their frame;
  // reading them as T would be a misaligned load. They are placed as they are instead.
  if (!IsAligned(data.data(), alignof(T))) return false;
  const T* p = reinterpret_cast<const T*>(data.data());
  size_t n = data.size() / sizeof(T);
  // Only worth a scan when the packed form could be inline.
  if (n == 0 || n >= threshold) return false;
  wire::Packing packing = ChoosePacking(p, n, sizeof(T));
  if (packing == wire::Packing::NONE) return false;
  size_t packed_bytes = n * PackingSize(packing);
  if (packed_bytes >= threshold) return false;
  set_packing(w, tensor, packing);
  uint32_t payload = new_payload(w, tensor);
  WritePacked(p, n, packing, new_inline(w, payload, packed_bytes));
  Bump(GlobalStats().payloads_inlined);
  return true;
}

}  // namespace

// ---- ValueWriter -------------------------------------------------------------------

// Value: union tag (uint16 at byte 0), bool at bit 16, int/uint/float in word 1, and one
// pointer for text/bytes/list/map/tensor/extension.
namespace {
constexpr uint32_t kValueData = kDataWords<wire::Value>;
constexpr uint32_t kValuePointer = kValueData;  // pointer 0's word offset in the struct
constexpr uint32_t kPayloadPointer = kDataWords<wire::Payload>;
constexpr uint32_t kTensorShape = kDataWords<wire::Tensor>;
constexpr uint32_t kTensorData = kDataWords<wire::Tensor> + 1;
void SetTag(uint64_t* struct_words, uint32_t byte_offset, uint16_t tag) { Store(struct_words, byte_offset, tag); }
}  // namespace

uint32_t ValueWriter::InitPointer(uint16_t which, uint32_t data_words, uint32_t pointers) {
  SetTag(message_->Word(at_), 0, which);
  return message_->NewStruct(at_ + kValuePointer, data_words, pointers);
}

void ValueWriter::Null() { SetTag(message_->Word(at_), 0, wire::Value::NULL_); }
void ValueWriter::Bool(bool v) {
  uint64_t* w = message_->Word(at_);
  SetTag(w, 0, wire::Value::BOOL);
  unsigned char* byte = reinterpret_cast<unsigned char*>(w) + 2;
  *byte = static_cast<unsigned char>((*byte & ~1u) | (v ? 1u : 0u));
}


void ValueWriter::Bytes(Buffer data) {
  uint32_t payload = InitPointer(wire::Value::BYTES, kDataWords<wire::Payload>, kPointers<wire::Payload>);
  message_->PlacePayload(payload, std::move(data));
}

void ValueWriter::Array(DType dtype, const Shape& shape, Buffer data, Order order) {
  auto count = ElementCount(shape);
  size_t item = ItemSize(dtype);
  if (!count || *count > UINT64_MAX / item || *count * item != data.size()) {
    throw EncodeError(absl::StrCat("array: shape ", absl::StrJoin(shape, "x"), " ",
                                   internal::Sv(DTypeName(dtype)), " needs ",
                                   count ? absl::StrCat(*count * item) : "overflowing", " bytes, ",
                                   "buffer has ", data.size()));
  }
  CheckListLength(shape.size(), "shape");
  EnvelopeWriter& m = *message_;
  uint32_t tensor = InitPointer(wire::Value::TENSOR, kDataWords<wire::Tensor>, kPointers<wire::Tensor>);
  Store(m.Word(tensor), 0, static_cast<uint16_t>(dtype));
  uint32_t dims = m.NewList(tensor + kTensorShape, kEightByteElements, static_cast<uint32_t>(shape.size()),
                            shape.size());
  for (size_t i = 0; i < shape.size(); ++i) Store(m.Word(dims + static_cast<uint32_t>(i)), 0, uint64_t{shape[i]});
  Store(m.Word(tensor), 2, static_cast<uint16_t>(order == Order::kC ? wire::Order::C : wire::Order::FORTRAN));
  // byteOrder stays LITTLE: every supported host is little-endian.
  auto new_payload = [](EnvelopeWriter* w, uint32_t t) {
    return w->NewStruct(t + kTensorData, kDataWords<wire::Payload>, kPointers<wire::Payload>);
  };
  const Policy& policy = m.policy();
  if (policy.pack_integers && IsInteger(dtype) && item > 1 && data.size() < 8 * policy.inline_threshold) {
    auto set_packing = [](EnvelopeWriter* w, uint32_t t, wire::Packing p) {
      Store(w->Word(t), 6, static_cast<uint16_t>(p));
    };
    auto new_inline = [](EnvelopeWriter* w, uint32_t payload, size_t bytes) {
      SetTag(w->Word(payload), 0, wire::Payload::INLINE);
      return w->NewData(payload + kPayloadPointer, bytes);
    };
    bool packed = false;
    size_t t = policy.inline_threshold;
    switch (dtype) {
      case DType::kInt16: packed = TryPack<int16_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      case DType::kInt32: packed = TryPack<int32_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      case DType::kInt64: packed = TryPack<int64_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      case DType::kUInt16: packed = TryPack<uint16_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      case DType::kUInt32: packed = TryPack<uint32_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      case DType::kUInt64: packed = TryPack<uint64_t>(&m, tensor, data, t, new_payload, new_inline, set_packing); break;
      default: break;
    }
    if (packed) return;
  }
  m.PlacePayload(new_payload(&m, tensor), std::move(data));
}

namespace {
// A container sits one level below its writer and its elements one more; an empty one
// has no elements, so it may sit at the last level (as the decoder allows).
void CheckContainerDepth(uint32_t depth, size_t length) {
  if (depth + (length > 0 ? 2 : 1) > kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
}
}  // namespace

ListWriter ValueWriter::List(size_t length) {
  CheckContainerDepth(depth_, length);
  CheckListLength(length, "list");
  SetTag(message_->Word(at_), 0, wire::Value::LIST);
  uint32_t first = message_->NewStructList(at_ + kValuePointer, static_cast<uint32_t>(length),
                                           kDataWords<wire::Value>, kPointers<wire::Value>);
  return ListWriter(message_, first, static_cast<uint32_t>(length), depth_ + 1);
}

MapWriter ValueWriter::Map(size_t length) {
  CheckContainerDepth(depth_, length);
  CheckListLength(length, "map");
  SetTag(message_->Word(at_), 0, wire::Value::MAP);
  uint32_t first = message_->NewStructList(at_ + kValuePointer, static_cast<uint32_t>(length),
                                           kDataWords<wire::Entry>, kPointers<wire::Entry>);
  return MapWriter(message_, first, static_cast<uint32_t>(length), depth_ + 1);
}

ValueWriter ValueWriter::Extension(std::string_view type_name) {
  if (depth_ + 1 >= kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
  uint32_t ext = InitPointer(wire::Value::EXTENSION, kDataWords<wire::Extension>, kPointers<wire::Extension>);
  message_->NewText(ext, type_name);  // pointer 0: typeName
  uint32_t state = message_->NewStruct(ext + 1, kDataWords<wire::Value>, kPointers<wire::Value>);
  return ValueWriter(message_, state, depth_ + 1);
}

void ValueWriter::Copy(const Value& value) {
  const auto& r = value.reader();
  switch (value.kind()) {
    case Kind::kNull: return Null();
    case Kind::kBool: return Bool(r.getBool());
    case Kind::kInt: return Int(r.getInt());
    case Kind::kUInt: return UInt(r.getUint());
    case Kind::kFloat: return Float(r.getFloat());
    case Kind::kText: return Text(value.AsText());
    case Kind::kBytes: return Bytes(value.AsBytes());
    case Kind::kList: {
      ListWriter list = List(value.size());
      for (size_t i = 0; i < value.size(); ++i) list[i].Copy(value[i]);
      return;
    }
    case Kind::kMap: {
      MapWriter map = Map(value.size());
      for (size_t i = 0; i < value.size(); ++i) {
        map.key(i).Copy(value.key(i));
        map.value(i).Copy(value.value(i));
      }
      return;
    }
    case Kind::kTensor: {
      auto t = r.getTensor();
      Shape shape;
      for (uint64_t d : t.getShape()) shape.push_back(d);
      auto order = t.getOrder() == wire::Order::FORTRAN ? Order::kFortran : Order::kC;
      if (t.getPacking() != wire::Packing::NONE || t.getByteOrder() != wire::ByteOrder::LITTLE) {
        // Forward as received, field by field. Packed payloads stay inline (the decoder
        // enforces it) whatever this writer's threshold; a big-endian payload may sit in
        // a frame of the received message, whose index means nothing in this one, so its
        // bytes are placed again.
        EnvelopeWriter& m = *message_;
        uint32_t out = InitPointer(wire::Value::TENSOR, kDataWords<wire::Tensor>, kPointers<wire::Tensor>);
        Store(m.Word(out), 0, static_cast<uint16_t>(t.getDtype()));
        Store(m.Word(out), 2, static_cast<uint16_t>(t.getOrder()));
        Store(m.Word(out), 4, static_cast<uint16_t>(t.getByteOrder()));
        Store(m.Word(out), 6, static_cast<uint16_t>(t.getPacking()));
        uint32_t dims = m.NewList(out + kTensorShape, kEightByteElements, static_cast<uint32_t>(shape.size()),
                                  shape.size());
        for (size_t i = 0; i < shape.size(); ++i) Store(m.Word(dims + static_cast<uint32_t>(i)), 0, uint64_t{shape[i]});
        uint32_t payload = m.NewStruct(out + kTensorData, kDataWords<wire::Payload>, kPointers<wire::Payload>);
        if (t.getPacking() != wire::Packing::NONE) {
          auto packed = t.getData().getInline();
          SetTag(m.Word(payload), 0, wire::Payload::INLINE);
          std::byte* dst = m.NewData(payload + kPayloadPointer, packed.size());
          if (packed.size() != 0) std::memcpy(dst, packed.begin(), packed.size());
        } else {
          m.PlacePayload(payload, value.TensorBytes());
        }
        return;
      }
      // The bytes as they are (no realignment copy: we only forward them).
      return Array(static_cast<DType>(t.getDtype()), shape, value.TensorBytes(), order);
    }
    case Kind::kExtension: {
      ValueWriter state = Extension(value.extension_name());
      state.Copy(value.extension_state());
      return;
    }
  }
}

namespace internal {
void ThrowIndexOutOfRange(const char* what, size_t i, size_t n) {
  throw EncodeError(absl::StrCat(what, " index ", i, " out of range (size ", n, ")"));
}
void ThrowListTooLong(const char* what, uint64_t n) {
  throw EncodeError(absl::StrCat(what, " of ", n, " elements exceeds the format's bound of ",
                                 kMaxCapnpList));
}
}  // namespace internal
static_assert(internal::kValueWords == kDataWords<wire::Value> + kPointers<wire::Value>);

// Entry: pointer 0 = key, pointer 1 = value (each a Value struct, made when started).

// Field: pointer 0 = key (text), pointer 1 = value.
ValueWriter ApplyWriter::kwarg(size_t i, std::string_view name) const {
  if (i >= kwarg_count_) internal::ThrowIndexOutOfRange("keyword argument", i, kwarg_count_);
  uint32_t field = kwargs_ + static_cast<uint32_t>(i) * kPointers<wire::Field>;
  message_->NewText(field, name);
  return ValueWriter(message_, message_->NewStruct(field + 1, kDataWords<wire::Value>, kPointers<wire::Value>), 0);
}

// ---- EnvelopeWriter ----------------------------------------------------------------

// Envelope: version u16 @0, body tag u16 @2, payloadFrames u32 @4, messageId @8,
// sessionId @16, sequence @24, sentAtNs @32; pointer 0 = the body's struct.
namespace {
constexpr uint32_t kRoot = 0;
constexpr uint32_t kEnvelope = 1;  // the root struct follows the root pointer
constexpr uint32_t kBodyPointer = kEnvelope + kDataWords<wire::Envelope>;
}  // namespace

EnvelopeWriter::EnvelopeWriter(const Policy& policy, const Registry* registry)
    : policy_(policy), registry_(registry) {
  block_ = NewBlock<kBlockWords[0]>(&words_);
  capacity_ = kBlockWords[0] - 1;
  Allocate(1);  // the root pointer
  NewStruct(kRoot, kDataWords<wire::Envelope>, kPointers<wire::Envelope>);
  Store(Word(kEnvelope), 0, static_cast<uint16_t>(kProtocolVersion));
}

EnvelopeWriter::~EnvelopeWriter() {
  if (scratch_taken_) {
    tls_scratch.in_use = false;
  } else if (block_ == nullptr) {
    std::free(words_);  // words of its own (null once handed over)
  }
}

const Registry& EnvelopeWriter::registry() const noexcept {
  return registry_ != nullptr ? *registry_ : Registry::Default();
}

void EnvelopeWriter::SetHeader(const Header& h) {
  uint64_t* e = Word(kEnvelope);
  Store(e, 8, h.message_id);
  Store(e, 16, h.session_id);
  Store(e, 24, h.sequence);
  Store(e, 32, h.sent_at_ns);
}

namespace {
void SetBody(uint64_t* envelope, wire::Envelope::Body::Which which) {
  Store(envelope, 2, static_cast<uint16_t>(which));
}
}  // namespace

ApplyWriter EnvelopeWriter::StartApply(std::string_view function, size_t arg_count,
                                       size_t kwarg_count, uint32_t timeout_ms) {
  CheckListLength(arg_count, "args");
  CheckListLength(kwarg_count, "kwargs");
  constexpr uint32_t kApplyData = kDataWords<wire::Apply>;
  constexpr uint32_t kApplyWords = kApplyData + kPointers<wire::Apply>;
  constexpr uint64_t kValueWords = kDataWords<wire::Value> + kPointers<wire::Value>;
  constexpr uint64_t kFieldWords = kDataWords<wire::Field> + kPointers<wire::Field>;
  const uint64_t text_bytes = uint64_t{function.size()} + 1;  // with its NUL
  const uint64_t args_words = arg_count * kValueWords, kwargs_words = kwarg_count * kFieldWords;
  // A list pointer's 29-bit count: bytes of the text, words after a list's tag.
  if (text_bytes > internal::kMaxListElements) internal::ThrowListTooLong("text", text_bytes);
  if (args_words > internal::kMaxListElements) internal::ThrowListTooLong("list (in words)", args_words);
  if (kwargs_words > internal::kMaxListElements) internal::ThrowListTooLong("list (in words)", kwargs_words);
  SetBody(Word(kEnvelope), wire::Envelope::Body::APPLY);
  // Apply: timeoutMs u32 @0; pointers function, args, kwargs. The struct, the function's
  // text and both lists (tag, elements) are one zeroed allocation: the same words in the
  // same order as four allocations, for a quarter of the bookkeeping.
  const uint64_t text_words = (text_bytes + 7) / 8;
  const uint32_t apply = Allocate(kApplyWords + text_words + 1 + args_words + 1 + kwargs_words);
  const uint32_t text = apply + kApplyWords;
  const uint32_t args_tag = text + static_cast<uint32_t>(text_words);
  const uint32_t kwargs_tag = args_tag + 1 + static_cast<uint32_t>(args_words);
  const uint32_t p = apply + kApplyData;
  *Word(kBodyPointer) = internal::StructPointer(int64_t{apply} - kBodyPointer - 1, kApplyData,
                                                kPointers<wire::Apply>);
  *Word(p) = internal::ListPointer(int64_t{text} - p - 1, internal::kByteElements, text_bytes);
  internal::CopyShort(Word(text), function.data(), function.size());
  *Word(p + 1) = internal::ListPointer(int64_t{args_tag} - (p + 1) - 1, internal::kComposite, args_words);
  *Word(args_tag) = internal::StructPointer(static_cast<int64_t>(arg_count), kDataWords<wire::Value>,
                                            kPointers<wire::Value>);
  *Word(p + 2) = internal::ListPointer(int64_t{kwargs_tag} - (p + 2) - 1, internal::kComposite,
                                       kwargs_words);
  *Word(kwargs_tag) = internal::StructPointer(static_cast<int64_t>(kwarg_count), kDataWords<wire::Field>,
                                              kPointers<wire::Field>);
  Store(Word(apply), 0, timeout_ms);
  return ApplyWriter(this, args_tag + 1, static_cast<uint32_t>(arg_count), kwargs_tag + 1,
                     static_cast<uint32_t>(kwarg_count));
}

// Result: callId @0, union tag u16 @8; pointers engineId, then ok/error.
uint32_t EnvelopeWriter::NewResult(uint64_t call_id, std::string_view engine_id, uint16_t which) {
  SetBody(Word(kEnvelope), wire::Envelope::Body::RESULT);
  uint32_t result = NewStruct(kBodyPointer, kDataWords<wire::Result>, kPointers<wire::Result>);
  Store(Word(result), 0, call_id);
  uint32_t p = result + kDataWords<wire::Result>;
  NewText(p, engine_id);
  Store(Word(result), 8, which);
  return p + 1;
}

ValueWriter EnvelopeWriter::StartResult(uint64_t call_id, std::string_view engine_id) {
  uint32_t ok = NewResult(call_id, engine_id, wire::Result::OK);
  return ValueWriter(this, NewStruct(ok, kDataWords<wire::Value>, kPointers<wire::Value>), 0);
}

void EnvelopeWriter::SetError(uint64_t call_id, std::string_view engine_id,
                              const RemoteErrorInfo& error) {
  uint32_t at = NewResult(call_id, engine_id, wire::Result::ERROR);
  uint32_t e = NewStruct(at, kDataWords<wire::RemoteError>, kPointers<wire::RemoteError>);
  NewText(e, error.type);
  NewText(e + 1, error.message);
  NewText(e + 2, error.function);
  NewText(e + 3, error.where);
}

void EnvelopeWriter::SetHello(std::string_view peer_id, std::string_view role,
                              const std::vector<std::string>& functions) {
  CheckListLength(functions.size(), "functions");
  SetBody(Word(kEnvelope), wire::Envelope::Body::HELLO);
  uint32_t hello = NewStruct(kBodyPointer, kDataWords<wire::Hello>, kPointers<wire::Hello>);
  uint32_t p = hello + kDataWords<wire::Hello>;
  NewText(p, peer_id);
  NewText(p + 1, role);
  uint32_t list = NewList(p + 2, kPointerElements, static_cast<uint32_t>(functions.size()), functions.size());
  for (size_t i = 0; i < functions.size(); ++i) NewText(list + static_cast<uint32_t>(i), functions[i]);
}

void EnvelopeWriter::SetHeartbeat(std::string_view peer_id, uint64_t now_ns) {
  SetBody(Word(kEnvelope), wire::Envelope::Body::HEARTBEAT);
  uint32_t hb = NewStruct(kBodyPointer, kDataWords<wire::Heartbeat>, kPointers<wire::Heartbeat>);
  NewText(hb + kDataWords<wire::Heartbeat>, peer_id);
  Store(Word(hb), 0, now_ns);
}

void EnvelopeWriter::SetGoodbye() { SetBody(Word(kEnvelope), wire::Envelope::Body::GOODBYE); }

// Payload: union tag u16 @0; pointer 0 = inline data or the FrameRef struct
// (index u32 @0, offset @8, length @16).
void EnvelopeWriter::PlacePayload(uint32_t payload, Buffer data) {
  size_t size = data.size();
  bool as_frame = size > 0 && (size >= policy_.inline_threshold || size > kMaxCapnpList);
  if (as_frame) {
    if (payloads_.size() >= std::numeric_limits<uint32_t>::max() - 1) {
      throw EncodeError("too many payload frames in one message");
    }
    payloads_.push_back(std::move(data));
    SetTag(Word(payload), 0, wire::Payload::FRAME);
    uint32_t ref = NewStruct(payload + kPayloadPointer, kDataWords<wire::FrameRef>, kPointers<wire::FrameRef>);
    Store(Word(ref), 0, static_cast<uint32_t>(payloads_.size()));
    Store(Word(ref), 16, uint64_t{size});
  } else {
    SetTag(Word(payload), 0, wire::Payload::INLINE);
    std::byte* bytes = NewData(payload + kPayloadPointer, size);
    if (size != 0) std::memcpy(bytes, data.data(), size);
    Bump(GlobalStats().payloads_inlined);
  }
}

wire::Envelope::Builder EnvelopeWriter::envelope() {
  if (generated_ == nullptr) {
    // Copy what is written so far into a generated builder; Finish() serialises that.
    kj::ArrayPtr<const capnp::word> segment(reinterpret_cast<const capnp::word*>(Word(0)), used_);
    capnp::SegmentArrayMessageReader reader(kj::arrayPtr(&segment, 1));
    generated_ = std::make_unique<capnp::MallocMessageBuilder>();
    generated_->setRoot(reader.getRoot<wire::Envelope>());
  }
  return generated_->getRoot<wire::Envelope>();
}

namespace {

// The envelope's bytes, owned, for one that outgrew the blocks: a fresh aligned
// buffer. Not a Buffer::CopyOf: this is the envelope's one copy, as it was into its frame.
Buffer OwnedEnvelope(const void* words, size_t bytes) {
  Buffer out = Buffer::Allocate(bytes);
  std::memcpy(out.mutable_data(), words, bytes);
  return out;
}

struct FreeWords {
  void operator()(void* words) const noexcept { std::free(words); }
};

}  // namespace

Outgoing EnvelopeWriter::Finish() {
  if (finished_) throw EncodeError("EnvelopeWriter::Finish called twice");
  finished_ = true;
  if (generated_ != nullptr) {
    auto env = generated_->getRoot<wire::Envelope>();
    env.setPayloadFrames(static_cast<uint32_t>(payloads_.size()));
    if (env.getSentAtNs() == 0) env.setSentAtNs(NowNs());
    kj::Array<capnp::word> flat = capnp::messageToFlatArray(*generated_);
    return Outgoing(OwnedEnvelope(flat.begin(), flat.size() * sizeof(capnp::word)), std::move(payloads_));
  }
  uint64_t* e = Word(kEnvelope);
  Store(e, 4, static_cast<uint32_t>(payloads_.size()));
  uint64_t sent_at;
  std::memcpy(&sent_at, reinterpret_cast<char*>(e) + 32, sizeof sent_at);
  if (sent_at == 0) Store(e, 32, NowNs());

  // Standard Cap'n Proto framing of one segment: (count - 1) = 0, then its size in words.
  words_[0] = used_ << 32;
  size_t bytes = (used_ + 1) * sizeof(uint64_t);
  if (block_ != nullptr) {
    // Still in a block: the block becomes the envelope.
    auto* data = reinterpret_cast<std::byte*>(words_);
    words_ = nullptr;
    return Outgoing(Buffer(data, bytes, std::move(block_)), std::move(payloads_));
  }
  if (used_ <= kHandOverWords) return Outgoing(OwnedEnvelope(words_, bytes), std::move(payloads_));
  // Large: these words become the envelope; the thread's scratch starts afresh.
  uint64_t* words = words_;
  words_ = nullptr;  // the envelope's from here on (the destructor frees nothing)
  if (scratch_taken_) {
    tls_scratch.words = nullptr;
    tls_scratch.capacity = 0;
    tls_scratch.in_use = false;
    scratch_taken_ = false;
  }
  std::shared_ptr<void> owner(words, FreeWords());  // frees them if it cannot allocate
  return Outgoing(Buffer(reinterpret_cast<std::byte*>(words), bytes, std::move(owner)),
                  std::move(payloads_));
}

}  // namespace zerocan
