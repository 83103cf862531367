// zerocan inspect: snapshot tests (each capture inspects to a checked-in text in
// tests/inspect_snapshots/), a capture of deliberately broken messages that is reported
// message by message, JSON that parses, filters, signatures, the schema listing, and
// the `zerocan inspect` program itself.
//
// To regenerate the snapshots after an intended change of the output:
//   ZEROCAN_UPDATE_SNAPSHOTS=1 build/tests/zerocan_tests --gtest_filter='InspectTest.*'
// then review the diff of tests/inspect_snapshots/.
#include "tools/inspect_render.h"
#include "test_support.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/generated.h"

#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "zerocan/broker.h"
#include "zerocan/capture.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/signing.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using tools::DescribeSchema;
using tools::InspectMessage;
using tools::InspectOptions;
using tools::Inspector;

constexpr uint64_t kT0 = 1700000000000000000ull;  // 2023-11-14T22:13:20Z

std::string SnapshotPath(const std::string& name) {
  return std::string(ZEROCAN_SOURCE_DIR) + "/tests/inspect_snapshots/" + name;
}

void ExpectSnapshot(const std::string& name, const std::string& actual) {
  std::string path = SnapshotPath(name);
  if (std::getenv("ZEROCAN_UPDATE_SNAPSHOTS") != nullptr) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << actual;
    std::printf("updated %s\n", path.c_str());
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "missing snapshot " << path
                  << " (run with ZEROCAN_UPDATE_SNAPSHOTS=1 to create it)";
  std::stringstream expected;
  expected << in.rdbuf();
  EXPECT_EQ(actual, expected.str()) << "snapshot " << name << " differs";
}

Policy SmallInline() {
  Policy p;
  p.inline_threshold = 64;  // payloads of 64 bytes and more get their own frame
  p.pack_integers = true;
  return p;
}

Header Fixed(uint64_t id) { return Header{id, 0xabcdef, id, kT0 + id}; }

// Collects messages into an in-memory capture with fixed times.
class CaptureBuilder {
 public:
  CaptureBuilder() : writer_(std::make_unique<CaptureWriter>(&out_)) {}
  void Add(const Outgoing& m, Direction d = Direction::kSent, std::string_view source = "test") {
    writer_->Write(m, d, source, Next());
  }
  void Add(const ReceivedMessage& m, Direction d, std::string_view source) {
    writer_->Write(m, d, source, Next());
  }
  void AddFrames(const std::vector<std::string_view>& frames, std::string_view source) {
    writer_->Write(Next(), Direction::kReceived, source, frames);
  }
  std::string bytes() { return out_.str(); }

 private:
  uint64_t Next() { return kT0 + 1000 * ++n_; }
  std::ostringstream out_{std::ios::binary};
  std::unique_ptr<CaptureWriter> writer_;
  uint64_t n_ = 0;
};

// Inspects a whole capture as `zerocan inspect` does: every message, then the summary.
std::string InspectAll(const std::string& capture, const InspectOptions& options = {}) {
  auto reader = CaptureReader::FromBytes(capture);
  Inspector inspector(options);
  std::string out;
  while (auto r = reader->Next()) out += inspector.Render(*r);
  out += inspector.Summary(reader.get());
  return out;
}

std::string Envelope(const Outgoing& m) {
  return std::string(reinterpret_cast<const char*>(m.envelope().data()), m.envelope().size());
}

// ---- the messages of the snapshot capture ------------------------------------------------------

Outgoing ScalarApply() {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(1));
  auto a = w.StartApply("add", 6, 1, 250);
  a.arg(0).Write(int64_t{-3});
  a.arg(1).Write(uint64_t{18446744073709551615ull});
  a.arg(2).Write(2.5);
  a.arg(3).Write(true);
  a.arg(4).Null();
  a.arg(5).Write(std::string("line\nwith \"quotes\""));
  a.kwarg(0, "scale").Write(int64_t{3});
  return w.Finish();
}

