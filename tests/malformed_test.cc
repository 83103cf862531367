// The malformed-input suite: every class of hostile envelope or frame set named in
// docs/SECURITY.md, each rejected by the decoder with DecodeError, the expected code,
// and a message naming the frame or field. Envelopes are crafted with the generated
// builders and then patched at the word level where the builders cannot lie.
#include <gtest/gtest.h>

#include <capnp/any.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.h"
#include "zerocan/transport/zmq.h"
#include "tests/safety_util.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using testing::Frame;
using testing::Str;

using Code = DecodeError::Code;
using testing::FramesOf;
using testing::MakeCall;

// ---- crafting ------------------------------------------------------------------------

// One envelope built field by field, in a single segment (so word-level patches can
// use near pointers).
struct Crafted {
  capnp::MallocMessageBuilder builder{1u << 16};
  wire::Envelope::Builder env = builder.initRoot<wire::Envelope>();

  Crafted() {
    env.setVersion(kProtocolVersion);
    env.setMessageId(1);
    env.setSessionId(1);
    env.setSequence(1);
  }
  wire::Apply::Builder Apply(unsigned args) {
    auto apply = env.getBody().initApply();
    apply.setFunction("f");
    apply.initArgs(args);
    return apply;
  }
  // The envelope (announcing payloads.size() payload frames) and the payload frames.
  FrameList Frames(const std::vector<std::string>& payloads = {}) {
    env.setPayloadFrames(static_cast<uint32_t>(payloads.size()));
    return FramesAnnouncing(payloads, payloads.size());
  }
  FrameList FramesAnnouncing(const std::vector<std::string>& payloads, size_t announced) {
    env.setPayloadFrames(static_cast<uint32_t>(announced));
    EXPECT_EQ(builder.getSegmentsForOutput().size(), 1u);
    kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
    FrameList frames;
    frames.push_back(Frame(words.begin(), words.size() * sizeof(capnp::word)));
    for (const auto& p : payloads) frames.push_back(testing::Frame(p.data(), p.size()));
    return frames;
  }
};

// The pointer section of a struct starts right after its data section.
template <class Builder>
capnp::word* PointerWord(Builder builder, unsigned index = 0) {
  auto data = capnp::AnyStruct::Builder(std::move(builder)).getDataSection();
  return reinterpret_cast<capnp::word*>(data.end()) + index;
}

template <class Builder>
void SetDiscriminant(Builder builder, unsigned u16_element, uint16_t value) {
  auto data = capnp::AnyStruct::Builder(std::move(builder)).getDataSection();
  std::memcpy(data.begin() + 2 * u16_element, &value, sizeof(value));
}

uint64_t Load(const capnp::word* w) {
  uint64_t v;
  std::memcpy(&v, w, 8);
  return v;
}
void Store(capnp::word* w, uint64_t v) { std::memcpy(w, &v, 8); }

// Rewrites the near pointer at `from` so that it points where the near pointer at
// `like` points (Cap'n Proto offsets are relative to the pointer's own position).
// capnp never produces such shared targets; a hostile sender can.
void AliasPointer(capnp::word* from, const capnp::word* like) {
  uint64_t w = Load(like);
  int32_t offset = static_cast<int32_t>(static_cast<uint32_t>(w)) >> 2;
  int64_t rebased = offset + (like - from);
  uint32_t low = (static_cast<uint32_t>(rebased) << 2) | static_cast<uint32_t>(w & 3);
  Store(from, (w & ~uint64_t{0xffffffff}) | low);
}

// Decodes and returns the DecodeError, failing the test when decoding succeeds or
// throws anything else.
DecodeError Reject(FrameList frames, const DecodeLimits& limits = {}) {
  ReceivedMessage received;
  received.frames = std::move(frames);
  try {
    Message m = Message::Decode(std::move(received), limits);
    ADD_FAILURE() << "decoded without error";
  } catch (const DecodeError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw something other than DecodeError: " << e.what();
  }
  return DecodeError(Code::kMalformed, "<none>");
}

