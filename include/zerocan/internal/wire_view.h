// Inline, bounds-checked readers over the words of a received envelope, for the
// structs of schema/zerocan.capnp. Internal: used by Message and Value; not an API.
//
// Why not the generated readers: in Cap'n Proto 0.9.2 every pointer access (a text, a
// list, a struct field) is an out-of-line call of ~150 instructions, and a multi-segment
// message takes a mutex per segment lookup. A small apply spent most of its decode time
// there. These views read the same wire format (the encoding document of Cap'n Proto:
// struct, list and far pointers) with the checks inline, in the style of FlatBuffers'
// verifier: Message::Decode walks every field once through them and only then hands
// them to Values. Field offsets are those of the generated code; tests/wire_view_test.cc
// checks every one against the compiled schema, so a schema change cannot drift.
//
// Checks: every pointer's target lies inside its segment (offsets computed in 64-bit
// word indices, never by forming an out-of-range pointer); far pointers land inside
// their segment; text is NUL-terminated; list element sizes are the ones this schema
// writes. Anything else throws ViewError, and the decoder then lets Cap'n Proto's own
// reader decide (see message.cc): these views accept a subset of what it accepts.
//
// Lifetime: views borrow the words and the Segments table; both belong to the
// Message's shared state.
#pragma once

#include <cstdint>
#include <cstring>
#include <cstddef>
#include <exception>
#include <iterator>
#include <string_view>

#include "absl/container/inlined_vector.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan::internal {

// Thrown by a view for a pointer it does not accept. Never escapes Message::Decode.
struct ViewError : std::exception {
  const char* what() const noexcept override { return "envelope pointer not readable by the fast path"; }
};
[[noreturn]] inline void ViewFail() { throw ViewError(); }

// The envelope's segments (word-aligned, sizes checked against the frame).
struct Segments {
  struct Segment {
    const uint64_t* begin;
    uint64_t words;
  };
  const Segment* list = nullptr;  // = storage.data(), refreshed by Set
  uint32_t count = 0;
  absl::InlinedVector<Segment, 2> storage;

  void Clear() {
    storage.clear();
    list = nullptr;
    count = 0;
  }
  void Add(const uint64_t* begin, uint64_t words) {
    storage.push_back({begin, words});
    list = storage.data();
    count = static_cast<uint32_t>(storage.size());
  }
};

// The walk's hot helpers are forced inline: at -O3 g++ otherwise keeps StructView::At
// and ReadText out of line, and the calls cost more than the checks they make.
#if defined(__GNUC__)
#define ZEROCAN_VIEW_INLINE inline __attribute__((always_inline))
#else
#define ZEROCAN_VIEW_INLINE inline
#endif

namespace view_detail {

inline uint64_t Load(const uint64_t* p) noexcept {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Signed 30-bit word offset of a struct or list pointer.
inline int64_t PointerOffset(uint64_t w) noexcept {
  return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(w)) >> 2);
}

// Where a pointer leads: its tag (the pointer itself, or the far pointer's landing-pad
// tag), the segment of the content and the content's word index in it.
struct Target {
  uint64_t tag;
  uint32_t segment;
  int64_t index;  // may be out of range: the caller checks it against the extent
};

// Far pointer `w` (src/wire_view.cc): only multi-segment envelopes (from Cap'n Proto's
// own builders) have them, so it stays out of the inline path.
Target ResolveFar(const Segments& segs, uint64_t w);

// The pointer at `p`, a word of `segment`. A near pointer leads into that segment.
ZEROCAN_VIEW_INLINE Target Resolve(const Segments& segs, uint32_t segment, const uint64_t* p) {
  uint64_t w = Load(p);
  if ((w & 3) != 2) return Target{w, segment, (p - segs.list[segment].begin) + 1 + PointerOffset(w)};
  return ResolveFar(segs, w);
}

// Content [index, index + words) must lie inside the segment.
ZEROCAN_VIEW_INLINE void CheckExtent(const Segments& segs, const Target& t, uint64_t words) {
  uint64_t size = segs.list[t.segment].words;
  if (t.index < 0 || static_cast<uint64_t>(t.index) > size || words > size - static_cast<uint64_t>(t.index)) {
    ViewFail();
  }
}

}  // namespace view_detail

// One struct: its data and pointer sections. A null pointer reads as the empty struct
// (every field at its default, which is zero for every field of this schema).
// 24 bytes, copied by value; uniform fields keep copies free of store-forwarding stalls.
class StructView {
 public:
  StructView() = default;

