// The envelope: EnvelopeWriter (a generated builder over a reusable first segment),
// Message::Decode (frames, alignment, the one reader, then the checked walk of
// values.cc), the Message accessors, the raw generated access of zerocan/generated.h,
// and the broker's header peek.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <time.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "absl/strings/str_cat.h"
#include "internal/block_cache.h"
#include "internal/kj_bridge.h"
#include "internal/strings.h"
#include "wire/access.h"
#include "wire/encoding.h"
#include "wire/handles.h"
#include "wire/materialize.h"
#include "wire/message_state.h"
#include "wire/peek.h"
#include "zerocan/error.h"
#include "zerocan/generated.h"
#include "zerocan/message.h"
#include "zerocan/registry.h"
#include "zerocan/stats.h"
#include "zerocan/version.h"
#include "zerocan/shared.h"
#include "zerocan/writer.h"
#include "transport/shared_segments.h"

namespace zerocan {

namespace internal {

unsigned CheckedLength(size_t n, const char* what) {
  if (n > kMaxCapnpList) {
    throw EncodeError(absl::StrCat(what, " of ", n, " elements exceeds the format's bound of ",
                                   kMaxCapnpList));
  }
  return static_cast<unsigned>(n);
}

unsigned TextSize(std::string_view text) {
  CheckedLength(text.size() + 1, "text");
  return static_cast<unsigned>(text.size());
}

void CopyText(capnp::Text::Builder dst, std::string_view text) noexcept {
  if (!text.empty()) std::memcpy(dst.begin(), text.data(), text.size());
}

void ThrowIndex(const char* what, size_t i, size_t n) {
  throw EncodeError(absl::StrCat(what, " index ", i, " out of range (size ", n, ")"));
}

}  // namespace internal

namespace {

using internal::CopyText;
using internal::TextSize;
using internal::CheckedLength;
using internal::ThrowIndex;
using internal::Unwrap;
using internal::Wrap;
using Code = DecodeError::Code;

// The canonical first segment (docs/FORMAT.md): 64 KiB.
constexpr size_t kFirstSegmentWords = 8192;

// Each thread keeps one spare writer state, with its zeroed first segment, for the
// next EnvelopeWriter it makes: a small envelope then costs no allocation until Finish
// copies it out. MallocMessageBuilder zeroes what it used of the segment when it is
// destroyed, leaving it ready. A second writer alive on the same thread makes a state
// of its own.

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

// Room for an envelope of `words` words. Most envelopes (every small call and result)
// fit one of three block sizes, taken from the thread's block cache with the Buffer's
// control block in the same allocation; a message kept alive then holds at most about
// four times its envelope's bytes. Larger ones get a buffer of their own.
template <size_t kWords>
struct EnvelopeBlock {
  EnvelopeBlock() noexcept {}  // uninitialised: Finish writes every byte it hands out
  capnp::word words[kWords];
};

template <size_t kWords>
Buffer CachedBlock(size_t words) {
  auto block = std::allocate_shared<EnvelopeBlock<kWords>>(
      internal::CachingAllocator<EnvelopeBlock<kWords>>());
  auto* data = reinterpret_cast<std::byte*>(block->words);
  return Buffer(data, words * sizeof(capnp::word), std::move(block));
}

Buffer EnvelopeBuffer(size_t words) {
  if (words <= 32) return CachedBlock<32>(words);
  if (words <= 128) return CachedBlock<128>(words);
  if (words <= 512) return CachedBlock<512>(words);
  return Buffer::Allocate(words * sizeof(capnp::word));
}

}  // namespace

// ---- EnvelopeWriter::Impl ---------------------------------------------------------------

namespace internal {
std::unique_ptr<EnvelopeWriter::Impl>& WireAccess::SpareWriter() {
  thread_local std::unique_ptr<EnvelopeWriter::Impl> spare;
  return spare;
}
}  // namespace internal

EnvelopeWriter::Impl::Impl()
    : first_segment(static_cast<capnp::word*>(std::calloc(kFirstSegmentWords, sizeof(capnp::word)))) {
  if (first_segment == nullptr) throw std::bad_alloc();
}

EnvelopeWriter::Impl::~Impl() {
  builder.reset();
  std::free(first_segment);
}

void EnvelopeWriter::Impl::Start() {
  builder.emplace(kj::arrayPtr(first_segment, kFirstSegmentWords));
  root = builder->initRoot<wire::Envelope>();
  root.setVersion(kProtocolVersion);
  payloads.clear();
  finished = false;
}

EnvelopeWriter::EnvelopeWriter(const Policy& policy, const Registry* registry)
    : policy_(policy), registry_(registry) {
  auto& spare = internal::WireAccess::SpareWriter();
  impl_ = spare != nullptr ? std::move(spare) : std::make_unique<Impl>();
  impl_->Start();
}

EnvelopeWriter::~EnvelopeWriter() {
  impl_->builder.reset();  // zeroes what it used of the first segment
  impl_->payloads.clear();
  auto& spare = internal::WireAccess::SpareWriter();
  if (spare == nullptr) spare = std::move(impl_);
}

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
  CopyText(apply.initFunction(TextSize(function)), function);
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
  CopyText(field.initKey(TextSize(name)), name);
  return ValueWriter(message_, Wrap(field.initValue()), 0);
}