#define EXPECT_REJECTED(frames_expr, code_value, fragment)                              \
  do {                                                                                  \
    DecodeError e_ = Reject(frames_expr);                                               \
    EXPECT_EQ(e_.code(), code_value) << e_.what();                                      \
    EXPECT_NE(std::string(e_.what()).find(fragment), std::string::npos) << e_.what();   \
  } while (0)

#define EXPECT_REJECTED_WITH(frames_expr, limits, code_value, fragment)                 \
  do {                                                                                  \
    DecodeError e_ = Reject(frames_expr, limits);                                       \
    EXPECT_EQ(e_.code(), code_value) << e_.what();                                      \
    EXPECT_NE(std::string(e_.what()).find(fragment), std::string::npos) << e_.what();   \
  } while (0)

FrameList ValidCall() { return FramesOf(MakeCall(7, 1)); }

FrameList WithEnvelope(FrameList frames, const std::string& envelope) {
  frames[0] = Frame(envelope.data(), envelope.size());
  return frames;
}

std::string Bytes(const Buffer& m) { return Str(m); }

void PutU32(std::string* s, size_t at, uint32_t v) { std::memcpy(s->data() + at, &v, 4); }

// ---- 1. truncated envelope -----------------------------------------------------------

TEST(MalformedInputTest, TruncatedEnvelope) {
  std::string envelope = Bytes(ValidCall()[0]);
  EXPECT_REJECTED(WithEnvelope(ValidCall(), envelope.substr(0, envelope.size() - 3)),
                  Code::kMalformed, "frame 0");
  EXPECT_REJECTED(WithEnvelope(ValidCall(), ""), Code::kMalformed, "frame 0");
  // Every word-aligned cut: each one is caught (segment table or segment too short).
  for (size_t cut = 8; cut < envelope.size(); cut += 8) {
    EXPECT_REJECTED(WithEnvelope(ValidCall(), envelope.substr(0, cut)), Code::kMalformed,
                    "envelope (frame 0)");
  }
}

// ---- 2. bad segment table ------------------------------------------------------------

TEST(MalformedInputTest, BadSegmentTable) {
  std::string envelope = Bytes(ValidCall()[0]);
  std::string many = envelope;
  PutU32(&many, 0, 1000);  // 1001 segments announced
  EXPECT_REJECTED(WithEnvelope(ValidCall(), many), Code::kMalformed, "envelope (frame 0)");
  std::string wrapped = envelope;
  PutU32(&wrapped, 0, 0xffffffff);  // segment count - 1 = 2^32 - 1
  EXPECT_REJECTED(WithEnvelope(ValidCall(), wrapped), Code::kMalformed, "envelope (frame 0)");
  std::string table_only(8, '\0');
  PutU32(&table_only, 0, 1);  // two segments, but the table itself is cut short
  EXPECT_REJECTED(WithEnvelope(ValidCall(), table_only), Code::kMalformed, "envelope (frame 0)");
}

// ---- 3. segment counts and sizes that lie --------------------------------------------

TEST(MalformedInputTest, SegmentSizesThatLie) {
  std::string envelope = Bytes(ValidCall()[0]);
  uint32_t words;
  std::memcpy(&words, envelope.data() + 4, 4);
  std::string longer = envelope;
  PutU32(&longer, 4, words + 100);
  EXPECT_REJECTED(WithEnvelope(ValidCall(), longer), Code::kMalformed, "envelope (frame 0)");
  std::string huge = envelope;
  PutU32(&huge, 4, 0xfffffff0);
  EXPECT_REJECTED(WithEnvelope(ValidCall(), huge), Code::kMalformed, "envelope (frame 0)");
  std::string shorter = envelope;
  PutU32(&shorter, 4, words - 2);
  EXPECT_REJECTED(WithEnvelope(ValidCall(), shorter), Code::kMalformed, "after the last segment");
  std::string two = envelope;  // claims a second segment that is not there
  PutU32(&two, 0, 1);
  EXPECT_REJECTED(WithEnvelope(ValidCall(), two), Code::kMalformed, "envelope (frame 0)");
}

