// Reading an envelope: Message::Decode (the one checked walk over an untrusted
// envelope), the Message and Value accessors, and the header peek, all through the
// generated Cap'n Proto readers.
//
// Order (docs/FORMAT.md, "Decoding"): frame count and sizes; envelope alignment (one
// counted copy when misaligned); one Cap'n Proto reader (pointer bounds checked on every
// access); a full walk that checks the version, every union member, every payload
// reference, every tensor's shape against its bytes, the nesting depth, and a traversal
// budget scaled to the envelope's real size (Walker::Charge). The walk enforces the
// budget itself rather than through Cap'n Proto's traversal limit because that one is
// spent cumulatively over the reader's life, and the accessors keep using this reader.
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
#include "wire/access.h"
#include "wire/message_state.h"
#include "wire/peek.h"
#include "zerocan/error.h"
#include "zerocan/generated.h"
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
    }
    Fail(Code::kMalformed, path, "unknown payload kind (from a newer protocol?)");
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
    internal::CatchKj("envelope (frame 0)", [&] {
      state->reader_.emplace(segment_words, WalkOptions(limits));
      if (state->reader_->getEnd() != segment_words.end()) {
        throw DecodeError(Code::kMalformed,
                          absl::StrCat("envelope (frame 0): ",
                                       (segment_words.end() - state->reader_->getEnd()) * 8,
                                       " bytes after the last segment"));
      }
      auto env = state->reader_->getRoot<wire::Envelope>();
      size_t payload_frames = state->received_.frames.size() - 1;
      CheckHeader(env.getVersion(), env.getPayloadFrames(), payload_frames);
      Walker(state->received_, static_cast<uint32_t>(payload_frames), limits,
             Budget(limits, word_count))
          .Envelope(env);
      state->root_ = env;
    });
  } catch (const DecodeError&) {
    Bump(GlobalStats().messages_rejected);
    throw;
  }
  tls_decoded.Bump();
  Message message;
  message.state_ = std::move(state);
  return message;
}

// ---- Message accessors -------------------------------------------------------------

namespace {
std::string_view View(capnp::Text::Reader t) { return std::string_view(t.begin(), t.size()); }

[[noreturn]] void ThrowWrongBody(const char* wanted) {
  throw DecodeError(Code::kTypeMismatch, absl::StrCat("message is not ", wanted));
}
[[noreturn]] void ThrowArgIndex(const char* what, size_t i, size_t n) {
  throw std::out_of_range(absl::StrCat(what, " ", i, " of ", n));
}
}  // namespace

namespace internal {
wire::Envelope::Reader WireAccess::Root(const Message& m) noexcept { return m.state_->root_; }
}  // namespace internal

wire::Envelope::Reader GeneratedEnvelope(const Message& message) {
  return internal::WireAccess::Root(message);
}
wire::Envelope::Builder GeneratedEnvelope(EnvelopeWriter& writer) {
  return internal::WireAccess::Root(writer);
}
wire::Value::Reader GeneratedValue(const Value& value) { return internal::WireAccess::Reader(value); }

uint64_t Message::message_id() const noexcept { return state_->root_.getMessageId(); }
uint64_t Message::session_id() const noexcept { return state_->root_.getSessionId(); }
uint64_t Message::sequence() const noexcept { return state_->root_.getSequence(); }
uint64_t Message::sent_at_ns() const noexcept { return state_->root_.getSentAtNs(); }

BodyKind Message::body_kind() const noexcept {
  switch (state_->root_.getBody().which()) {
    case wire::Envelope::Body::APPLY: return BodyKind::kApply;
    case wire::Envelope::Body::RESULT: return BodyKind::kResult;
    case wire::Envelope::Body::HELLO: return BodyKind::kHello;
    case wire::Envelope::Body::HEARTBEAT: return BodyKind::kHeartbeat;
    case wire::Envelope::Body::GOODBYE: return BodyKind::kGoodbye;
  }
  return BodyKind::kUnknown;
}

#define ZEROCAN_APPLY()                                     \
  if (state_ == nullptr) ThrowWrongBody("an apply");        \
  auto body = state_->root_.getBody();                      \
  if (!body.isApply()) ThrowWrongBody("an apply");          \
  auto apply = body.getApply()
