// Message::Decode: the one walk over an untrusted envelope.
//
// Order (docs/FORMAT.md, "Decoding"): frame count and sizes; envelope alignment (one
// counted copy when misaligned); one Cap'n Proto reader (pointer bounds checked on every
// access); a full walk that checks the version, every union member, every payload
// reference, every tensor's shape against its bytes, the nesting depth, and a traversal
// budget scaled to the envelope's real size (Walker::Charge). The walk enforces the
// budget itself rather than through capnp's traversal limit because capnp's is spent
// cumulatively over the reader's life: the accessors reuse this reader, and with capnp's
// limit they would throw at random after the walk. One reader instead of a bounded one
// for the walk plus a second for the accessors also saves ~15% of a small decode.
#include "zerocan/message.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "absl/strings/str_join.h"
#include "internal/block_cache.h"
#include "internal/kj_bridge.h"
#include "internal/message_state.h"
#include "zerocan/error.h"
#include "zerocan/stats.h"
#include "zerocan/version.h"

namespace zerocan {

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

size_t PackedSize(wire::Packing p) {
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

// The two ways to read an envelope, with the same names for the same fields: the
// generated Cap'n Proto readers (the authority: every encoding the format allows) and
// the inline views of zerocan/internal/wire_view.h (the fast path: the encodings
// writers produce). One Walker serves both, so both check exactly the same rules.
struct GeneratedReaders {
  using Envelope = wire::Envelope::Reader;
  using Value = wire::Value::Reader;
  using Tensor = wire::Tensor::Reader;
  using Payload = wire::Payload::Reader;
  using Text = capnp::Text::Reader;
  static constexpr bool kFast = false;
};
struct FastViews {
  using Envelope = internal::EnvelopeView;
  using Value = internal::ValueView;
  using Tensor = internal::TensorView;
  using Payload = internal::PayloadView;
  using Text = internal::BlobView;
  static constexpr bool kFast = true;
};

template <class R>
class Walker {
 public:
  Walker(const ReceivedMessage& received, uint32_t payload_frames, const DecodeLimits& limits,
         uint64_t budget)
      : received_(received), payload_frames_(payload_frames), limits_(limits), budget_(budget) {}

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

  void Text(const typename R::Text& text, const Path& path) {
    Charge(text.size() / 8 + 1, path);
    if (text.size() > limits_.max_text_bytes) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("text of ", text.size(), " bytes exceeds max_text_bytes ",
                        limits_.max_text_bytes));
    }
  }

