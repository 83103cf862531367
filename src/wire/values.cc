// Every value's wire form, both ways, in one place: how ValueWriter writes each kind of
// value (and where its payload bytes go), how the decoder's walk checks it, and how
// Value reads it back. All through the generated Cap'n Proto builders and readers; the
// canonical order of each object's allocations is that of docs/FORMAT.md ("Canonical
// encoding"), which clients/python/zerocan/wire.py follows too.
#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "internal/strings.h"
#include "wire/access.h"
#include "wire/encoding.h"
#include "wire/handles.h"
#include "transport/shared_segments.h"
#include "wire/message_state.h"
#include "zerocan/codec.h"
#include "zerocan/shared.h"
#include "zerocan/error.h"
#include "zerocan/stats.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan {

namespace {

using internal::CopyText;
using internal::TextSize;
using internal::CheckedLength;
using internal::kMaxCapnpList;
using internal::kMaxEncodeDepth;
using internal::ThrowIndex;
using internal::Unwrap;
using internal::Wrap;

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

// Bytes per element of a packing (0 for none or an unknown value).
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

// ---- payload placement -------------------------------------------------------------------

namespace {

// Where a message's payloads go: frames after the envelope, and the arena blocks that
// Payload.shared references point into (both kept by the Outgoing).
struct PayloadSink {
  std::vector<Buffer>& payloads;
  std::vector<Buffer>& shared_blocks;
};

// Payload.shared: `length` bytes at `offset` of the arena named `arena` (every writer of a
// reference goes through here, and counts it).
void SetSharedRef(wire::Payload::Builder payload, std::string_view arena, uint64_t offset,
                  uint64_t length, uint64_t block) {
  auto ref = payload.initShared();
  CopyText(ref.initArena(TextSize(arena)), arena);
  ref.setOffset(offset);
  ref.setLength(length);
  ref.setBlock(block);
  Bump(GlobalStats().shared_refs_sent);
}

// A payload at or above the threshold as a reference into `arena`: in place when it lies
// there, else copied into a fresh block. False when the arena has no room (the caller
// sends a frame instead).
bool PlaceShared(PayloadSink m, SharedArena& arena, wire::Payload::Builder payload,
                 Buffer& data, bool copy_for_frame) {
  // In place only when this message may keep the bytes (not lent, not valid only during
  // the call): the receiver reads them long after.
  std::optional<SharedArena::Location> location;
  if (!copy_for_frame && !data.borrowed()) location = arena.Find(data);
  Buffer block;
  if (location) {
    block = std::move(data);
  } else {
    std::optional<Buffer> fresh = arena.Allocate(data.size());
    if (!fresh) {
      Bump(GlobalStats().shared_fallbacks);
      return false;
    }
    std::memcpy(fresh->mutable_data(), data.data(), data.size());
    Bump(GlobalStats().shared_bytes_copied, data.size());
    location = arena.Find(*fresh);
    block = std::move(*fresh);
  }
  SetSharedRef(payload, arena.name(), location->offset, location->length, location->block);
  m.shared_blocks.push_back(std::move(block));
  return true;
}

// A payload that lies inside one of `returns` (the shared-memory arguments of the call a
// reply answers) as a reference to those bytes of the caller's arena. False when it
// lies in none.
bool PlaceReturned(const std::vector<SharedOrigin>& returns, wire::Payload::Builder payload,
                   const Buffer& data) {
  for (const SharedOrigin& origin : returns) {
    const std::byte* begin = origin.view.data();
    if (data.data() < begin || data.size() > origin.view.size() ||
        data.data() - begin > static_cast<ptrdiff_t>(origin.view.size() - data.size())) {
      continue;
    }
    SetSharedRef(payload, origin.arena, origin.offset + static_cast<uint64_t>(data.data() - begin),
                 data.size(), origin.block);
    return true;
  }
  return false;
}

// Payload: a frame of its own at or above the threshold (or beyond what Data holds), or a
// reference into the caller's arena when it came from there (Policy::shared_returns) or
// into the policy's shared arena when it has one; else inline.
// `copy_for_frame`: the bytes are only valid during the call.
void Place(PayloadSink m, const Policy& policy, wire::Payload::Builder payload,
           Buffer data, bool copy_for_frame) {
  size_t size = data.size();
  bool as_frame = size > 0 && (size >= policy.inline_threshold || size > kMaxCapnpList);
  if (as_frame && policy.shared_returns != nullptr &&
      PlaceReturned(*policy.shared_returns, payload, data)) {
    return;
  }
  if (as_frame && policy.shared_arena != nullptr &&
      PlaceShared(m, *policy.shared_arena, payload, data, copy_for_frame)) {
    return;
  }
  if (as_frame) {
    if (m.payloads.size() >= std::numeric_limits<uint32_t>::max() - 1) {
      throw EncodeError("too many payload frames in one message");
    }
    m.payloads.push_back(copy_for_frame ? Buffer::CopyOf(data.data(), size) : std::move(data));
    auto ref = payload.initFrame();
    ref.setIndex(static_cast<uint32_t>(m.payloads.size()));
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
void ValueWriter::Text(std::string_view v) { CopyText(V(builder_).initText(TextSize(v)), v); }

void ValueWriter::Bytes(Buffer data) {
  auto& m = *message_->impl_;
  Place({m.payloads, m.shared_blocks}, message_->policy(), V(builder_).initBytes(),
        std::move(data), false);
}

void ValueWriter::CopyBytes(std::span<const std::byte> data) {
  auto& m = *message_->impl_;
  Place({m.payloads, m.shared_blocks}, message_->policy(), V(builder_).initBytes(),
        Buffer::Borrow(data.data(), data.size()), true);
}

namespace {
void WriteArray(PayloadSink m, const Policy& policy, wire::Value::Builder v, DType dtype,
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
  Place(m, policy, tensor.initData(), std::move(data), copy_for_frame);
}
}  // namespace

void ValueWriter::Array(DType dtype, const Shape& shape, Buffer data, Order order) {
  auto& m = *message_->impl_;
  WriteArray({m.payloads, m.shared_blocks}, message_->policy(), V(builder_), dtype, shape,
             std::move(data), order, false);
}

void ValueWriter::CopyArray(DType dtype, const Shape& shape, std::span<const std::byte> data,
                            Order order) {
  auto& m = *message_->impl_;
  WriteArray({m.payloads, m.shared_blocks}, message_->policy(), V(builder_), dtype, shape,
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
  CopyText(ext.initTypeName(TextSize(type_name)), type_name);
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

namespace {
// Whether a received reference may be forwarded as it is: only into the writer's own
// arena (its bytes came back to their owner). Any other reference is re-placed from the
// mapped bytes (a frame, or a copy into the writer's arena): its block belongs to a peer
// that frees it once its own call is answered, and the next receiver may not share it.
bool ForwardsAsIs(wire::SharedRef::Reader ref, const Policy& policy) {
  return policy.shared_arena != nullptr &&
         std::string_view(ref.getArena().begin(), ref.getArena().size()) ==
             policy.shared_arena->name();
}

// dtype, shape and order of a forwarded tensor, in the canonical order of Array.
wire::Tensor::Builder CopyTensorHeader(wire::Tensor::Reader from, wire::Tensor::Builder to) {
  to.setDtype(from.getDtype());
  auto shape = from.getShape();
  auto dims = to.initShape(shape.size());
  for (unsigned i = 0; i < shape.size(); ++i) dims.set(i, shape[i]);
  to.setOrder(from.getOrder());
  return to;
}

// A reference forwarded as it is: the bytes stay where they are, and the received view
// of them (which holds the block: a result that handed an argument back keeps it) stays
// with the new message until its receiver is done. A message decoded without mapping
// (DecodeLimits::SharedRefs::kDescribe) has no view to keep.
void CopySharedRef(wire::SharedRef::Reader from, wire::Payload::Builder to, const Value& value,
                   bool tensor, PayloadSink m) {
  SetSharedRef(to, std::string_view(from.getArena().begin(), from.getArena().size()),
               from.getOffset(), from.getLength(), from.getBlock());
  try {
    m.shared_blocks.push_back(tensor ? value.TensorBytes() : value.AsBytes());
  } catch (const Error&) {
  }
}
}  // namespace

void ValueWriter::Copy(const Value& value) {
  wire::Value::Reader r = internal::WireAccess::Reader(value);
  // The sequence type (list, tuple) is not C++'s to interpret, only to forward. It is a
  // data field: setting it allocates nothing, so the canonical order is unchanged.
  if (r.getSequenceType() != wire::SequenceType::UNSPECIFIED) {
    V(builder_).setSequenceType(r.getSequenceType());
  }
  switch (value.kind()) {
    case Kind::kNull: return Null();
    case Kind::kBool: return Bool(r.getBool());
    case Kind::kInt: return Int(r.getInt());
    case Kind::kUInt: return UInt(r.getUint());
    case Kind::kFloat: return Float(r.getFloat());
    case Kind::kText: return Text(value.AsText());
    case Kind::kBytes:
      if (r.getBytes().isShared() && ForwardsAsIs(r.getBytes().getShared(), message_->policy())) {
        auto& m = *message_->impl_;
        return CopySharedRef(r.getBytes().getShared(), V(builder_).initBytes(), value,
                             /*tensor=*/false, {m.payloads, m.shared_blocks});
      }
      return Bytes(value.AsBytes());
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
        auto out = CopyTensorHeader(t, V(builder_).initTensor());
        out.setByteOrder(t.getByteOrder());
        out.setPacking(t.getPacking());
        if (t.getPacking() != wire::Packing::NONE) {
          out.initData().setInline(t.getData().getInline());
        } else {
          auto& m = *message_->impl_;
          Place({m.payloads, m.shared_blocks}, message_->policy(), out.initData(),
                value.TensorBytes(), false);
        }
        return;
      }
      if (t.getData().isShared() && ForwardsAsIs(t.getData().getShared(), message_->policy())) {
        // The canonical order of Array, with the reference.
        auto out = CopyTensorHeader(t, V(builder_).initTensor());
        auto& m = *message_->impl_;
        return CopySharedRef(t.getData().getShared(), out.initData(), value, /*tensor=*/true,
                             {m.payloads, m.shared_blocks});
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

// ---- the checked walk ----------------------------------------------------------------

namespace {

using Code = DecodeError::Code;

// A field path built on the stack as the walk descends and rendered only on error:
// "apply.args[1].tensor.shape".
struct Path {
  const Path* parent;
  const char* field;   // appended as ".field" (or bare at the root); may be null
  int64_t index;       // appended as "[index]" when >= 0

  std::string Render() const {
    std::string out = parent != nullptr ? parent->Render() : std::string();
    if (field != nullptr) {
      if (!out.empty()) out += '.';
      out += field;
    }
    if (index >= 0) absl::StrAppend(&out, "[", index, "]");
    return out;
  }
};

Path Child(const Path& parent, const char* field, int64_t index = -1) {
  return Path{&parent, field, index};
}

[[noreturn]] void Fail(Code code, const Path& path, const std::string& what) {
  throw DecodeError(code, absl::StrCat(path.Render(), ": ", what));
}

class Walker {
 public:
  Walker(const ReceivedMessage& received, uint32_t payload_frames, const DecodeLimits& limits,
         uint64_t budget, internal::SharedViews* shared_views)
      : received_(received),
        payload_frames_(payload_frames),
        limits_(limits),
        budget_(budget),
        shared_views_(shared_views) {}

  // The traversal budget: every value visited, list element and blob word costs one
  // unit, and a well-formed tree spends at most one unit per envelope word. Shared or
  // cyclic substructure (a "traversal bomb") would spend more and is cut off here, so the
  // walk's work is bounded by traversal_factor x the envelope's size.
  void Charge(uint64_t units, const Path& path) {
    if (units > budget_) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("traversal limit exceeded: more than traversal_factor ",
                        limits_.traversal_factor,
                        " x the envelope's words read (shared or cyclic substructure?)"));
    }
    budget_ -= units;
  }

  void Text(const capnp::Text::Reader& text, const Path& path) {
    Charge(text.size() / 8 + 1, path);
    if (text.size() > limits_.max_text_bytes) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("text of ", text.size(), " bytes exceeds max_text_bytes ",
                        limits_.max_text_bytes));
    }
  }

  // Checks a payload reference; returns its length in bytes.
  uint64_t Payload(const wire::Payload::Reader& payload, const Path& path) {
    if (++payload_refs_ > limits_.max_payload_refs) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("more than max_payload_refs ", limits_.max_payload_refs,
                        " payload references"));
    }
    switch (payload.which()) {
      case wire::Payload::INLINE: {
        uint64_t size = payload.getInline().size();
        Charge(size / 8 + 1, path);
        return size;
      }
      case wire::Payload::FRAME: {
        auto ref = payload.getFrame();
        uint32_t index = ref.getIndex();
        if (index == 0 || index > payload_frames_) {
          Fail(Code::kMalformed, path,
               absl::StrCat("refers to frame ", index, ", but the message has ", payload_frames_,
                            " payload frame", payload_frames_ == 1 ? "" : "s",
                            " (valid: 1..", payload_frames_, ")"));
        }
        uint64_t size = received_.frames[index].size();
        uint64_t offset = ref.getOffset(), length = ref.getLength();
        // Overflow-free: length against size, then offset against what remains.
        if (length > size || offset > size - length) {
          Fail(Code::kMalformed, path,
               absl::StrCat("offset ", offset, " + length ", length, " is past the end of frame ",
                            index, " (", size, " bytes)"));
        }
        return length;
      }
      case wire::Payload::SHARED: return Shared(payload.getShared(), Child(path, "shared"));
    }
    Fail(Code::kMalformed, path, "unknown payload kind (from a newer protocol?)");
  }

  // A reference into another process's arena: mapped (same user, same host) and checked
  // against the arena's sealed size here, so that no accessor can fail later.
  uint64_t Shared(const wire::SharedRef::Reader& ref, const Path& path) {
    capnp::Text::Reader arena = ref.getArena();
    Text(arena, Child(path, "arena"));
    std::string_view name(arena.begin(), arena.size());
    if (limits_.shared_refs == DecodeLimits::SharedRefs::kRefuse) {
      Fail(Code::kMalformed, path,
           absl::StrCat("a shared-memory reference (arena \"", internal::Sv(name),
                        "\"), which this receiver does not accept (shared memory is off, or the "
                        "sender is not on this host)"));
    }
    if (limits_.shared_refs == DecodeLimits::SharedRefs::kMap) {
      Buffer view = internal::ProcessSegments().Resolve(name, ref.getOffset(), ref.getLength(),
                                                        ref.getBlock(), path.Render());
      auto [it, fresh] = shared_views_->try_emplace(
          internal::MessageState::Key(ref),
          SharedOrigin{std::string(name), ref.getOffset(), ref.getBlock(), view});
      const Buffer& seen = it->second.view;
      if (!fresh && (seen.data() != view.data() || seen.size() != view.size())) {
        // Two pointers to one SharedRef struct read with different sizes (crafted).
        Fail(Code::kMalformed, path, "a reference that overlaps another with other contents");
      }
      Bump(GlobalStats().shared_refs_received);
    }
    return ref.getLength();
  }

  void Tensor(const wire::Tensor::Reader& t, const Path& path) {
    uint16_t raw_dtype = static_cast<uint16_t>(t.getDtype());
    if (raw_dtype >= kDTypeCount) {
      Fail(Code::kMalformed, Child(path, "dtype"), absl::StrCat("unknown dtype ", raw_dtype));
    }
    DType dtype = static_cast<DType>(raw_dtype);
    if (static_cast<uint16_t>(t.getOrder()) > 1) {
      Fail(Code::kMalformed, Child(path, "order"),
           absl::StrCat("unknown order ", static_cast<uint16_t>(t.getOrder())));
    }
    if (static_cast<uint16_t>(t.getByteOrder()) > 1) {
      Fail(Code::kMalformed, Child(path, "byteOrder"),
           absl::StrCat("unknown byte order ", static_cast<uint16_t>(t.getByteOrder())));
    }
    auto shape = t.getShape();
    Charge(shape.size() + 1, Child(path, "shape"));
    if (shape.size() > limits_.max_rank) {
      Fail(Code::kLimitExceeded, Child(path, "shape"),
           absl::StrCat("rank ", shape.size(), " exceeds max_rank ", limits_.max_rank));
    }
    uint64_t count = 1;
    bool overflow = false;
    for (uint64_t d : shape) {
      if (d != 0 && count > UINT64_MAX / d) overflow = true;
      if (!overflow) count *= d;
    }
    size_t item = ItemSize(dtype);
    wire::Packing packing = t.getPacking();
    if (packing != wire::Packing::NONE) {
      size_t packed = PackingSize(packing);
      if (packed == 0) {
        Fail(Code::kMalformed, Child(path, "packing"),
             absl::StrCat("unknown packing ", static_cast<uint16_t>(packing)));
      }
      if (!IsInteger(dtype) || packed >= item) {
        Fail(Code::kMalformed, Child(path, "packing"),
             absl::StrCat("packing to ", packed, "-byte integers is not narrower than ",
                          internal::Sv(DTypeName(dtype))));
      }
      if (!t.getData().isInline()) {
        Fail(Code::kMalformed, Child(path, "packing"), "packed tensors must be inline");
      }
      item = packed;
    }
    uint64_t length = Payload(t.getData(), Child(path, "data"));
    if (overflow || count > UINT64_MAX / item || count * item != length) {
      std::string dims = absl::StrJoin(shape, "x");
      std::string where = t.getData().isInline()   ? std::string("inline data has")
                          : t.getData().isShared() ? std::string("the shared reference has")
                              : absl::StrCat("frame ", t.getData().getFrame().getIndex(), " has");
      Fail(Code::kMalformed, Child(path, "shape"),
           absl::StrCat(dims.empty() ? "scalar" : dims, " ", internal::Sv(DTypeName(dtype)), " needs ",
                        overflow || count > UINT64_MAX / item ? std::string("more than 2^64")
                                                              : absl::StrCat(count * item),
                        " bytes, ", where, " ", length));
    }
  }

  void Value(const wire::Value::Reader& v, const Path& path, uint32_t depth) {
    if (depth > limits_.max_depth) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("values nested deeper than max_depth ", limits_.max_depth));
    }
    Charge(1, path);
    switch (v.which()) {
      case wire::Value::NULL_:
      case wire::Value::BOOL:
      case wire::Value::INT:
      case wire::Value::UINT:
      case wire::Value::FLOAT: return;
      case wire::Value::TEXT: return Text(v.getText(), Child(path, "text"));
      case wire::Value::BYTES: Payload(v.getBytes(), Child(path, "bytes")); return;
      case wire::Value::LIST: {
        auto list = v.getList();
        CheckLength(list.size(), path);
        for (unsigned i = 0; i < list.size(); ++i) Visit(list[i], Child(path, nullptr, i), depth + 1);
        return;
      }
      case wire::Value::MAP: {
        auto map = v.getMap();
        CheckLength(map.size(), path);
        unsigned i = 0;
        for (; i < map.size(); ++i) {
          Path entry = Child(path, nullptr, i);
          Visit(map[i].getKey(), Child(entry, "key"), depth + 1);
          Visit(map[i].getValue(), Child(entry, "value"), depth + 1);
        }
        return;
      }
      case wire::Value::TENSOR: return Tensor(v.getTensor(), Child(path, "tensor"));
      case wire::Value::EXTENSION: {
        auto ext = v.getExtension();
        Text(ext.getTypeName(), Child(path, "typeName"));
        if (ext.getTypeName().size() == 0) {
          Fail(Code::kMalformed, Child(path, "typeName"), "extension without a type name");
        }
        return Value(ext.getState(), Child(path, "state"), depth + 1);
      }
    }
    Fail(Code::kMalformed, path,
         absl::StrCat("unknown value kind ", static_cast<int>(v.which()),
                      " (sent by a newer protocol version?)"));
  }

