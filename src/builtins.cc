// The built-in functions every zerocan engine offers (C++ and Python alike), so demos,
// tests and `zerocan call` have something to call:
//   echo(x)         -> x unchanged (payload frames forwarded, not copied);
//   echo(a, b, ...) -> [a, b, ...]; echo() -> null
//   add(a, b)       -> a + b (int64 when both are integers and it fits, else float64)
//   sum(x)          -> float64 sum of a numeric tensor or a list of numbers
//   nbytes(...)     -> total payload bytes (bytes and tensor data) in the arguments
//   sleep(s)        -> sleeps s seconds, returns s
//   fail(message)   -> remote error of type "zerocan.Fail" carrying `message`
#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/engine.h"

namespace zerocan {

namespace {

bool IsInt(const Value& v) { return v.kind() == Kind::kInt || v.kind() == Kind::kUInt; }
bool IsNumber(const Value& v) {
  return IsInt(v) || v.kind() == Kind::kFloat || v.kind() == Kind::kBool;
}

void Echo(const Call& call, ValueWriter& out) {
  if (call.arg_count() == 0) return out.Null();
  if (call.arg_count() == 1) return out.Copy(call.arg(0));
  ListWriter list = out.List(call.arg_count());
  for (size_t i = 0; i < call.arg_count(); ++i) list[i].Copy(call.arg(i));
}

void Add(const Call& call, ValueWriter& out) {
  if (call.arg_count() != 2) internal::ThrowArgCount("add", 2, call.arg_count());
  Value a = call.arg(0), b = call.arg(1);
  for (size_t i = 0; i < 2; ++i) {
    const Value& v = i == 0 ? a : b;
    if (!IsNumber(v) || v.kind() == Kind::kBool) {
      throw ArgumentError(absl::StrCat("add: argument ", i, ": expected a number, got ",
                                       v.Describe()));
    }
  }
  if (IsInt(a) && IsInt(b)) {
    // Exact integer sum when it fits in int64 (either sign); float64 otherwise.
    bool a_neg = a.kind() == Kind::kInt && a.AsInt() < 0;
    bool b_neg = b.kind() == Kind::kInt && b.AsInt() < 0;
    if (!a_neg && !b_neg) {
      uint64_t x = a.AsUInt(), y = b.AsUInt(), r;
      if (!__builtin_add_overflow(x, y, &r)) {
        return r <= static_cast<uint64_t>(INT64_MAX) ? out.Int(static_cast<int64_t>(r))
                                                      : out.UInt(r);
      }
    } else if (a.kind() != Kind::kUInt || a.AsUInt() <= static_cast<uint64_t>(INT64_MAX)) {
      if (b.kind() != Kind::kUInt || b.AsUInt() <= static_cast<uint64_t>(INT64_MAX)) {
        int64_t r;
        if (!__builtin_add_overflow(a.AsInt(), b.AsInt(), &r)) return out.Int(r);
      }
    }
  }
  out.Float(a.AsDouble() + b.AsDouble());
}

template <class T>
double SumOf(const Tensor& t) {
  const T* p = t.data_as<T>();
  double s = 0;
  for (uint64_t i = 0, n = t.size(); i < n; ++i) s += static_cast<double>(p[i]);
  return s;
}

double SumTensor(const Value& v) {
  Tensor t = v.AsTensor();
  switch (t.dtype()) {
    case DType::kFloat64: return SumOf<double>(t);
    case DType::kFloat32: return SumOf<float>(t);
    case DType::kInt64: return SumOf<int64_t>(t);
    case DType::kInt32: return SumOf<int32_t>(t);
    case DType::kInt16: return SumOf<int16_t>(t);
    case DType::kInt8: return SumOf<int8_t>(t);
    case DType::kUInt64: return SumOf<uint64_t>(t);
    case DType::kUInt32: return SumOf<uint32_t>(t);
    case DType::kUInt16: return SumOf<uint16_t>(t);
    case DType::kUInt8: return SumOf<uint8_t>(t);
    case DType::kBool: return SumOf<uint8_t>(Tensor(DType::kUInt8, t.shape(), t.data()));
    default: {
      // float16 and anything else numeric: converted by the codec (one copy).
      std::vector<double> all = v.As<std::vector<double>>();
      double s = 0;
      for (double x : all) s += x;
      return s;
    }
  }
}

void Sum(const Call& call, ValueWriter& out) {
  if (call.arg_count() != 1) internal::ThrowArgCount("sum", 1, call.arg_count());
  Value v = call.arg(0);
  if (v.kind() == Kind::kTensor) {
    if (v.dtype() == DType::kComplex64 || v.dtype() == DType::kComplex128) {
      throw ArgumentError(absl::StrCat("sum: argument 0: expected a real numeric tensor, got ",
                                       v.Describe()));
    }
    return out.Float(SumTensor(v));
  }
  if (v.kind() == Kind::kList) {
    double s = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      Value e = v[i];
      if (!IsNumber(e)) {
        throw ArgumentError(absl::StrCat("sum: argument 0: element ", i,
                                         ": expected a number, got ", e.Describe()));
      }
      s += e.kind() == Kind::kBool ? (e.AsBool() ? 1.0 : 0.0) : e.AsDouble();
    }
    return out.Float(s);
  }
  if (IsNumber(v) && v.kind() != Kind::kBool) return out.Float(v.AsDouble());
  throw ArgumentError(absl::StrCat(
      "sum: argument 0: expected a numeric tensor or a list of numbers, got ", v.Describe()));
}

uint64_t PayloadBytes(const Value& v) {
  switch (v.kind()) {
    case Kind::kBytes: return v.AsBytes().size();
    case Kind::kTensor: return v.TensorBytes().size();
    case Kind::kList:
    case Kind::kMap: {
      uint64_t n = 0;
      for (size_t i = 0; i < v.size(); ++i) {
        n += v.kind() == Kind::kList ? PayloadBytes(v[i])
                                     : PayloadBytes(v.key(i)) + PayloadBytes(v.value(i));
      }
      return n;
    }
    case Kind::kExtension: return PayloadBytes(v.extension_state());
    default: return 0;
  }
}

void NBytes(const Call& call, ValueWriter& out) {
  uint64_t n = 0;
  for (size_t i = 0; i < call.arg_count(); ++i) n += PayloadBytes(call.arg(i));
  out.UInt(n);
}

void Sleep(const Call& call, ValueWriter& out) {
  if (call.arg_count() != 1) internal::ThrowArgCount("sleep", 1, call.arg_count());
  Value v = call.arg(0);
  if (!IsNumber(v) || v.kind() == Kind::kBool) {
    throw ArgumentError(absl::StrCat("sleep: argument 0 (seconds): expected a number, got ",
                                     v.Describe()));
  }
  double s = v.AsDouble();
  if (!(s >= 0) || s > 86400) {
    throw ArgumentError(absl::StrCat("sleep: argument 0 (seconds): ", s,
                                     " is not between 0 and 86400"));
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
  out.Copy(v);
}

void Fail(const Call& call, ValueWriter&) {
  std::string message = "fail() called";
  if (call.arg_count() >= 1) {
    Value v = call.arg(0);
    message = v.kind() == Kind::kText ? std::string(v.AsText()) : v.Describe();
  }
  throw RemoteError({kErrorFail, message, "fail", call.engine_id()});
}

}  // namespace

void AddBuiltins(Engine& engine, FunctionOptions options) {
  engine.DefRaw("echo", Echo, options);
  engine.DefRaw("add", Add, options);
  engine.DefRaw("sum", Sum, options);
  engine.DefRaw("nbytes", NBytes, options);
  engine.DefRaw("sleep", Sleep);  // never inline: it would hold the I/O thread
  engine.DefRaw("fail", Fail, options);
}

}  // namespace zerocan
