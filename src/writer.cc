#include "zerocan/writer.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
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
constexpr uint64_t kMaxCapnpList = (uint64_t{1} << 29) - 1;

// Per-thread first segment, reused message after message. MallocMessageBuilder re-zeroes
// what it used when it is destroyed, so the next message starts from zeros without a
// fresh allocation (the difference between ~350 ns and ~250 ns for a small apply).
//
// The first segment is always exactly kScratchWords: an envelope's bytes must not depend
// on what the thread sent before, so that every writer (C++ on any thread, Python's
// pycapnp with num_first_segment_words = 8192) lays out the same message identically and
// golden vectors stay byte-exact. (Growing the scratch after a large message made the
// next large envelope one segment instead of several, which reads faster in Cap'n Proto
// 0.9.2, but made bytes history-dependent; determinism won.)
constexpr size_t kScratchWords = 8192;  // 64 KiB; = FIRST_SEGMENT_WORDS in clients/python
struct Scratch {
  struct Free {
    void operator()(capnp::word* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<capnp::word[], Free> words{
      static_cast<capnp::word*>(std::calloc(kScratchWords, sizeof(capnp::word)))};
  bool in_use = false;
};
thread_local Scratch tls_scratch;

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

void CheckListLength(size_t n, const char* what) {
  if (n > kMaxCapnpList) {
    throw EncodeError(absl::StrCat(what, " of ", n, " elements exceeds the format's bound of ",
                                   kMaxCapnpList));
  }
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

// Tries to store an integer array packed inline; returns false to place it as is.
template <class T>
bool TryPack(wire::Tensor::Builder tensor, const Buffer& data, size_t threshold) {
  const T* p = reinterpret_cast<const T*>(data.data());
  size_t n = data.size() / sizeof(T);
  // Only worth a scan when the packed form could be inline.
  if (n == 0 || n >= threshold) return false;
  wire::Packing packing = ChoosePacking(p, n, sizeof(T));
  if (packing == wire::Packing::NONE) return false;
  size_t packed_bytes = n * PackingSize(packing);
  if (packed_bytes >= threshold) return false;
  tensor.setPacking(packing);
  auto out = tensor.getData().initInline(static_cast<unsigned>(packed_bytes));
  WritePacked(p, n, packing, reinterpret_cast<std::byte*>(out.begin()));
  Bump(GlobalStats().payloads_inlined);
  return true;
}

}  // namespace

// ---- ValueWriter -------------------------------------------------------------------

void ValueWriter::Null() { builder_.setNull(); }
void ValueWriter::Bool(bool v) { builder_.setBool(v); }
void ValueWriter::Int(int64_t v) { builder_.setInt(v); }
void ValueWriter::UInt(uint64_t v) { builder_.setUint(v); }
void ValueWriter::Float(double v) { builder_.setFloat(v); }

void ValueWriter::Text(std::string_view v) {
  CheckListLength(v.size(), "text");
  auto text = builder_.initText(static_cast<unsigned>(v.size()));
  if (!v.empty()) std::memcpy(text.begin(), v.data(), v.size());
}

void ValueWriter::Bytes(Buffer data) { message_->PlacePayload(builder_.initBytes(), std::move(data)); }

void ValueWriter::Array(DType dtype, const Shape& shape, Buffer data, Order order) {
  auto count = ElementCount(shape);
  size_t item = ItemSize(dtype);
  if (!count || *count > UINT64_MAX / item || *count * item != data.size()) {
    throw EncodeError(absl::StrCat("array: shape ", absl::StrJoin(shape, "x"), " ",
                                   internal::Sv(DTypeName(dtype)), " needs ",
                                   count ? absl::StrCat(*count * item) : "overflowing", " bytes, ",
                                   "buffer has ", data.size()));
  }
  auto tensor = builder_.initTensor();
  tensor.setDtype(static_cast<wire::DType>(dtype));
  auto dims = tensor.initShape(static_cast<unsigned>(shape.size()));
  for (size_t i = 0; i < shape.size(); ++i) dims.set(static_cast<unsigned>(i), shape[i]);
  tensor.setOrder(order == Order::kC ? wire::Order::C : wire::Order::FORTRAN);
  // tensor.byteOrder stays LITTLE: every supported host is little-endian.
  const Policy& policy = message_->policy();
  if (policy.pack_integers && IsInteger(dtype) && item > 1 && data.size() < 8 * policy.inline_threshold) {
    bool packed = false;
    switch (dtype) {
      case DType::kInt16: packed = TryPack<int16_t>(tensor, data, policy.inline_threshold); break;
      case DType::kInt32: packed = TryPack<int32_t>(tensor, data, policy.inline_threshold); break;
      case DType::kInt64: packed = TryPack<int64_t>(tensor, data, policy.inline_threshold); break;
      case DType::kUInt16: packed = TryPack<uint16_t>(tensor, data, policy.inline_threshold); break;
      case DType::kUInt32: packed = TryPack<uint32_t>(tensor, data, policy.inline_threshold); break;
      case DType::kUInt64: packed = TryPack<uint64_t>(tensor, data, policy.inline_threshold); break;
      default: break;
    }
    if (packed) return;
  }
  message_->PlacePayload(tensor.getData(), std::move(data));
}

ListWriter ValueWriter::List(size_t length) {
  if (depth_ + 1 >= kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
  CheckListLength(length, "list");
  return ListWriter(builder_.initList(static_cast<unsigned>(length)), message_, depth_ + 1);
}

MapWriter ValueWriter::Map(size_t length) {
  if (depth_ + 1 >= kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
  CheckListLength(length, "map");
  return MapWriter(builder_.initMap(static_cast<unsigned>(length)), message_, depth_ + 1);
}

ValueWriter ValueWriter::Extension(std::string_view type_name) {
  if (depth_ + 1 >= kMaxEncodeDepth) {
    throw EncodeError(absl::StrCat("value nested deeper than ", kMaxEncodeDepth, " levels"));
  }
  auto ext = builder_.initExtension();
  auto name = ext.initTypeName(static_cast<unsigned>(type_name.size()));
  if (!type_name.empty()) std::memcpy(name.begin(), type_name.data(), type_name.size());
  return ValueWriter(ext.initState(), message_, depth_ + 1);
}

void ValueWriter::Copy(const Value& value) {
  auto r = value.reader();
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
      if (t.getPacking() != wire::Packing::NONE || t.getByteOrder() != wire::ByteOrder::LITTLE) {
        // Forward as received, field by field. Not builder_.setTensor(t): a struct copy
        // also follows pointers the decoder never walked (fields of a newer schema, or a
        // hostile cycle: unbounded recursion, found by tests/fuzz/value_fuzz).
        auto out = builder_.initTensor();
        out.setDtype(t.getDtype());
        out.setOrder(t.getOrder());
        out.setByteOrder(t.getByteOrder());
        out.setPacking(t.getPacking());
        auto shape = t.getShape();
        auto out_shape = out.initShape(shape.size());
        for (unsigned i = 0; i < shape.size(); ++i) out_shape.set(i, shape[i]);
        if (t.getPacking() != wire::Packing::NONE) {
          // Packed payloads must stay inline (the decoder enforces it), whatever this
          // writer's threshold.
          auto packed = t.getData().getInline();
          out.initData().setInline(
              capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(packed.begin()), packed.size()));
        } else {
          // A big-endian payload may sit in a frame of the received message, whose
          // index means nothing in this one: place its bytes again.
          message_->PlacePayload(out.initData(), value.TensorBytes());
        }
        return;
      }
      Shape shape;
      for (uint64_t d : t.getShape()) shape.push_back(d);
      // The bytes as they are (no realignment copy: we only forward them).
      Buffer data = value.TensorBytes();
      auto order = t.getOrder() == wire::Order::FORTRAN ? Order::kFortran : Order::kC;
      return Array(static_cast<DType>(t.getDtype()), shape, std::move(data), order);
    }
    case Kind::kExtension: {
      ValueWriter state = Extension(value.extension_name());
      state.Copy(value.extension_state());
      return;
    }
  }
}

ValueWriter MapWriter::key(size_t i) const {
  return ValueWriter(entries_[static_cast<unsigned>(i)].initKey(), message_, depth_);
}
ValueWriter MapWriter::value(size_t i) const {
  return ValueWriter(entries_[static_cast<unsigned>(i)].initValue(), message_, depth_);
}

ValueWriter ApplyWriter::arg(size_t i) const {
  return ValueWriter(args_[static_cast<unsigned>(i)], message_, 0);
}
ValueWriter ApplyWriter::kwarg(size_t i, std::string_view name) const {
  auto field = kwargs_[static_cast<unsigned>(i)];
  auto key = field.initKey(static_cast<unsigned>(name.size()));
  if (!name.empty()) std::memcpy(key.begin(), name.data(), name.size());
  return ValueWriter(field.initValue(), message_, 0);
}

// ---- EnvelopeWriter ----------------------------------------------------------------

EnvelopeWriter::EnvelopeWriter(const Policy& policy, const Registry* registry)
    : policy_(policy), registry_(registry) {
  if (!tls_scratch.in_use && tls_scratch.words != nullptr) {
    tls_scratch.in_use = true;
    scratch_taken_ = true;
    builder_.emplace(kj::arrayPtr(tls_scratch.words.get(), kScratchWords));
  } else {
    // A second writer alive on this thread: same first-segment size, own allocation.
    builder_.emplace(static_cast<unsigned>(kScratchWords));
  }
  envelope_ = builder_->initRoot<wire::Envelope>();
  envelope_.setVersion(kProtocolVersion);
}

EnvelopeWriter::~EnvelopeWriter() {
  builder_.reset();  // re-zeroes the used part of the scratch segment
  if (scratch_taken_) tls_scratch.in_use = false;
}

const Registry& EnvelopeWriter::registry() const noexcept {
  return registry_ != nullptr ? *registry_ : Registry::Default();
}

void EnvelopeWriter::SetHeader(const Header& h) {
  envelope_.setMessageId(h.message_id);
  envelope_.setSessionId(h.session_id);
  envelope_.setSequence(h.sequence);
  envelope_.setSentAtNs(h.sent_at_ns);
}

ApplyWriter EnvelopeWriter::StartApply(std::string_view function, size_t arg_count,
                                       size_t kwarg_count, uint32_t timeout_ms) {
  CheckListLength(arg_count, "args");
  CheckListLength(kwarg_count, "kwargs");
  auto apply = envelope_.getBody().initApply();
  auto name = apply.initFunction(static_cast<unsigned>(function.size()));
  if (!function.empty()) std::memcpy(name.begin(), function.data(), function.size());
  auto args = apply.initArgs(static_cast<unsigned>(arg_count));
  auto kwargs = apply.initKwargs(static_cast<unsigned>(kwarg_count));
  apply.setTimeoutMs(timeout_ms);
  return ApplyWriter(apply, args, kwargs, this);
}

namespace {
capnp::Text::Reader AsCapnpText(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }
}  // namespace

ValueWriter EnvelopeWriter::StartResult(uint64_t call_id, std::string_view engine_id) {
  auto result = envelope_.getBody().initResult();
  result.setCallId(call_id);
  result.setEngineId(AsCapnpText(std::string(engine_id)));
  return ValueWriter(result.initOk(), this, 0);
}

void EnvelopeWriter::SetError(uint64_t call_id, std::string_view engine_id,
                              const RemoteErrorInfo& error) {
  auto result = envelope_.getBody().initResult();
  result.setCallId(call_id);
  result.setEngineId(AsCapnpText(std::string(engine_id)));
  auto e = result.initError();
  e.setType(AsCapnpText(error.type));
  e.setMessage(AsCapnpText(error.message));
  e.setFunction(AsCapnpText(error.function));
  e.setWhere(AsCapnpText(error.where));
}

void EnvelopeWriter::SetHello(std::string_view peer_id, std::string_view role,
                              const std::vector<std::string>& functions) {
  auto hello = envelope_.getBody().initHello();
  hello.setPeerId(AsCapnpText(std::string(peer_id)));
  hello.setRole(AsCapnpText(std::string(role)));
  auto list = hello.initFunctions(static_cast<unsigned>(functions.size()));
  for (size_t i = 0; i < functions.size(); ++i) {
    list.set(static_cast<unsigned>(i), AsCapnpText(functions[i]));
  }
}

void EnvelopeWriter::SetHeartbeat(std::string_view peer_id, uint64_t now_ns) {
  auto hb = envelope_.getBody().initHeartbeat();
  hb.setPeerId(AsCapnpText(std::string(peer_id)));
  hb.setNowNs(now_ns);
}

void EnvelopeWriter::SetGoodbye() { envelope_.getBody().setGoodbye(); }

void EnvelopeWriter::PlacePayload(wire::Payload::Builder payload, Buffer data) {
  size_t size = data.size();
  bool as_frame = size > 0 && (size >= policy_.inline_threshold || size > kMaxCapnpList);
  if (as_frame) {
    if (payloads_.size() >= std::numeric_limits<uint32_t>::max() - 1) {
      throw EncodeError("too many payload frames in one message");
    }
    payloads_.push_back(std::move(data));
    auto ref = payload.initFrame();
    ref.setIndex(static_cast<uint32_t>(payloads_.size()));
    ref.setOffset(0);
    ref.setLength(size);
  } else {
    auto bytes = payload.initInline(static_cast<unsigned>(size));
    if (size != 0) std::memcpy(bytes.begin(), data.data(), size);
    Bump(GlobalStats().payloads_inlined);
  }
}

Outgoing EnvelopeWriter::Finish() {
  if (finished_) throw EncodeError("EnvelopeWriter::Finish called twice");
  finished_ = true;
  envelope_.setPayloadFrames(static_cast<uint32_t>(payloads_.size()));
  if (envelope_.getSentAtNs() == 0) envelope_.setSentAtNs(NowNs());

  // Standard Cap'n Proto framing: (segment count - 1), each segment's size in words,
  // padded to a word; then the segments.
  auto segments = builder_->getSegmentsForOutput();
  size_t count = segments.size();
  size_t table_words = (count + 2) / 2;
  size_t total_words = table_words;
  for (auto& s : segments) total_words += s.size();

  Outgoing out;
  out.envelope_.rebuild(total_words * sizeof(capnp::word));
  auto* table = static_cast<uint32_t*>(out.envelope_.data());
  table[0] = static_cast<uint32_t>(count - 1);
  for (size_t i = 0; i < count; ++i) table[i + 1] = static_cast<uint32_t>(segments[i].size());
  if (count % 2 == 0) table[count + 1] = 0;
  auto* cursor = static_cast<std::byte*>(out.envelope_.data()) + table_words * sizeof(capnp::word);
  for (auto& s : segments) {
    std::memcpy(cursor, s.begin(), s.size() * sizeof(capnp::word));
    cursor += s.size() * sizeof(capnp::word);
  }
  out.payloads_ = std::move(payloads_);
  return out;
}

}  // namespace zerocan
