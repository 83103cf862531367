// EnvelopeWriter and ValueWriter over the generated Cap'n Proto builders.
//
// Byte identity across languages rests on the canonical order of docs/FORMAT.md
// ("Canonical encoding"): a Cap'n Proto builder whose first segment holds 8192 words,
// every object allocated in the order listed there. Each method below allocates exactly
// in that order; Python's writer (clients/python/zerocan/wire.py) does the same through
// pycapnp, and tests/vectors_test.cc holds both to the golden vectors.
#include "zerocan/writer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <time.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "internal/strings.h"
#include "wire/access.h"
#include "wire/handles.h"
#include "zerocan/codec.h"
#include "zerocan/registry.h"
#include "zerocan/stats.h"
#include "zerocan/value.h"
#include "zerocan/version.h"

namespace zerocan {

static_assert(static_cast<int>(wire::DType::COMPLEX128) == static_cast<int>(DType::kComplex128),
              "zerocan::DType must number its members as the schema does");

namespace {

using internal::Unwrap;
using internal::Wrap;

// Deeper values are refused at encode time, matching DecodeLimits' default, so we never
// produce a message a default receiver would reject for depth. The decoder counts an
// argument as level 1 while a ValueWriter's depth starts at 0.
constexpr uint32_t kMaxEncodeDepth = 64;
// Cap'n Proto lists, text and data hold fewer than 2^29 elements.
constexpr uint64_t kMaxCapnpList = (uint64_t{1} << 29) - 1;
// The canonical first segment (docs/FORMAT.md): 64 KiB.
constexpr size_t kFirstSegmentWords = 8192;

// Each thread keeps one zeroed first segment for the envelopes it writes, so a small
// envelope costs no allocation until Finish copies it out. MallocMessageBuilder zeroes
// what it used when it is destroyed, leaving the segment ready for the next message. A
// second writer alive on the same thread gets a segment of its own.
struct FirstSegment {
  capnp::word* words = nullptr;
  bool in_use = false;
  ~FirstSegment() { std::free(words); }
};
thread_local FirstSegment tls_first_segment;

// The stamp for sentAtNs: the coarse wall clock (a scheduler tick, 1-4 ms); sentAtNs
// only serves windows of seconds (replay max_age, clock skew) and millisecond deadlines.
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

unsigned CheckedLength(size_t n, const char* what) {
  if (n > kMaxCapnpList) {
    throw EncodeError(absl::StrCat(what, " of ", n, " elements exceeds the format's bound of ",
                                   kMaxCapnpList));
  }
  return static_cast<unsigned>(n);
}

capnp::Text::Reader AsText(std::string_view text) {
  CheckedLength(text.size() + 1, "text");
  return capnp::Text::Reader(text.data(), text.size());
}

[[noreturn]] void ThrowIndex(const char* what, size_t i, size_t n) {
  throw EncodeError(absl::StrCat(what, " index ", i, " out of range (size ", n, ")"));
}

// Smallest integer packing that holds every element, or NONE when none is narrower.
// Preference (docs/FORMAT.md, "Packing"): uint8, int8, uint16, int16, uint32, int32.
template <class T>
wire::Packing ChoosePacking(const T* p, size_t n) {
  if (n == 0) return wire::Packing::NONE;
  T lo = p[0], hi = p[0];
  for (size_t i = 1; i < n; ++i) {
    lo = p[i] < lo ? p[i] : lo;
    hi = p[i] > hi ? p[i] : hi;
  }
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
    if (o.size < sizeof(T) && static_cast<long double>(lo) >= o.lo &&
        static_cast<long double>(hi) <= o.hi) {
      return o.packing;
    }
  }
  return wire::Packing::NONE;
}

size_t PackingSize(wire::Packing p) {
  switch (p) {
    case wire::Packing::INT8:
    case wire::Packing::UINT8: return 1;
    case wire::Packing::INT16:
    case wire::Packing::UINT16: return 2;
    case wire::Packing::INT32:
    case wire::Packing::UINT32: return 4;
    default: return 0;
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

// A container sits one level below its writer and its elements one more; an empty one
// has no elements, so it may sit at the last level (as the decoder allows).
void CheckContainerDepth(uint32_t depth, size_t length) {
  if (depth + (length > 0 ? 2 : 1) > kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
}

}  // namespace

// ---- EnvelopeWriter::Impl ---------------------------------------------------------------

struct EnvelopeWriter::Impl {
  explicit Impl(capnp::word* first) : first_segment(first) {
    if (first != nullptr) {
      builder.emplace(kj::arrayPtr(first, kFirstSegmentWords));
    } else {
      builder.emplace(kFirstSegmentWords);
    }
    root = builder->initRoot<wire::Envelope>();
    root.setVersion(kProtocolVersion);
  }
  ~Impl() {
    builder.reset();  // zeroes what it used of the first segment
    if (first_segment != nullptr) tls_first_segment.in_use = false;
  }

  capnp::word* first_segment;  // the thread's, or null when the builder allocates its own
  std::optional<capnp::MallocMessageBuilder> builder;
  wire::Envelope::Builder root = nullptr;
  std::vector<Buffer> payloads;
  bool finished = false;
};

EnvelopeWriter::EnvelopeWriter(const Policy& policy, const Registry* registry)
    : policy_(policy), registry_(registry) {
  capnp::word* first = nullptr;
  if (!tls_first_segment.in_use) {
    if (tls_first_segment.words == nullptr) {
      tls_first_segment.words =
          static_cast<capnp::word*>(std::calloc(kFirstSegmentWords, sizeof(capnp::word)));
      if (tls_first_segment.words == nullptr) throw std::bad_alloc();
    }
    tls_first_segment.in_use = true;
    first = tls_first_segment.words;
  }
  impl_ = std::make_unique<Impl>(first);
}

EnvelopeWriter::~EnvelopeWriter() = default;

const Registry& EnvelopeWriter::registry() const noexcept {
  return registry_ != nullptr ? *registry_ : Registry::Default();
}

namespace internal {
wire::Envelope::Builder WireAccess::Root(EnvelopeWriter& writer) {
  return writer.impl_->root;
}
}  // namespace internal

void EnvelopeWriter::SetHeader(const Header& h) {
  auto e = impl_->root;
  e.setMessageId(h.message_id);
  e.setSessionId(h.session_id);
  e.setSequence(h.sequence);
  e.setSentAtNs(h.sent_at_ns);
}

// Canonical order: Apply struct, function text, args list, kwargs list, then each
// argument's contents in order, then each keyword (key text, value).
ApplyWriter EnvelopeWriter::StartApply(std::string_view function, size_t arg_count,
                                       size_t kwarg_count, uint32_t timeout_ms) {
  unsigned args_n = CheckedLength(arg_count, "args");
  unsigned kwargs_n = CheckedLength(kwarg_count, "kwargs");
  auto apply = impl_->root.getBody().initApply();
  apply.setFunction(AsText(function));
  auto args = apply.initArgs(args_n);
  auto kwargs = apply.initKwargs(kwargs_n);
  apply.setTimeoutMs(timeout_ms);
  return ApplyWriter(this, Wrap(args), arg_count, Wrap(kwargs), kwarg_count);
}

ValueWriter ApplyWriter::arg(size_t i) const {
  if (i >= arg_count_) ThrowIndex("argument", i, arg_count_);
  auto args = Unwrap<capnp::List<wire::Value>::Builder>(args_);
  return ValueWriter(message_, Wrap(args[static_cast<unsigned>(i)]), 0);
}

ValueWriter ApplyWriter::kwarg(size_t i, std::string_view name) const {
  if (i >= kwarg_count_) ThrowIndex("keyword argument", i, kwarg_count_);
  auto field = Unwrap<capnp::List<wire::Field>::Builder>(kwargs_)[static_cast<unsigned>(i)];
  field.setKey(AsText(name));
  return ValueWriter(message_, Wrap(field.initValue()), 0);
}

// Result: struct, engineId text, then the ok value or the error struct and its texts.
ValueWriter EnvelopeWriter::StartResult(uint64_t call_id, std::string_view engine_id) {
  auto result = impl_->root.getBody().initResult();
  result.setCallId(call_id);
  result.setEngineId(AsText(engine_id));
  return ValueWriter(this, Wrap(result.initOk()), 0);
}

void EnvelopeWriter::SetError(uint64_t call_id, std::string_view engine_id,
                              const RemoteErrorInfo& error) {
  auto result = impl_->root.getBody().initResult();
  result.setCallId(call_id);
  result.setEngineId(AsText(engine_id));
  auto e = result.initError();
  e.setType(AsText(error.type));
  e.setMessage(AsText(error.message));
  e.setFunction(AsText(error.function));
  e.setWhere(AsText(error.where));
}

void EnvelopeWriter::SetHello(std::string_view peer_id, std::string_view role,
                              const std::vector<std::string>& functions) {
  unsigned n = CheckedLength(functions.size(), "functions");
  auto hello = impl_->root.getBody().initHello();
  hello.setPeerId(AsText(peer_id));
  hello.setRole(AsText(role));
  auto list = hello.initFunctions(n);
  for (unsigned i = 0; i < n; ++i) list.set(i, AsText(functions[i]));
}

void EnvelopeWriter::SetHeartbeat(std::string_view peer_id, uint64_t now_ns) {
  auto hb = impl_->root.getBody().initHeartbeat();
  hb.setPeerId(AsText(peer_id));
  hb.setNowNs(now_ns);
}

void EnvelopeWriter::SetGoodbye() { impl_->root.getBody().setGoodbye(); }

Outgoing EnvelopeWriter::Finish() {
  Impl& m = *impl_;
  if (m.finished) throw EncodeError("EnvelopeWriter::Finish called twice");
  m.finished = true;
  m.root.setPayloadFrames(static_cast<uint32_t>(m.payloads.size()));
  if (m.root.getSentAtNs() == 0) m.root.setSentAtNs(NowNs());
  auto segments = m.builder->getSegmentsForOutput();
  Buffer envelope;
  if (segments.size() == 1) {
    // Standard framing of one segment: (count - 1) = 0, then its size in words.
    size_t words = segments[0].size();
    envelope = Buffer::Allocate((words + 1) * sizeof(capnp::word));
    uint32_t table[2] = {0, static_cast<uint32_t>(words)};
    std::memcpy(envelope.mutable_data(), table, sizeof table);
    std::memcpy(envelope.mutable_data() + sizeof(capnp::word), segments[0].begin(),
                words * sizeof(capnp::word));
  } else {
    auto flat = std::make_shared<kj::Array<capnp::word>>(capnp::messageToFlatArray(segments));
    auto* bytes = reinterpret_cast<std::byte*>(flat->begin());
    size_t size = flat->size() * sizeof(capnp::word);
    envelope = Buffer(bytes, size, std::move(flat));
  }
  return Outgoing(std::move(envelope), std::move(m.payloads));
}

// ---- payload placement -------------------------------------------------------------------

namespace {

// Payload: a frame of its own at or above the threshold (or beyond what Data holds),
// else inline. `copy_for_frame`: the bytes are only valid during the call.
void Place(std::vector<Buffer>& payloads, const Policy& policy, wire::Payload::Builder payload,
           Buffer data, bool copy_for_frame) {
  size_t size = data.size();
  bool as_frame = size > 0 && (size >= policy.inline_threshold || size > kMaxCapnpList);
  if (as_frame) {
    if (payloads.size() >= std::numeric_limits<uint32_t>::max() - 1) {
      throw EncodeError("too many payload frames in one message");
    }
    payloads.push_back(copy_for_frame ? Buffer::CopyOf(data.data(), size) : std::move(data));
    auto ref = payload.initFrame();
    ref.setIndex(static_cast<uint32_t>(payloads.size()));
    ref.setLength(size);
  } else {
    auto bytes = payload.initInline(static_cast<unsigned>(size));
    if (size != 0) std::memcpy(bytes.begin(), data.data(), size);
    Bump(GlobalStats().payloads_inlined);
  }
}

// Stores an integer array packed inline when that is narrower and fits under the
// threshold (packed size); returns false to place it as is.
template <class T>
bool TryPack(wire::Tensor::Builder tensor, const Buffer& data, size_t threshold) {
  // Bytes forwarded as received may sit at any offset in their frame: reading them as T
  // would be a misaligned load. They are placed as they are instead.
  if (!IsAligned(data.data(), alignof(T))) return false;
  const T* p = reinterpret_cast<const T*>(data.data());
  size_t n = data.size() / sizeof(T);
  if (n == 0 || n >= threshold) return false;  // only worth a scan when it could be inline
  wire::Packing packing = ChoosePacking(p, n);
  if (packing == wire::Packing::NONE) return false;
  size_t packed_bytes = n * PackingSize(packing);
  if (packed_bytes >= threshold) return false;
  tensor.setPacking(packing);
  auto bytes = tensor.initData().initInline(static_cast<unsigned>(packed_bytes));
  WritePacked(p, n, packing, reinterpret_cast<std::byte*>(bytes.begin()));
  Bump(GlobalStats().payloads_inlined);
  return true;
}

}  // namespace

// ---- ValueWriter -------------------------------------------------------------------------

namespace {
wire::Value::Builder V(const internal::OpaqueWire& w) { return Unwrap<wire::Value::Builder>(w); }
}  // namespace

void ValueWriter::Null() { V(builder_).setNull(); }
void ValueWriter::Bool(bool v) { V(builder_).setBool(v); }
void ValueWriter::Int(int64_t v) { V(builder_).setInt(v); }
void ValueWriter::UInt(uint64_t v) { V(builder_).setUint(v); }
void ValueWriter::Float(double v) { V(builder_).setFloat(v); }
void ValueWriter::Text(std::string_view v) { V(builder_).setText(AsText(v)); }

void ValueWriter::Bytes(Buffer data) {
  Place(message_->impl_->payloads, message_->policy(), V(builder_).initBytes(), std::move(data), false);
}

void ValueWriter::CopyBytes(std::span<const std::byte> data) {
  Place(message_->impl_->payloads, message_->policy(), V(builder_).initBytes(),
        Buffer::Borrow(data.data(), data.size()), true);
}

namespace {
void WriteArray(std::vector<Buffer>& payloads, const Policy& policy, wire::Value::Builder v, DType dtype,
                const Shape& shape, Buffer data, Order order, bool copy_for_frame) {
  auto count = ElementCount(shape);
  size_t item = ItemSize(dtype);
  if (!count || *count > UINT64_MAX / item || *count * item != data.size()) {
    throw EncodeError(absl::StrCat("array: shape ", absl::StrJoin(shape, "x"), " ",
                                   internal::Sv(DTypeName(dtype)), " needs ",
                                   count ? absl::StrCat(*count * item) : "overflowing", " bytes, ",
                                   "buffer has ", data.size()));
  }
  unsigned rank = CheckedLength(shape.size(), "shape");
  // Canonical order: Tensor struct, shape list, payload struct, inline data.
  auto tensor = v.initTensor();
  tensor.setDtype(static_cast<wire::DType>(dtype));
  auto dims = tensor.initShape(rank);
  for (unsigned i = 0; i < rank; ++i) dims.set(i, shape[i]);
  tensor.setOrder(order == Order::kC ? wire::Order::C : wire::Order::FORTRAN);
  // byteOrder stays LITTLE: every supported host is little-endian.
  if (policy.pack_integers && IsInteger(dtype) && item > 1 &&
      data.size() < 8 * policy.inline_threshold) {
    size_t t = policy.inline_threshold;
    bool packed = false;
    switch (dtype) {
      case DType::kInt16: packed = TryPack<int16_t>(tensor, data, t); break;
      case DType::kInt32: packed = TryPack<int32_t>(tensor, data, t); break;
      case DType::kInt64: packed = TryPack<int64_t>(tensor, data, t); break;
      case DType::kUInt16: packed = TryPack<uint16_t>(tensor, data, t); break;
      case DType::kUInt32: packed = TryPack<uint32_t>(tensor, data, t); break;
      case DType::kUInt64: packed = TryPack<uint64_t>(tensor, data, t); break;
      default: break;
    }
    if (packed) return;
  }
  Place(payloads, policy, tensor.initData(), std::move(data), copy_for_frame);
}
}  // namespace

void ValueWriter::Array(DType dtype, const Shape& shape, Buffer data, Order order) {
  WriteArray(message_->impl_->payloads, message_->policy(), V(builder_), dtype, shape, std::move(data),
             order, false);
}

void ValueWriter::CopyArray(DType dtype, const Shape& shape, std::span<const std::byte> data,
                            Order order) {
  WriteArray(message_->impl_->payloads, message_->policy(), V(builder_), dtype, shape,
             Buffer::Borrow(data.data(), data.size()), order, true);
}

ListWriter ValueWriter::List(size_t length) {
  CheckContainerDepth(depth_, length);
  unsigned n = CheckedLength(length, "list");
  return ListWriter(message_, Wrap(V(builder_).initList(n)), length, depth_ + 1);
}

MapWriter ValueWriter::Map(size_t length) {
  CheckContainerDepth(depth_, length);
  unsigned n = CheckedLength(length, "map");
  return MapWriter(message_, Wrap(V(builder_).initMap(n)), length, depth_ + 1);
}

// Canonical order: Extension struct, typeName text, state value struct.
ValueWriter ValueWriter::Extension(std::string_view type_name) {
  if (depth_ + 1 >= kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
  auto ext = V(builder_).initExtension();
  ext.setTypeName(AsText(type_name));
  return ValueWriter(message_, Wrap(ext.initState()), depth_ + 1);
}

ValueWriter ListWriter::operator[](size_t i) const {
  if (i >= count_) ThrowIndex("list element", i, count_);
  auto list = Unwrap<capnp::List<wire::Value>::Builder>(list_);
  return ValueWriter(message_, Wrap(list[static_cast<unsigned>(i)]), depth_);
}

// A map entry: key value struct (and its contents), then the value struct.
ValueWriter MapWriter::key(size_t i) const {
  if (i >= count_) ThrowIndex("map entry", i, count_);
  auto entries = Unwrap<capnp::List<wire::Entry>::Builder>(entries_);
  return ValueWriter(message_, Wrap(entries[static_cast<unsigned>(i)].initKey()), depth_);
}

ValueWriter MapWriter::value(size_t i) const {
  if (i >= count_) ThrowIndex("map entry", i, count_);
  auto entries = Unwrap<capnp::List<wire::Entry>::Builder>(entries_);
  return ValueWriter(message_, Wrap(entries[static_cast<unsigned>(i)].initValue()), depth_);
}

void MapWriter::TextKey(size_t i, std::string_view text) const { key(i).Text(text); }

void ValueWriter::Copy(const Value& value) {
  wire::Value::Reader r = internal::WireAccess::Reader(value);
  switch (value.kind()) {
    case Kind::kNull: return Null();
    case Kind::kBool: return Bool(r.getBool());
    case Kind::kInt: return Int(r.getInt());
    case Kind::kUInt: return UInt(r.getUint());
    case Kind::kFloat: return Float(r.getFloat());
    case Kind::kText: return Text(value.AsText());
    case Kind::kBytes: return Bytes(value.AsBytes());
    case Kind::kList: {
      ValueList items = value.AsList();
      ListWriter list = List(items.size());
      for (size_t i = 0; i < items.size(); ++i) list[i].Copy(items[i]);
      return;
    }
    case Kind::kMap: {
      ValueMap entries = value.AsMap();
      MapWriter map = Map(entries.size());
      for (size_t i = 0; i < entries.size(); ++i) {
        map.key(i).Copy(entries.key(i));
        map.value(i).Copy(entries.value(i));
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
        auto out = V(builder_).initTensor();
        out.setDtype(t.getDtype());
        unsigned rank = static_cast<unsigned>(shape.size());
        auto dims = out.initShape(rank);
        for (unsigned i = 0; i < rank; ++i) dims.set(i, shape[i]);
        out.setOrder(t.getOrder());
        out.setByteOrder(t.getByteOrder());
        out.setPacking(t.getPacking());
        if (t.getPacking() != wire::Packing::NONE) {
          out.initData().setInline(t.getData().getInline());
        } else {
          Place(message_->impl_->payloads, message_->policy(), out.initData(), value.TensorBytes(), false);
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

}  // namespace zerocan
