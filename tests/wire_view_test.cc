// The inline views (zerocan/internal/wire_view.h) against the generated readers: every
// field reads the same through both, far pointers of multi-segment envelopes resolve,
// and what the views refuse gets the generated reader's error or a clear refusal.
#include <cstdint>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include "zerocan/zerocan.h"

namespace zerocan {
namespace {

ReceivedMessage FramesOf(const kj::Array<capnp::word>& flat) {
  ReceivedMessage r;
  r.frames.emplace_back(flat.begin(), flat.size() * sizeof(capnp::word));
  return r;
}

ReceivedMessage FramesOf(const std::vector<uint64_t>& words) {
  ReceivedMessage r;
  r.frames.emplace_back(words.data(), words.size() * sizeof(uint64_t));
  return r;
}

// Every data field of the envelope and of a result, with values that differ in every
// byte, read through Message (views) and through the generated reader it offers.
TEST(WireViewTest, EveryFieldReadsAsTheGeneratedReaderReadsIt) {
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  env.setMessageId(0x0102030405060708u);
  env.setSessionId(0x1112131415161718u);
  env.setSequence(0x2122232425262728u);
  env.setSentAtNs(0x3132333435363738u);
  auto result = env.getBody().initResult();
  result.setCallId(0x4142434445464748u);
  result.setEngineId("engine-7");
  auto e = result.initError();
  e.setType("T");
  e.setMessage("message");
  e.setFunction("fn");
  e.setWhere("here");
  Message m = Message::Decode(FramesOf(capnp::messageToFlatArray(builder)));

  auto g = m.envelope();
  EXPECT_EQ(m.message_id(), g.getMessageId());
  EXPECT_EQ(m.session_id(), g.getSessionId());
  EXPECT_EQ(m.sequence(), g.getSequence());
  EXPECT_EQ(m.message_id(), 0x0102030405060708u);
  EXPECT_EQ(m.sequence(), 0x2122232425262728u);
  ASSERT_EQ(m.body_kind(), BodyKind::kResult);
  EXPECT_EQ(m.call_id(), 0x4142434445464748u);
  EXPECT_EQ(m.engine_id(), "engine-7");
  EXPECT_FALSE(m.ok());
  RemoteErrorInfo info = m.error();
  EXPECT_EQ(info.type, "T");
  EXPECT_EQ(info.message, "message");
  EXPECT_EQ(info.function, "fn");
  EXPECT_EQ(info.where, "here");
}

TEST(WireViewTest, ValueAndTensorFieldsMatchTheGeneratedReader) {
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  auto apply = env.getBody().initApply();
  apply.setFunction("f");
  apply.setTimeoutMs(0x01020304u);
  auto args = apply.initArgs(6);
  args[0].setBool(true);
  args[1].setInt(-0x0102030405060708);
  args[2].setUint(0xf1f2f3f4f5f6f7f8u);
  args[3].setFloat(-2.75);
  auto t = args[4].initTensor();
  t.setDtype(wire::DType::INT64);
  t.setOrder(wire::Order::FORTRAN);
  t.setByteOrder(wire::ByteOrder::BIG);
  auto shape = t.initShape(2);
  shape.set(0, 1);
  shape.set(1, 2);
  uint8_t bytes[16] = {0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 0};
  t.initData().setInline(kj::arrayPtr(bytes, sizeof bytes));
  auto map = args[5].initMap(1);
  map[0].initKey().setText("k");
  map[0].initValue().initExtension().setTypeName("ext");
  auto kwargs = apply.initKwargs(1);
  kwargs[0].setKey("name");
  kwargs[0].initValue().setNull();
  Message m = Message::Decode(FramesOf(capnp::messageToFlatArray(builder)));

  EXPECT_EQ(m.timeout_ms(), 0x01020304u);
  EXPECT_EQ(m.function(), "f");
  EXPECT_TRUE(m.arg(0).AsBool());
  EXPECT_EQ(m.arg(1).AsInt(), -0x0102030405060708);
  EXPECT_EQ(m.arg(2).AsUInt(), 0xf1f2f3f4f5f6f7f8u);
  EXPECT_EQ(m.arg(3).AsDouble(), -2.75);
  Value tensor = m.arg(4);
  EXPECT_EQ(tensor.dtype(), DType::kInt64);
  EXPECT_EQ(tensor.shape(), (Shape{1, 2}));
  Tensor widened = tensor.AsTensor();  // big-endian: swapped on read
  EXPECT_EQ(widened.order(), Order::kFortran);
  EXPECT_EQ(widened.data_as<int64_t>()[0], 5);
  EXPECT_EQ(widened.data_as<int64_t>()[1], 256);
  EXPECT_EQ(m.arg(5).key(0).AsText(), "k");
  EXPECT_EQ(m.arg(5).value(0).extension_name(), "ext");
  EXPECT_EQ(m.kwarg_name(0), "name");
  EXPECT_TRUE(m.kwarg(0).is_null());
}

// pycapnp (and Cap'n Proto's builder) spread an envelope over several segments once it
// outgrows the first: its far pointers, single and double landing pads, resolve in the
// views without a copy. Tiny segments here force a far pointer for nearly every object.
TEST(WireViewTest, MultiSegmentEnvelopeIsReadInPlace) {
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(std::string(i % 50, static_cast<char>('a' + i % 26)));
  capnp::MallocMessageBuilder builder(8, capnp::AllocationStrategy::FIXED_SIZE);
  auto env = builder.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  auto apply = env.getBody().initApply();
  apply.setFunction("f");
  auto args = apply.initArgs(2);
  auto list = args[0].initList(static_cast<unsigned>(texts.size()));
  for (size_t i = 0; i < texts.size(); ++i) list[static_cast<unsigned>(i)].setText(texts[i]);
  const size_t entry_count = 60;  // the segment count stays under 511
  auto map = args[1].initMap(static_cast<unsigned>(entry_count));
  for (size_t i = 0; i < entry_count; ++i) {
    map[static_cast<unsigned>(i)].initKey().setText(texts[i]);
    map[static_cast<unsigned>(i)].initValue().setInt(static_cast<int64_t>(i));
  }
  apply.initKwargs(0);
  ASSERT_GT(builder.getSegmentsForOutput().size(), 10u);
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(builder);
  Message m = Message::Decode(FramesOf(flat));
  EXPECT_FALSE(m.envelope_copied());
  EXPECT_EQ(m.function(), "f");
  ASSERT_EQ(m.arg(0).size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(m.arg(0)[i].AsText(), texts[i]) << i;
  // The accessors' unchecked path (pointers the walk checked) follows far pointers too.
  size_t i = 0;
  for (Value v : m.arg(0).AsList()) EXPECT_EQ(v.AsText(), texts[i++]);
  EXPECT_EQ(i, texts.size());
  ValueMap entries = m.arg(1).AsMap();
  ASSERT_EQ(entries.size(), entry_count);
  for (i = 0; i < entry_count; ++i) {
    EXPECT_EQ(entries.key(i).AsText(), texts[i]) << i;
    EXPECT_EQ(entries.value(i).AsInt(), static_cast<int64_t>(i)) << i;
  }
  EXPECT_EQ(entries.Find(texts[59])->AsInt(), 59);
  EXPECT_EQ(entries.Find("")->AsInt(), 0);  // texts 0 and 50 are empty: the first wins
}

// The writer keeps any envelope in one segment (no far pointers to follow), however big.
TEST(WireViewTest, WriterProducesOneSegmentAtAnySize) {
  std::vector<std::string> texts(3000, std::string(40, 'x'));
  EnvelopeWriter w;
  w.StartApply("f", 1, 0).arg(0).Write(texts);
  Outgoing out = w.Finish();
  ASSERT_GT(out.envelope().size(), 64u * 1024);
  EXPECT_EQ(reinterpret_cast<const uint32_t*>(out.envelope().data())[0], 0u) << "segment count - 1";
  Message m = Message::Decode(LoopbackFrames(std::move(out)));
  ASSERT_EQ(m.arg(0).size(), texts.size());
  EXPECT_EQ(m.arg(0)[2999].AsText(), texts[2999]);
}

uint64_t StructPointer(int64_t offset, uint16_t data_words, uint16_t pointers) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(offset << 2))) | uint64_t{data_words} << 32 |
         uint64_t{pointers} << 48;
}
uint64_t ListPointer(int64_t offset, unsigned element_size, uint32_t count) {
  return static_cast<uint64_t>(static_cast<uint32_t>(offset << 2)) | 1 | uint64_t{element_size} << 32 |
         uint64_t{count} << 35;
}