  // Checks a payload reference; returns its length in bytes.
  uint64_t Payload(const typename R::Payload& payload, const Path& path) {
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
    }
    Fail(Code::kMalformed, path, "unknown payload kind (from a newer protocol?)");
  }

  void Tensor(const typename R::Tensor& t, const Path& path) {
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
      size_t packed = PackedSize(packing);
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
      std::string where = t.getData().isInline()
                              ? std::string("inline data has")
                              : absl::StrCat("frame ", t.getData().getFrame().getIndex(), " has");
      Fail(Code::kMalformed, Child(path, "shape"),
           absl::StrCat(dims.empty() ? "scalar" : dims, " ", internal::Sv(DTypeName(dtype)), " needs ",
                        overflow || count > UINT64_MAX / item ? std::string("more than 2^64")
                                                              : absl::StrCat(count * item),
                        " bytes, ", where, " ", length));
    }
  }

  void Value(const typename R::Value& v, const Path& path, uint32_t depth) {
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
        if constexpr (R::kFast) {
          // Most entries: a scalar or text key and value in a one-segment envelope. The
          // entries share one layout (the list's tag), so the conditions are checked once.
          if (map.size() != 0 && map[0].pointer_count() >= 2 && map[0].segments()->count == 1 &&
              depth + 1 <= limits_.max_depth) {
            const internal::Segments::Segment& seg = map[0].segments()->list[0];
            const uint64_t* first_slots = map[0].data() + map[0].data_words();
            const uint64_t step = uint64_t{map[0].data_words()} + map[0].pointer_count();
            for (; i < map.size(); ++i) {
              const uint64_t* slots = first_slots + i * step;  // never formed past the end
              bool key_done = QuickCharge(QuickPointer(slots, seg));
              if (key_done && QuickCharge(QuickPointer(slots + 1, seg))) continue;
              Path entry = Child(path, nullptr, i);
              if (!key_done) Visit(map[i].getKey(), Child(entry, "key"), depth + 1);
              Visit(map[i].getValue(), Child(entry, "value"), depth + 1);
            }
          }
        }
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
  void Visit(const typename R::Value& v, const Path& path, uint32_t depth) {
    if constexpr (R::kFast) {
      const internal::Segments* segs = v.segments();
      if (depth <= limits_.max_depth && segs != nullptr && segs->count == 1 &&
          QuickCharge(QuickValue(v.data(), v.data_words(), v.pointer_count(), segs->list[0]))) {
        return;
      }
    }
    auto which = v.which();
    if (which > wire::Value::TEXT || depth > limits_.max_depth) return Value(v, path, depth);
    Charge(1, path);
    if (which == wire::Value::TEXT) Text(v.getText(), Child(path, "text"));
  }

  // The one-segment fast path (FastViews only). A Value struct at words [s, s + dw + pc)
  // of `seg`, already inside it: a null, a scalar or a text is checked here, straight
  // from the words, with the general path's rules (no views, no Path). Returns the units
  // the general path would charge for it, or 0 (no value costs 0) for anything else or
  // anything wrong: the caller then walks the value the general way, which also names
  // the error precisely. Charges nothing itself.
  ZEROCAN_VIEW_INLINE uint64_t QuickValue(const uint64_t* s, uint64_t dw, uint64_t pc,
                                          const internal::Segments::Segment& seg) {
    uint16_t which = dw != 0 ? static_cast<uint16_t>(internal::view_detail::Load(s)) : 0;
    if (which <= wire::Value::FLOAT) return 1;
    if (which != wire::Value::TEXT) return 0;
    uint64_t size = 0;  // a missing or null text pointer is the empty text
    if (pc != 0 && !QuickText(s + dw, seg, &size)) return 0;
    if (size > limits_.max_text_bytes) return 0;
    return 1 + size / 8 + 1;
  }
  // A pointer slot to a Value struct; as QuickValue.
  ZEROCAN_VIEW_INLINE uint64_t QuickPointer(const uint64_t* slot, const internal::Segments::Segment& seg) {
    uint64_t w = internal::view_detail::Load(slot);
    if (w == 0) return 1;  // a null pointer reads as the null value
    const uint64_t* at = QuickStruct(slot, w, seg);
    return at == nullptr ? 0 : QuickValue(at, (w >> 32) & 0xffff, w >> 48, seg);
  }
  // Struct pointer `w`, read from `slot`: a near, non-null struct pointer whose struct
  // lies inside the segment (far pointers and errors: the general path). The struct's
  // first word, or null. Its sections are w's data words (bits 32-47) and pointers (48-63).
  ZEROCAN_VIEW_INLINE const uint64_t* QuickStruct(const uint64_t* slot, uint64_t w,
                                                  const internal::Segments::Segment& seg) {
    if (w == 0 || (w & 3) != 0) return nullptr;
    uint64_t index = static_cast<uint64_t>((slot - seg.begin) + 1 + internal::view_detail::PointerOffset(w));
    if (index > seg.words || ((w >> 32) & 0xffff) + (w >> 48) > seg.words - index) return nullptr;
    return seg.begin + index;
  }
  // Spends `units` (0: a refused value, never charged) if the budget has them.
  ZEROCAN_VIEW_INLINE bool QuickCharge(uint64_t units) {
    if (units == 0 || units > budget_) return false;
    budget_ -= units;
    return true;
  }

  // The whole apply in a one-segment envelope whose arguments and keyword values are
  // nulls, scalars or texts (every small call): the apply struct, its function and both
  // lists are checked straight from the words, with the general path's rules and
  // charges, in its order, and the elements through QuickValue/QuickPointer. Returns
  // false for anything else or anything wrong, and the caller walks the general way from
  // the same budget (it also names the error). Touches no payload references.
  bool QuickApply(const internal::StructView& env, internal::MessageState* state) {
    const internal::Segments* segs = env.segments();
    if (segs->count != 1 || env.pointer_count() < 1 || limits_.max_depth < 1) return false;
    const internal::Segments::Segment& seg = segs->list[0];
    // Body pointer 0: the Apply struct, with its three pointers present.
    const uint64_t* slot = env.data() + env.data_words();
    const uint64_t w = internal::view_detail::Load(slot);
    const uint64_t* apply_struct = QuickStruct(slot, w, seg);
    if (apply_struct == nullptr || (w >> 48) < 3) return false;
    const uint64_t* apply_pointers = apply_struct + ((w >> 32) & 0xffff);

    // The units add up here and are spent once: the general path, spending them one by
    // one, runs out exactly when their sum exceeds the budget.
    const uint64_t max_text = limits_.max_text_bytes;
    uint64_t size, units;
    if (!QuickText(apply_pointers, seg, &size) || size > max_text) return false;
    units = size / 8 + 1;
    QuickList args, kwargs;
    if (!QuickStructList(apply_pointers + 1, seg, &args)) return false;
    units += args.count;
    // The budget before the elements, as CheckLength charges a list's length before
    // walking it: else a list of 2^24 empty structs in 120 bytes would be looped over
    // here before the general walk refused it.
    if (units > budget_) return false;
    for (uint64_t i = 0; i < args.count; ++i) {
      uint64_t u = QuickValue(args.first + i * args.step, args.data_words, args.pointers, seg);
      if (u == 0) return false;
      units += u;
    }
    if (!QuickStructList(apply_pointers + 2, seg, &kwargs)) return false;
    units += kwargs.count;
    if (units > budget_) return false;
    if (kwargs.count != 0 && kwargs.pointers < 2) return false;
    for (uint64_t i = 0; i < kwargs.count; ++i) {
      const uint64_t* field_pointers = kwargs.first + i * kwargs.step + kwargs.data_words;
      if (!QuickText(field_pointers, seg, &size) || size > max_text) return false;
      uint64_t u = QuickPointer(field_pointers + 1, seg);
      if (u == 0) return false;
      units += size / 8 + 1 + u;
    }
    if (!QuickCharge(units)) return false;
    // Checked: the walked readers (a few instructions each) make the accessors' views.
    internal::ApplyView apply(env.WalkedStruct(0));
    state->apply_index_.is_apply = true;
    state->apply_index_.function = internal::ReadWalkedText(apply, 0);
    state->apply_index_.args = internal::StructListView<internal::ValueView>::ReadWalked(apply, 1);
    state->apply_index_.kwargs = internal::StructListView<internal::FieldView>::ReadWalked(apply, 2);
    return true;
  }
  // A text pointer slot: null (the empty text) or a near byte list ending in NUL inside
  // the segment; its size without the NUL.
  ZEROCAN_VIEW_INLINE bool QuickText(const uint64_t* slot, const internal::Segments::Segment& seg,
                                     uint64_t* size) {
    uint64_t w = internal::view_detail::Load(slot);
    *size = 0;
    if (w == 0) return true;
    // A near list pointer (tag 1) of byte elements (size 2), in one comparison.
    if ((w & 0x700000003) != 0x200000001) return false;
    uint64_t count = w >> 35;
    uint64_t index = static_cast<uint64_t>((slot - seg.begin) + 1 + internal::view_detail::PointerOffset(w));
    // count >= 1 (its NUL), and bytes [index*8, index*8 + count) inside the segment.
    if (count - 1 >= (seg.words - index) * 8 || index > seg.words) return false;
    if (reinterpret_cast<const char*>(seg.begin + index)[count - 1] != '\0') return false;
    *size = count - 1;
    return true;
  }
  struct QuickList {
    const uint64_t* first = nullptr;
    uint64_t count = 0, data_words = 0, pointers = 0, step = 0;
  };
  // A struct-list pointer slot: null (empty) or a near inline-composite list inside the
  // segment, as ListViewBase::Read checks it, within CheckLength's limit.
  ZEROCAN_VIEW_INLINE bool QuickStructList(const uint64_t* slot, const internal::Segments::Segment& seg,
                                           QuickList* out) {
    uint64_t w = internal::view_detail::Load(slot);
    if (w == 0) return true;  // the empty list
    // A near list pointer (tag 1) of inline-composite elements (size 7).
    if ((w & 0x700000003) != 0x700000001) return false;
    uint64_t words = w >> 35;
    uint64_t index = static_cast<uint64_t>((slot - seg.begin) + 1 + internal::view_detail::PointerOffset(w));
    if (index > seg.words || words + 1 > seg.words - index) return false;
    uint64_t tag = internal::view_detail::Load(seg.begin + index);
    if ((tag & 3) != 0) return false;
    out->count = static_cast<uint32_t>(tag) >> 2;
    out->data_words = (tag >> 32) & 0xffff;
    out->pointers = tag >> 48;
    out->step = out->data_words + out->pointers;
    if (out->count * out->step > words) return false;
    out->first = seg.begin + index + 1;
    return out->count <= limits_.max_list_length;
  }

  void CheckLength(uint64_t n, const Path& path) {
    if (n > limits_.max_list_length) {
      Fail(Code::kLimitExceeded, path,
           absl::StrCat("length ", n, " exceeds max_list_length ", limits_.max_list_length));
    }
    Charge(n, path);
  }

  // Walks the whole envelope; for an apply, also hands back its argument lists (the
  // accessors' hot path) so they are not read twice.
  void Envelope(const typename R::Envelope& env, internal::MessageState* state) {
    Path root{nullptr, nullptr, -1};
    auto body = env.getBody();
    switch (body.which()) {
      case wire::Envelope::Body::APPLY: {
        if constexpr (R::kFast) {
          const uint64_t budget = budget_;
          if (QuickApply(env, state)) return;
          budget_ = budget;  // the general walk starts over, from the same budget
        }
        Path apply = Child(root, "apply");
        auto a = body.getApply();
        Text(a.getFunction(), Child(apply, "function"));
        auto args = a.getArgs();
        CheckLength(args.size(), Child(apply, "args"));
        for (unsigned i = 0; i < args.size(); ++i) Visit(args[i], Child(apply, "args", i), 1);
        auto kwargs = a.getKwargs();
        CheckLength(kwargs.size(), Child(apply, "kwargs"));
        for (unsigned i = 0; i < kwargs.size(); ++i) {
          Path kw = Child(apply, "kwargs", i);
          Text(kwargs[i].getKey(), Child(kw, "key"));
          Value(kwargs[i].getValue(), Child(kw, "value"), 1);
        }
        if constexpr (R::kFast) {
          state->apply_index_.is_apply = true;
          state->apply_index_.function = a.getFunction();
          state->apply_index_.args = args;
          state->apply_index_.kwargs = kwargs;
        }
        return;
      }
      case wire::Envelope::Body::RESULT: {
        Path result = Child(root, "result");
        auto r = body.getResult();
        Text(r.getEngineId(), Child(result, "engineId"));
        switch (r.which()) {
          case wire::Result::OK: return Value(r.getOk(), Child(result, "ok"), 1);
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
        return;
      }
      case wire::Envelope::Body::HEARTBEAT:
        Text(body.getHeartbeat().getPeerId(), Child(Child(root, "heartbeat"), "peerId"));
        return;
      case wire::Envelope::Body::GOODBYE: return;
    }
    Fail(Code::kMalformed, Child(root, "body"),
         absl::StrCat("unknown message kind ", static_cast<int>(body.which()),
                      " (sent by a newer protocol version?)"));
  }

 private:
  const ReceivedMessage& received_;
  uint32_t payload_frames_;
  const DecodeLimits& limits_;
  uint64_t budget_;
  uint64_t payload_refs_ = 0;
};

// This thread's share of Stats::messages_decoded (see internal::ThreadCounter).
thread_local internal::ThreadCounter tls_decoded(&GlobalStats().messages_decoded);

[[noreturn]] void Reject(Code code, const std::string& what) {
  Bump(GlobalStats().messages_rejected);
  throw DecodeError(code, what);
}

uint64_t Budget(const DecodeLimits& limits, size_t word_count) {
  return static_cast<uint64_t>(limits.traversal_factor) * word_count + 64;
}

void CheckHeader(uint16_t version, uint32_t announced_frames, size_t payload_frames) {
  if (version != kProtocolVersion) {
    throw DecodeError(Code::kVersion, absl::StrCat("version: protocol version ", version,
                                                   " is not supported (this reader speaks ",
                                                   kProtocolVersion, ")"));
  }
  if (announced_frames != payload_frames) {
    throw DecodeError(Code::kMalformed,
                      absl::StrCat("payloadFrames: envelope announces ", announced_frames,
                                   " payload frames, message has ", payload_frames));
  }
}

// The fast path: parses the segment table and walks the envelope through the inline
// views. Returns false when a view refuses a pointer or the table does not add up
// (the caller then asks Cap'n Proto); throws DecodeError for a rule the walk enforces.
bool FastDecode(internal::MessageState* state, kj::ArrayPtr<const capnp::word> words,
                const DecodeLimits& limits) {
  const auto* table = reinterpret_cast<const uint32_t*>(words.begin());
  uint64_t count = uint64_t{table[0]} + 1;  // <= 511, checked by Decode
  uint64_t offset = (count + 2) / 2;        // the table, padded to a word
  if (offset > words.size()) return false;
  internal::Segments& segments = state->segments_;
  segments.Clear();
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t size = table[1 + i];
    if (size > words.size() - offset) return false;
    segments.Add(reinterpret_cast<const uint64_t*>(words.begin() + offset), size);
    offset += size;
  }
  if (offset != words.size() || segments.list[0].words == 0) return false;
  try {
    auto env = internal::EnvelopeView::At(&segments, 0, 0);
    size_t payload_frames = state->received_.frames.size() - 1;
    CheckHeader(env.getVersion(), env.getPayloadFrames(), payload_frames);
    Walker<FastViews>(state->received_, static_cast<uint32_t>(payload_frames), limits,
                      Budget(limits, words.size()))
        .Envelope(env, state);
    state->envelope_ = env;
    state->words_ = words;
    return true;
  } catch (const internal::ViewError&) {
    state->apply_index_.is_apply = false;
    return false;
  }
}