Outgoing PayloadApply() {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(2));
  auto a = w.StartApply("matmul", 4, 0);
  std::vector<double> big(100);
  for (size_t i = 0; i < big.size(); ++i) big[i] = 0.5 * static_cast<double>(i);
  a.arg(0).Write(std::move(big));                                    // frame, float64
  a.arg(1).Write(std::vector<int32_t>{1, 2, 300});                   // inline, packed uint16
  a.arg(2).Write(std::vector<std::byte>(5, std::byte{0xab}));        // inline bytes
  std::vector<std::byte> blob(100);
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<std::byte>(i);
  a.arg(3).Write(std::move(blob));                                   // frame bytes
  return w.Finish();
}

Outgoing NestedApply() {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(3));
  auto a = w.StartApply("store", 2, 0);
  auto list = a.arg(0).List(3);
  list[0].Text("a");
  list[1].Write(std::vector<float>{1.5f, -2.0f});
  auto map = list[2].Map(1);
  map.key(0).Text("k");
  map.value(0).Write(std::vector<uint8_t>(80, 7));  // frame
  auto ext = a.arg(1).Extension("example.Point");
  auto xy = ext.List(2);
  xy[0].Write(1.0);
  xy[1].Write(2.0);
  return w.Finish();
}

Outgoing TensorResult() {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(4));
  auto v = w.StartResult(2, "engine-a");
  auto list = v.List(3);
  std::vector<float> f = {1, 2, 3, 4, 5, 6};
  list[0].Array(DType::kFloat32, Shape{2, 3}, Buffer::Adopt(std::move(f)), Order::kFortran);
  std::vector<std::complex<double>> c = {{1, -2}, {0.5, 0}};
  list[1].Array(DType::kComplex128, Shape{2}, Buffer::Adopt(std::move(c)));
  std::vector<uint16_t> half = {0x3c00, 0xc000, 0x7c00};  // 1, -2, inf
  list[2].Array(DType::kFloat16, Shape{3}, Buffer::Adopt(std::move(half)));
  return w.Finish();
}

Outgoing ErrorResult() {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(5));
  w.SetError(1, "engine-b", RemoteErrorInfo{"std::invalid_argument", "bad scale", "add", "engine-b"});
  return w.Finish();
}

std::vector<Outgoing> Housekeeping() {
  std::vector<Outgoing> out;
  {
    EnvelopeWriter w(SmallInline());
    w.SetHeader(Fixed(6));
    w.SetHello("engine-a", "engine", {"add", "matmul"});
    out.push_back(w.Finish());
  }
  {
    EnvelopeWriter w(SmallInline());
    w.SetHeader(Fixed(7));
    w.SetHeartbeat("engine-a", kT0);
    out.push_back(w.Finish());
  }
  {
    EnvelopeWriter w(SmallInline());
    w.SetHeader(Fixed(8));
    w.SetGoodbye();
    out.push_back(w.Finish());
  }
  return out;
}

std::string SnapshotCapture() {
  CaptureBuilder c;
  c.Add(ScalarApply());
  c.Add(PayloadApply());
  c.Add(NestedApply());
  ReceivedMessage routed = LoopbackFrames(TensorResult());
  routed.routing.push_back(testing::Frame("client-1", 8));
  c.Add(routed, Direction::kReply, "frontend");
  c.Add(ErrorResult(), Direction::kReply);
  for (auto& m : Housekeeping()) c.Add(m);
  return c.bytes();
}

TEST(InspectTest, SnapshotText) { ExpectSnapshot("messages.txt", InspectAll(SnapshotCapture())); }

TEST(InspectTest, SnapshotJson) {
  InspectOptions o;
  o.json = true;
  ExpectSnapshot("messages.jsonl", InspectAll(SnapshotCapture(), o));
}

TEST(InspectTest, SnapshotFull) {
  InspectOptions o;
  o.full = true;
  CaptureBuilder c;
  c.Add(PayloadApply());
  ExpectSnapshot("full.txt", InspectAll(c.bytes(), o));
}