  // Value() for an element of a list or map: scalars and text, most elements, are
  // checked here without the recursive call (the same checks, in the same order).
#if defined(__GNUC__)
  __attribute__((always_inline))
#endif
  void Visit(const wire::Value::Reader& v, const Path& path, uint32_t depth) {
    auto which = v.which();
    if (which > wire::Value::TEXT || depth > limits_.max_depth) return Value(v, path, depth);
    Charge(1, path);
    if (which == wire::Value::TEXT) Text(v.getText(), Child(path, "text"));
  }
  void CheckLength(uint64_t n, const Path& path) {
    if (n > limits_.max_list_length) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("length ", n, " exceeds max_list_length ", limits_.max_list_length));
    }
    Charge(n, path);
  }

  // Walks the whole envelope.
  void Envelope(const wire::Envelope::Reader& env) {
    Path root{nullptr, nullptr, -1};
    auto body = env.getBody();
    switch (body.which()) {
      case wire::Envelope::Body::APPLY: {
        Path apply = Child(root, "apply");
        auto a = body.getApply();
        auto function = a.getFunction();
        Text(function, Child(apply, "function"));
        auto args = a.getArgs();
        CheckLength(args.size(), Child(apply, "args"));
        for (unsigned i = 0; i < args.size(); ++i) Visit(args[i], Child(apply, "args", i), 1);
        auto kwargs = a.getKwargs();
        walked_.is_apply = true;
        walked_.apply = a;
        walked_.function = function;
        walked_.args = args;
        walked_.kwargs = kwargs;
        CheckLength(kwargs.size(), Child(apply, "kwargs"));
        for (unsigned i = 0; i < kwargs.size(); ++i) {
          Path kw = Child(apply, "kwargs", i);
          Text(kwargs[i].getKey(), Child(kw, "key"));
          Value(kwargs[i].getValue(), Child(kw, "value"), 1);
        }
        return;
      }
      case wire::Envelope::Body::RESULT: {
        Path result = Child(root, "result");
        auto r = body.getResult();
        walked_.is_result = true;
        walked_.result = r;
        Text(r.getEngineId(), Child(result, "engineId"));
        switch (r.which()) {
          case wire::Result::OK:
            walked_.ok = r.getOk();
            return Value(walked_.ok, Child(result, "ok"), 1);
          case wire::Result::ERROR: {
            Path error = Child(result, "error");
            auto e = r.getError();
            Text(e.getType(), Child(error, "type"));
            Text(e.getMessage(), Child(error, "message"));
            Text(e.getFunction(), Child(error, "function"));
            Text(e.getWhere(), Child(error, "where"));
            return;
          }
        }
        Fail(Code::kMalformed, result, "unknown result kind (sent by a newer protocol version?)");
      }
      case wire::Envelope::Body::HELLO: {
        Path hello = Child(root, "hello");
        auto h = body.getHello();
        Text(h.getPeerId(), Child(hello, "peerId"));
        Text(h.getRole(), Child(hello, "role"));
        auto functions = h.getFunctions();
        CheckLength(functions.size(), Child(hello, "functions"));
        for (unsigned i = 0; i < functions.size(); ++i) {
          Text(functions[i], Child(hello, "functions", i));
        }
        if (h.hasHost()) Text(h.getHost().getBootId(), Child(Child(hello, "host"), "bootId"));
        return;
      }
      case wire::Envelope::Body::HEARTBEAT:
        Text(body.getHeartbeat().getPeerId(), Child(Child(root, "heartbeat"), "peerId"));
        return;
      case wire::Envelope::Body::GOODBYE: return;
      case wire::Envelope::Body::STARTED: (void)body.getStarted().getCallId(); return;
      case wire::Envelope::Body::DRAINING: return;
      // Data only; reading a field follows (and so checks) the struct pointer here, so
      // that the accessors afterwards cannot meet a bad one.
      case wire::Envelope::Body::CANCEL: (void)body.getCancel().getCallId(); return;
      case wire::Envelope::Body::CREDIT: (void)body.getCredit().getItems(); return;
    }
    Fail(Code::kMalformed, Child(root, "body"),
         absl::StrCat("unknown message kind ", static_cast<int>(body.which()),
                      " (sent by a newer protocol version?)"));
  }

  // The body's readers Envelope followed.
  const internal::WalkedBody& walked() const { return walked_; }

 private:
  const ReceivedMessage& received_;
  uint32_t payload_frames_;
  const DecodeLimits& limits_;
  uint64_t budget_;
  internal::SharedViews* shared_views_;
  uint64_t payload_refs_ = 0;
  internal::WalkedBody walked_;
};

}  // namespace