// One generated reader for the whole walk. Cap'n Proto's own traversal budget is
// cumulative over the reader's life, so it is off and the walk enforces the budget
// itself (Walker::Charge) and the nesting (max_depth). The nesting limit, unlike the
// traversal budget, is not spent, so it stays finite: a deep copy of any received
// struct cannot recurse without bound. About two pointer hops per value level.
capnp::ReaderOptions WalkOptions(const DecodeLimits& limits) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = UINT64_MAX;
  options.nestingLimit = static_cast<int>(2 * std::min<uint32_t>(limits.max_depth, 1u << 20) + 16);
  return options;
}

// The authority: the same walk through the generated readers. Throws DecodeError for
// anything malformed (Cap'n Proto's own pointer errors included, via the KJ bridge).
void CheckWithGeneratedReaders(const ReceivedMessage& received, kj::ArrayPtr<const capnp::word> words,
                               const DecodeLimits& limits) {
  static const std::string kContext = "envelope (frame 0)";
  internal::CatchKj(kContext, [&] {
    capnp::FlatArrayMessageReader reader(words, WalkOptions(limits));
    if (reader.getEnd() != words.end()) {
      throw DecodeError(Code::kMalformed, absl::StrCat("envelope (frame 0): ",
                                                       (words.end() - reader.getEnd()) * 8,
                                                       " bytes after the last segment"));
    }
    auto env = reader.getRoot<wire::Envelope>();
    size_t payload_frames = received.frames.size() - 1;
    CheckHeader(env.getVersion(), env.getPayloadFrames(), payload_frames);
    Walker<GeneratedReaders>(received, static_cast<uint32_t>(payload_frames), limits,
                             Budget(limits, words.size()))
        .Envelope(env, nullptr);
  });
}

