// The golden vectors: a fixed set of zerocan messages, each built with fixed header
// fields and a fixed Policy so the bytes are deterministic. tests/tools/make_vectors.cc
// writes them to tests/vectors/; tests/vectors_test.cc checks the files against these
// definitions and round-trips them; the Python client reads the same files.
//
// File format of tests/vectors/<name>.frames: for each frame after the routing
// delimiter (frame 0 = the envelope, then the payload frames in order), a little-endian
// uint64 byte length followed by exactly that many bytes; no padding, no trailer.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "internal/testing.h"
#include "zerocan/generated.h"
#include "zerocan/shared.h"
#include "zerocan/zerocan.h"

namespace zerocan::vectors {

// The writer settings every vector is built with (and re-encoded with by the tests).
// One vector (ints_0_999_packed) uses the library's default threshold instead, to show
// the packed inline form; each Vector records its threshold.
inline constexpr size_t kVectorThreshold = 1024;
inline Policy VectorPolicy(size_t threshold = kVectorThreshold) {
  Policy p;
  p.inline_threshold = threshold;
  p.pack_integers = true;
  return p;
}

// The arena of the `shared_tensor` vector. Real arenas' names carry 128 random bits; this
// one is fixed so the vector's bytes are. A reader of that vector reads its payload from
// an arena of its own under this name whose first 4096 bytes are VectorArenaValues().
inline constexpr char kVectorArenaName[] = "zerocan-arena-0-0123456789abcdef0123456789abcdef";
inline std::vector<double> VectorArenaValues() {  // 0.0, 0.25, ..., 127.75
  std::vector<double> values(512);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) * 0.25;
  return values;
}
// This process's arena under kVectorArenaName (read by this process only), and its first
// block (offset 0) holding VectorArenaValues(), kept for the process's life.
struct VectorArenaState {
  std::shared_ptr<SharedArena> arena;
  Buffer block;
};
inline const VectorArenaState& VectorArena() {
  static const VectorArenaState* state = [] {
    auto* s = new VectorArenaState;
    s->arena = internal::TestHooks::LocalArenaNamed(size_t{64} << 10, kVectorArenaName);
    std::vector<double> values = VectorArenaValues();
    s->block = *s->arena->Allocate(values.size() * sizeof(double));
    std::memcpy(s->block.mutable_data(), values.data(), s->block.size());
    return s;
  }();
  return *state;
}
// VectorPolicy with the vectors' arena: payloads at or above the threshold that lie in
// it travel as references (the `shared_tensor` vector, and re-encoding it).
inline Policy VectorSharedPolicy(size_t threshold = kVectorThreshold) {
  Policy p = VectorPolicy(threshold);
  p.shared_arena = VectorArena().arena.get();
  return p;
}

inline constexpr uint64_t kSessionId = 0x5E55'1011'CAFE'0001ULL;
inline constexpr uint64_t kSentAtNs = 1'700'000'000'000'000'000ULL;  // 2023-11-14T22:13:20Z

// Header of vector number `n` (1-based): ids and sequence derive from n; the clock is
// fixed and nonzero so Finish() does not stamp it.
inline Header VectorHeader(uint64_t n) {
  return Header{0x1000 + n, kSessionId, n, kSentAtNs + n};
}

struct Vector {
  std::string name;
  std::string description;
  std::string body;   // "apply", "result", "hello", "heartbeat", ...
  std::string value;  // the content in a JSON-ish notation, types spelled out
  std::function<Outgoing()> build;
  size_t threshold = kVectorThreshold;  // Policy::inline_threshold it was built with
  bool shared = false;  // built with VectorSharedPolicy (its payload is in VectorArena())
};

namespace internal {

template <class T>
Buffer Owned(std::vector<T> values) {
  return Buffer::Adopt(std::move(values));
}

// Float16 bit patterns: 1.0, -2.0, 0.5.
inline std::vector<uint16_t> HalfBits() { return {0x3c00, 0xc000, 0x3800}; }

}  // namespace internal