namespace internal {
WalkedBody WalkEnvelope(const ReceivedMessage& received, uint32_t payload_frames,
                        const DecodeLimits& limits, uint64_t budget,
                        wire::Envelope::Reader envelope, SharedViews* shared_views) {
  Walker walker(received, payload_frames, limits, budget, shared_views);
  walker.Envelope(envelope);
  return walker.walked();
}
}  // namespace internal

// ---- Value accessors ---------------------------------------------------------------

namespace {
using internal::WireAccess;
std::string_view View(capnp::Text::Reader t) { return std::string_view(t.begin(), t.size()); }
wire::Value::Reader R(const Value& v) { return WireAccess::Reader(v); }
}  // namespace

std::string_view KindName(Kind kind) noexcept {
  switch (kind) {
    case Kind::kNull: return "null";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kUInt: return "uint";
    case Kind::kFloat: return "float64";
    case Kind::kText: return "text";
    case Kind::kBytes: return "bytes";
    case Kind::kList: return "list";
    case Kind::kMap: return "map";
    case Kind::kTensor: return "tensor";
    case Kind::kExtension: return "extension";
  }
  return "unknown";
}

bool Value::AsBool() const {
  if (kind() != Kind::kBool) Mismatch("bool");
  return R(*this).getBool();
}