TEST(InspectTest, TextShowsFramesEnvelopeAndPayloads) {
  std::string out = InspectAll(SnapshotCapture());
  EXPECT_THAT(out, HasSubstr("envelope"));
  EXPECT_THAT(out, HasSubstr("function = \"matmul\""));
  EXPECT_THAT(out, HasSubstr("apply.args[0]: tensor float64 [100], 800 bytes, frame 2 (payload 1) at +0"));
  EXPECT_THAT(out, HasSubstr("copy (packed as uint16"));
  EXPECT_THAT(out, HasSubstr("values: [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, ...]"));
  EXPECT_THAT(out, HasSubstr("routing"));
  EXPECT_THAT(out, HasSubstr("1-2j"));
  EXPECT_THAT(out, HasSubstr("inf"));
  EXPECT_THAT(out, HasSubstr("8 messages, 8 shown, 0 malformed"));
  EXPECT_THAT(out, Not(HasSubstr("MALFORMED")));
  // Large payloads are summarised: 100 doubles, 8 shown.
  EXPECT_THAT(out, Not(HasSubstr("49.5")));
  InspectOptions full;
  full.full = true;
  EXPECT_THAT(InspectAll(SnapshotCapture(), full), HasSubstr("49.5"));
}

TEST(InspectTest, JsonIsOneObjectPerMessage) {
  InspectOptions o;
  o.json = true;
  auto reader = CaptureReader::FromBytes(SnapshotCapture());
  Inspector inspector(o);
  int n = 0;
  while (auto r = reader->Next()) {
    std::string line = inspector.Render(*r);
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["status"], "ok");
    EXPECT_TRUE(j["frames"].is_array());
    EXPECT_TRUE(j["envelope"].is_object());
    EXPECT_EQ(j["envelope"]["version"], kProtocolVersion);
    ++n;
  }
  EXPECT_EQ(n, 8);
}

TEST(InspectTest, BigEndianAndMisalignedTensorsShowTheirCopyAndTheirValues) {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(30));
  auto a = w.StartApply("f", 3, 0);
  // 1.0 and -2.0 as big-endian float64.
  std::vector<unsigned char> be = {0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0};
  a.arg(0).Array(DType::kFloat64, Shape{2}, Buffer::Adopt(std::move(be)));
  std::vector<double> ten(10);
  for (size_t i = 0; i < ten.size(); ++i) ten[i] = static_cast<double>(i);
  a.arg(1).Write(std::move(ten));  // 80 bytes: its own frame
  a.arg(2).Write(std::vector<double>(10, 1.0));  // frame 2, re-pointed below
  auto args = GeneratedEnvelope(w).getBody().getApply().getArgs();
  args[0].getTensor().setByteOrder(wire::ByteOrder::BIG);
  // Elements 1..8 of the frame, starting 4 bytes late: a misaligned view of 9 int32s.
  auto t = args[1].getTensor();
  t.setDtype(wire::DType::INT32);
  t.getShape().set(0, 18);
  t.getData().getFrame().setOffset(4);
  t.getData().getFrame().setLength(72);
  // The same bytes as 9 float64 at +4: misaligned for float64.
  auto d = args[2].getTensor();
  d.getShape().set(0, 9);
  d.getData().getFrame().setIndex(1);
  d.getData().getFrame().setOffset(4);
  d.getData().getFrame().setLength(72);
  CaptureBuilder c;
  c.Add(w.Finish());
  std::string out = InspectAll(c.bytes());
  EXPECT_THAT(out, HasSubstr("copy (big-endian, swapped on receive)"));
  EXPECT_THAT(out, HasSubstr("values: [1, -2]"));
  EXPECT_THAT(out, HasSubstr("frame 2 (payload 1) at +4 (mod 8 = 4)"));
  EXPECT_THAT(out, HasSubstr("payload        80  mod 8 = 4  apply.args[1], apply.args[2]"));
  EXPECT_THAT(out, HasSubstr("payload        80  -          (not referenced)"));
  EXPECT_THAT(out, HasSubstr("72 bytes, frame 2 (payload 1) at +4 (mod 8 = 4), copy (data at +4 is not aligned for float64)"));
  // int32 needs 4-byte alignment: +4 is fine for it; a receiver reads it in place.
  EXPECT_THAT(out, HasSubstr("tensor int32 [18], 72 bytes, frame 2 (payload 1) at +4 (mod 8 = 4), view"));
  // From +4: the high word of 0.0, then 1.0 (0x3ff0000000000000) as little-endian int32
  // words 0 and 1072693248, then 2.0's.
  EXPECT_THAT(out, HasSubstr("values: [0, 0, 1072693248, 0, 1073741824, 0,"));
}