#ifdef ZEROCAN_CROSSCHECK_DECODE
// Sanitizer and fuzz builds: the views must never accept what the generated readers
// reject. A disagreement is our bug, so it aborts loudly for the fuzzer to keep.
void CrossCheck(const ReceivedMessage& received, kj::ArrayPtr<const capnp::word> words,
                const DecodeLimits& limits) {
  try {
    CheckWithGeneratedReaders(received, words, limits);
  } catch (const DecodeError& e) {
    std::fprintf(stderr, "zerocan: fast views accepted an envelope Cap'n Proto rejects: %s\n", e.what());
    std::abort();
  }
}
#endif

}  // namespace

Message Message::Decode(ReceivedMessage&& received, const DecodeLimits& limits) {
  FrameList& frames = received.frames;
  if (frames.empty()) Reject(Code::kMalformed, "message has no envelope frame");
  if (frames.size() > limits.max_frames) {
    Reject(Code::kLimitExceeded, absl::StrCat("message has ", frames.size(),
                                              " frames; max_frames is ", limits.max_frames));
  }
  // zmq::message_t::size() and data() are calls into libzmq: each frame is asked once.
  uint64_t total = 0;
  size_t envelope_size = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    size_t size = frames[i].size();
    if (size > limits.max_frame_bytes) {
      Reject(Code::kLimitExceeded, absl::StrCat("frame ", i, " has ", size,
                                                " bytes; max_frame_bytes is ",
                                                limits.max_frame_bytes));
    }
    if (i == 0) envelope_size = size;
    total += size;
  }
  if (total > limits.max_message_bytes) {
    Reject(Code::kLimitExceeded, absl::StrCat("message has ", total,
                                              " bytes; max_message_bytes is ",
                                              limits.max_message_bytes));
  }
  if (envelope_size > limits.max_envelope_bytes) {
    Reject(Code::kLimitExceeded, absl::StrCat("envelope (frame 0) has ", envelope_size,
                                              " bytes; max_envelope_bytes is ",
                                              limits.max_envelope_bytes));
  }
  if (envelope_size < sizeof(capnp::word) || envelope_size % sizeof(capnp::word) != 0) {
    Reject(Code::kMalformed, absl::StrCat("envelope (frame 0): ", envelope_size,
                                          " bytes is not a whole number of 8-byte words "
                                          "(truncated?)"));
  }
  const void* envelope_data = frames[0].data();
  {
    // capnp reads the segment count as (first u32 + 1) in 32 bits: 0xffffffff wraps to
    // 0 and is then parsed as one segment. Refuse any count beyond capnp's own bound.
    const auto* table = static_cast<const unsigned char*>(envelope_data);
    uint64_t segments = (uint64_t{table[0]} | uint64_t{table[1]} << 8 |
                         uint64_t{table[2]} << 16 | uint64_t{table[3]} << 24) + 1;
    if (segments > 511) {
      Reject(Code::kMalformed, absl::StrCat("envelope (frame 0): segment table announces ",
                                            segments, " segments; at most 511 are allowed"));
    }
  }

  // A very small frame keeps its bytes inside the zmq::message_t itself, so they move
  // with it: only then is the address asked again after the move (a libzmq call).
  const auto frame_at = reinterpret_cast<uintptr_t>(&frames[0]);
  const auto data_at = reinterpret_cast<uintptr_t>(envelope_data);
  const bool bytes_inside_frame = data_at >= frame_at && data_at < frame_at + sizeof(zmq::message_t);
  auto state = std::allocate_shared<internal::MessageState>(
      internal::CachingAllocator<internal::MessageState>(), std::move(received));
  const capnp::word* words = static_cast<const capnp::word*>(
      bytes_inside_frame ? state->received_.frames[0].data() : envelope_data);
  size_t word_count = envelope_size / sizeof(capnp::word);
  if (!IsAligned(words, alignof(capnp::word))) {
    // libzmq hands out small tcp/ipc frames at any address inside its receive batch;
    // Cap'n Proto needs word alignment. One copy, counted.
    state->aligned_copy_.reset(new capnp::word[word_count]);
    std::memcpy(state->aligned_copy_.get(), words, envelope_size);
    words = state->aligned_copy_.get();
    Bump(GlobalStats().envelope_realigned);
  }
  kj::ArrayPtr<const capnp::word> segment_words(words, word_count);

  try {
    if (FastDecode(state.get(), segment_words, limits)) {
#ifdef ZEROCAN_CROSSCHECK_DECODE
      CrossCheck(state->received_, state->words_, limits);
#endif
    } else {
      // The fast views refused a pointer: let Cap'n Proto's reader judge, for the
      // precise error. What it accepts here is valid Cap'n Proto in a layout no writer
      // produces (Cap'n Proto's list "upgrade" encodings), which zerocan does not read.
      CheckWithGeneratedReaders(state->received_, segment_words, limits);
      throw DecodeError(Code::kMalformed,
                        "envelope (frame 0): a list or text in a layout zerocan does not read "
                        "(struct lists must be inline-composite, List(UInt64) 8-byte elements, "
                        "text and data byte lists; see docs/FORMAT.md, \"Layout\")");
    }
  } catch (const DecodeError&) {
    Bump(GlobalStats().messages_rejected);
    throw;
  }
  tls_decoded.Bump();
  Message message;
  message.apply_ = state->apply_index_.is_apply ? &state->apply_index_ : nullptr;
  message.state_ = std::move(state);
  return message;
}