  // The struct a pointer at word `at` of `segment` leads to.
  ZEROCAN_VIEW_INLINE static StructView At(const Segments* segs, uint32_t segment, uint64_t at) {
    return FromPointer(segs, segment, segs->list[segment].begin + at);
  }
  // The struct the pointer at `p` (a word of `segment`) leads to, checked.
  ZEROCAN_VIEW_INLINE static StructView FromPointer(const Segments* segs, uint32_t segment, const uint64_t* p) {
    if (view_detail::Load(p) == 0) return StructView(segs);
    view_detail::Target t = view_detail::Resolve(*segs, segment, p);
    if ((t.tag & 3) != 0) ViewFail();  // a list or capability where a struct belongs
    uint16_t data_words = static_cast<uint16_t>(t.tag >> 32);
    uint16_t pointers = static_cast<uint16_t>(t.tag >> 48);
    view_detail::CheckExtent(*segs, t, uint64_t{data_words} + pointers);
    return StructView(segs, t.segment, segs->list[t.segment].begin + t.index, data_words, pointers);
  }

  template <class T>
  T Data(uint32_t byte_offset) const noexcept {
    if (byte_offset + sizeof(T) > uint32_t{data_words_} * 8) return T{};
    T v;
    std::memcpy(&v, reinterpret_cast<const char*>(data_) + byte_offset, sizeof v);
    return v;
  }
  bool Bit(uint32_t bit) const noexcept {
    if (bit / 8 >= uint32_t{data_words_} * 8) return false;
    return (reinterpret_cast<const unsigned char*>(data_)[bit / 8] >> (bit % 8)) & 1;
  }

  bool HasPointer(uint32_t i) const noexcept { return i < pointers_; }
  // The raw section (for the decoder's one-segment fast path).
  const uint64_t* data() const noexcept { return data_; }
  uint16_t data_words() const noexcept { return data_words_; }
  uint16_t pointer_count() const noexcept { return pointers_; }
  const Segments* segments() const noexcept { return segs_; }
  uint32_t segment() const noexcept { return segment_; }
  uint64_t PointerWord(uint32_t i) const noexcept { return view_detail::Load(data_ + data_words_ + i); }

  ZEROCAN_VIEW_INLINE StructView Struct(uint32_t i) const {
    if (!HasPointer(i)) return StructView(segs_);
    return FromPointer(segs_, segment_, data_ + data_words_ + i);
  }

  // The same struct as Struct(i), for a pointer Message::Decode's walk has already
  // checked: only where it leads is computed (a near pointer is a few instructions; a
  // far one takes the checked path, which cannot fail for a walked pointer). For the
  // accessors of a decoded Message, never for the walk itself.
  ZEROCAN_VIEW_INLINE StructView WalkedStruct(uint32_t i) const {
    if (!HasPointer(i)) return StructView(segs_);
    const uint64_t* p = data_ + data_words_ + i;
    uint64_t w = view_detail::Load(p);
    if (w == 0) return StructView(segs_);
    if ((w & 3) == 2) return FromPointer(segs_, segment_, p);  // far: the checked path
    return StructView(segs_, segment_, p + 1 + view_detail::PointerOffset(w),
                      static_cast<uint16_t>(w >> 32), static_cast<uint16_t>(w >> 48));
  }

 protected:
  StructView(const Segments* segs, uint32_t segment, const uint64_t* data, uint16_t data_words,
             uint16_t pointers) noexcept
      : segs_(segs), data_(data), segment_(segment), data_words_(data_words), pointers_(pointers) {}
  explicit StructView(const Segments* segs) noexcept : segs_(segs) {}

 private:
  friend class ListViewBase;
  const Segments* segs_ = nullptr;
  const uint64_t* data_ = nullptr;  // data section; the pointer section follows it
  uint32_t segment_ = 0;
  uint16_t data_words_ = 0;
  uint16_t pointers_ = 0;
};

// Bytes of a Text (without its NUL) or a Data blob.
class BlobView {
 public:
  BlobView() = default;
  BlobView(const char* data, uint64_t size) noexcept : data_(data), size_(size) {}
  const char* begin() const noexcept { return data_; }
  const char* end() const noexcept { return data_ + size_; }
  size_t size() const noexcept { return size_; }
  std::string_view view() const noexcept { return std::string_view(data_, size_); }
  explicit operator std::string_view() const noexcept { return view(); }