TEST(InspectTest, ControlBytesInTextNeverReachTheTerminal) {
  EnvelopeWriter w(SmallInline());
  w.SetHeader(Fixed(31));
  w.StartResult(1, "engine\x1b]0;title\x07").Text("\x1b[31mred\nnext line");
  CaptureBuilder c;
  c.AddFrames({"peer\x1b[2J", ""}, "\x1b[H");
  c.Add(w.Finish(), Direction::kReply, "src\r\n");
  std::string out = InspectAll(c.bytes());
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  EXPECT_EQ(out.find('\x07'), std::string::npos);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_THAT(out, HasSubstr("ok text \"\\x1b[31mred\\nnext line\""));
}

// ---- golden vectors ---------------------------------------------------------------------------

std::vector<std::filesystem::path> VectorFiles() {
  std::vector<std::filesystem::path> files;
  std::filesystem::path dir = std::filesystem::path(ZEROCAN_SOURCE_DIR) / "tests" / "vectors";
  if (!std::filesystem::exists(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".frames") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(InspectTest, EveryGoldenVectorInspectsToItsSnapshot) {
  auto files = VectorFiles();
  ASSERT_FALSE(files.empty()) << "no tests/vectors/*.frames";
  for (const auto& path : files) {
    SCOPED_TRACE(path.filename().string());
    std::string error;
    auto record = RecordFromFramesFile(ReadFile(path), &error);
    ASSERT_TRUE(record) << error;
    Inspector text_inspector(InspectOptions{});
    std::string text = text_inspector.Render(*record);
    EXPECT_THAT(text, Not(HasSubstr("MALFORMED")));
    EXPECT_THAT(text, HasSubstr("envelope:"));
    ExpectSnapshot("vectors/" + path.stem().string() + ".txt", text);

    InspectOptions o;
    o.json = true;
    Inspector json_inspector(o);
    auto j = nlohmann::json::parse(json_inspector.Render(*record));
    EXPECT_EQ(j["status"], "ok");
    EXPECT_EQ(j["frames"].size(), record->frames.size());
  }
}

TEST(InspectTest, VectorFileReaderRejectsEveryTruncation) {
  auto files = VectorFiles();
  ASSERT_FALSE(files.empty());
  std::string bytes = ReadFile(files.front());
  std::string error;
  ASSERT_TRUE(RecordFromFramesFile(bytes, &error));
  size_t rejected = 0;
  for (size_t len = 1; len < bytes.size(); ++len) {
    auto r = RecordFromFramesFile(std::string_view(bytes).substr(0, len), &error);
    if (!r) {
      ++rejected;
      EXPECT_FALSE(error.empty());
    }
  }
  EXPECT_GE(rejected, bytes.size() - 1 - 8);  // all but frame boundaries
  std::string huge(8, '\xff');
  EXPECT_FALSE(RecordFromFramesFile(huge, &error));
}

// ---- broken messages -------------------------------------------------------------------------

std::string BrokenCapture() {
  CaptureBuilder c;
  c.Add(ScalarApply());                                                    // 1 ok
  c.AddFrames({"", std::string_view("\xff\xff\xff\xff\xff\xff\xff\xff"
                                    "\xff\xff\xff\xff\xff\xff\xff\xff", 16)},
              "bad envelope");                                             // 2
  c.AddFrames({"", "13 bytes long"}, "odd envelope");                      // 3
  {
    Outgoing m = PayloadApply();                                           // 4 missing frame
    std::string env = Envelope(m);
    c.AddFrames({"", env, std::string_view(reinterpret_cast<const char*>(
                                               m.payload_frames()[0].data()),
                                           m.payload_frames()[0].size())},
                "missing frame");
  }
  {
    EnvelopeWriter w(SmallInline());                                       // 5 bad reference
    w.SetHeader(Fixed(20));
    w.StartApply("f", 1, 0).arg(0).Write(std::vector<double>(10, 1.0));
    GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().getData().getFrame().setIndex(5);
    c.Add(w.Finish(), Direction::kSent, "bad reference");
  }
  {
    EnvelopeWriter w(SmallInline());                                       // 6 past the frame
    w.SetHeader(Fixed(21));
    w.StartApply("f", 1, 0).arg(0).Write(std::vector<double>(10, 1.0));
    GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().getData().getFrame().setOffset(8);
    c.Add(w.Finish(), Direction::kSent, "offset past end");
  }
  {
    EnvelopeWriter w(SmallInline());                                       // 7 wrong version
    w.SetHeader(Fixed(22));
    w.StartApply("f", 0, 0);
    GeneratedEnvelope(w).setVersion(2);
    c.Add(w.Finish(), Direction::kSent, "wrong version");
  }
  c.AddFrames({"client-9", ""}, "no envelope");                            // 8
  {
    EnvelopeWriter w(SmallInline());                                       // 9 bad shape
    w.SetHeader(Fixed(23));
    w.StartApply("f", 1, 0).arg(0).Write(std::vector<double>(3, 1.0));
    GeneratedEnvelope(w).getBody().getApply().getArgs()[0].getTensor().getShape().set(0, 4);
    c.Add(w.Finish(), Direction::kSent, "bad shape");
  }
  c.Add(ErrorResult(), Direction::kReply);                                 // 10 ok
  std::string bytes = c.bytes();
  // A last record cut short, as when the recorder was killed mid-write.
  std::string tail_capture;
  {
    CaptureBuilder t;
    t.Add(ScalarApply());
    tail_capture = t.bytes().substr(kCaptureHeaderBytes);
  }
  return bytes + tail_capture.substr(0, tail_capture.size() / 2);
}

TEST(InspectTest, BrokenMessagesAreReportedAndInspectionGoesOn) {
  std::string out = InspectAll(BrokenCapture());
  ExpectSnapshot("broken.txt", out);
  EXPECT_THAT(out, HasSubstr("message 10 at offset"));
  EXPECT_THAT(out, HasSubstr("10 messages, 10 shown, 8 malformed"));
  EXPECT_THAT(out, HasSubstr("not a whole number of 8-byte words"));
  EXPECT_THAT(out, HasSubstr("payloadFrames: envelope announces 2 payload frames, message has 1"));
  EXPECT_THAT(out, HasSubstr("field: apply.args[0].tensor.data"));
  EXPECT_THAT(out, HasSubstr("refers to frame 5"));
  EXPECT_THAT(out, HasSubstr("is past the end of frame 1"));
  EXPECT_THAT(out, HasSubstr("MALFORMED (version): version: protocol version 2"));
  EXPECT_THAT(out, HasSubstr("no envelope frame after the delimiter"));
  EXPECT_THAT(out, HasSubstr("field: apply.args[0].tensor.shape"));
  EXPECT_THAT(out, HasSubstr("capture damaged: truncated: record 11 at offset"));
  // The last good message is shown in full after the broken ones.
  EXPECT_THAT(out, HasSubstr("error \"std::invalid_argument\" \"bad scale\""));

  InspectOptions o;
  o.json = true;
  std::string json = InspectAll(BrokenCapture(), o);
  ExpectSnapshot("broken.jsonl", json);
  std::istringstream lines(json);
  std::string line;
  int malformed = 0, total = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;  // the summary line
    auto j = nlohmann::json::parse(line);
    ++total;
    if (j["status"] == "malformed") {
      ++malformed;
      EXPECT_FALSE(j["error"]["reason"].get<std::string>().empty());
    }
  }
  EXPECT_EQ(total, 10);
  EXPECT_EQ(malformed, 8);
}

TEST(InspectTest, BitFlippedCapturesNeverCrash) {
  CaptureBuilder c;
  c.Add(PayloadApply());
  c.Add(NestedApply());
  std::string bytes = c.bytes();
  for (size_t i = kCaptureHeaderBytes; i < bytes.size(); ++i) {
    for (unsigned char flip : {0x01, 0x10, 0x80}) {
      std::string damaged = bytes;
      damaged[i] = static_cast<char>(damaged[i] ^ flip);
      InspectOptions o;
      o.json = (i % 2) == 0;
      EXPECT_NO_THROW(InspectAll(damaged, o));
    }
  }
}

// ---- filters, signatures ------------------------------------------------------------------------

TEST(InspectTest, FiltersSelectCallsAndTheirResults) {
  CaptureBuilder c;
  c.Add(ScalarApply());  // id 1, "add"
  c.Add(PayloadApply()); // id 2, "matmul"
  c.Add(TensorResult()); // answers 2
  c.Add(ErrorResult());  // answers 1
  std::string bytes = c.bytes();

  InspectOptions by_function;
  by_function.function = "matmul";
  std::string out = InspectAll(bytes, by_function);
  EXPECT_THAT(out, HasSubstr("apply 2 \"matmul\""));
  EXPECT_THAT(out, HasSubstr("result 4 for call 2"));
  EXPECT_THAT(out, Not(HasSubstr("\"add\"")));
  EXPECT_THAT(out, HasSubstr("4 messages, 2 shown, 0 malformed, 2 left out by filters"));

  InspectOptions by_id;
  by_id.id = 1;
  out = InspectAll(bytes, by_id);
  EXPECT_THAT(out, HasSubstr("apply 1 \"add\""));
  EXPECT_THAT(out, HasSubstr("result 5 for call 1"));
  EXPECT_THAT(out, Not(HasSubstr("matmul")));
}

TEST(InspectTest, SignaturesAreCheckedWithAKey) {
  Signer signer("inspect-test-key");
  Outgoing m = ScalarApply();
  ReceivedMessage received = LoopbackFrames(std::move(m));
  signer.SignFrames(&received.frames);
  CaptureBuilder c;
  c.Add(received, Direction::kReceived, "signed");
  std::string bytes = c.bytes();

  std::string unchecked = InspectAll(bytes);
  EXPECT_THAT(unchecked, HasSubstr("signature      40"));
  EXPECT_THAT(unchecked, HasSubstr("signature: present, not checked"));
  EXPECT_THAT(unchecked, HasSubstr("apply 1 \"add\""));

  InspectOptions good;
  good.signer = &signer;
  EXPECT_THAT(InspectAll(bytes, good), HasSubstr("signature: valid"));

  Signer other("another key");
  InspectOptions bad;
  bad.signer = &other;
  EXPECT_THAT(InspectAll(bytes, bad), HasSubstr("signature: BAD"));

  CaptureBuilder plain;
  plain.Add(ScalarApply());
  EXPECT_THAT(InspectAll(plain.bytes(), good), HasSubstr("signature: unsigned"));
}

TEST(InspectTest, InspectMessageOutsideACapture) {
  ReceivedMessage m = LoopbackFrames(PayloadApply());
  std::string out = InspectMessage(m);
  EXPECT_THAT(out, HasSubstr("apply 2 \"matmul\""));
  EXPECT_THAT(out, HasSubstr("delimiter"));
}

// ---- schema ----------------------------------------------------------------------------------

TEST(InspectTest, SchemaListsEveryStructFieldOrdinalAndId) {
  std::string text = DescribeSchema();
  ExpectSnapshot("schema.txt", text);
  EXPECT_THAT(text, HasSubstr("protocolVersion = 1"));
  EXPECT_THAT(text, HasSubstr("file id @0xcf3c4a418d55852e"));
  EXPECT_THAT(text, HasSubstr("struct Envelope @0x"));
  EXPECT_THAT(text, HasSubstr("  messageId @1 :UInt64;"));
  EXPECT_THAT(text, HasSubstr("  body :union {"));
  EXPECT_THAT(text, HasSubstr("    goodbye @10 :Void;"));
  EXPECT_THAT(text, HasSubstr("  map @8 :List(Entry);"));
  EXPECT_THAT(text, HasSubstr("enum DType @0x"));
  EXPECT_THAT(text, HasSubstr("  complex128 @13;"));
  // Every struct and enum of the schema file is reachable from Envelope.
  std::ifstream schema(std::string(ZEROCAN_SOURCE_DIR) + "/schema/zerocan.capnp");
  std::string line;
  int declared = 0;
  while (std::getline(schema, line)) {
    for (const char* kw : {"struct ", "enum "}) {
      if (line.rfind(kw, 0) == 0) {
        ++declared;
        std::string name = line.substr(std::strlen(kw), line.find(' ', std::strlen(kw)) - std::strlen(kw));
        EXPECT_THAT(text, HasSubstr(std::string(kw) + name + " @0x")) << name;
      }
    }
  }
  EXPECT_GT(declared, 10);

  auto j = nlohmann::json::parse(DescribeSchema(true));
  EXPECT_EQ(j["protocol_version"], kProtocolVersion);
  EXPECT_EQ(j["structs"][0]["name"], "Envelope");
  EXPECT_EQ(j["structs"][0]["fields"][1]["ordinal"], 1);
}

// ---- a live session through a broker ---------------------------------------------------------

// The demo's path in one process: a client calls an engine through a broker whose
// capture socket is recorded; the capture, inspected, lists every call and its result.
TEST(InspectTest, CaptureOfABrokeredSessionListsEveryCallAndResult) {
  zmq::context_t ctx(1);
  BrokerOptions bo;
  bo.context = &ctx;
  bo.heartbeat = std::chrono::milliseconds(40);
  bo.capture = "inproc://inspect-capture";
  Broker broker("inproc://inspect-front", "inproc://inspect-back", bo);
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect("inproc://inspect-capture");
  broker.Start();
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx;
  eo.heartbeat = std::chrono::milliseconds(40);
  eo.id = "engine-1";
  Engine engine(eo);
  engine.Connect("inproc://inspect-back");
  engine.Start();

  std::ostringstream file(std::ios::binary);
  CaptureWriter writer(&file);
  // Wait until the capture subscription is live (the engine's hello or a heartbeat
  // comes through), so no call is published before it.
  bool live = false;
  for (int i = 0; i < 100 && !live; ++i) {
    if (auto r = ReceiveCaptured(sub, 50)) {
      writer.Write(*r);
      live = true;
    }
  }
  ASSERT_TRUE(live);

  ClientOptions co;
  co.context = &ctx;
  Client client("inproc://inspect-front", co);
  std::vector<uint64_t> ids;
  {
    auto f = client.apply("add", 1, 2);
    ids.push_back(f.call_id());
    EXPECT_EQ(f.get().as<int>(), 3);
  }
  {
    auto f = client.apply("sum", std::vector<double>(1000, 0.25));  // 8000 bytes: a frame
    ids.push_back(f.call_id());
    EXPECT_EQ(f.get().as<double>(), 250.0);
  }
  {
    auto f = client.apply("fail", std::string("on purpose"));
    ids.push_back(f.call_id());
    EXPECT_FALSE(f.get().ok());
  }
  // Collect until every call and every reply has come through the capture.
  std::set<uint64_t> requests, replies;
  for (int i = 0; i < 400 && (requests.size() < ids.size() || replies.size() < ids.size()); ++i) {
    auto r = ReceiveCaptured(sub, 10);
    if (!r) continue;
    writer.Write(*r);
    ReceivedMessage m = ToReceived(*r);
    if (m.frames.empty()) continue;
    try {
      Message decoded = Message::Decode(std::move(m));
      if (decoded.body_kind() == BodyKind::kApply) requests.insert(decoded.message_id());
      if (decoded.body_kind() == BodyKind::kResult) replies.insert(decoded.call_id());
    } catch (const DecodeError&) {
    }
  }
  EXPECT_EQ(requests.size(), ids.size());
  EXPECT_EQ(replies.size(), ids.size());

  std::string out = InspectAll(file.str());
  for (uint64_t id : ids) {
    EXPECT_THAT(out, HasSubstr(absl::StrCat("apply ", id, " \"")));
    EXPECT_THAT(out, HasSubstr(absl::StrCat(" for call ", id, " from \"engine-1\"")));
  }
  EXPECT_THAT(out, HasSubstr("request from \"frontend\""));
  EXPECT_THAT(out, HasSubstr("reply from \"backend\""));
  EXPECT_THAT(out, HasSubstr("apply.args[0]: tensor float64 [1000], 8000 bytes, frame"));
  EXPECT_THAT(out, HasSubstr("error \"zerocan.Fail"));
  EXPECT_THAT(out, HasSubstr(" 0 malformed"));

  InspectOptions by_function;
  by_function.function = "sum";
  std::string sums = InspectAll(file.str(), by_function);
  EXPECT_THAT(sums, HasSubstr(absl::StrCat(" for call ", ids[1], " ")));
  EXPECT_THAT(sums, Not(HasSubstr("\"add\"")));
}

// ---- the program ---------------------------------------------------------------------------

struct ToolRun {
  int status;
  std::string out;
};

ToolRun RunTool(const std::string& args) {
  std::string cmd = std::string(ZEROCAN_TOOL_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ToolRun r{-1, ""};
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(InspectTest, ProgramPrintsWhatTheInspectorPrints) {
  std::string dir = ::testing::TempDir();
  std::string good = dir + "/inspect_test_good.zcap", broken = dir + "/inspect_test_broken.zcap";
  std::ofstream(good, std::ios::binary) << SnapshotCapture();
  std::ofstream(broken, std::ios::binary) << BrokenCapture();

  ToolRun r = RunTool("inspect " + good);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, InspectAll(SnapshotCapture()));

  r = RunTool("inspect - < " + good + " --json");
  EXPECT_EQ(r.status, 0);
  int objects = 0;
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] == '{') {
      EXPECT_NO_THROW(nlohmann::json::parse(line));
      ++objects;
    }
  }
  EXPECT_EQ(objects, 8);

  r = RunTool("inspect " + broken);
  EXPECT_EQ(r.status, 1);  // the file is truncated
  EXPECT_THAT(r.out, HasSubstr("8 malformed"));

  r = RunTool("inspect " + good + " --function matmul");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("2 shown"));

  r = RunTool("inspect --schema");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, DescribeSchema());

  auto vectors = VectorFiles();
  if (!vectors.empty()) {
    r = RunTool("inspect " + vectors.front().string());
    EXPECT_EQ(r.status, 0);
    std::string error;
    Inspector inspector(InspectOptions{});
    std::string expected = inspector.Render(*RecordFromFramesFile(ReadFile(vectors.front()), &error));
    expected += inspector.Summary(nullptr);
    EXPECT_EQ(r.out, expected);
  }

  EXPECT_EQ(RunTool("inspect").status, 2);
  EXPECT_EQ(RunTool("inspect --bogus x").status, 2);
  EXPECT_EQ(RunTool("inspect " + dir + "/does-not-exist.zcap").status, 2);
}