int64_t Value::AsInt() const {
  if (kind() == Kind::kInt) return R(*this).getInt();
  uint64_t u = kind() == Kind::kUInt ? R(*this).getUint() : 0;
  if (kind() != Kind::kUInt || u > static_cast<uint64_t>(INT64_MAX)) {
    Mismatch(kind() == Kind::kUInt ? "int64 (value too large)" : "int");
  }
  return static_cast<int64_t>(u);
}

uint64_t Value::AsUInt() const {
  if (kind() == Kind::kUInt) return R(*this).getUint();
  int64_t i = kind() == Kind::kInt ? R(*this).getInt() : 0;
  if (kind() != Kind::kInt || i < 0) Mismatch(kind() == Kind::kInt ? "uint (non-negative)" : "uint");
  return static_cast<uint64_t>(i);
}

double Value::AsDouble() const {
  switch (kind()) {
    case Kind::kFloat: return R(*this).getFloat();
    case Kind::kInt: return static_cast<double>(R(*this).getInt());
    case Kind::kUInt: return static_cast<double>(R(*this).getUint());
    default: Mismatch("float64");
  }
}

std::string_view Value::AsText() const {
  if (kind() != Kind::kText) Mismatch("text");
  return View(R(*this).getText());
}

ValueList Value::AsList() const {
  if (kind() != Kind::kList) Mismatch("list");
  return WireAccess::MakeList(R(*this).getList(), message_);
}