// Result: struct, engineId text, then the ok value or the error struct and its texts.
ValueWriter EnvelopeWriter::StartResult(uint64_t call_id, std::string_view engine_id) {
  auto result = impl_->root.getBody().initResult();
  result.setCallId(call_id);
  CopyText(result.initEngineId(TextSize(engine_id)), engine_id);
  return ValueWriter(this, Wrap(result.initOk()), 0);
}

void EnvelopeWriter::SetError(uint64_t call_id, std::string_view engine_id,
                              const RemoteErrorInfo& error) {
  auto result = impl_->root.getBody().initResult();
  result.setCallId(call_id);
  CopyText(result.initEngineId(TextSize(engine_id)), engine_id);
  auto e = result.initError();
  CopyText(e.initType(TextSize(error.type)), error.type);
  CopyText(e.initMessage(TextSize(error.message)), error.message);
  CopyText(e.initFunction(TextSize(error.function)), error.function);
  CopyText(e.initWhere(TextSize(error.where)), error.where);
}

void EnvelopeWriter::SetHello(std::string_view peer_id, std::string_view role,
                              const std::vector<std::string>& functions,
                              const HostIdentity* host) {
  unsigned n = CheckedLength(functions.size(), "functions");
  auto hello = impl_->root.getBody().initHello();
  CopyText(hello.initPeerId(TextSize(peer_id)), peer_id);
  CopyText(hello.initRole(TextSize(role)), role);
  auto list = hello.initFunctions(n);
  for (unsigned i = 0; i < n; ++i) CopyText(list.init(i, TextSize(functions[i])), functions[i]);
  if (host != nullptr) {
    auto h = hello.initHost();
    CopyText(h.initBootId(TextSize(host->boot_id)), host->boot_id);
    h.setNetns(host->netns);
    h.setUid(host->uid);
  }
}

std::vector<SharedOrigin> Message::shared_origins() const {
  std::vector<SharedOrigin> out;
  if (state_ == nullptr) return out;
  for (const auto& [where, origin] : state_->shared_views_) {
    // Views that keep the whole message (and the blocks it keeps) alive, as payloads do.
    out.push_back(SharedOrigin{origin.arena, origin.offset, origin.block,
                               Buffer(origin.view.mutable_data(), origin.view.size(),
                                      state_->KeepAlive())});
  }
  return out;
}

std::optional<HostIdentity> Message::hello_host() const {
  if (body_kind() != BodyKind::kHello) {
    throw DecodeError(DecodeError::Code::kTypeMismatch, "hello_host: not a hello");
  }
  auto hello = state_->root_.getBody().getHello();
  if (!hello.hasHost()) return std::nullopt;
  auto h = hello.getHost();
  HostIdentity id;
  id.boot_id.assign(h.getBootId().begin(), h.getBootId().size());
  id.netns = h.getNetns();
  id.uid = h.getUid();
  return id;
}

void EnvelopeWriter::SetHeartbeat(std::string_view peer_id, uint64_t now_ns) {
  auto hb = impl_->root.getBody().initHeartbeat();
  CopyText(hb.initPeerId(TextSize(peer_id)), peer_id);
  hb.setNowNs(now_ns);
}

void EnvelopeWriter::SetGoodbye() { impl_->root.getBody().setGoodbye(); }

void EnvelopeWriter::SetStarted(uint64_t call_id) {
  impl_->root.getBody().initStarted().setCallId(call_id);
}

void EnvelopeWriter::SetDraining() { impl_->root.getBody().setDraining(); }