// ---- 4. pointer out of bounds --------------------------------------------------------

TEST(MalformedInputTest, PointerOutOfBounds) {
  std::string envelope = Bytes(ValidCall()[0]);
  // Word 1 (after the one-segment table) is the root struct pointer; aim it far away.
  std::string root = envelope;
  uint32_t low;
  std::memcpy(&low, root.data() + 8, 4);
  PutU32(&root, 8, (low & 3u) | (100000u << 2));
  EXPECT_REJECTED(WithEnvelope(ValidCall(), root), Code::kMalformed, "envelope (frame 0)");

  Crafted c;
  auto apply = c.Apply(1);
  apply.getArgs()[0].setText("hello");
  capnp::word* text_ptr = PointerWord(apply.getArgs()[0]);
  uint64_t w = Load(text_ptr);
  Store(text_ptr, (w & ~uint64_t{0xfffffffc}) | (uint64_t{50000} << 2));
  EXPECT_REJECTED(c.Frames(), Code::kMalformed, "envelope (frame 0)");
}

// ---- 5. nesting bomb -----------------------------------------------------------------

TEST(MalformedInputTest, NestingBomb) {
  Crafted c;
  auto apply = c.Apply(1);
  wire::Value::Builder v = apply.getArgs()[0];
  for (int depth = 0; depth < 100; ++depth) v = v.initList(1)[0];
  v.setInt(1);
  EXPECT_REJECTED(c.Frames(), Code::kLimitExceeded, "max_depth");
  EXPECT_REJECTED(c.Frames(), Code::kLimitExceeded, "apply.args[0][0][0]");

  // A list that contains itself: finite bytes, infinite nesting.
  Crafted cycle;
  auto args = cycle.Apply(1).getArgs();
  auto inner = args[0].initList(1);
  inner[0].initList(1);
  AliasPointer(PointerWord(inner[0]), PointerWord(args[0]));
  EXPECT_REJECTED(cycle.Frames(), Code::kLimitExceeded, "max_depth");
}

// ---- 6. traversal bomb ---------------------------------------------------------------

TEST(MalformedInputTest, TraversalBombZeroSizedElements) {
  // A list of 2^20 zero-sized structs costs 2 words on the wire; Cap'n Proto charges
  // each element a word of traversal budget, which is scaled to the envelope's size.
  Crafted c;
  auto apply = c.Apply(1);
  capnp::word* list_ptr = PointerWord(apply, 1);  // Apply: function @0, args @1
  uint64_t p = Load(list_ptr);
  ASSERT_EQ(p & 3, 1u);                 // a list pointer
  ASSERT_EQ((p >> 32) & 7, 7u);         // inline composite
  int32_t offset = static_cast<int32_t>(static_cast<uint32_t>(p)) >> 2;
  capnp::word* tag = list_ptr + 1 + offset;
  Store(list_ptr, p & ((uint64_t{1} << 35) - 1));  // element words: 0
  Store(tag, uint64_t{1} << 20 << 2);              // 2^20 elements of 0 data, 0 pointers
  EXPECT_REJECTED(c.Frames(), Code::kLimitExceeded, "traversal limit");
}

TEST(MalformedInputTest, TraversalBombAliasedText) {
  // 200 values whose text pointers all point at one 64 KiB text: 13 MB to read from a
  // 66 KB envelope.
  Crafted c;
  auto args = c.Apply(200).getArgs();
  args[0].setText(std::string(65536, 'a'));
  for (unsigned i = 1; i < 200; ++i) {
    args[i].setText("b");
    AliasPointer(PointerWord(args[i]), PointerWord(args[0]));
  }
  EXPECT_REJECTED(c.Frames(), Code::kLimitExceeded, "traversal limit");
}

// ---- 7-9. missing, extra and reordered payload frames ---------------------------------