 private:
  const char* data_ = "";
  uint64_t size_ = 0;
};

// A list pointer's content: element count and, per element kind, where it starts.
class ListViewBase {
 public:
  ListViewBase() = default;
  size_t size() const noexcept { return count_; }

 protected:
  // Element-size tags of the encoding.
  static constexpr unsigned kByte = 2, kEightBytes = 5, kPointer = 6, kComposite = 7;

  // Reads pointer `i` of `owner` as a list whose elements have size tag `want`.
  ZEROCAN_VIEW_INLINE static ListViewBase Read(const StructView& owner, uint32_t i, unsigned want) {
    ListViewBase out;
    out.segs_ = owner.segs_;
    if (!owner.HasPointer(i)) return out;
    const uint64_t* p = owner.data_ + owner.data_words_ + i;
    uint64_t w = view_detail::Load(p);
    if (w == 0) return out;
    const Segments& segs = *owner.segs_;
    view_detail::Target t = view_detail::Resolve(segs, owner.segment_, p);
    if ((t.tag & 3) != 1) ViewFail();
    unsigned tag_size = (t.tag >> 32) & 7;
    uint64_t count = t.tag >> 35;
    if (tag_size != want) ViewFail();
    out.segment_ = t.segment;
    if (want == kComposite) {
      view_detail::CheckExtent(segs, t, count + 1);  // count = words after the tag
      const uint64_t* tag_word = segs.list[t.segment].begin + t.index;
      uint64_t element_tag = view_detail::Load(tag_word);
      if ((element_tag & 3) != 0) ViewFail();
      uint64_t elements = static_cast<uint32_t>(element_tag) >> 2;
      uint16_t data_words = static_cast<uint16_t>(element_tag >> 32);
      uint16_t pointers = static_cast<uint16_t>(element_tag >> 48);
      if (elements * (uint64_t{data_words} + pointers) > count) ViewFail();
      out.first_ = tag_word + 1;
      out.count_ = static_cast<uint32_t>(elements);
      out.data_words_ = data_words;
      out.pointers_ = pointers;
      return out;
    }
    uint64_t bits = want == kByte ? 8 : 64;
    view_detail::CheckExtent(segs, t, (count * bits + 63) / 64);
    out.first_ = segs.list[t.segment].begin + t.index;
    out.count_ = static_cast<uint32_t>(count);
    return out;
  }

  // Read() for a pointer Message::Decode's walk has already checked with the same
  // `want` (see StructView::WalkedStruct).
  ZEROCAN_VIEW_INLINE static ListViewBase ReadWalked(const StructView& owner, uint32_t i, unsigned want) {
    if (!owner.HasPointer(i)) return Empty(owner);
    const uint64_t* p = owner.data_ + owner.data_words_ + i;
    uint64_t w = view_detail::Load(p);
    if (w == 0) return Empty(owner);
    if ((w & 3) == 2) return Read(owner, i, want);  // far pointer
    const uint64_t* first = p + 1 + view_detail::PointerOffset(w);
    ListViewBase out;
    out.segs_ = owner.segs_;
    out.segment_ = owner.segment_;
    if (want == kComposite) {
      uint64_t element_tag = view_detail::Load(first);
      out.first_ = first + 1;
      out.count_ = static_cast<uint32_t>(element_tag) >> 2;
      out.data_words_ = static_cast<uint16_t>(element_tag >> 32);
      out.pointers_ = static_cast<uint16_t>(element_tag >> 48);
    } else {
      out.first_ = first;
      out.count_ = static_cast<uint32_t>(w >> 35);
    }
    return out;
  }
  static ListViewBase Empty(const StructView& owner) noexcept {
    ListViewBase out;
    out.segs_ = owner.segs_;
    return out;
  }

  StructView Element(size_t i) const noexcept {
    uint64_t step = uint64_t{data_words_} + pointers_;
    return StructView(segs_, segment_, first_ + i * step, data_words_, pointers_);
  }
  const uint64_t* Words() const noexcept { return first_; }

  const Segments* segs_ = nullptr;
  const uint64_t* first_ = nullptr;
  uint32_t count_ = 0;
  uint32_t segment_ = 0;
  uint16_t data_words_ = 0;
  uint16_t pointers_ = 0;
};

