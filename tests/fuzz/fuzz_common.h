// Shared pieces of the fuzz targets: the input format (the golden vectors' frame
// format, so tests/vectors/*.frames are seeds as they are), limits small enough that
// the fuzzer cannot spend its time on huge allocations, and walkers that touch every
// byte a decoded message exposes (so AddressSanitizer sees any view out of range).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "zerocan/zerocan.h"
#include "internal/testing.h"

namespace zerocan::fuzz {

// Frames as in tests/vectors/README.md: each a little-endian u64 length, then the bytes.
// A length past the end is clamped to what remains; at most 64 frames.
inline FrameList ParseFrames(const uint8_t* data, size_t size) {
  FrameList frames;
  size_t pos = 0;
  while (pos < size && frames.size() < 64) {
    uint64_t length = 0;
    size_t header = std::min<size_t>(8, size - pos);
    for (size_t i = 0; i < header; ++i) length |= uint64_t{data[pos + i]} << (8 * i);
    pos += header;
    length = std::min<uint64_t>(length, size - pos);
    frames.push_back(Buffer::CopyOf(data + pos, static_cast<size_t>(length)));
    pos += static_cast<size_t>(length);
  }
  return frames;
}

inline DecodeLimits FuzzLimits() {
  DecodeLimits limits;
  limits.max_frames = 64;
  limits.max_frame_bytes = 1 << 20;
  limits.max_message_bytes = 4 << 20;
  limits.max_envelope_bytes = 1 << 20;
  limits.max_list_length = 1 << 16;
  limits.max_text_bytes = 1 << 16;
  return limits;
}

// The fuzz input as a decoded message, or nullopt when the decoder rejected it (the
// only outcome allowed besides success: anything else escapes and fails the target).
inline std::optional<Message> DecodeInput(const uint8_t* data, size_t size) {
  ReceivedMessage received;
  received.frames = ParseFrames(data, size);
  try {
    return Message::Decode(std::move(received), FuzzLimits());
  } catch (const DecodeError&) {
    return std::nullopt;
  }
}

// Reads every byte (the sum is returned so the reads cannot be optimised away).
inline uint64_t Touch(const std::byte* data, size_t size) {
  uint64_t sum = 0;
  for (size_t i = 0; i < size; ++i) sum += static_cast<uint8_t>(data[i]);
  return sum;
}
inline uint64_t Touch(const Buffer& b) { return Touch(b.data(), b.size()); }

// Calls `f`, accepting only DecodeError(kTypeMismatch) (asking a value for a kind it
// is not). Any other exception escapes and the fuzzer reports it.
template <class F>
void Tolerant(F&& f) {
  try {
    f();
  } catch (const DecodeError& e) {
    if (e.code() != DecodeError::Code::kTypeMismatch) throw;
  }
}

template <class T>
uint64_t TouchTyped(const Tensor& t) {
  TensorView<const T> view(t);
  return Touch(reinterpret_cast<const std::byte*>(view.data()), view.size() * sizeof(T));
}

// AsTensor and AsBytes on a value, whatever its kind; typed views of tensors.
inline uint64_t Payloads(const Value& v) {
  uint64_t sum = 0;
  Tolerant([&] { sum += Touch(v.AsBytes()); });
  Tolerant([&] {
    Tensor t = v.AsTensor();
    sum += Touch(t.data()) + t.size() + t.shape().size();
    switch (t.dtype()) {
      case DType::kFloat64: sum += TouchTyped<double>(t); break;
      case DType::kFloat32: sum += TouchTyped<float>(t); break;
      case DType::kInt64: sum += TouchTyped<int64_t>(t); break;
      case DType::kInt32: sum += TouchTyped<int32_t>(t); break;
      case DType::kUInt16: sum += TouchTyped<uint16_t>(t); break;
      case DType::kComplex128: sum += TouchTyped<std::complex<double>>(t); break;
      default: break;
    }
  });
  Tolerant([&] { sum += Touch(v.TensorBytes()) + v.TensorIsZeroCopy() + v.InFrame(); });
  Tolerant([&] { sum += v.dtype() == DType::kBool; });
  Tolerant([&] { sum += v.shape().size(); });
  return sum;
}

// Every accessor of every value, recursively (the walk is bounded by the decoder's
// depth limit).
inline uint64_t Walk(const Value& v, int depth = 0) {
  uint64_t sum = v.Describe().size() + static_cast<uint64_t>(v.kind()) + v.is_null();
  Tolerant([&] { sum += v.AsBool(); });
  Tolerant([&] { sum += static_cast<uint64_t>(v.AsInt()); });
  Tolerant([&] { sum += v.AsUInt(); });
  Tolerant([&] { sum += v.AsDouble() != 0; });
  Tolerant([&] { sum += v.AsText().size(); });
  Tolerant([&] { sum += v.extension_name().size() + Walk(v.extension_state(), depth + 1); });
  sum += Payloads(v);
  Tolerant([&] {
    size_t n = v.size();
    if (v.kind() == Kind::kList) {
      for (size_t i = 0; i < n; ++i) sum += Walk(v[i], depth + 1);
    } else {
      for (size_t i = 0; i < n; ++i) sum += Walk(v.key(i), depth + 1) + Walk(v.value(i), depth + 1);
      sum += v.Find("key").has_value();
    }
  });
  // The resolved-once views must agree with the per-index accessors.
  Tolerant([&] {
    ValueList list = v.AsList();
    size_t i = 0;
    for (Value element : list) {
      if (element.kind() != v[i].kind()) __builtin_trap();
      ++i;
    }
    if (i != v.size()) __builtin_trap();
  });
  Tolerant([&] {
    ValueMap map = v.AsMap();
    if (map.size() != v.size()) __builtin_trap();
    for (size_t i = 0; i < map.size(); ++i) {
      if (map.key(i).kind() != v.key(i).kind() || map.value(i).kind() != v.value(i).kind()) __builtin_trap();
    }
    size_t i = 0;
    for (auto [key, value] : map) {
      if (key.kind() != map.key(i).kind() || value.kind() != map.value(i).kind()) __builtin_trap();
      ++i;
    }
  });
  // Built-in codecs over whatever the value is.
  Tolerant([&] { sum += v.As<std::string>().size(); });
  Tolerant([&] { sum += v.As<std::vector<double>>().size(); });
  Tolerant([&] { sum += v.As<std::vector<int64_t>>().size(); });
  Tolerant([&] { sum += v.As<std::optional<int64_t>>().has_value(); });
  return sum;
}

inline uint64_t WalkMessage(const Message& m, bool deep) {
  uint64_t sum = m.message_id() + m.session_id() + m.sequence() + m.envelope_copied();
  auto visit = [&](const Value& v) { sum += deep ? Walk(v) : Payloads(v); };
  switch (m.body_kind()) {
    case BodyKind::kApply:
      sum += m.function().size() + m.timeout_ms();
      for (size_t i = 0; i < m.arg_count(); ++i) visit(m.arg(i));
      for (size_t i = 0; i < m.kwarg_count(); ++i) {
        sum += m.kwarg_name(i).size();
        visit(m.kwarg(i));
      }
      break;
    case BodyKind::kResult:
      sum += m.call_id() + m.engine_id().size();
      if (m.ok()) {
        visit(m.result());
      } else {
        RemoteErrorInfo e = m.error();
        sum += e.type.size() + e.message.size() + e.function.size() + e.where.size();
      }
      break;
    default: break;
  }
  return sum;
}

}  // namespace zerocan::fuzz