void EnvelopeWriter::SetApplyRetries(uint32_t retries) {
  auto body = impl_->root.getBody();
  if (!body.isApply()) throw EncodeError("SetApplyRetries: the message is not an apply");
  body.getApply().setRetries(static_cast<uint16_t>(std::min<uint32_t>(retries, UINT16_MAX)));
}

void EnvelopeWriter::SetApplySharedResults(bool shared) {
  auto body = impl_->root.getBody();
  if (!body.isApply()) throw EncodeError("SetApplySharedResults: the message is not an apply");
  body.getApply().setSharedResults(shared);
}

// ---- cancel and streams (data fields: setting them allocates nothing) ----------------

void EnvelopeWriter::SetStreamCredits(uint32_t credits) {
  auto body = impl_->root.getBody();
  if (!body.isApply()) throw EncodeError("SetStreamCredits: the message is not an apply");
  // Apply.streamCredits is 16 bits wide: a larger window is the widest there is.
  body.getApply().setStreamCredits(static_cast<uint16_t>(std::min<uint32_t>(credits, UINT16_MAX)));
}

void EnvelopeWriter::SetStreamPart(StreamPart part) {
  auto body = impl_->root.getBody();
  if (!body.isResult()) throw EncodeError("SetStreamPart: the message is not a result");
  body.getResult().setStream(part == StreamPart::kItem  ? wire::StreamPart::ITEM
                             : part == StreamPart::kEnd ? wire::StreamPart::END
                                                        : wire::StreamPart::NONE);
}

void EnvelopeWriter::SetCancel(uint64_t call_id) {
  impl_->root.getBody().initCancel().setCallId(call_id);
}

void EnvelopeWriter::SetCredit(uint64_t call_id, uint32_t items) {
  auto credit = impl_->root.getBody().initCredit();
  credit.setCallId(call_id);
  credit.setItems(items);
}

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
    envelope = EnvelopeBuffer(words + 1);
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
  return Outgoing(std::move(envelope), std::move(m.payloads), std::move(m.shared_blocks));
}

// ---- Message::Decode -----------------------------------------------------------------

namespace {


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