// Cap'n Proto lets a struct list be written as a list of plain words (each element a
// struct with that one data word). No writer does so; the generated reader accepts it,
// and zerocan refuses it with an error that says so (docs/FORMAT.md, "Layout").
TEST(WireViewTest, UpgradedListEncodingIsRefusedClearly) {
  std::vector<uint64_t> words = {
      0,                          // segment table (one segment; its size patched below)
      StructPointer(0, 5, 1),     // root -> envelope at word 2 (of the segment: 1)
      kProtocolVersion,           // version; body tag 0 = apply
      0, 0, 0, 0,
      StructPointer(0, 1, 3),     // body.apply -> word 7
      0,                          // apply data (timeoutMs)
      0,                          // function: null (empty)
      ListPointer(1, 5, 1),       // args -> one 8-byte element at word 11
      0,                          // kwargs: null
      2,                          // the element: union tag 2 = int, its value beyond the data
  };
  uint32_t segment_words = static_cast<uint32_t>(words.size() - 1);
  words[0] = uint64_t{segment_words} << 32;
  try {
    Message::Decode(FramesOf(words));
    FAIL() << "accepted an upgraded list encoding";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kMalformed);
    EXPECT_NE(std::string(e.what()).find("struct lists must be inline-composite"), std::string::npos)
        << e.what();
  }
}

// A text pointer whose bytes lack the terminating NUL: the views refuse it, and the
// generated reader's verdict (a DecodeError naming frame 0) is what the caller sees.
TEST(WireViewTest, TextWithoutNulIsRejectedByTheAuthority) {
  std::vector<uint64_t> words = {
      0, StructPointer(0, 5, 1), kProtocolVersion, 0, 0, 0, 0,
      StructPointer(0, 1, 3), 0,
      ListPointer(2, 2, 3),       // function -> 3 bytes at word 11, no NUL
      0, 0,
      0x636261,                   // "abc"
  };
  words[0] = uint64_t{static_cast<uint32_t>(words.size() - 1)} << 32;
  try {
    Message::Decode(FramesOf(words));
    FAIL() << "accepted text without NUL";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.code(), DecodeError::Code::kMalformed) << e.what();
    EXPECT_NE(std::string(e.what()).find("envelope (frame 0)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace zerocan