// Text at pointer `i`: a byte list ending in NUL.
ZEROCAN_VIEW_INLINE BlobView ReadText(const StructView& owner, uint32_t i);
inline BlobView ReadData(const StructView& owner, uint32_t i);

class BytesListView : public ListViewBase {
 public:
  BytesListView() = default;
  ZEROCAN_VIEW_INLINE static BytesListView Read(const StructView& owner, uint32_t i) {
    BytesListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::Read(owner, i, kByte);
    return out;
  }
  ZEROCAN_VIEW_INLINE static BytesListView ReadWalked(const StructView& owner, uint32_t i) {
    BytesListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::ReadWalked(owner, i, kByte);
    return out;
  }
  const char* data() const noexcept {
    return count_ == 0 ? "" : reinterpret_cast<const char*>(Words());
  }
};

ZEROCAN_VIEW_INLINE BlobView ReadText(const StructView& owner, uint32_t i) {
  BytesListView bytes = BytesListView::Read(owner, i);
  if (bytes.size() == 0) {
    // A null pointer is the empty text; a present but empty list lacks its NUL.
    if (owner.HasPointer(i) && owner.PointerWord(i) != 0) ViewFail();
    return BlobView();
  }
  if (bytes.data()[bytes.size() - 1] != '\0') ViewFail();
  return BlobView(bytes.data(), bytes.size() - 1);
}

inline BlobView ReadData(const StructView& owner, uint32_t i) {
  BytesListView bytes = BytesListView::Read(owner, i);
  return BlobView(bytes.data(), bytes.size());
}

// ReadText for a walked pointer (the walk checked the byte list and its NUL).
ZEROCAN_VIEW_INLINE BlobView ReadWalkedText(const StructView& owner, uint32_t i) {
  BytesListView bytes = BytesListView::ReadWalked(owner, i);
  if (bytes.size() == 0) return BlobView();
  return BlobView(bytes.data(), bytes.size() - 1);
}

// List(UInt64).
class U64ListView : public ListViewBase {
 public:
  U64ListView() = default;
  ZEROCAN_VIEW_INLINE static U64ListView Read(const StructView& owner, uint32_t i) {
    U64ListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::Read(owner, i, kEightBytes);
    return out;
  }
  ZEROCAN_VIEW_INLINE static U64ListView ReadWalked(const StructView& owner, uint32_t i) {
    U64ListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::ReadWalked(owner, i, kEightBytes);
    return out;
  }
  uint64_t operator[](size_t i) const noexcept { return view_detail::Load(Words() + i); }

  class Iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = uint64_t;
    using difference_type = std::ptrdiff_t;
    using pointer = const uint64_t*;
    using reference = uint64_t;
    Iterator(const U64ListView* list, size_t i) : list_(list), i_(i) {}
    uint64_t operator*() const noexcept { return (*list_)[i_]; }
    Iterator& operator++() noexcept {
      ++i_;
      return *this;
    }
    bool operator!=(const Iterator& o) const noexcept { return i_ != o.i_; }
    bool operator==(const Iterator& o) const noexcept { return i_ == o.i_; }

   private:
    const U64ListView* list_;
    size_t i_;
  };
  Iterator begin() const noexcept { return Iterator(this, 0); }
  Iterator end() const noexcept { return Iterator(this, count_); }
};

// List(Text).
class TextListView : public ListViewBase {
 public:
  TextListView() = default;
  static TextListView Read(const StructView& owner, uint32_t i) {
    TextListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::Read(owner, i, kPointer);
    return out;
  }
  BlobView operator[](size_t i) const {
    // Each element is a pointer: read it as pointer 0 of a one-pointer "struct".
    StructView holder = ElementHolder(i);
    return ReadText(holder, 0);
  }

 private:
  struct Holder : StructView {
    Holder(const Segments* s, uint32_t seg, const uint64_t* at) : StructView(s, seg, at, 0, 1) {}
  };
  StructView ElementHolder(size_t i) const { return Holder(segs_, segment_, first_ + i); }
};

// List of structs (inline-composite encoding).
template <class Elem>
class StructListView : public ListViewBase {
 public:
  StructListView() = default;
  ZEROCAN_VIEW_INLINE static StructListView Read(const StructView& owner, uint32_t i) {
    StructListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::Read(owner, i, kComposite);
    return out;
  }
  ZEROCAN_VIEW_INLINE static StructListView ReadWalked(const StructView& owner, uint32_t i) {
    StructListView out;
    static_cast<ListViewBase&>(out) = ListViewBase::ReadWalked(owner, i, kComposite);
    return out;
  }
  Elem operator[](size_t i) const noexcept { return Elem(Element(i)); }
};