TEST(MalformedInputTest, MissingPayloadFrame) {
  FrameList frames = ValidCall();
  frames.pop_back();
  EXPECT_REJECTED(std::move(frames), Code::kMalformed, "payloadFrames");
  FrameList only_envelope = ValidCall();
  only_envelope.erase(only_envelope.begin() + 1, only_envelope.end());
  EXPECT_REJECTED(std::move(only_envelope), Code::kMalformed, "announces 2 payload frames");
}

TEST(MalformedInputTest, ExtraPayloadFrame) {
  FrameList frames = ValidCall();
  frames.push_back(testing::Frame("extra", 5));
  EXPECT_REJECTED(std::move(frames), Code::kMalformed, "payloadFrames");
}

TEST(MalformedInputTest, ReorderedPayloadFrames) {
  // Different sizes: each reference now disagrees with its frame. (Same-size frames
  // swapped are indistinguishable without a signature: signing_test covers that.)
  FrameList frames = FramesOf(MakeCall(7, 1, 600, 100));
  ASSERT_EQ(frames.size(), 3u);
  std::swap(frames[1], frames[2]);
  // args[1] (600 bytes) now reads from the 800-byte tensor frame, which passes; the
  // tensor (800 bytes) then points past the end of the 600-byte frame.
  EXPECT_REJECTED(std::move(frames), Code::kMalformed,
                  "apply.args[2].tensor.data: offset 0 + length 800 is past the end of frame 2");
  FrameList larger_bytes = FramesOf(MakeCall(7, 1, 1000, 100));
  std::swap(larger_bytes[1], larger_bytes[2]);
  EXPECT_REJECTED(std::move(larger_bytes), Code::kMalformed,
                  "apply.args[1].bytes: offset 0 + length 1000 is past the end of frame 1");
}

// ---- 10. reference past a frame's end ------------------------------------------------

TEST(MalformedInputTest, ReferencePastFrameEnd) {
  auto with_ref = [](uint32_t index, uint64_t offset, uint64_t length) {
    Crafted c;
    auto ref = c.Apply(1).getArgs()[0].initBytes().initFrame();
    ref.setIndex(index);
    ref.setOffset(offset);
    ref.setLength(length);
    return c.Frames({std::string(100, 'x')});
  };
  EXPECT_REJECTED(with_ref(1, 0, 101), Code::kMalformed, "apply.args[0].bytes");
  EXPECT_REJECTED(with_ref(1, 50, 51), Code::kMalformed, "past the end of frame 1");
  EXPECT_REJECTED(with_ref(1, UINT64_MAX, 2), Code::kMalformed, "past the end of frame 1");
  EXPECT_REJECTED(with_ref(1, 2, UINT64_MAX), Code::kMalformed, "past the end of frame 1");
  EXPECT_REJECTED(with_ref(0, 0, 1), Code::kMalformed, "refers to frame 0");
  EXPECT_REJECTED(with_ref(2, 0, 1), Code::kMalformed, "refers to frame 2");
  // The edge itself is fine.
  ReceivedMessage ok;
  ok.frames = with_ref(1, 100, 0);
  EXPECT_NO_THROW(Message::Decode(std::move(ok)));
}

// ---- 11. shape and stride overflow ---------------------------------------------------

FrameList TensorWith(std::vector<uint64_t> shape, DType dtype, size_t bytes,
                     wire::Packing packing = wire::Packing::NONE, bool in_frame = true) {
  Crafted c;
  auto t = c.Apply(1).getArgs()[0].initTensor();
  t.setDtype(static_cast<wire::DType>(dtype));
  auto s = t.initShape(static_cast<unsigned>(shape.size()));
  for (unsigned i = 0; i < shape.size(); ++i) s.set(i, shape[i]);
  t.setPacking(packing);
  if (!in_frame) {
    t.getData().setInline(kj::heapArray<kj::byte>(bytes));
    return c.Frames();
  }
  auto ref = t.getData().initFrame();
  ref.setIndex(1);
  ref.setLength(bytes);
  return c.Frames({std::string(bytes, '\0')});
}

