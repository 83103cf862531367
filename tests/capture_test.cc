// Capture files: round trips through CaptureWriter/CaptureReader, every truncation and
// every single-byte corruption ends cleanly with an offset, limits are checked before
// allocating, and live capture sockets carry direction, time and source.
#include "test_support.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/capture.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan {
namespace {

using testing::Frame;
using testing::Str;

std::string AsString(const Buffer& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

Outgoing SampleMessage(uint64_t id) {
  Policy policy;
  policy.inline_threshold = 64;
  EnvelopeWriter w(policy);
  w.SetHeader(Header{id, 42, id, 1700000000000000000ull + id});
  auto apply = w.StartApply("add", 2, 0);
  apply.arg(0).Write(int64_t{1});
  apply.arg(1).Write(std::vector<double>(32, 0.5));  // 256 bytes: its own frame
  return w.Finish();
}

// Three records: an outgoing message, a received one with a routing frame, raw frames.
std::string SampleCapture(std::vector<uint64_t>* record_ends = nullptr) {
  std::ostringstream out(std::ios::binary);
  CaptureWriter writer(&out);
  if (record_ends) record_ends->push_back(out.str().size());
  writer.Write(SampleMessage(1), Direction::kSent, "client", 1000);
  if (record_ends) record_ends->push_back(out.str().size());
  ReceivedMessage received = LoopbackFrames(SampleMessage(2));
  received.routing.push_back(testing::Frame("peer-1", 6));
  writer.Write(received, Direction::kRequest, "frontend", 2000);
  if (record_ends) record_ends->push_back(out.str().size());
  writer.Write(3000, Direction::kReply, "", {"id", "", "not an envelope"});
  if (record_ends) record_ends->push_back(out.str().size());
  EXPECT_EQ(writer.records_written(), 3u);
  return out.str();
}

TEST(CaptureTest, RoundTripKeepsEveryFrameAndField) {
  std::string bytes = SampleCapture();
  auto reader = CaptureReader::FromBytes(bytes);
  EXPECT_EQ(reader->header().format_version, kCaptureFormatVersion);
  EXPECT_EQ(reader->header().protocol_version, kProtocolVersion);

  auto r1 = reader->Next();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->offset, kCaptureHeaderBytes);
  EXPECT_EQ(r1->time_ns, 1000u);
  EXPECT_EQ(r1->direction, Direction::kSent);
  EXPECT_EQ(r1->source, "client");
  ASSERT_EQ(r1->frames.size(), 3u);  // delimiter, envelope, one payload frame
  EXPECT_TRUE(r1->frames[0].empty());
  EXPECT_EQ(r1->frames[2].size(), 256u);
  // The message part decodes as sent.
  Message m = Message::Decode(ToReceived(*r1));
  EXPECT_EQ(m.message_id(), 1u);
  EXPECT_EQ(m.arg(1).As<std::vector<double>>(), std::vector<double>(32, 0.5));

  auto r2 = reader->Next();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->direction, Direction::kRequest);
  EXPECT_EQ(r2->source, "frontend");
  ASSERT_EQ(r2->frames.size(), 4u);
  EXPECT_EQ(AsString(r2->frames[0]), "peer-1");
  FrameSplit split = SplitFrames(*r2);
  EXPECT_EQ(split.routing, 1u);
  EXPECT_TRUE(split.has_delimiter);
  EXPECT_EQ(split.first_message_frame, 2u);
  ReceivedMessage back = ToReceived(*r2);
  ASSERT_EQ(back.routing.size(), 1u);
  EXPECT_EQ(Str(back.routing[0]), "peer-1");
  EXPECT_EQ(Message::Decode(std::move(back)).message_id(), 2u);

  auto r3 = reader->Next();
  ASSERT_TRUE(r3);
  ASSERT_EQ(r3->frames.size(), 3u);
  EXPECT_EQ(AsString(r3->frames[2]), "not an envelope");
  EXPECT_EQ(r3->time_ns, 3000u);

  EXPECT_FALSE(reader->Next());
  EXPECT_EQ(reader->end(), CaptureReader::End::kClean);
  EXPECT_EQ(reader->end_offset(), bytes.size());
  EXPECT_EQ(reader->records_read(), 3u);
  EXPECT_FALSE(reader->Next());  // stays ended
}

TEST(CaptureTest, RecordFramesAreWordAligned) {
  auto reader = CaptureReader::FromBytes(SampleCapture());
  auto r = reader->Next();
  ASSERT_TRUE(r);
  for (const Buffer& f : r->frames) {
    if (!f.empty()) EXPECT_TRUE(IsAligned(f.data(), 8));
  }
}