// ---- the schema's structs (offsets: see the header comment) ----------------------------

#define ZEROCAN_VIEW(Name)                                         \
  class Name : public StructView {                                 \
   public:                                                         \
    Name() = default;                                              \
    explicit Name(const StructView& s) noexcept : StructView(s) {} \
    static Name At(const Segments* segs, uint32_t seg, uint64_t at) { return Name(StructView::At(segs, seg, at)); }

ZEROCAN_VIEW(FrameRefView)
  uint32_t getIndex() const noexcept { return Data<uint32_t>(0); }
  uint64_t getOffset() const noexcept { return Data<uint64_t>(8); }
  uint64_t getLength() const noexcept { return Data<uint64_t>(16); }
};

ZEROCAN_VIEW(PayloadView)
  wire::Payload::Which which() const noexcept { return static_cast<wire::Payload::Which>(Data<uint16_t>(0)); }
  bool isInline() const noexcept { return which() == wire::Payload::INLINE; }
  bool isFrame() const noexcept { return which() == wire::Payload::FRAME; }
  BlobView getInline() const { return ReadData(*this, 0); }
  FrameRefView getFrame() const { return FrameRefView(Struct(0)); }
  // For a payload Message::Decode's walk has checked (see WalkedStruct).
  BlobView walkedInline() const {
    BytesListView bytes = BytesListView::ReadWalked(*this, 0);
    return BlobView(bytes.data(), bytes.size());
  }
  FrameRefView walkedFrame() const { return FrameRefView(WalkedStruct(0)); }
};

ZEROCAN_VIEW(TensorView)
  wire::DType getDtype() const noexcept { return static_cast<wire::DType>(Data<uint16_t>(0)); }
  wire::Order getOrder() const noexcept { return static_cast<wire::Order>(Data<uint16_t>(2)); }
  wire::ByteOrder getByteOrder() const noexcept { return static_cast<wire::ByteOrder>(Data<uint16_t>(4)); }
  wire::Packing getPacking() const noexcept { return static_cast<wire::Packing>(Data<uint16_t>(6)); }
  U64ListView getShape() const { return U64ListView::Read(*this, 0); }
  PayloadView getData() const { return PayloadView(Struct(1)); }
  U64ListView walkedShape() const { return U64ListView::ReadWalked(*this, 0); }
  PayloadView walkedData() const { return PayloadView(WalkedStruct(1)); }
};

class EntryView;
class ExtensionView;

ZEROCAN_VIEW(ValueView)
  wire::Value::Which which() const noexcept { return static_cast<wire::Value::Which>(Data<uint16_t>(0)); }
  bool getBool() const noexcept { return Bit(16); }
  int64_t getInt() const noexcept { return Data<int64_t>(8); }
  uint64_t getUint() const noexcept { return Data<uint64_t>(8); }
  double getFloat() const noexcept { return Data<double>(8); }
  ZEROCAN_VIEW_INLINE BlobView getText() const { return ReadText(*this, 0); }
  PayloadView getBytes() const { return PayloadView(Struct(0)); }
  ZEROCAN_VIEW_INLINE StructListView<ValueView> getList() const { return StructListView<ValueView>::Read(*this, 0); }
  ZEROCAN_VIEW_INLINE StructListView<EntryView> getMap() const;
  TensorView getTensor() const { return TensorView(Struct(0)); }
  inline ExtensionView getExtension() const;

  // The accessors of a decoded Message read its walked pointers (see WalkedStruct).
  BlobView walkedText() const { return ReadWalkedText(*this, 0); }
  StructListView<ValueView> walkedList() const { return StructListView<ValueView>::ReadWalked(*this, 0); }
  inline StructListView<EntryView> walkedMap() const;
  StructView walkedPointer() const { return WalkedStruct(0); }
};

ZEROCAN_VIEW(EntryView)
  ZEROCAN_VIEW_INLINE ValueView getKey() const { return ValueView(Struct(0)); }
  ZEROCAN_VIEW_INLINE ValueView getValue() const { return ValueView(Struct(1)); }
  ValueView walkedKey() const { return ValueView(WalkedStruct(0)); }
  ValueView walkedValue() const { return ValueView(WalkedStruct(1)); }
};