ValueMap Value::AsMap() const {
  if (kind() != Kind::kMap) Mismatch("map");
  return WireAccess::MakeMap(R(*this).getMap(), message_);
}

size_t Value::size() const {
  if (kind() == Kind::kList) return R(*this).getList().size();
  if (kind() != Kind::kMap) Mismatch("list or map");
  return R(*this).getMap().size();
}

Value ValueList::Unchecked(size_t i) const noexcept {
  return WireAccess::MakeValue(WireAccess::Reader(*this)[static_cast<unsigned>(i)], message_);
}
Value ValueMap::UncheckedKey(size_t i) const noexcept {
  return WireAccess::MakeValue(WireAccess::Reader(*this)[static_cast<unsigned>(i)].getKey(), message_);
}
Value ValueMap::UncheckedValue(size_t i) const noexcept {
  return WireAccess::MakeValue(WireAccess::Reader(*this)[static_cast<unsigned>(i)].getValue(), message_);
}

std::optional<Value> ValueMap::Find(std::string_view key) const {
  auto entries = WireAccess::Reader(*this);
  for (auto entry : entries) {
    auto k = entry.getKey();
    if (k.isText() && View(k.getText()) == key) return WireAccess::MakeValue(entry.getValue(), message_);
  }
  return std::nullopt;
}