namespace internal {
wire::Envelope::Reader MessageState::GeneratedRoot() const {
  std::call_once(reader_once_, [this] {
    // The walk has checked every pointer of these words: the reader cannot fail.
    capnp::ReaderOptions options;
    options.traversalLimitInWords = UINT64_MAX;
    reader_.emplace(words_, options);
    root_ = reader_->getRoot<wire::Envelope>();
  });
  return root_;
}
}  // namespace internal

wire::Envelope::Reader Message::envelope() const noexcept { return state_->GeneratedRoot(); }
uint64_t Message::message_id() const noexcept { return state_->envelope_.getMessageId(); }
uint64_t Message::session_id() const noexcept { return state_->envelope_.getSessionId(); }
uint64_t Message::sequence() const noexcept { return state_->envelope_.getSequence(); }
uint64_t Message::sent_at_ns() const noexcept { return state_->envelope_.getSentAtNs(); }

BodyKind Message::body_kind() const noexcept {
  switch (state_->envelope_.getBody().which()) {
    case wire::Envelope::Body::APPLY: return BodyKind::kApply;
    case wire::Envelope::Body::RESULT: return BodyKind::kResult;
    case wire::Envelope::Body::HELLO: return BodyKind::kHello;
    case wire::Envelope::Body::HEARTBEAT: return BodyKind::kHeartbeat;
    case wire::Envelope::Body::GOODBYE: return BodyKind::kGoodbye;
  }
  return BodyKind::kUnknown;
}