// `zerocan record` and `zerocan inspect --follow` against a capture socket published
// from here: the recorder's file and the live output carry the published messages.
TEST(InspectTest, RecordAndFollowReadALiveCaptureSocket) {
  zmq::context_t ctx(1);
  zmq::socket_t pub(ctx, zmq::socket_type::pub);
  pub.bind("tcp://127.0.0.1:*");
  std::string endpoint = pub.get(zmq::sockopt::last_endpoint);
  ReceivedMessage message = LoopbackFrames(PayloadApply());
  message.routing.push_back(testing::Frame("client-3", 8));

  // Publishes until `done`: the subscriber joins at some unknown moment.
  auto publish_until = [&](std::atomic<bool>& done) {
    for (int i = 0; i < 1000 && !done; ++i) {
      PublishCaptured(pub, message, Direction::kRequest, "frontend");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };

  std::string file = ::testing::TempDir() + "/inspect_test_record.zcap";
  std::remove(file.c_str());
  std::atomic<bool> done{false};
  ToolRun record;
  std::thread recorder([&] {
    record = RunTool("record " + endpoint + " " + file + " --count 3");
    done = true;
  });
  publish_until(done);
  recorder.join();
  EXPECT_EQ(record.status, 0) << record.out;
  EXPECT_THAT(record.out, HasSubstr("3 messages written"));
  std::ifstream in(file, std::ios::binary);
  CaptureReader reader(&in);
  int n = 0;
  while (auto r = reader.Next()) {
    EXPECT_EQ(r->direction, Direction::kRequest);
    EXPECT_EQ(r->source, "frontend");
    EXPECT_EQ(Message::Decode(ToReceived(*r)).function(), "matmul");
    ++n;
  }
  EXPECT_EQ(n, 3);
  EXPECT_EQ(reader.end(), CaptureReader::End::kClean);

  done = false;
  ToolRun follow;
  std::thread follower([&] {
    follow = RunTool("inspect --follow " + endpoint + " --count 2 --json");
    done = true;
  });
  publish_until(done);
  follower.join();
  EXPECT_EQ(follow.status, 0) << follow.out;
  std::istringstream lines(follow.out);
  std::string line;
  int objects = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;
    auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["function"], "matmul");
    EXPECT_EQ(j["frames"][0]["role"], "routing");
    ++objects;
  }
  EXPECT_EQ(objects, 2);
}

}  // namespace
}  // namespace zerocan
