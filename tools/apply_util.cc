#include "tools/apply_util.h"

#include <cctype>
#include <cmath>
#include <complex>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "zerocan/dtype.h"
#include "zerocan/error.h"
#include "zerocan/policy.h"
#include "zerocan/tensor.h"

namespace zerocan::tools {

namespace {

bool IsNumber(const nlohmann::json& j) { return j.is_number(); }

template <class T>
Buffer FillArray(const nlohmann::json& data) {
  std::vector<T> out;
  out.reserve(data.size());
  for (const auto& e : data) {
    if (!e.is_number() && !e.is_boolean()) {
      throw Error("tensor data must be numbers, got " + e.dump());
    }
    out.push_back(e.is_boolean() ? static_cast<T>(e.get<bool>()) : e.get<T>());
  }
  return Buffer::Adopt(std::move(out));
}

void WriteTensorJson(ValueWriter& w, const nlohmann::json& j) {
  std::string name = j.at("dtype").get<std::string>();
  std::optional<DType> dtype = DTypeFromName(name);
  if (!dtype) throw Error("unknown dtype \"" + name + "\"");
  const nlohmann::json& data = j.at("data");
  if (!data.is_array()) throw Error("tensor \"data\" must be an array");
  Shape shape;
  if (j.contains("shape")) {
    for (const auto& d : j.at("shape")) shape.push_back(d.get<uint64_t>());
  } else {
    shape.push_back(data.size());
  }
  Buffer bytes;
  switch (*dtype) {
    case DType::kBool: bytes = FillArray<uint8_t>(data); break;
    case DType::kInt8: bytes = FillArray<int8_t>(data); break;
    case DType::kInt16: bytes = FillArray<int16_t>(data); break;
    case DType::kInt32: bytes = FillArray<int32_t>(data); break;
    case DType::kInt64: bytes = FillArray<int64_t>(data); break;
    case DType::kUInt8: bytes = FillArray<uint8_t>(data); break;
    case DType::kUInt16: bytes = FillArray<uint16_t>(data); break;
    case DType::kUInt32: bytes = FillArray<uint32_t>(data); break;
    case DType::kUInt64: bytes = FillArray<uint64_t>(data); break;
    case DType::kFloat32: bytes = FillArray<float>(data); break;
    case DType::kFloat64: bytes = FillArray<double>(data); break;
    default: throw Error("zerocan call cannot write " + name + " tensors from JSON");
  }
  w.Array(*dtype, shape, std::move(bytes));
}

template <class T>
void AppendElements(const Tensor& t, size_t n, nlohmann::ordered_json* out) {
  const T* p = t.data_as<T>();
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, std::complex<float>> || std::is_same_v<T, std::complex<double>>) {
      out->push_back({p[i].real(), p[i].imag()});
    } else {
      out->push_back(p[i]);
    }
  }
}

nlohmann::ordered_json TensorJson(const Value& v, size_t limit) {
  nlohmann::ordered_json out;
  out["dtype"] = std::string(DTypeName(v.dtype()));
  nlohmann::ordered_json shape = nlohmann::ordered_json::array();
  for (uint64_t d : v.shape()) shape.push_back(d);
  out["shape"] = shape;
  Tensor t = v.AsTensor();
  uint64_t count = t.size();
  size_t n = limit == 0 || count <= limit ? count : limit;
  nlohmann::ordered_json data = nlohmann::ordered_json::array();
  switch (t.dtype()) {
    case DType::kBool: {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(t.data().data());
      for (size_t i = 0; i < n; ++i) data.push_back(p[i] != 0);
      break;
    }
    case DType::kInt8: AppendElements<int8_t>(t, n, &data); break;
    case DType::kInt16: AppendElements<int16_t>(t, n, &data); break;
    case DType::kInt32: AppendElements<int32_t>(t, n, &data); break;
    case DType::kInt64: AppendElements<int64_t>(t, n, &data); break;
    case DType::kUInt8: AppendElements<uint8_t>(t, n, &data); break;
    case DType::kUInt16: AppendElements<uint16_t>(t, n, &data); break;
    case DType::kUInt32: AppendElements<uint32_t>(t, n, &data); break;
    case DType::kUInt64: AppendElements<uint64_t>(t, n, &data); break;
    case DType::kFloat32: AppendElements<float>(t, n, &data); break;
    case DType::kFloat64: AppendElements<double>(t, n, &data); break;
    case DType::kComplex64: AppendElements<std::complex<float>>(t, n, &data); break;
    case DType::kComplex128: AppendElements<std::complex<double>>(t, n, &data); break;
    case DType::kFloat16: {
      std::vector<double> all = v.As<std::vector<double>>();
      for (size_t i = 0; i < n; ++i) data.push_back(all[i]);
      break;
    }
  }
  out["data"] = std::move(data);
  if (n < count) out["elided"] = count - n;
  return out;
}