inline std::vector<Vector> All() {
  using internal::Owned;
  std::vector<Vector> v;
  uint64_t n = 0;
  auto writer = [](uint64_t number, size_t threshold = kVectorThreshold) {
    auto w = std::make_unique<EnvelopeWriter>(VectorPolicy(threshold));
    w->SetHeader(VectorHeader(number));
    return w;
  };

  v.push_back({"small_apply",
               "An apply with two positional scalars and one keyword scalar; 1 frame.",
               "apply",
               R"({"function": "math.add", "args": [int 1, float64 2.5], )"
               R"("kwargs": {"round": bool true}, "timeoutMs": 250})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ApplyWriter a = w->StartApply("math.add", 2, 1, 250);
                 a.arg(0).Int(1);
                 a.arg(1).Float(2.5);
                 a.kwarg(0, "round").Bool(true);
                 return w->Finish();
               }});

  v.push_back({"ints_0_999",
               "The audit's list of the ints 0..999 as one int64 typed array. Even packed "
               "(uint16, 2000 bytes) it reaches the 1024-byte threshold, so it travels "
               "unpacked (8000 bytes) as payload frame 1; 2 frames.",
               "apply",
               R"({"function": "sum", "args": [tensor int64 shape [1000] data frame 1 )"
               R"(= [0, 1, ..., 999]], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 std::vector<int64_t> ints(1000);
                 std::iota(ints.begin(), ints.end(), 0);
                 w->StartApply("sum", 1, 0).arg(0).Write(std::move(ints));
                 return w->Finish();
               }});

  v.push_back({"ints_0_999_packed",
               "The same list built with the library's default threshold (4096 bytes): "
               "stored packed as uint16 inline (2000 bytes), the envelope stays under the "
               "2752 bytes pickle needs; 1 frame.",
               "apply",
               R"({"function": "sum", "args": [tensor int64 shape [1000] packing uint16 )"
               R"(inline = [0, 1, ..., 999]], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id, 4096);
                 std::vector<int64_t> ints(1000);
                 std::iota(ints.begin(), ints.end(), 0);
                 w->StartApply("sum", 1, 0).arg(0).Write(std::move(ints));
                 return w->Finish();
               },
               4096});

  v.push_back({"text_bytes",
               "UTF-8 text, an empty text and 16 inline bytes; 1 frame.",
               "apply",
               R"({"function": "echo", "args": [text "h\u00e9llo, w\u00f6rld", text "", )"
               R"(bytes 00 01 02 ... 0f], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ApplyWriter a = w->StartApply("echo", 3, 0);
                 a.arg(0).Text("h\xc3\xa9llo, w\xc3\xb6rld");
                 a.arg(1).Text("");
                 std::vector<std::byte> bytes(16);
                 for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i);
                 a.arg(2).Bytes(Owned(std::move(bytes)));
                 return w->Finish();
               }});

  v.push_back({"nested",
               "A heterogeneous list and a map of maps (keys in insertion order, not sorted), "
               "with null, uint and a nested typed array; 1 frame.",
               "apply",
               R"({"function": "nested", "args": [[int 1, text "two", [float64 3.0, null], )"
               R"({"k": [bool true, bool false]}], {"z": {"b": tensor int32 [1, 2]}, "a": null, )"
               R"("u": uint 18446744073709551615}], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ApplyWriter a = w->StartApply("nested", 2, 0);
                 ListWriter list = a.arg(0).List(4);
                 list[0].Int(1);
                 list[1].Text("two");
                 ListWriter inner = list[2].List(2);
                 inner[0].Float(3.0);
                 inner[1].Null();
                 MapWriter km = list[3].Map(1);
                 km.key(0).Text("k");
                 ListWriter bools = km.value(0).List(2);
                 bools[0].Bool(true);
                 bools[1].Bool(false);
                 MapWriter map = a.arg(1).Map(3);
                 map.key(0).Text("z");
                 MapWriter zb = map.value(0).Map(1);
                 zb.key(0).Text("b");
                 zb.value(0).Write(std::vector<int32_t>{1, 2});
                 map.key(1).Text("a");
                 map.value(1).Null();
                 map.key(2).Text("u");
                 map.value(2).UInt(UINT64_MAX);
                 return w->Finish();
               }});

  v.push_back({"dtypes",
               "One small inline tensor of every dtype, in schema order (bool, int8..int64, "
               "uint8..uint64, float16/32/64, complex64/128); integer arrays whose values fit "
               "a narrower type are stored packed; 1 frame.",
               "apply",
               R"({"function": "dtypes", "args": [bool [true, false, true], int8 [-1, 0, 127], )"
               R"(int16 [-300, 0, 300], int32 [-70000, 0, 70000], )"
               R"(int64 [-5000000000, 0, 5000000000], uint8 [0, 1, 255], uint16 [0, 1, 65535], )"
               R"(uint32 [0, 1, 4294967295], uint64 [0, 1, 18446744073709551615], )"
               R"(float16 bits [0x3c00, 0xc000, 0x3800] = [1.0, -2.0, 0.5], )"
               R"(float32 [1.5, -2.25, 0.0], float64 [1e-300, -0.0, 3.141592653589793], )"
               R"(complex64 [1+2j, -3-4j], complex128 [0.5-0.25j]], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ApplyWriter a = w->StartApply("dtypes", 14, 0);
                 a.arg(0).Array(DType::kBool, Shape{3}, Owned(std::vector<uint8_t>{1, 0, 1}));
                 a.arg(1).Write(std::vector<int8_t>{-1, 0, 127});
                 a.arg(2).Write(std::vector<int16_t>{-300, 0, 300});
                 a.arg(3).Write(std::vector<int32_t>{-70000, 0, 70000});
                 a.arg(4).Write(std::vector<int64_t>{-5000000000LL, 0, 5000000000LL});
                 a.arg(5).Write(std::vector<uint8_t>{0, 1, 255});
                 a.arg(6).Write(std::vector<uint16_t>{0, 1, 65535});
                 a.arg(7).Write(std::vector<uint32_t>{0, 1, 4294967295u});
                 a.arg(8).Write(std::vector<uint64_t>{0, 1, UINT64_MAX});
                 a.arg(9).Array(DType::kFloat16, Shape{3}, Owned(internal::HalfBits()));
                 a.arg(10).Write(std::vector<float>{1.5f, -2.25f, 0.0f});
                 a.arg(11).Write(std::vector<double>{1e-300, -0.0, 3.141592653589793});
                 a.arg(12).Write(std::vector<std::complex<float>>{{1, 2}, {-3, -4}});
                 a.arg(13).Write(std::vector<std::complex<double>>{{0.5, -0.25}});
                 return w->Finish();
               }});

  v.push_back({"tensor_4k_float64",
               "A 4096-byte float64 tensor (shape [16, 32], values i * 0.5) at the 1024-byte "
               "threshold's far side: it travels as payload frame 1 (FrameRef index 1, offset "
               "0, length 4096); 2 frames.",
               "apply",
               R"({"function": "scale", "args": [tensor float64 shape [16, 32] order C )"
               R"(data frame 1 = [0.0, 0.5, 1.0, ..., 255.5]], "kwargs": {"factor": float64 2.0}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 std::vector<double> values(512);
                 for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) * 0.5;
                 ApplyWriter a = w->StartApply("scale", 1, 1);
                 a.arg(0).Array(DType::kFloat64, Shape{16, 32}, Owned(std::move(values)));
                 a.kwarg(0, "factor").Float(2.0);
                 return w->Finish();
               }});

  v.push_back({"fortran_2x3",
               "A 2x3 float64 tensor in Fortran (column-major) order: the matrix "
               "[[1, 2, 3], [4, 5, 6]] stored as 1, 4, 2, 5, 3, 6; inline; 1 frame.",
               "apply",
               R"({"function": "transpose", "args": [tensor float64 shape [2, 3] order fortran )"
               R"(= [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] (memory 1, 4, 2, 5, 3, 6)], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->StartApply("transpose", 1, 0)
                     .arg(0)
                     .Array(DType::kFloat64, Shape{2, 3},
                            Owned(std::vector<double>{1, 4, 2, 5, 3, 6}), Order::kFortran);
                 return w->Finish();
               }});

  v.push_back({"extension",
               "An extension value of a registered type name with a map as its state; "
               "readers that do not know the name keep it as a generic value; 1 frame.",
               "apply",
               R"({"function": "plot", "args": [extension "example.Point" state )"
               R"({"x": float64 1.5, "y": float64 -2.0, "label": text "p"}], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ValueWriter state = w->StartApply("plot", 1, 0).arg(0).Extension("example.Point");
                 MapWriter m = state.Map(3);
                 m.key(0).Text("x");
                 m.value(0).Float(1.5);
                 m.key(1).Text("y");
                 m.value(1).Float(-2.0);
                 m.key(2).Text("label");
                 m.value(2).Text("p");
                 return w->Finish();
               }});

  v.push_back({"result_ok",
               "A successful result answering message 0x1001 with a map value; 1 frame.",
               "result",
               R"({"callId": 4097, "engineId": "engine-0", "ok": {"sum": int 499500, )"
               R"("items": tensor int64 [3, 4] packing uint8}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 MapWriter m = w->StartResult(0x1001, "engine-0").Map(2);
                 m.key(0).Text("sum");
                 m.value(0).Int(499500);
                 m.key(1).Text("items");
                 m.value(1).Write(std::vector<int64_t>{3, 4});
                 return w->Finish();
               }});

  v.push_back({"result_error",
               "A failed result: the remote error's type, message, function and where; "
               "1 frame.",
               "result",
               R"({"callId": 4098, "engineId": "engine-0", "error": {"type": "ValueError", )"
               R"("message": "math domain error", "function": "math.sqrt", "where": "engine-0 pid 42"}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetError(0x1002, "engine-0",
                             RemoteErrorInfo{"ValueError", "math domain error", "math.sqrt",
                                             "engine-0 pid 42"});
                 return w->Finish();
               }});

  v.push_back({"hello",
               "A hello from an engine listing the functions it serves; 1 frame.",
               "hello",
               R"({"peerId": "engine-0", "role": "engine", "functions": ["math.add", "sum", "echo"]})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetHello("engine-0", "engine", {"math.add", "sum", "echo"});
                 return w->Finish();
               }});

  v.push_back({"heartbeat",
               "A heartbeat carrying the sender's clock; 1 frame.",
               "heartbeat",
               R"({"peerId": "client-1", "nowNs": 1700000000123456789})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetHeartbeat("client-1", 1'700'000'000'123'456'789ULL);
                 return w->Finish();
               }});

  v.push_back({"goodbye",
               "A goodbye (void body); 1 frame.",
               "goodbye",
               "{}",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetGoodbye();
                 return w->Finish();
               }});

  // What Python sends for echo({"a": [1, 2, 3], "t": (1, 2.5), "arr": np.arange(3)},
  // [(1, 2), (3, 4)], [], (), [0.5, 1.5], [True, False], [1, "x", None],
  // (np.arange(2.0),)). The library writes no sequenceType of its own; the marker is set
  // on the generated builder.
  v.push_back({"sequences",
               "Python lists, tuples and arrays told apart by Value.sequenceType: homogeneous "
               "number lists as typed arrays marked list, tuples as lists marked tuple, "
               "arrays and other lists unmarked; 1 frame.",
               "apply",
               R"({"function": "echo", "args": [{"a": tensor int64 [1, 2, 3] packing uint8 )"
               R"(sequenceType list, "t": [int 1, float64 2.5] sequenceType tuple, )"
               R"("arr": tensor int64 [0, 1, 2] packing uint8}, [[int 1, int 2] sequenceType )"
               R"(tuple, [int 3, int 4] sequenceType tuple], [], [] sequenceType tuple, )"
               R"(tensor float64 [0.5, 1.5] sequenceType list, tensor bool [true, false] )"
               R"(sequenceType list, [int 1, text "x", null], [tensor float64 [0.0, 1.0]] )"
               R"(sequenceType tuple], "kwargs": {}})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 ApplyWriter a = w->StartApply("echo", 8, 0);
                 MapWriter m = a.arg(0).Map(3);
                 m.key(0).Text("a");
                 m.value(0).Write(std::vector<int64_t>{1, 2, 3});
                 m.key(1).Text("t");
                 ListWriter t = m.value(1).List(2);
                 t[0].Int(1);
                 t[1].Float(2.5);
                 m.key(2).Text("arr");
                 m.value(2).Write(std::vector<int64_t>{0, 1, 2});
                 ListWriter pairs = a.arg(1).List(2);
                 for (int64_t i = 0; i < 2; ++i) {
                   ListWriter pair = pairs[static_cast<size_t>(i)].List(2);
                   pair[0].Int(2 * i + 1);
                   pair[1].Int(2 * i + 2);
                 }
                 a.arg(2).List(0);
                 a.arg(3).List(0);
                 a.arg(4).Write(std::vector<double>{0.5, 1.5});
                 a.arg(5).Array(DType::kBool, Shape{2}, Owned(std::vector<uint8_t>{1, 0}));
                 ListWriter mixed = a.arg(6).List(3);
                 mixed[0].Int(1);
                 mixed[1].Text("x");
                 mixed[2].Null();
                 a.arg(7).List(1)[0].Write(std::vector<double>{0.0, 1.0});
                 // Data fields: setting them allocates nothing, so the bytes above stand.
                 using wire::SequenceType;
                 auto args = GeneratedEnvelope(*w).getBody().getApply().getArgs();
                 auto map = args[0].getMap();
                 map[0].getValue().setSequenceType(SequenceType::LIST);
                 map[1].getValue().setSequenceType(SequenceType::TUPLE);
                 for (auto pair : args[1].getList()) pair.setSequenceType(SequenceType::TUPLE);
                 args[3].setSequenceType(SequenceType::TUPLE);
                 args[4].setSequenceType(SequenceType::LIST);
                 args[5].setSequenceType(SequenceType::LIST);
                 args[7].setSequenceType(SequenceType::TUPLE);
                 return w->Finish();
               }});

  v.push_back({"apply_retries",
               "An apply whose caller allows a broker 2 more attempts on other engines if "
               "the engine running it is lost (Apply.retries, in the Apply's existing data "
               "word); 1 frame.",
               "apply",
               R"({"function": "sleep", "args": [float64 0.25], "kwargs": {}, "timeoutMs": 5000, )"
               R"("retries": 2})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->StartApply("sleep", 1, 0, 5000).arg(0).Float(0.25);
                 w->SetApplyRetries(2);
                 return w->Finish();
               }});

  v.push_back({"started",
               "An engine telling its broker that it began running call 0x1001 (sent with "
               "the call's routing frames); 1 frame.",
               "started",
               R"({"callId": 4097})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetStarted(0x1001);
                 return w->Finish();
               }});

  v.push_back({"draining",
               "An engine telling its broker that it is stopping and takes no new calls "
               "(void body); 1 frame.",
               "draining",
               "{}",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetDraining();
                 return w->Finish();
               }});

  // Cancel and streams (docs/FORMAT.md "Cancel and streams").
  v.push_back({"cancel",
               "A cancel of call 0x1001 (client to engine or broker); 1 frame.",
               "cancel",
               R"({"callId": 4097})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetCancel(0x1001);
                 return w->Finish();
               }});

  v.push_back({"stream_apply",
               "An apply asking for a stream of results, granting 64 items at first; 1 frame.",
               "apply",
               R"({"function": "count", "args": [int 3], "kwargs": {}, "streamCredits": 64})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->StartApply("count", 1, 0).arg(0).Int(3);
                 w->SetStreamCredits(64);
                 return w->Finish();
               }});

  v.push_back({"stream_item",
               "One item of the stream answering call 0x1001; 1 frame.",
               "result",
               R"({"callId": 4097, "engineId": "engine-0", "ok": int 7, "stream": item})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->StartResult(0x1001, "engine-0").Int(7);
                 w->SetStreamPart(StreamPart::kItem);
                 return w->Finish();
               }});

  v.push_back({"stream_end",
               "The end of the stream answering call 0x1001 (ok = null); 1 frame.",
               "result",
               R"({"callId": 4097, "engineId": "engine-0", "ok": null, "stream": end})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->StartResult(0x1001, "engine-0").Null();
                 w->SetStreamPart(StreamPart::kEnd);
                 return w->Finish();
               }});

  v.push_back({"credit",
               "A credit granting 32 more items of stream call 0x1001; 1 frame.",
               "credit",
               R"({"callId": 4097, "items": 32})",
               [id = ++n, writer] {
                 auto w = writer(id);
                 w->SetCredit(0x1001, 32);
                 return w->Finish();
               }});

  v.push_back({"shared_tensor",
               "A 4096-byte float64 tensor passed in shared memory (Payload.shared): a "
               "reference to bytes 0..4095 of the arena named "
               "zerocan-arena-0-0123456789abcdef0123456789abcdef (a fixed name for the "
               "vector; real names carry 128 random bits), holding i * 0.25; a reader maps "
               "that arena, or refuses the reference naming the field; 1 frame.",
               "apply",
               R"({"function": "sum", "args": [tensor float64 shape [512] order C data )"
               R"(shared {arena: "zerocan-arena-0-0123456789abcdef0123456789abcdef", )"
               R"(offset: 0, length: 4096} = [0.0, 0.25, ..., 127.75]], "kwargs": {}})",
               [id = ++n] {
                 EnvelopeWriter w(VectorSharedPolicy());
                 w.SetHeader(VectorHeader(id));
                 w.StartApply("sum", 1, 0).arg(0).Array(DType::kFloat64, Shape{512},
                                                        VectorArena().block);
                 return w.Finish();
               },
               kVectorThreshold, /*shared=*/true});
  return v;
}

// ---- the .frames file format ----------------------------------------------------------

using Frames = std::vector<std::vector<std::byte>>;

inline Frames FramesOf(const Outgoing& out) {
  Frames frames;
  auto* env = static_cast<const std::byte*>(out.envelope().data());
  frames.emplace_back(env, env + out.envelope().size());
  for (const Buffer& b : out.payload_frames()) frames.emplace_back(b.data(), b.data() + b.size());
  return frames;
}

inline std::string Serialize(const Frames& frames) {
  std::string out;
  for (const auto& f : frames) {
    uint64_t n = f.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    out.append(reinterpret_cast<const char*>(f.data()), f.size());
  }
  return out;
}

// Parses a .frames file's contents; nullopt when malformed (a length past the end).
inline std::optional<Frames> Parse(const std::string& bytes) {
  Frames frames;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 8) return std::nullopt;
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<unsigned char>(bytes[pos + i])} << (8 * i);
    pos += 8;
    if (n > bytes.size() - pos) return std::nullopt;
    auto* p = reinterpret_cast<const std::byte*>(bytes.data() + pos);
    frames.emplace_back(p, p + n);
    pos += n;
  }
  return frames;
}

inline std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace zerocan::vectors