#define ZEROCAN_RESULT()                                    \
  if (state_ == nullptr) ThrowWrongBody("a result");        \
  auto body = state_->root_.getBody();                      \
  if (!body.isResult()) ThrowWrongBody("a result");         \
  auto result = body.getResult()

std::string_view Message::function() const {
  ZEROCAN_APPLY();
  return View(apply.getFunction());
}
size_t Message::arg_count() const {
  ZEROCAN_APPLY();
  return apply.getArgs().size();
}
Value Message::arg(size_t i) const {
  ZEROCAN_APPLY();
  auto args = apply.getArgs();
  if (i >= args.size()) ThrowArgIndex("argument", i, args.size());
  return internal::WireAccess::MakeValue(args[static_cast<unsigned>(i)], state_.get());
}
size_t Message::kwarg_count() const {
  ZEROCAN_APPLY();
  return apply.getKwargs().size();
}
std::string_view Message::kwarg_name(size_t i) const {
  ZEROCAN_APPLY();
  auto kwargs = apply.getKwargs();
  if (i >= kwargs.size()) ThrowArgIndex("keyword argument", i, kwargs.size());
  return View(kwargs[static_cast<unsigned>(i)].getKey());
}
Value Message::kwarg(size_t i) const {
  ZEROCAN_APPLY();
  auto kwargs = apply.getKwargs();
  if (i >= kwargs.size()) ThrowArgIndex("keyword argument", i, kwargs.size());
  return internal::WireAccess::MakeValue(kwargs[static_cast<unsigned>(i)].getValue(), state_.get());
}
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
  if (!result.isOk()) ThrowWrongBody("a successful result");
  return internal::WireAccess::MakeValue(result.getOk(), state_.get());
}
RemoteErrorInfo Message::error() const {
  ZEROCAN_RESULT();
  if (!result.isError()) ThrowWrongBody("an error result");
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

// ---- Value accessors ---------------------------------------------------------------

namespace {
using internal::WireAccess;
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

// ---- the header peek ---------------------------------------------------------------

namespace internal {

std::optional<Peek> PeekEnvelope(const zmq::message_t& frame, const DecodeLimits& limits) {
  size_t size = frame.size();
  if (size < 8 || size % 8 != 0 || size > limits.max_envelope_bytes) return std::nullopt;
  const capnp::word* words = static_cast<const capnp::word*>(frame.data());
  std::unique_ptr<capnp::word[]> copy;
  if (!IsAligned(words, alignof(capnp::word))) {
    copy.reset(new capnp::word[size / 8]);
    std::memcpy(copy.get(), frame.data(), size);
    words = copy.get();
  }
  try {
    return CatchKj("envelope", [&]() -> std::optional<Peek> {
      capnp::ReaderOptions options;
      options.traversalLimitInWords = limits.traversal_factor * (size / 8) + 64;
      options.nestingLimit = 16;
      capnp::FlatArrayMessageReader reader(kj::ArrayPtr<const capnp::word>(words, size / 8),
                                           options);
      auto env = reader.getRoot<wire::Envelope>();
      if (env.getVersion() != kProtocolVersion) return std::nullopt;
      Peek p;
      switch (env.getBody().which()) {
        case wire::Envelope::Body::APPLY: {
          p.kind = BodyKind::kApply;
          auto apply = env.getBody().getApply();
          auto fn = apply.getFunction();
          p.function.assign(fn.begin(), std::min<size_t>(fn.size(), 1024));
          p.timeout_ms = apply.getTimeoutMs();
          break;
        }
        case wire::Envelope::Body::RESULT:
          p.kind = BodyKind::kResult;
          p.call_id = env.getBody().getResult().getCallId();
          break;
        case wire::Envelope::Body::HELLO: p.kind = BodyKind::kHello; break;
        case wire::Envelope::Body::HEARTBEAT: p.kind = BodyKind::kHeartbeat; break;
        case wire::Envelope::Body::GOODBYE: p.kind = BodyKind::kGoodbye; break;
      }
      p.message_id = env.getMessageId();
      return p;
    });
  } catch (const DecodeError&) {
    return std::nullopt;
  }
}

}  // namespace internal
}  // namespace zerocan