// nlohmann's DOM builder, stopping at an integer that does not keep its value and noting
// where a parse error stands. The parser calls these members through the static type, so
// hiding them is enough.
class ExactJsonSax : public nlohmann::detail::json_sax_dom_parser<nlohmann::json> {
 public:
  explicit ExactJsonSax(nlohmann::json& root)
      : json_sax_dom_parser(root, /*allow_exceptions=*/false) {}

  bool number_float(double value, const std::string& text) {
    if (text.find_first_of(".eE") == std::string::npos) {
      refused_ = text + " is an integer beyond 64 bits (int64 and uint64 hold " +
                 std::to_string(std::numeric_limits<int64_t>::min()) + " to " +
                 std::to_string(std::numeric_limits<uint64_t>::max()) + ")";
      return false;
    }
    return json_sax_dom_parser::number_float(value, text);
  }

  template <class Exception>
  bool parse_error(size_t position, const std::string& last_token, const Exception& e) {
    error_position_ = position;
    return json_sax_dom_parser::parse_error(position, last_token, e);
  }

  const std::string& refused() const { return refused_; }
  // Characters read when the parse failed: the offending one is the last of them.
  size_t error_position() const { return error_position_; }

 private:
  std::string refused_;
  size_t error_position_ = 0;
};

// What is wrong when the JSON parse failed on the character before text[position], if that
// stands in a word strtod reads whole as a number (NaN, Infinity, 1e400, +1, 0x10); else "".
std::string NumberJsonCannotHold(std::string_view text, size_t position) {
  auto in_word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '+' || c == '-';
  };
  if (position == 0 || position > text.size() || !in_word(text[position - 1])) return {};
  size_t start = position - 1, end = position;
  while (start > 0 && in_word(text[start - 1])) --start;
  while (end < text.size() && in_word(text[end])) ++end;
  std::string word(text.substr(start, end - start));
  char* parsed_end = nullptr;
  double value = std::strtod(word.c_str(), &parsed_end);
  if (parsed_end != word.c_str() + word.size()) return {};
  if (std::isfinite(value)) return word + " is not a number as JSON writes it";
  if (word.find_first_of("nNiI") == std::string::npos) {
    return word + " is beyond the float64 range (magnitude up to about 1.8e308)";
  }
  return word + " is not a finite number; JSON has none";
}

bool HasNonFinite(const nlohmann::ordered_json& j) {
  if (j.is_number_float()) return !std::isfinite(j.get<double>());
  if (!j.is_structured()) return false;
  for (const auto& e : j) {
    if (HasNonFinite(e)) return true;
  }
  return false;
}

void AppendJson(const nlohmann::ordered_json& j, std::string* out) {
  constexpr auto kReplace = nlohmann::ordered_json::error_handler_t::replace;
  if (j.is_number_float() && !std::isfinite(j.get<double>())) {
    double d = j.get<double>();
    *out += std::isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity";
  } else if (j.is_array()) {
    *out += '[';
    bool first = true;
    for (const auto& e : j) {
      if (!first) *out += ',';
      first = false;
      AppendJson(e, out);
    }
    *out += ']';
  } else if (j.is_object()) {
    *out += '{';
    bool first = true;
    for (const auto& [key, value] : j.items()) {
      if (!first) *out += ',';
      first = false;
      *out += nlohmann::ordered_json(key).dump(-1, ' ', false, kReplace);
      *out += ':';
      AppendJson(value, out);
    }
    *out += '}';
  } else {
    *out += j.dump(-1, ' ', false, kReplace);
  }
}

}  // namespace

std::optional<nlohmann::json> ParseExactJson(std::string_view text) {
  nlohmann::json root;
  ExactJsonSax sax(root);
  bool parsed = nlohmann::json::sax_parse(text, &sax);
  if (!sax.refused().empty()) throw std::invalid_argument(sax.refused());
  if (!parsed || sax.is_errored()) {
    std::string refused = NumberJsonCannotHold(text, sax.error_position());
    if (!refused.empty()) throw std::invalid_argument(refused);
    return std::nullopt;
  }
  return root;
}

