// Fuzz target: the dynamic value walker. Every accessor and built-in codec on every
// value of a decoded message returns or throws DecodeError(kTypeMismatch), nothing else.
// For an apply, Message's and Value's accessors must read what a fresh walk of Cap'n
// Proto's generated reader (zerocan/generated.h) reads from the same words; a
// disagreement aborts.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "zerocan/generated.h"

#include "tests/fuzz/fuzz_common.h"
#include "internal/testing.h"

namespace {

[[noreturn]] void Disagree(const char* what, size_t i) {
  std::fprintf(stderr, "zerocan: accessor disagrees with the generated reader: %s [%zu]\n", what, i);
  std::abort();
}

void CompareScalar(const zerocan::Value& v, zerocan::wire::Value::Reader g, const char* what, size_t i) {
  using zerocan::Kind;
  if (static_cast<int>(v.kind()) != static_cast<int>(g.which())) Disagree(what, i);
  switch (v.kind()) {
    case Kind::kBool: if (v.AsBool() != g.getBool()) Disagree(what, i); break;
    case Kind::kInt: if (v.AsInt() != g.getInt()) Disagree(what, i); break;
    case Kind::kUInt: if (v.AsUInt() != g.getUint()) Disagree(what, i); break;
    case Kind::kFloat: {
      double a = v.AsDouble(), b = g.getFloat();
      if (std::memcmp(&a, &b, sizeof a) != 0) Disagree(what, i);
      break;
    }
    case Kind::kText: {
      auto t = g.getText();
      if (v.AsText() != std::string_view(t.cStr(), t.size())) Disagree(what, i);
      break;
    }
    default: break;
  }
}

void CompareApply(const zerocan::Message& m) {
  auto g = GeneratedEnvelope(m).getBody().getApply();
  auto fn = g.getFunction();
  if (m.function() != std::string_view(fn.cStr(), fn.size())) Disagree("function", 0);
  if (m.arg_count() != g.getArgs().size()) Disagree("arg count", 0);
  if (m.kwarg_count() != g.getKwargs().size()) Disagree("kwarg count", 0);
  for (size_t i = 0; i < m.arg_count(); ++i) {
    CompareScalar(m.arg(i), g.getArgs()[static_cast<unsigned>(i)], "arg", i);
  }
  for (size_t i = 0; i < m.kwarg_count(); ++i) {
    auto kw = g.getKwargs()[static_cast<unsigned>(i)];
    auto key = kw.getKey();
    if (m.kwarg_name(i) != std::string_view(key.cStr(), key.size())) Disagree("kwarg name", i);
    CompareScalar(m.kwarg(i), kw.getValue(), "kwarg", i);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zerocan;
  std::optional<Message> decoded = fuzz::DecodeInput(data, size);
  if (!decoded) return 0;
  const Message& m = *decoded;
  volatile uint64_t sink = fuzz::WalkMessage(m, /*deep=*/true);
  (void)sink;
  // Re-encoding what was received must work for anything the decoder accepted.
  if (m.body_kind() == BodyKind::kApply) {
    CompareApply(m);
    EnvelopeWriter writer;
    ApplyWriter apply = writer.StartApply(m.function(), m.arg_count(), 0);
    for (size_t i = 0; i < m.arg_count(); ++i) apply.arg(i).Copy(m.arg(i));
    Message again = Message::Decode(LoopbackFrames(writer.Finish()), fuzz::FuzzLimits());
    sink = fuzz::WalkMessage(again, /*deep=*/false);
  }
  return 0;
}