namespace {
std::string_view View(internal::BlobView t) { return t.view(); }
}  // namespace

#define ZEROCAN_APPLY()                                                     \
  auto body = state_->envelope_.getBody();                                  \
  if (!body.isApply()) internal::ThrowWrongBody("an apply");               \
  auto apply = body.getApply()
#define ZEROCAN_RESULT()                                                    \
  auto body = state_->envelope_.getBody();                                  \
  if (!body.isResult()) internal::ThrowWrongBody("a result");              \
  auto result = body.getResult()

namespace internal {
void ThrowWrongBody(const char* wanted) {
  throw DecodeError(Code::kTypeMismatch, absl::StrCat("message is not ", wanted));
}
void ThrowArgIndex(const char* what, size_t i, size_t n) {
  throw std::out_of_range(absl::StrCat(what, " ", i, " of ", n));
}
}  // namespace internal

uint32_t Message::timeout_ms() const {
  ZEROCAN_APPLY();
  return apply.getTimeoutMs();
}
uint64_t Message::call_id() const {
  ZEROCAN_RESULT();
  return result.getCallId();
}
bool Message::ok() const {
  ZEROCAN_RESULT();
  return result.isOk();
}
Value Message::result() const {
  ZEROCAN_RESULT();
  if (!result.isOk()) internal::ThrowWrongBody("a successful result");
  return Value(result.walkedOk(), state_.get());
}
RemoteErrorInfo Message::error() const {
  ZEROCAN_RESULT();
  if (!result.isError()) internal::ThrowWrongBody("an error result");
  auto e = result.getError();
  return RemoteErrorInfo{std::string(View(e.getType())), std::string(View(e.getMessage())),
                         std::string(View(e.getFunction())), std::string(View(e.getWhere()))};
}
std::string_view Message::engine_id() const {
  ZEROCAN_RESULT();
  return View(result.getEngineId());
}
#undef ZEROCAN_APPLY
#undef ZEROCAN_RESULT

const FrameList& Message::frames() const noexcept { return state_->received_.frames; }
const ReceivedMessage& Message::received() const noexcept { return state_->received_; }
bool Message::envelope_copied() const noexcept { return state_->aligned_copy_ != nullptr; }

}  // namespace zerocan