std::string DumpJson(const nlohmann::ordered_json& j) {
  if (!HasNonFinite(j)) {
    return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
  std::string out;
  AppendJson(j, &out);
  return out;
}

void WriteJson(ValueWriter& w, const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return w.Null();
    case nlohmann::json::value_t::boolean: return w.Bool(j.get<bool>());
    case nlohmann::json::value_t::number_integer: return w.Int(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return w.Int(static_cast<int64_t>(u));
      }
      return w.UInt(u);
    }
    case nlohmann::json::value_t::number_float: return w.Float(j.get<double>());
    case nlohmann::json::value_t::string: return w.Text(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      bool numbers = !j.empty();
      bool all_int = true;
      for (const auto& e : j) {
        numbers = numbers && IsNumber(e);
        if (e.is_number_float()) all_int = false;
        if (e.is_number_unsigned() &&
            e.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          numbers = false;
        }
      }
      if (numbers) {
        if (all_int) {
          std::vector<int64_t> v;
          for (const auto& e : j) v.push_back(e.get<int64_t>());
          return w.Write(std::move(v));
        }
        std::vector<double> v;
        for (const auto& e : j) v.push_back(e.get<double>());
        return w.Write(std::move(v));
      }
      ListWriter list = w.List(j.size());
      size_t i = 0;
      for (const auto& e : j) {
        ValueWriter item = list[i++];
        WriteJson(item, e);
      }
      return;
    }
    case nlohmann::json::value_t::object: {
      if (j.contains("dtype") && j.contains("data") &&
          j.size() == (j.contains("shape") ? 3u : 2u)) {
        return WriteTensorJson(w, j);
      }
      MapWriter map = w.Map(j.size());
      size_t i = 0;
      for (const auto& [key, value] : j.items()) {
        map.key(i).Text(key);
        ValueWriter item = map.value(i);
        WriteJson(item, value);
        ++i;
      }
      return;
    }
    default: throw Error("cannot send JSON value " + j.dump());
  }
}

nlohmann::ordered_json ToJson(const Value& v, size_t limit) {
  switch (v.kind()) {
    case Kind::kNull: return nullptr;
    case Kind::kBool: return v.AsBool();
    case Kind::kInt: return v.AsInt();
    case Kind::kUInt: return v.AsUInt();
    case Kind::kFloat: return v.AsDouble();
    case Kind::kText: return std::string(v.AsText());
    case Kind::kBytes: {
      Buffer b = v.AsBytes();
      size_t n = limit == 0 || b.size() <= limit ? b.size() : limit;
      static const char kHex[] = "0123456789abcdef";
      std::string hex;
      for (size_t i = 0; i < n; ++i) {
        auto c = static_cast<uint8_t>(b.data()[i]);
        hex += kHex[c >> 4];
        hex += kHex[c & 15];
      }
      nlohmann::ordered_json out = {{"bytes", b.size()}, {"hex", hex}};
      if (n < b.size()) out["elided"] = b.size() - n;
      return out;
    }
    case Kind::kList: {
      nlohmann::ordered_json out = nlohmann::ordered_json::array();
      for (size_t i = 0; i < v.size(); ++i) out.push_back(ToJson(v[i], limit));
      return out;
    }
    case Kind::kMap: {
      bool text_keys = true;
      for (size_t i = 0; i < v.size(); ++i) text_keys = text_keys && v.key(i).kind() == Kind::kText;
      if (text_keys) {
        nlohmann::ordered_json out = nlohmann::ordered_json::object();
        for (size_t i = 0; i < v.size(); ++i) {
          out[std::string(v.key(i).AsText())] = ToJson(v.value(i), limit);
        }
        return out;
      }
      nlohmann::ordered_json pairs = nlohmann::ordered_json::array();
      for (size_t i = 0; i < v.size(); ++i) {
        pairs.push_back({ToJson(v.key(i), limit), ToJson(v.value(i), limit)});
      }
      return {{"map", pairs}};
    }
    case Kind::kTensor: return TensorJson(v, limit);
    case Kind::kExtension:
      return {{"extension", std::string(v.extension_name())},
              {"state", ToJson(v.extension_state(), limit)}};
  }
  return nullptr;
}

void BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForStopSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

int WaitForStopSignal(const std::function<void()>& tick) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  const timespec second{1, 0};
  while (true) {
    int sig = sigtimedwait(&set, nullptr, &second);
    if (sig > 0) return sig;
    tick();  // EAGAIN: a second passed (or EINTR)
  }
}

void IdleMemoryReturn::Tick() {
  uint64_t free_bytes = HeapFreeBytes();
  if (free_bytes < min_bytes_) {  // in use again
    quiet_ = 0;
    released_free_ = 0;
    return;
  }
  // Free memory already returned stays counted as free: only what was freed since counts
  // (a smaller step than the first: the tail of a burst is freed after its bulk).
  if (released_free_ > 0 && free_bytes < released_free_ + min_bytes_ / 8) return;
  if (++quiet_ < quiet_ticks_) return;
  ReleaseFreeMemory();
  ++releases_;
  quiet_ = 0;
  released_free_ = free_bytes;
}

}  // namespace zerocan::tools