TEST(CaptureTest, EveryTruncationEndsWithTheOffsetOfTheDamagedRecord) {
  std::vector<uint64_t> ends;
  std::string bytes = SampleCapture(&ends);
  ASSERT_EQ(ends.size(), 4u);
  for (size_t len = 0; len < bytes.size(); ++len) {
    SCOPED_TRACE(len);
    auto reader = CaptureReader::FromBytes(std::string_view(bytes).substr(0, len));
    size_t n = 0;
    while (reader->Next()) ++n;
    if (len < kCaptureHeaderBytes) {
      EXPECT_EQ(reader->end(), CaptureReader::End::kTruncated);
      EXPECT_EQ(n, 0u);
      continue;
    }
    // Records wholly inside the prefix are read; the next one is reported.
    size_t whole = 0;
    while (whole + 1 < ends.size() && ends[whole + 1] <= len) ++whole;
    EXPECT_EQ(n, whole);
    if (len == ends[whole]) {
      EXPECT_EQ(reader->end(), CaptureReader::End::kClean);
    } else {
      EXPECT_EQ(reader->end(), CaptureReader::End::kTruncated) << reader->end_reason();
      EXPECT_EQ(reader->end_offset(), ends[whole]);
      EXPECT_NE(reader->end_reason().find("truncated"), std::string::npos);
    }
  }
}

TEST(CaptureTest, EverySingleByteCorruptionIsSurvived) {
  std::string bytes = SampleCapture();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (unsigned char flip : {0x01, 0x80, 0xff}) {
      std::string damaged = bytes;
      damaged[i] = static_cast<char>(damaged[i] ^ flip);
      auto reader = CaptureReader::FromBytes(damaged);
      size_t n = 0;
      while (auto r = reader->Next()) {
        ++n;
        for (const Buffer& f : r->frames) EXPECT_LE(f.size(), damaged.size());
      }
      EXPECT_LE(n, 3u);
      EXPECT_NE(reader->end(), CaptureReader::End::kNotYet);
    }
  }
}

TEST(CaptureTest, BadHeaderAndGarbageAreCorrupt) {
  auto empty = CaptureReader::FromBytes("");
  EXPECT_EQ(empty->end(), CaptureReader::End::kTruncated);
  EXPECT_FALSE(empty->Next());

  auto text = CaptureReader::FromBytes("hello, this is not a capture file at all");
  EXPECT_EQ(text->end(), CaptureReader::End::kCorrupt);
  EXPECT_NE(text->end_reason().find("bad magic"), std::string::npos);

  std::string bytes = SampleCapture();
  std::string newer = bytes;
  newer[8] = 9;  // capture format version 9
  EXPECT_EQ(CaptureReader::FromBytes(newer)->end(), CaptureReader::End::kCorrupt);

  std::string garbage = bytes.substr(0, kCaptureHeaderBytes) + std::string(100, 'x');
  auto reader = CaptureReader::FromBytes(garbage);
  EXPECT_FALSE(reader->Next());
  EXPECT_EQ(reader->end(), CaptureReader::End::kCorrupt);
  EXPECT_EQ(reader->end_offset(), kCaptureHeaderBytes);
  EXPECT_NE(reader->end_reason().find("ZREC"), std::string::npos);
}

// Builds a record header followed by one frame length, with nothing after it.
std::string HugeFrameCapture(uint64_t frame_bytes) {
  std::ostringstream out(std::ios::binary);
  { CaptureWriter writer(&out); }
  std::string bytes = out.str();
  bytes.append("ZREC");
  bytes.append("\x01\x00\x00\x00", 4);       // one frame
  bytes.append(8, '\0');                     // time
  bytes.append("\x00\x00\x00\x00", 4);       // direction, flags, no source
  bytes.append(4, '\0');                     // reserved
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(frame_bytes >> (8 * i)));
  bytes.append("tail");
  return bytes;
}

// A stream that cannot seek, like a pipe on standard input.
class PipeBuf : public std::streambuf {
 public:
  explicit PipeBuf(std::string bytes) : bytes_(std::move(bytes)) {
    setg(bytes_.data(), bytes_.data(), bytes_.data() + bytes_.size());
  }

 private:
  std::string bytes_;
};

TEST(CaptureTest, LengthsAreCheckedBeforeAllocating) {
  // Over the limit: corrupt, seekable or not.
  std::string over = HugeFrameCapture(uint64_t{1} << 62);
  EXPECT_FALSE(CaptureReader::FromBytes(over)->Next());
  EXPECT_EQ(CaptureReader::FromBytes(over)->end(), CaptureReader::End::kNotYet);
  auto r = CaptureReader::FromBytes(over);
  r->Next();
  EXPECT_EQ(r->end(), CaptureReader::End::kCorrupt);
  EXPECT_NE(r->end_reason().find("max_frame_bytes"), std::string::npos);

  // Under the limit but past the end of a seekable stream: truncated, nothing read.
  auto seekable = CaptureReader::FromBytes(HugeFrameCapture(uint64_t{1} << 30));
  EXPECT_FALSE(seekable->Next());
  EXPECT_EQ(seekable->end(), CaptureReader::End::kTruncated);
  EXPECT_NE(seekable->end_reason().find("remain"), std::string::npos);

  // The same from a pipe: read in steps, so it fails after one step, not 1 GiB.
  PipeBuf buf(HugeFrameCapture(uint64_t{1} << 30));
  std::istream pipe(&buf);
  CaptureReader reader(&pipe);
  EXPECT_FALSE(reader.Next());
  EXPECT_EQ(reader.end(), CaptureReader::End::kTruncated);

  CaptureLimits few;
  few.max_frames = 2;
  auto limited = CaptureReader::FromBytes(SampleCapture(), few);
  EXPECT_FALSE(limited->Next());
  EXPECT_EQ(limited->end(), CaptureReader::End::kCorrupt);
  EXPECT_NE(limited->end_reason().find("max_frames"), std::string::npos);
}