ZEROCAN_VIEW(ExtensionView)
  BlobView getTypeName() const { return ReadText(*this, 0); }
  ValueView getState() const { return ValueView(Struct(1)); }
};

ZEROCAN_VIEW_INLINE StructListView<EntryView> ValueView::getMap() const { return StructListView<EntryView>::Read(*this, 0); }
inline StructListView<EntryView> ValueView::walkedMap() const {
  return StructListView<EntryView>::ReadWalked(*this, 0);
}
inline ExtensionView ValueView::getExtension() const { return ExtensionView(Struct(0)); }

ZEROCAN_VIEW(FieldView)
  BlobView getKey() const { return ReadText(*this, 0); }
  ValueView getValue() const { return ValueView(Struct(1)); }
  BlobView walkedKey() const { return ReadWalkedText(*this, 0); }
  ValueView walkedValue() const { return ValueView(WalkedStruct(1)); }
};

ZEROCAN_VIEW(ApplyView)
  ZEROCAN_VIEW_INLINE BlobView getFunction() const { return ReadText(*this, 0); }
  ZEROCAN_VIEW_INLINE StructListView<ValueView> getArgs() const { return StructListView<ValueView>::Read(*this, 1); }
  ZEROCAN_VIEW_INLINE StructListView<FieldView> getKwargs() const { return StructListView<FieldView>::Read(*this, 2); }
  uint32_t getTimeoutMs() const noexcept { return Data<uint32_t>(0); }
};

ZEROCAN_VIEW(RemoteErrorView)
  BlobView getType() const { return ReadText(*this, 0); }
  BlobView getMessage() const { return ReadText(*this, 1); }
  BlobView getFunction() const { return ReadText(*this, 2); }
  BlobView getWhere() const { return ReadText(*this, 3); }
};

ZEROCAN_VIEW(ResultView)
  uint64_t getCallId() const noexcept { return Data<uint64_t>(0); }
  BlobView getEngineId() const { return ReadText(*this, 0); }
  wire::Result::Which which() const noexcept { return static_cast<wire::Result::Which>(Data<uint16_t>(8)); }
  bool isOk() const noexcept { return which() == wire::Result::OK; }
  bool isError() const noexcept { return which() == wire::Result::ERROR; }
  ValueView getOk() const { return ValueView(Struct(1)); }
  ValueView walkedOk() const { return ValueView(WalkedStruct(1)); }
  RemoteErrorView getError() const { return RemoteErrorView(Struct(1)); }
};

ZEROCAN_VIEW(HelloView)
  BlobView getPeerId() const { return ReadText(*this, 0); }
  BlobView getRole() const { return ReadText(*this, 1); }
  TextListView getFunctions() const { return TextListView::Read(*this, 2); }
};

ZEROCAN_VIEW(HeartbeatView)
  BlobView getPeerId() const { return ReadText(*this, 0); }
  uint64_t getNowNs() const noexcept { return Data<uint64_t>(0); }
};

// Envelope.body is a group: the same struct, its own union tag.
ZEROCAN_VIEW(BodyView)
  wire::Envelope::Body::Which which() const noexcept {
    return static_cast<wire::Envelope::Body::Which>(Data<uint16_t>(2));
  }
  bool isApply() const noexcept { return which() == wire::Envelope::Body::APPLY; }
  bool isResult() const noexcept { return which() == wire::Envelope::Body::RESULT; }
  ApplyView getApply() const { return ApplyView(Struct(0)); }
  ResultView getResult() const { return ResultView(Struct(0)); }
  HelloView getHello() const { return HelloView(Struct(0)); }
  HeartbeatView getHeartbeat() const { return HeartbeatView(Struct(0)); }
};

ZEROCAN_VIEW(EnvelopeView)
  uint16_t getVersion() const noexcept { return Data<uint16_t>(0); }
  uint32_t getPayloadFrames() const noexcept { return Data<uint32_t>(4); }
  uint64_t getMessageId() const noexcept { return Data<uint64_t>(8); }
  uint64_t getSessionId() const noexcept { return Data<uint64_t>(16); }
  uint64_t getSequence() const noexcept { return Data<uint64_t>(24); }
  uint64_t getSentAtNs() const noexcept { return Data<uint64_t>(32); }
  BodyView getBody() const noexcept { return BodyView(static_cast<const StructView&>(*this)); }
};

#undef ZEROCAN_VIEW

}  // namespace zerocan::internal