namespace internal {
void ThrowValueIndex(const char* what, size_t i, size_t n) {
  throw std::out_of_range(absl::StrCat(what, " index ", i, " out of range (size ", n, ")"));
}
}  // namespace internal

std::string Value::Describe() const {
  switch (kind()) {
    case Kind::kText: return absl::StrCat("text \"", internal::Sv(AsText().substr(0, 32)), "\"");
    case Kind::kInt: return absl::StrCat("int ", R(*this).getInt());
    case Kind::kUInt: return absl::StrCat("uint ", R(*this).getUint());
    case Kind::kBytes: return absl::StrCat("bytes[", AsBytes().size(), "]");
    case Kind::kList: return absl::StrCat("list[", size(), "]");
    case Kind::kMap: return absl::StrCat("map[", size(), "]");
    case Kind::kTensor:
      return absl::StrCat("tensor ", absl::StrJoin(shape(), "x"), " ", internal::Sv(DTypeName(dtype())));
    case Kind::kExtension: return absl::StrCat("extension ", internal::Sv(extension_name()));
    default: return std::string(KindName(kind()));
  }
}

void Value::Mismatch(std::string_view expected) const {
  throw DecodeError(DecodeError::Code::kTypeMismatch,
                    absl::StrCat("expected ", internal::Sv(expected), ", got ", Describe()));
}