TEST(MalformedInputTest, ShapeAndStrideOverflow) {
  // Element count overflows 64 bits.
  EXPECT_REJECTED(TensorWith({uint64_t{1} << 32, uint64_t{1} << 32, 2}, DType::kUInt8, 8),
                  Code::kMalformed, "more than 2^64");
  // Count fits, count * item size (the byte stride of the outermost dimension) does not.
  EXPECT_REJECTED(TensorWith({uint64_t{1} << 61}, DType::kFloat64, 8), Code::kMalformed,
                  "apply.args[0].tensor.shape");
  // Wraps to exactly the frame size modulo 2^64: must still be caught.
  EXPECT_REJECTED(TensorWith({(uint64_t{1} << 61) + 1}, DType::kFloat64, 8), Code::kMalformed,
                  "more than 2^64");
  // Plain disagreement.
  EXPECT_REJECTED(TensorWith({3, 4}, DType::kFloat64, 80), Code::kMalformed,
                  "3x4 float64 needs 96 bytes, frame 1 has 80");
  // A zero dimension hides no overflow: 0 x 2^63 x 2^63 is 0 bytes.
  ReceivedMessage empty;
  empty.frames = TensorWith({0, uint64_t{1} << 63, uint64_t{1} << 63}, DType::kFloat64, 0);
  EXPECT_NO_THROW(Message::Decode(std::move(empty)));
  // Rank bound.
  DecodeLimits limits;
  EXPECT_REJECTED_WITH(TensorWith(std::vector<uint64_t>(33, 1), DType::kUInt8, 1), limits,
                       Code::kLimitExceeded, "max_rank");
  // Packing that widens.
  EXPECT_REJECTED(TensorWith({4}, DType::kInt8, 8, wire::Packing::INT16, false),
                  Code::kMalformed, "packing");
}

// ---- 12. unknown dtype ---------------------------------------------------------------

TEST(MalformedInputTest, UnknownDtype) {
  EXPECT_REJECTED(TensorWith({1}, static_cast<DType>(99), 8), Code::kMalformed,
                  "apply.args[0].tensor.dtype: unknown dtype 99");
  EXPECT_REJECTED(TensorWith({1}, static_cast<DType>(kDTypeCount), 8), Code::kMalformed,
                  "unknown dtype 14");
}

// ---- 13. unknown union member from a newer version ----------------------------------

TEST(MalformedInputTest, UnknownUnionMember) {
  {  // Value.which = 42 (Value's discriminant is its data section's u16 #0).
    Crafted c;
    auto v = c.Apply(2).getArgs()[1];
    v.setInt(5);
    SetDiscriminant(v, 0, 42);
    ASSERT_EQ(static_cast<int>(v.asReader().which()), 42);
    EXPECT_REJECTED(c.Frames(), Code::kMalformed, "apply.args[1]: unknown value kind 42");
  }
  {  // Envelope.body.which = 9 (u16 #1).
    Crafted c;
    c.Apply(0);
    SetDiscriminant(c.env, 1, 9);
    ASSERT_EQ(static_cast<int>(c.env.asReader().getBody().which()), 9);
    EXPECT_REJECTED(c.Frames(), Code::kMalformed, "body: unknown message kind 9");
  }
  {  // Payload.which = 3 (u16 #0; 2 is `shared`).
    Crafted c;
    auto payload = c.Apply(1).getArgs()[0].initBytes();
    payload.setInline(kj::heapArray<kj::byte>(3));
    SetDiscriminant(payload, 0, 3);
    EXPECT_REJECTED(c.Frames(), Code::kMalformed, "apply.args[0].bytes: unknown payload kind");
  }
  {  // Result's union (u16 #4) with ok/error unknown.
    Crafted c;
    auto r = c.env.getBody().initResult();
    r.setCallId(1);
    r.initOk().setNull();
    SetDiscriminant(r, 4, 7);
    EXPECT_REJECTED(c.Frames(), Code::kMalformed, "result: unknown result kind");
  }
}

// ---- 14. wrong protocol version ------------------------------------------------------