TEST(CaptureTest, WriterToFileAndBack) {
  std::string path = ::testing::TempDir() + "/capture_test_file.zcap";
  {
    auto writer = CaptureWriter::Open(path);
    writer->Write(SampleMessage(5), Direction::kSent, "me", 77);
  }
  std::ifstream in(path, std::ios::binary);
  CaptureReader reader(&in);
  auto r = reader.Next();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->source, "me");
  EXPECT_FALSE(reader.Next());
  EXPECT_EQ(reader.end(), CaptureReader::End::kClean);
  EXPECT_THROW(CaptureWriter::Open("/nonexistent-dir/x.zcap"), Error);
}

TEST(CaptureTest, LiveCaptureSocketCarriesTagAndFrames) {
  zmq::context_t ctx;
  zmq::socket_t pub(ctx, zmq::socket_type::pub);
  pub.bind("inproc://capture-test");
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect("inproc://capture-test");

  ReceivedMessage message = LoopbackFrames(SampleMessage(9));
  message.routing.push_back(testing::Frame("client-7", 8));
  // The subscription reaches the publisher asynchronously: publish until one arrives.
  std::optional<CaptureRecord> got;
  for (int attempt = 0; attempt < 200 && !got; ++attempt) {
    PublishCaptured(pub, message, Direction::kRequest, "frontend");
    got = ReceiveCaptured(sub, 10);
  }
  ASSERT_TRUE(got);
  EXPECT_EQ(got->direction, Direction::kRequest);
  EXPECT_EQ(got->source, "frontend");
  EXPECT_NE(got->time_ns, 0u);
  ASSERT_EQ(got->frames.size(), 4u);
  EXPECT_EQ(AsString(got->frames[0]), "client-7");
  EXPECT_TRUE(got->frames[1].empty());
  EXPECT_EQ(Message::Decode(ToReceived(*got)).message_id(), 9u);
  // The published message was not consumed.
  EXPECT_EQ(message.frames.size(), 2u);

  // Untagged frames, as zmq_proxy's capture socket sends them.
  while (ReceiveCaptured(sub, 0)) {
  }
  pub.send(zmq::str_buffer("id"), zmq::send_flags::sndmore);
  pub.send(zmq::message_t(), zmq::send_flags::sndmore);
  pub.send(zmq::str_buffer("x"), zmq::send_flags::none);
  auto plain = ReceiveCaptured(sub, 2000);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->direction, Direction::kUnknown);
  EXPECT_EQ(plain->frames.size(), 3u);
  EXPECT_NE(plain->time_ns, 0u);
}

// What was published must not depend on the message's frames once the message is gone
// (a short envelope is copied into its frame; the writer's block is then reused).
TEST(CaptureTest, PublishedLoopbackEnvelopeOutlivesTheMessage) {
  zmq::context_t ctx;
  zmq::socket_t pub(ctx, zmq::socket_type::pub);
  pub.bind("inproc://capture-loopback-test");
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "");
  sub.connect("inproc://capture-loopback-test");
  // The subscription reaches the publisher asynchronously: wait until one arrives.
  std::optional<CaptureRecord> first;
  for (int attempt = 0; attempt < 200 && !first; ++attempt) {
    pub.send(zmq::str_buffer("ping"), zmq::send_flags::none);
    first = ReceiveCaptured(sub, 10);
  }
  ASSERT_TRUE(first);
  while (ReceiveCaptured(sub, 0)) {
  }
  std::string envelope;
  {
    ReceivedMessage message = LoopbackFrames(SampleMessage(11));
    envelope.assign(reinterpret_cast<const char*>(message.frames[0].data()), message.frames[0].size());
    PublishCaptured(pub, message, Direction::kRequest, "loopback");
  }  // the envelope's block goes back to this thread's cache...
  {
    EnvelopeWriter reuse;  // ...and the next writer takes and overwrites it
    reuse.StartApply(std::string(64, 'x'), 0, 0);
    (void)reuse.Finish();
  }
  auto got = ReceiveCaptured(sub, 2000);
  ASSERT_TRUE(got);
  ASSERT_EQ(got->frames.size(), 3u);
  EXPECT_EQ(AsString(got->frames[1]), envelope);
  EXPECT_EQ(Message::Decode(ToReceived(*got)).message_id(), 11u);
}

TEST(CaptureTest, DirectionNames) {
  EXPECT_EQ(DirectionName(Direction::kRequest), "request");
  EXPECT_EQ(DirectionName(static_cast<Direction>(77)), "direction 77");
}

}  // namespace
}  // namespace zerocan
