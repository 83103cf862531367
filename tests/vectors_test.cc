// The golden vectors in tests/vectors/: the files match what the encoder produces now,
// each decodes, re-encoding the decoded message with the same settings reproduces every
// frame byte for byte, and truncated or bit-flipped copies decode or raise DecodeError
// (never crash; run under ASan/UBSan).
#include <cstdint>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "tests/tools/vectors.h"
#include "zerocan/generated.h"
#include "zerocan/zerocan.h"

namespace zerocan {
namespace vectors {
// gtest prints parameters by name (a Vector holds a std::function).
void PrintTo(const Vector& v, std::ostream* os) { *os << v.name; }
}  // namespace vectors

namespace {

using vectors::Frames;

std::string VectorDir() { return std::string(ZEROCAN_SOURCE_DIR) + "/tests/vectors"; }

Frames LoadVector(const std::string& name) {
  std::optional<std::string> bytes = vectors::ReadFile(VectorDir() + "/" + name + ".frames");
  EXPECT_TRUE(bytes.has_value()) << "missing tests/vectors/" << name
                                 << ".frames (run zerocan_make_vectors)";
  if (!bytes) return {};
  std::optional<Frames> frames = vectors::Parse(*bytes);
  EXPECT_TRUE(frames.has_value()) << name << ".frames is not a valid frames file";
  return frames.value_or(Frames{});
}

ReceivedMessage ToReceived(const Frames& frames) {
  ReceivedMessage r;
  for (const auto& f : frames) r.frames.push_back(testing::FrameAt(f.data(), f.size(), 0));
  return r;
}

// Re-encodes a decoded message with the vector's policy, copying its header and body.
Outgoing Reencode(const Message& m, const vectors::Vector& v) {
  EnvelopeWriter w(v.shared ? vectors::VectorSharedPolicy(v.threshold)
                            : vectors::VectorPolicy(v.threshold));
  auto env = GeneratedEnvelope(m);
  w.SetHeader(Header{env.getMessageId(), env.getSessionId(), env.getSequence(), env.getSentAtNs()});
  switch (m.body_kind()) {
    case BodyKind::kApply: {
      ApplyWriter a = w.StartApply(m.function(), m.arg_count(), m.kwarg_count(), m.timeout_ms());
      for (size_t i = 0; i < m.arg_count(); ++i) a.arg(i).Copy(m.arg(i));
      for (size_t i = 0; i < m.kwarg_count(); ++i) a.kwarg(i, m.kwarg_name(i)).Copy(m.kwarg(i));
      if (m.retries() != 0) w.SetApplyRetries(m.retries());
      if (m.stream_credits() != 0) w.SetStreamCredits(m.stream_credits());
      break;
    }
    case BodyKind::kResult:
      if (m.ok()) {
        w.StartResult(m.call_id(), m.engine_id()).Copy(m.result());
      } else {
        w.SetError(m.call_id(), m.engine_id(), m.error());
      }
      if (m.stream_part() != StreamPart::kNone) w.SetStreamPart(m.stream_part());
      break;
    case BodyKind::kHello: {
      auto h = env.getBody().getHello();
      std::vector<std::string> functions;
      for (auto f : h.getFunctions()) functions.emplace_back(f.cStr(), f.size());
      w.SetHello(std::string(h.getPeerId().cStr()), std::string(h.getRole().cStr()), functions);
      break;
    }
    case BodyKind::kHeartbeat: {
      auto hb = env.getBody().getHeartbeat();
      w.SetHeartbeat(std::string(hb.getPeerId().cStr()), hb.getNowNs());
      break;
    }
    case BodyKind::kGoodbye: w.SetGoodbye(); break;
    case BodyKind::kStarted: w.SetStarted(m.call_id()); break;
    case BodyKind::kDraining: w.SetDraining(); break;
    case BodyKind::kCancel: w.SetCancel(m.target_call_id()); break;
    case BodyKind::kCredit: w.SetCredit(m.target_call_id(), m.credit_items()); break;
    case BodyKind::kUnknown: ADD_FAILURE() << "unknown body"; break;
  }
  return w.Finish();
}

class VectorTest : public ::testing::TestWithParam<vectors::Vector> {};

TEST_P(VectorTest, FileMatchesEncoder) {
  const vectors::Vector& v = GetParam();
  Frames file = LoadVector(v.name);
  Frames now = vectors::FramesOf(v.build());
  ASSERT_EQ(file.size(), now.size()) << v.name;
  for (size_t i = 0; i < file.size(); ++i) {
    EXPECT_EQ(file[i], now[i]) << v.name << " frame " << i
                               << " differs from the encoder's output; if the format changed "
                                  "on purpose, rerun zerocan_make_vectors and commit";
  }
}

TEST_P(VectorTest, DecodesAndReencodesByteForByte) {
  const vectors::Vector& v = GetParam();
  Frames file = LoadVector(v.name);
  ASSERT_FALSE(file.empty());
  // A vector in shared memory is read from this process's arena of the vector's name.
  DecodeLimits limits;
  if (v.shared) {
    limits.shared_refs = DecodeLimits::SharedRefs::kMap;
    (void)vectors::VectorArena();
  }
  Message m = Message::Decode(ToReceived(file), limits);
  testing::WalkMessage(m);
  EXPECT_EQ(GeneratedEnvelope(m).getVersion(), kProtocolVersion);
  EXPECT_EQ(m.session_id(), vectors::kSessionId);
  Frames again = vectors::FramesOf(Reencode(m, v));
  ASSERT_EQ(again.size(), file.size()) << v.name;
  for (size_t i = 0; i < file.size(); ++i) {
    EXPECT_EQ(again[i], file[i]) << v.name << " frame " << i;
  }
}

TEST_P(VectorTest, TruncationsAreRejected) {
  const vectors::Vector& v = GetParam();
  Frames file = LoadVector(v.name);
  ASSERT_FALSE(file.empty());
  // Every shorter envelope (all lengths for small ones, a sample for larger ones).
  size_t env = file[0].size();
  size_t step = env <= 512 ? 1 : 7;
  for (size_t cut = 0; cut < env; cut += step) {
    Frames t = file;
    t[0].resize(cut);
    EXPECT_FALSE(testing::DecodesOrRejects(t)) << v.name << " envelope cut at " << cut;
  }
  // Dropping any payload frame breaks the announced count.
  for (size_t drop = 1; drop < file.size(); ++drop) {
    Frames t = file;
    t.erase(t.begin() + static_cast<ptrdiff_t>(drop));
    EXPECT_FALSE(testing::DecodesOrRejects(t)) << v.name << " without frame " << drop;
  }
  // A payload frame cut short leaves a reference past its end.
  for (size_t i = 1; i < file.size(); ++i) {
    for (size_t cut : {size_t{0}, size_t{1}, file[i].size() / 2, file[i].size() - 1}) {
      Frames t = file;
      t[i].resize(cut);
      EXPECT_FALSE(testing::DecodesOrRejects(t)) << v.name << " frame " << i << " cut at " << cut;
    }
  }
  // Truncating the file itself: the frames parser refuses, it never reads past the end.
  std::string bytes = vectors::Serialize(file);
  for (size_t cut = 1; cut < bytes.size(); cut += std::max<size_t>(1, bytes.size() / 97)) {
    std::optional<Frames> parsed = vectors::Parse(bytes.substr(0, cut));
    if (parsed) (void)testing::DecodesOrRejects(*parsed);
  }
}

TEST_P(VectorTest, BitFlipsNeverCrash) {
  const vectors::Vector& v = GetParam();
  Frames file = LoadVector(v.name);
  ASSERT_FALSE(file.empty());
  // Every bit of envelopes up to 1 KiB; for larger ones every byte, one bit each.
  Frames t = file;
  bool every_bit = t[0].size() <= 1024;
  for (size_t i = 0; i < t[0].size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      if (!every_bit && bit != static_cast<int>(i % 8)) continue;
      t[0][i] ^= std::byte(1 << bit);
      (void)testing::DecodesOrRejects(t);
      t[0][i] ^= std::byte(1 << bit);
    }
  }
  // Payload frames are opaque bytes: flips there must decode (values change, the
  // structure does not).
  for (size_t f = 1; f < t.size(); ++f) {
    for (size_t i = 0; i < t[f].size(); i += 61) {
      t[f][i] ^= std::byte{0x80};
      EXPECT_TRUE(testing::DecodesOrRejects(t)) << v.name << " frame " << f << " byte " << i;
      t[f][i] ^= std::byte{0x80};
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, VectorTest, ::testing::ValuesIn(vectors::All()),
                         [](const ::testing::TestParamInfo<vectors::Vector>& info) {
                           return info.param.name;
                         });

TEST(VectorsTest, TheSharedVectorIsReadInPlaceOrRefusedNamingTheField) {
  Frames file = LoadVector("shared_tensor");
  try {
    Message::Decode(ToReceived(file));
    ADD_FAILURE() << "a receiver that does not take references decoded one";
  } catch (const DecodeError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("apply.args[0].tensor.data.shared"));
  }
  DecodeLimits limits;
  limits.shared_refs = DecodeLimits::SharedRefs::kMap;
  const vectors::VectorArenaState& arena = vectors::VectorArena();
  Message m = Message::Decode(ToReceived(file), limits);
  EXPECT_EQ(m.arg(0).TensorBytes().data(), arena.block.data());  // in place, no copy
  EXPECT_EQ(m.arg(0).As<std::vector<double>>(), vectors::VectorArenaValues());
}

TEST(VectorsTest, IndexListsEveryVector) {
  std::optional<std::string> text = vectors::ReadFile(VectorDir() + "/index.json");
  ASSERT_TRUE(text.has_value()) << "missing tests/vectors/index.json";
  nlohmann::json index = nlohmann::json::parse(*text);
  EXPECT_EQ(index["protocolVersion"].get<int>(), kProtocolVersion);
  std::vector<vectors::Vector> all = vectors::All();
  ASSERT_EQ(index["vectors"].size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const auto& entry = index["vectors"][i];
    EXPECT_EQ(entry["name"].get<std::string>(), all[i].name);
    EXPECT_EQ(entry["description"].get<std::string>(), all[i].description);
    Frames file = LoadVector(all[i].name);
    EXPECT_EQ(entry["frames"].get<size_t>(), file.size());
    EXPECT_EQ(entry["inlineThreshold"].get<size_t>(), all[i].threshold);
    EXPECT_EQ(entry["header"]["messageId"].get<uint64_t>(), 0x1000 + i + 1);
  }
  EXPECT_TRUE(vectors::ReadFile(VectorDir() + "/README.md").has_value());
}

TEST(VectorsTest, IssueTargetsHoldForTheVectors) {
  EXPECT_EQ(LoadVector("ints_0_999").size(), 2u);
  Frames ints = LoadVector("ints_0_999_packed");
  ASSERT_EQ(ints.size(), 1u);
  EXPECT_LE(ints[0].size(), 2752u);
  Message m = Message::Decode(ToReceived(ints));
  std::vector<int64_t> values = m.arg(0).As<std::vector<int64_t>>();
  ASSERT_EQ(values.size(), 1000u);
  for (int64_t i = 0; i < 1000; ++i) EXPECT_EQ(values[static_cast<size_t>(i)], i);

  Frames big = LoadVector("tensor_4k_float64");
  ASSERT_EQ(big.size(), 2u);
  EXPECT_EQ(big[1].size(), 4096u);
  Message b = Message::Decode(ToReceived(big));
  EXPECT_TRUE(b.arg(0).InFrame());
  EXPECT_EQ(b.arg(0).AsTensor().data_as<double>()[511], 255.5);

  Message f = Message::Decode(ToReceived(LoadVector("fortran_2x3")));
  Tensor t = f.arg(0).AsTensor();
  EXPECT_EQ(t.order(), Order::kFortran);
  EXPECT_EQ(t.data_as<double>()[1], 4.0);

  Message e = Message::Decode(ToReceived(LoadVector("extension")));
  EXPECT_EQ(e.arg(0).kind(), Kind::kExtension);
  EXPECT_EQ(e.arg(0).extension_name(), "example.Point");

  // C++ reads past sequenceType: a Python list of ints is a typed array, a tuple a list.
  Message s = Message::Decode(ToReceived(LoadVector("sequences")));
  Value d = s.arg(0);
  ASSERT_EQ(d.kind(), Kind::kMap);
  EXPECT_EQ(d.value(0).As<std::vector<int64_t>>(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(GeneratedValue(d.value(0)).getSequenceType(), wire::SequenceType::LIST);
  ASSERT_EQ(d.value(1).kind(), Kind::kList);
  EXPECT_EQ(d.value(1)[1].AsDouble(), 2.5);
  EXPECT_EQ(GeneratedValue(d.value(1)).getSequenceType(), wire::SequenceType::TUPLE);
  EXPECT_EQ(GeneratedValue(d.value(2)).getSequenceType(), wire::SequenceType::UNSPECIFIED);
  EXPECT_EQ(s.arg(4).As<std::vector<double>>(), (std::vector<double>{0.5, 1.5}));
}

TEST(VectorsTest, CopyKeepsTheSequenceTypeOfNestedValues) {
  Message s = Message::Decode(ToReceived(LoadVector("sequences")));
  EnvelopeWriter w(vectors::VectorPolicy());
  w.StartResult(1, "e").Copy(s.arg(1));  // [(1, 2), (3, 4)]: the marks are one level down
  Message m = Message::Decode(ToReceived(vectors::FramesOf(w.Finish())));
  auto ok = GeneratedEnvelope(m).getBody().getResult().getOk();
  EXPECT_EQ(ok.getSequenceType(), wire::SequenceType::UNSPECIFIED);
  ASSERT_EQ(ok.getList().size(), 2u);
  for (auto pair : ok.getList()) EXPECT_EQ(pair.getSequenceType(), wire::SequenceType::TUPLE);
}

}  // namespace
}  // namespace zerocan