TEST(MalformedInputTest, WrongProtocolVersion) {
  for (uint16_t version : {uint16_t{0}, uint16_t{kProtocolVersion + 1}, uint16_t{0xffff}}) {
    Crafted c;
    c.Apply(0);
    c.env.setVersion(version);
    EXPECT_REJECTED(c.Frames(), Code::kVersion, "version");
  }
}

// ---- 15. oversize message ------------------------------------------------------------

TEST(MalformedInputTest, OversizeMessageAgainstDecodeLimits) {
  DecodeLimits limits;
  limits.max_envelope_bytes = 64;
  EXPECT_REJECTED_WITH(ValidCall(), limits, Code::kLimitExceeded, "max_envelope_bytes");
  limits = {};
  limits.max_frame_bytes = 500;
  EXPECT_REJECTED_WITH(ValidCall(), limits, Code::kLimitExceeded, "frame 1");
  limits = {};
  limits.max_message_bytes = 1000;
  EXPECT_REJECTED_WITH(ValidCall(), limits, Code::kLimitExceeded, "max_message_bytes");
  limits = {};
  limits.max_frames = 2;
  EXPECT_REJECTED_WITH(ValidCall(), limits, Code::kLimitExceeded, "max_frames");
  limits = {};
  limits.max_text_bytes = 10;
  Crafted text;
  text.Apply(1).getArgs()[0].setText(std::string(11, 't'));
  EXPECT_REJECTED_WITH(text.Frames(), limits, Code::kLimitExceeded, "apply.args[0].text");
  limits = {};
  limits.max_list_length = 10;
  Crafted list;
  list.Apply(1).getArgs()[0].initList(11);
  EXPECT_REJECTED_WITH(list.Frames(), limits, Code::kLimitExceeded, "max_list_length");
  limits = {};
  limits.max_payload_refs = 1;
  EXPECT_REJECTED_WITH(ValidCall(), limits, Code::kLimitExceeded, "max_payload_refs");
}

TEST(MalformedInputTest, OversizeMessageAgainstReceiveCaps) {
  testing::TcpPair pair;
  DecodeLimits limits;
  limits.max_frames = 3;
  limits.max_message_bytes = 4096;
  // Too many frames, then too many bytes, then an honest message: Receive rejects the
  // first two (draining them) and still returns the third whole.
  FrameList many = ValidCall();
  many.push_back(testing::Frame("x", 1));
  testing::SendRaw(pair.dealer, many);
  FrameList big = ValidCall();
  big[1] = Frame(std::string(5000, 'b').data(), 5000);
  testing::SendRaw(pair.dealer, big);
  testing::SendRaw(pair.dealer, ValidCall());
  for (const char* fragment : {"max_frames", "max_message_bytes"}) {
    try {
      testing::ReceiveWithin(pair.router, true, std::chrono::seconds(10), limits);
      ADD_FAILURE() << "accepted a message over " << fragment;
    } catch (const DecodeError& e) {
      EXPECT_EQ(e.code(), Code::kLimitExceeded);
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  }
  auto honest = testing::ReceiveWithin(pair.router, true, std::chrono::seconds(10), limits);
  ASSERT_TRUE(honest.has_value());
  EXPECT_EQ(Message::Decode(std::move(*honest)).function(), "echo");
}

TEST(MalformedInputTest, OversizeFrameDroppedByLibzmqMaxMsgSize) {
  // ApplyLimits sets ZMQ_MAXMSGSIZE: libzmq drops a peer that announces a larger frame
  // before allocating it. Other peers are unaffected.
  zmq::context_t context(1);
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  DecodeLimits limits;
  limits.max_frame_bytes = 64 * 1024;
  ApplyLimits(router, limits);
  EXPECT_EQ(router.get(zmq::sockopt::maxmsgsize), 64 * 1024);
  router.bind("tcp://127.0.0.1:*");
  std::string endpoint = router.get(zmq::sockopt::last_endpoint);
  zmq::socket_t big(context, zmq::socket_type::dealer), honest(context, zmq::socket_type::dealer);
  big.set(zmq::sockopt::linger, 0);
  honest.set(zmq::sockopt::linger, 0);
  big.connect(endpoint);
  honest.connect(endpoint);
  FrameList oversize = ValidCall();
  oversize[1] = Frame(std::string(100 * 1024, 'o').data(), 100 * 1024);
  testing::SendRaw(big, oversize);
  testing::SendRaw(honest, ValidCall());
  auto got = testing::ReceiveWithin(router, true, std::chrono::seconds(10), limits);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->frames[1].size(), 800u);  // the honest one
  EXPECT_FALSE(testing::ReceiveWithin(router, true, std::chrono::milliseconds(200), limits));
}