  auto state = std::allocate_shared<internal::MessageState>(
      internal::CachingAllocator<internal::MessageState>(), std::move(received));
  const auto* words = reinterpret_cast<const capnp::word*>(envelope_data);
  size_t word_count = envelope_size / sizeof(capnp::word);
  if (!IsAligned(words, alignof(capnp::word))) {
    // libzmq hands out small tcp/ipc frames at any address inside its receive batch;
    // Cap'n Proto needs word alignment. One copy, counted.
    words = state->CopyEnvelope(words, word_count);
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
      internal::WalkedBody walked = internal::WalkEnvelope(
          state->received_, static_cast<uint32_t>(payload_frames), limits,
          Budget(limits, word_count), env, &state->shared_views_);
      state->root_ = env;
      state->is_result_ = walked.is_result;
      state->result_ = walked.result;
      state->ok_ = walked.ok;
      state->is_apply_ = walked.is_apply;
      state->apply_ = walked.apply;
      state->function_ = std::string_view(walked.function.begin(), walked.function.size());
      state->args_ = walked.args;
      state->kwargs_ = walked.kwargs;
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
const MessageState& WireAccess::State(const Message& m) noexcept { return *m.state_; }
void WireAccess::KeepReturnedBlocks(const Message& m, std::vector<Buffer>&& blocks) {
  for (Buffer& b : blocks) m.state_->returned_blocks_.push_back(std::move(b));
}
}  // namespace internal

wire::Envelope::Reader GeneratedEnvelope(const Message& message) {
  return internal::WireAccess::Root(message);
}
wire::Envelope::Builder GeneratedEnvelope(EnvelopeWriter& writer) {
  return internal::WireAccess::Root(writer);
}
wire::Value::Reader GeneratedValue(const Value& value) { return internal::WireAccess::Reader(value); }

uint64_t Message::message_id() const noexcept { return state_ ? state_->root_.getMessageId() : 0; }
uint64_t Message::session_id() const noexcept { return state_ ? state_->root_.getSessionId() : 0; }
uint64_t Message::sequence() const noexcept { return state_ ? state_->root_.getSequence() : 0; }
uint64_t Message::sent_at_ns() const noexcept { return state_ ? state_->root_.getSentAtNs() : 0; }

BodyKind Message::body_kind() const noexcept {
  if (state_ == nullptr) return BodyKind::kUnknown;
  switch (state_->root_.getBody().which()) {
    case wire::Envelope::Body::APPLY: return BodyKind::kApply;
    case wire::Envelope::Body::RESULT: return BodyKind::kResult;
    case wire::Envelope::Body::HELLO: return BodyKind::kHello;
    case wire::Envelope::Body::HEARTBEAT: return BodyKind::kHeartbeat;
    case wire::Envelope::Body::GOODBYE: return BodyKind::kGoodbye;
    case wire::Envelope::Body::STARTED: return BodyKind::kStarted;
    case wire::Envelope::Body::DRAINING: return BodyKind::kDraining;
    case wire::Envelope::Body::CANCEL: return BodyKind::kCancel;
    case wire::Envelope::Body::CREDIT: return BodyKind::kCredit;
  }
  return BodyKind::kUnknown;
}

#define ZEROCAN_APPLY() const wire::Apply::Reader& apply = Apply().apply_
#define ZEROCAN_RESULT()                                                           \
  if (state_ == nullptr || !state_->is_result_) ThrowWrongBody("a result");        \
  const wire::Result::Reader& result = state_->result_

const internal::MessageState& Message::Apply() const {
  if (state_ == nullptr || !state_->is_apply_) ThrowWrongBody("an apply");
  return *state_;
}

std::string_view Message::function() const { return Apply().function_; }
size_t Message::arg_count() const { return Apply().args_.size(); }
Value Message::arg(size_t i) const {
  const auto& args = Apply().args_;
  if (i >= args.size()) ThrowArgIndex("argument", i, args.size());
  return internal::WireAccess::MakeValue(args[static_cast<unsigned>(i)], state_.get());
}
size_t Message::kwarg_count() const { return Apply().kwargs_.size(); }
std::string_view Message::kwarg_name(size_t i) const {
  const auto& kwargs = Apply().kwargs_;
  if (i >= kwargs.size()) ThrowArgIndex("keyword argument", i, kwargs.size());
  return View(kwargs[static_cast<unsigned>(i)].getKey());
}
Value Message::kwarg(size_t i) const {
  const auto& kwargs = Apply().kwargs_;
  if (i >= kwargs.size()) ThrowArgIndex("keyword argument", i, kwargs.size());
  return internal::WireAccess::MakeValue(kwargs[static_cast<unsigned>(i)].getValue(), state_.get());
}
uint32_t Message::timeout_ms() const {
  ZEROCAN_APPLY();
  return apply.getTimeoutMs();
}
uint32_t Message::retries() const {
  ZEROCAN_APPLY();
  return apply.getRetries();
}
bool Message::shared_results() const {
  ZEROCAN_APPLY();
  return apply.getSharedResults();
}
uint64_t Message::call_id() const {
  if (state_ != nullptr && state_->root_.getBody().isStarted()) {
    return state_->root_.getBody().getStarted().getCallId();
  }
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
  return internal::WireAccess::MakeValue(state_->ok_, state_.get());
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
StreamPart Message::stream_part() const {
  ZEROCAN_RESULT();
  switch (result.getStream()) {
    case wire::StreamPart::ITEM: return StreamPart::kItem;
    case wire::StreamPart::END: return StreamPart::kEnd;
    default: return StreamPart::kNone;  // NONE, or a part unknown to this reader
  }
}
uint32_t Message::stream_credits() const {
  ZEROCAN_APPLY();
  return apply.getStreamCredits();
}
uint64_t Message::target_call_id() const {
  if (state_ == nullptr) ThrowWrongBody("a cancel or credit");
  auto body = state_->root_.getBody();
  if (body.isCancel()) return body.getCancel().getCallId();
  if (body.isCredit()) return body.getCredit().getCallId();
  ThrowWrongBody("a cancel or credit");
}
uint32_t Message::credit_items() const {
  if (state_ == nullptr || !state_->root_.getBody().isCredit()) ThrowWrongBody("a credit");
  return state_->root_.getBody().getCredit().getItems();
}
#undef ZEROCAN_APPLY
#undef ZEROCAN_RESULT

namespace {
const ReceivedMessage& NoFrames() {
  static const ReceivedMessage none;
  return none;
}
}  // namespace

const FrameList& Message::frames() const noexcept { return received().frames; }
const ReceivedMessage& Message::received() const noexcept {
  return state_ ? state_->received_ : NoFrames();
}
bool Message::envelope_copied() const noexcept { return state_ && state_->copied_; }

// ---- the header peek ---------------------------------------------------------------

namespace internal {

std::optional<Peek> PeekEnvelope(const Buffer& frame, const DecodeLimits& limits) {
  size_t size = frame.size();
  if (size < 8 || size % 8 != 0 || size > limits.max_envelope_bytes) return std::nullopt;
  const auto* words = reinterpret_cast<const capnp::word*>(frame.data());
  // libzmq hands out short frames at any address; Cap'n Proto reads aligned words. A
  // call's or a result's envelope fits the stack copy.
  capnp::word short_copy[64];
  std::unique_ptr<capnp::word[]> copy;
  if (!IsAligned(words, alignof(capnp::word))) {
    capnp::word* aligned = short_copy;
    if (size / 8 > std::size(short_copy)) {
      copy.reset(new capnp::word[size / 8]);
      aligned = copy.get();
    }
    std::memcpy(aligned, frame.data(), size);
    words = aligned;
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
          p.retries = apply.getRetries();
          p.stream_credits = apply.getStreamCredits();
          break;
        }
        case wire::Envelope::Body::RESULT: {
          p.kind = BodyKind::kResult;
          auto result = env.getBody().getResult();
          p.call_id = result.getCallId();
          if (result.isError()) {
            auto type = result.getError().getType();
            p.error_type.assign(type.begin(), std::min<size_t>(type.size(), 256));
          }
          p.stream = result.getStream() == wire::StreamPart::ITEM ? StreamPart::kItem
                     : result.getStream() == wire::StreamPart::END ? StreamPart::kEnd
                                                                    : StreamPart::kNone;
          break;
        }
        case wire::Envelope::Body::CANCEL:
          p.kind = BodyKind::kCancel;
          p.call_id = env.getBody().getCancel().getCallId();
          break;
        case wire::Envelope::Body::CREDIT: {
          p.kind = BodyKind::kCredit;
          p.call_id = env.getBody().getCredit().getCallId();
          break;
        }
        case wire::Envelope::Body::HELLO: p.kind = BodyKind::kHello; break;
        case wire::Envelope::Body::HEARTBEAT: p.kind = BodyKind::kHeartbeat; break;
        case wire::Envelope::Body::GOODBYE: p.kind = BodyKind::kGoodbye; break;
        case wire::Envelope::Body::STARTED:
          p.kind = BodyKind::kStarted;
          p.call_id = env.getBody().getStarted().getCallId();
          break;
        case wire::Envelope::Body::DRAINING: p.kind = BodyKind::kDraining; break;
      }
      p.message_id = env.getMessageId();
      return p;
    });
  } catch (const DecodeError&) {
    return std::nullopt;
  }
}