namespace {
Buffer Resolve(const internal::MessageState* message, wire::Payload::Reader payload) {
  if (message == nullptr) throw Error("Value: no message behind this value");
  if (payload.isInline()) return message->InlineBytes(payload.getInline());
  if (payload.isShared()) return message->SharedSlice(payload.getShared());
  auto ref = payload.getFrame();
  return message->FrameSlice(ref.getIndex(), ref.getOffset(), ref.getLength());
}
}  // namespace

Buffer Value::AsBytes() const {
  if (kind() != Kind::kBytes) Mismatch("bytes");
  return Resolve(message_, R(*this).getBytes());
}

DType Value::dtype() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return static_cast<DType>(R(*this).getTensor().getDtype());
}

Shape Value::shape() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  Shape out;
  for (uint64_t d : R(*this).getTensor().getShape()) out.push_back(d);
  return out;
}

Buffer Value::TensorBytes() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  return Resolve(message_, R(*this).getTensor().getData());
}

bool Value::InSharedMemory() const {
  switch (kind()) {
    case Kind::kTensor: return R(*this).getTensor().getData().isShared();
    case Kind::kBytes: return R(*this).getBytes().isShared();
    default: return false;
  }
}

bool Value::InFrame() const {
  switch (kind()) {
    case Kind::kTensor: return R(*this).getTensor().getData().isFrame();
    case Kind::kBytes: return R(*this).getBytes().isFrame();
    default: return false;
  }
}

