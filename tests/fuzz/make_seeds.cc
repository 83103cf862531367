// Writes seed inputs for the fuzz targets into tests/fuzz/corpus/<target>/ (frame format
// of tests/vectors/README.md). The golden vectors are seeds too; these add what they
// lack: several payload frames, references at offsets inside a shared frame, a
// misaligned tensor, a big-endian tensor, deep nesting, every kind in one message.
// Run by hand when the format changes: build-x/tests/fuzz/zerocan_fuzz_seeds.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "zerocan/generated.h"
#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace {

using namespace zerocan;

std::string Encode(const FrameList& frames) {
  std::string out;
  for (const auto& f : frames) {
    uint64_t n = f.size();
    for (int i = 0; i < 8; ++i) out += static_cast<char>(n >> (8 * i));
    out.append(reinterpret_cast<const char*>(f.data()), f.size());
  }
  return out;
}

FrameList Frames(Outgoing&& out) { return LoopbackFrames(std::move(out)).frames; }

FrameList ManyFrames() {
  Policy policy;
  policy.inline_threshold = 64;
  EnvelopeWriter w(policy);
  w.SetHeader(Header{1, 2, 3, 4});
  ApplyWriter a = w.StartApply("many", 5, 2);
  a.arg(0).Write(std::vector<double>(100, 1.5));
  a.arg(1).Write(std::vector<int32_t>(50, -7));
  a.arg(2).Bytes(Buffer::Adopt(std::vector<uint8_t>(300, 9)));
  std::vector<std::complex<double>> c(20, {1, 2});
  a.arg(3).Write(std::move(c));
  ListWriter l = a.arg(4).List(3);
  l[0].Text("x");
  l[1].Array(DType::kUInt16, Shape{4, 20}, Buffer::Adopt(std::vector<uint16_t>(80, 3)));
  l[2].Null();
  a.kwarg(0, "f").Array(DType::kFloat32, Shape{2, 50}, Buffer::Adopt(std::vector<float>(100, 2)),
                        Order::kFortran);
  MapWriter m = a.kwarg(1, "m").Map(2);
  m.key(0).Text("key");
  m.value(0).UInt(5);
  m.key(1).Int(-1);
  m.value(1).Float(0.25);
  return Frames(w.Finish());
}

FrameList Nested(int depth) {
  EnvelopeWriter w;
  w.SetHeader(Header{1, 2, 3, 4});
  ApplyWriter a = w.StartApply("deep", 1, 0);
  ValueWriter v = a.arg(0);
  for (int i = 0; i < depth; ++i) v = v.List(1)[0];
  v.Int(1);
  return Frames(w.Finish());
}

// Hand-built: two tensors referencing one shared frame, one at an odd offset (needs a
// realigning copy) and one big-endian; plus an extension and bytes in the same frame.
FrameList SharedFrame() {
  capnp::MallocMessageBuilder b;
  auto env = b.initRoot<wire::Envelope>();
  env.setVersion(kProtocolVersion);
  env.setMessageId(1);
  env.setSessionId(2);
  env.setSequence(3);
  env.setPayloadFrames(1);
  auto apply = env.getBody().initApply();
  apply.setFunction("shared");
  auto args = apply.initArgs(4);
  auto t0 = args[0].initTensor();
  t0.setDtype(wire::DType::FLOAT64);
  t0.initShape(1).set(0, 4);
  auto r0 = t0.getData().initFrame();
  r0.setIndex(1);
  r0.setOffset(1);
  r0.setLength(32);
  auto t1 = args[1].initTensor();
  t1.setDtype(wire::DType::INT32);
  t1.setByteOrder(wire::ByteOrder::BIG);
  t1.initShape(2).set(0, 2);
  t1.getShape().set(1, 2);
  auto r1 = t1.getData().initFrame();
  r1.setIndex(1);
  r1.setOffset(40);
  r1.setLength(16);
  auto bytes = args[2].initBytes().initFrame();
  bytes.setIndex(1);
  bytes.setOffset(56);
  bytes.setLength(8);
  auto ext = args[3].initExtension();
  ext.setTypeName("numpy.ndarray");
  ext.initState().setText("state");
  kj::Array<capnp::word> words = capnp::messageToFlatArray(b);
  FrameList frames;
  frames.push_back(Buffer::CopyOf(words.begin(), words.size() * sizeof(capnp::word)));
  std::vector<uint8_t> payload(64);
  std::iota(payload.begin(), payload.end(), 0);
  frames.push_back(Buffer::CopyOf(payload.data(), payload.size()));
  return frames;
}

FrameList Results(bool ok) {
  EnvelopeWriter w;
  w.SetHeader(Header{1, 2, 3, 4});
  if (ok) {
    w.StartResult(7, "engine").Write(std::vector<int64_t>{1, 2, 3});
  } else {
    w.SetError(7, "engine", RemoteErrorInfo{"ValueError", "bad", "f", "here"});
  }
  return Frames(w.Finish());
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  fs::path root = argc > 1 ? fs::path(argv[1]) : fs::path(ZEROCAN_SOURCE_DIR) / "tests/fuzz/corpus";
  std::vector<std::pair<std::string, FrameList>> seeds;
  seeds.emplace_back("many_frames", ManyFrames());
  seeds.emplace_back("nested_8", Nested(8));
  seeds.emplace_back("nested_63", Nested(63));
  seeds.emplace_back("shared_frame", SharedFrame());
  seeds.emplace_back("result_ok", Results(true));
  seeds.emplace_back("result_error", Results(false));
  for (const char* target : {"envelope", "payload", "value", "signature"}) {
    fs::create_directories(root / target);
    for (const auto& [name, frames] : seeds) {
      std::ofstream(root / target / (name + ".frames"), std::ios::binary) << Encode(frames);
    }
  }
  return 0;
}