bool MayReferToArenas(const Buffer& envelope) noexcept {
  std::string_view bytes(reinterpret_cast<const char*>(envelope.data()), envelope.size());
  return bytes.find(kArenaNamePrefix) != std::string_view::npos;
}

std::optional<Materialized> MaterializeApply(const Message& apply, const Policy& policy) {
  const MessageState& state = WireAccess::State(apply);
  if (state.shared_views_.empty()) return std::nullopt;
  Materialized out;
  for (const auto& [where, origin] : state.shared_views_) out.bytes += origin.view.size();
  Policy frames_only = policy;
  frames_only.shared_arena = nullptr;  // Copy re-places every reference from its bytes
  EnvelopeWriter writer(frames_only);
  Header header;
  header.message_id = apply.message_id();
  header.session_id = apply.session_id();
  header.sequence = apply.sequence();
  header.sent_at_ns = apply.sent_at_ns();
  writer.SetHeader(header);
  ApplyWriter args = writer.StartApply(apply.function(), apply.arg_count(),
                                       apply.kwarg_count(), apply.timeout_ms());
  writer.SetApplyRetries(apply.retries());
  if (apply.stream_credits() != 0) writer.SetStreamCredits(apply.stream_credits());
  for (size_t i = 0; i < apply.arg_count(); ++i) args.arg(i).Copy(apply.arg(i));
  for (size_t i = 0; i < apply.kwarg_count(); ++i) {
    args.kwarg(i, apply.kwarg_name(i)).Copy(apply.kwarg(i));
  }
  out.message = writer.Finish();
  return out;
}

}  // namespace internal
}  // namespace zerocan