// ---- forwarding what was accepted -----------------------------------------------------

TEST(MalformedInputTest, ForwardedBigEndianFrameTensorKeepsItsBytes) {
  // Found by tests/fuzz/value_fuzz: ValueWriter::Copy copied a big-endian tensor's
  // FrameRef verbatim, so the forwarded message pointed at a frame index of the
  // *received* message (rejected, or silently another payload of the new message).
  Crafted c;
  auto args = c.Apply(1).getArgs();
  auto t = args[0].initTensor();
  t.setDtype(wire::DType::INT32);
  t.setByteOrder(wire::ByteOrder::BIG);
  t.initShape(1).set(0, 300);
  auto ref = t.getData().initFrame();
  ref.setIndex(1);
  ref.setLength(1200);
  std::string payload(1200, '\0');
  for (size_t i = 0; i < 300; ++i) payload[4 * i + 3] = static_cast<char>(i % 128);  // BE
  ReceivedMessage received;
  received.frames = c.Frames({payload});
  Message in = Message::Decode(std::move(received));

  Policy policy;
  policy.inline_threshold = 64;
  EnvelopeWriter writer(policy);
  ApplyWriter apply = writer.StartApply("forward", 2, 0);
  apply.arg(0).Bytes(Buffer::Adopt(std::vector<uint8_t>(500, 0xee)));  // takes frame 1
  apply.arg(1).Copy(in.arg(0));
  Message out = Message::Decode(LoopbackFrames(writer.Finish()));
  Tensor forwarded = out.arg(1).AsTensor();
  ASSERT_EQ(forwarded.size(), 300u);
  const int32_t* values = forwarded.data_as<int32_t>();
  for (int i = 0; i < 300; ++i) ASSERT_EQ(values[i], i % 128) << i;
}

// ---- golden vectors, truncated and bit-flipped ---------------------------------------

// Runs the decoder and the accessors over every truncation and single-bit flip of the
// envelope of a valid message: each must decode or throw DecodeError, nothing else.
void SweepEnvelope(const FrameList& frames, size_t* decoded, size_t* rejected) {
  std::string envelope = Bytes(frames[0]);
  auto attempt = [&](const std::string& env) {
    FrameList copy = testing::CopyFrames(frames);
    copy[0] = Frame(env.data(), env.size());
    ReceivedMessage received;
    received.frames = std::move(copy);
    try {
      Message m = Message::Decode(std::move(received));
      if (m.body_kind() == BodyKind::kApply) {
        for (size_t i = 0; i < m.arg_count(); ++i) (void)m.arg(i).Describe();
      }
      ++*decoded;
    } catch (const DecodeError&) {
      ++*rejected;
    }
  };
  for (size_t cut = 0; cut < envelope.size(); ++cut) attempt(envelope.substr(0, cut));
  for (size_t bit = 0; bit < envelope.size() * 8; ++bit) {
    std::string flipped = envelope;
    flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    attempt(flipped);
  }
}

TEST(MalformedInputTest, EveryTruncationAndBitFlipOfAnEnvelopeIsSafe) {
  size_t decoded = 0, rejected = 0;
  SweepEnvelope(ValidCall(), &decoded, &rejected);
  EXPECT_GT(rejected, 0u);
  EXPECT_GT(decoded, 0u);  // flips in plain data (ids, numbers) still decode
}

}  // namespace
}  // namespace zerocan