bool Value::TensorIsZeroCopy() const {
  if (kind() != Kind::kTensor) return false;
  auto t = R(*this).getTensor();
  if (t.getPacking() != wire::Packing::NONE || t.getByteOrder() != wire::ByteOrder::LITTLE) {
    return false;
  }
  Buffer raw = Resolve(message_, t.getData());
  return IsAligned(raw.data(), ItemAlignment(static_cast<DType>(t.getDtype())));
}

namespace {

template <class From, class To>
void Widen(const std::byte* src, size_t n, std::byte* dst) {
  if (IsAligned(src, alignof(From)) && IsAligned(dst, alignof(To))) {
    const From* s = reinterpret_cast<const From*>(src);
    To* d = reinterpret_cast<To*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<To>(s[i]);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    From v;
    std::memcpy(&v, src + i * sizeof(From), sizeof(From));
    To w = static_cast<To>(v);
    std::memcpy(dst + i * sizeof(To), &w, sizeof(To));
  }
}

template <class To>
void Unpack(wire::Packing p, const std::byte* src, size_t n, std::byte* dst) {
  switch (p) {
    case wire::Packing::INT8: return Widen<int8_t, To>(src, n, dst);
    case wire::Packing::UINT8: return Widen<uint8_t, To>(src, n, dst);
    case wire::Packing::INT16: return Widen<int16_t, To>(src, n, dst);
    case wire::Packing::UINT16: return Widen<uint16_t, To>(src, n, dst);
    case wire::Packing::INT32: return Widen<int32_t, To>(src, n, dst);
    case wire::Packing::UINT32: return Widen<uint32_t, To>(src, n, dst);
    default: return;
  }
}

}  // namespace

Tensor Value::AsTensor() const {
  if (kind() != Kind::kTensor) Mismatch("tensor");
  auto t = R(*this).getTensor();
  DType dtype = static_cast<DType>(t.getDtype());
  Shape dims;
  for (uint64_t d : t.getShape()) dims.push_back(d);
  Order order = t.getOrder() == wire::Order::FORTRAN ? Order::kFortran : Order::kC;
  Buffer raw = Resolve(message_, t.getData());
  size_t item = ItemSize(dtype);

  if (t.getPacking() != wire::Packing::NONE) {
    // Validated: integer dtype, count * packed size == raw.size().
    size_t n = static_cast<size_t>(*ElementCount(dims));
    Buffer wide = Buffer::Allocate(n * item);
    switch (dtype) {
      case DType::kInt16: Unpack<int16_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kInt32: Unpack<int32_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kInt64: Unpack<int64_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt16: Unpack<uint16_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt32: Unpack<uint32_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      case DType::kUInt64: Unpack<uint64_t>(t.getPacking(), raw.data(), n, wide.mutable_data()); break;
      default: break;
    }
    Bump(GlobalStats().payload_converted);
    return Tensor(dtype, std::move(dims), std::move(wide), order);
  }
  if (t.getByteOrder() == wire::ByteOrder::BIG) {
    Buffer swapped = Buffer::Allocate(raw.size());
    // Complex values swap each component.
    size_t unit = (dtype == DType::kComplex64 || dtype == DType::kComplex128) ? item / 2 : item;
    for (size_t i = 0; i + unit <= raw.size(); i += unit) {
      for (size_t b = 0; b < unit; ++b) swapped.mutable_data()[i + b] = raw.data()[i + unit - 1 - b];
    }
    Bump(GlobalStats().payload_converted);
    return Tensor(dtype, std::move(dims), std::move(swapped), order);
  }
  if (!IsAligned(raw.data(), ItemAlignment(dtype))) {
    Buffer aligned = Buffer::Allocate(raw.size());
    if (raw.size() != 0) std::memcpy(aligned.mutable_data(), raw.data(), raw.size());
    Bump(GlobalStats().payload_realigned);
    return Tensor(dtype, std::move(dims), std::move(aligned), order);
  }
  return Tensor(dtype, std::move(dims), std::move(raw), order);
}

std::string_view Value::extension_name() const {
  if (kind() != Kind::kExtension) Mismatch("extension");
  return View(R(*this).getExtension().getTypeName());
}

Value Value::extension_state() const {
  if (kind() != Kind::kExtension) Mismatch("extension");
  return WireAccess::MakeValue(R(*this).getExtension().getState(), message_);
}

}  // namespace zerocan
