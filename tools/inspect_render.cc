// Inspector: frame tables, envelope text and payload summaries for captured messages,
// as `zerocan inspect` prints them (the library only reads and decodes captures).
//
// Safety: a record's bytes reach Cap'n Proto only through Message::Decode (bounded
// reader, full walk). Everything printed afterwards reads the decoded message through
// the generated schema's reflection (capnp/dynamic.h) and zerocan::Value; those reads
// cannot fail on a message Decode accepted, but the whole rendering still sits inside
// one catch so that a bug here shows as a line of output, never as a crash.
#include "tools/inspect_render.h"

#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <complex>
#include <cstring>
#include <ctime>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "internal/kj_bridge.h"
#include "internal/strings.h"
#include "zerocan/dtype.h"
#include "zerocan/error.h"
#include "zerocan/tensor.h"
#include "zerocan/generated.h"
#include "zerocan/value.h"
#include "zerocan/version.h"
#include "zerocan/wire/zerocan.capnp.h"

#if __has_include("zerocan/signing.h")
#include "zerocan/signing.h"
#define ZEROCAN_INSPECT_SIGNING 1
#endif

namespace zerocan::tools {

namespace {

using nlohmann::json;
using internal::Sv;

constexpr size_t kWidth = 96;  // envelope text: wrap a struct or list wider than this

// ---- small formatting helpers ------------------------------------------------------------

std::string FormatDouble(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}
std::string FormatFloat(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant == 0 ? INFINITY : NAN;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

std::string Hex(const std::byte* p, size_t n, const char* sep) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (i != 0) out += sep;
    auto b = static_cast<unsigned>(p[i]);
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

// Cap'n Proto text style quoting; control bytes escaped so a capture cannot drive the
// terminal.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static const char kDigits[] = "0123456789abcdef";
          out += "\\x";
          out += kDigits[c >> 4];
          out += kDigits[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

// Control bytes of untrusted text escaped, the rest kept (for text that is not quoted).
std::string Printable(std::string_view s) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kDigits[c >> 4];
      out += kDigits[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string IsoTime(uint64_t ns) {
  if (ns == 0) return "time unknown";
  std::time_t secs = static_cast<std::time_t>(ns / 1000000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%09lluZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<unsigned long long>(ns % 1000000000));
  return buf;
}

std::string CodeName(DecodeError::Code code) {
  switch (code) {
    case DecodeError::Code::kMalformed: return "malformed";
    case DecodeError::Code::kLimitExceeded: return "limit exceeded";
    case DecodeError::Code::kTypeMismatch: return "type mismatch";
    case DecodeError::Code::kVersion: return "version";
  }
  return "unknown";
}

// DecodeError messages read "<field path>: <what>"; the path has no spaces.
std::string PathOf(const std::string& reason) {
  size_t colon = reason.find(": ");
  if (colon == std::string::npos || colon == 0) return "";
  std::string head = reason.substr(0, colon);
  if (head.rfind("envelope (frame", 0) == 0) return "envelope";
  if (head.find(' ') != std::string::npos) return "";
  return head;
}

std::string Plural(uint64_t n, const char* one, const char* many) {
  return absl::StrCat(n, " ", n == 1 ? one : many);
}

// ---- envelope as text and JSON through reflection -------------------------------------------

std::string_view ToView(capnp::Text::Reader t) { return {t.begin(), t.size()}; }

bool IsUnionMember(const capnp::StructSchema::Field& f) {
  return f.getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT;
}

// The fields worth showing, in code order: the active union member, groups, and
// non-union fields that differ from their default.
std::vector<capnp::StructSchema::Field> ShownFields(capnp::DynamicStruct::Reader s) {
  std::vector<capnp::StructSchema::Field> out;
  kj::Maybe<capnp::StructSchema::Field> active = s.which();
  for (auto field : s.getSchema().getFields()) {
    if (IsUnionMember(field)) {
      KJ_IF_MAYBE(a, active) {
        if (a->getIndex() == field.getIndex()) out.push_back(field);
      }
    } else if (field.getProto().isGroup() || s.has(field, capnp::HasMode::NON_DEFAULT)) {
      out.push_back(field);
    } else if (field.getType().isEnum() && field.getProto().getName() == "dtype") {
      // A tensor's dtype defaults to bool, a real element type: a reader should not
      // have to know the default to see it.
      out.push_back(field);
    }
  }
  return out;
}

class TextPrinter {
 public:
  explicit TextPrinter(const InspectOptions& options) : o_(options) {}

  void Pretty(capnp::DynamicValue::Reader v, size_t indent, std::string* out) {
    std::string flat;
    if (Flat(v, &flat, indent < kWidth ? kWidth - indent : 20)) {
      *out += flat;
      return;
    }
    std::string pad(indent + 2, ' ');
    if (v.getType() == capnp::DynamicValue::STRUCT) {
      auto s = v.as<capnp::DynamicStruct>();
      auto fields = ShownFields(s);
      *out += "(\n";
      for (size_t i = 0; i < fields.size(); ++i) {
        auto name = fields[i].getProto().getName();
        absl::StrAppend(out, pad, Sv(std::string_view(name.cStr(), name.size())), " = ");
        Pretty(s.get(fields[i]), indent + 2, out);
        *out += i + 1 < fields.size() ? ",\n" : "\n";
      }
      absl::StrAppend(out, std::string(indent, ' '), ")");
      return;
    }
    if (v.getType() == capnp::DynamicValue::LIST) {
      auto list = v.as<capnp::DynamicList>();
      size_t n = list.size(), shown = o_.full ? n : std::min(n, o_.max_list);
      *out += "[\n";
      for (size_t i = 0; i < shown; ++i) {
        *out += pad;
        Pretty(list[static_cast<unsigned>(i)], indent + 2, out);
        *out += i + 1 < n ? ",\n" : "\n";
      }
      if (shown < n) absl::StrAppend(out, pad, "... (", n - shown, " more)\n");
      absl::StrAppend(out, std::string(indent, ' '), "]");
      return;
    }
    *out += flat;  // a long scalar (text, data): printed whole even past the width
  }

  // Renders `v` on one line; false (with `out` partial) once it passes `budget`.
  // Scalars always succeed.
  bool Flat(capnp::DynamicValue::Reader v, std::string* out, size_t budget) {
    switch (v.getType()) {
      case capnp::DynamicValue::VOID: *out += "void"; return true;
      case capnp::DynamicValue::BOOL: *out += v.as<bool>() ? "true" : "false"; return true;
      case capnp::DynamicValue::INT: absl::StrAppend(out, v.as<int64_t>()); return true;
      case capnp::DynamicValue::UINT: absl::StrAppend(out, v.as<uint64_t>()); return true;
      case capnp::DynamicValue::FLOAT: *out += FormatDouble(v.as<double>()); return true;
      case capnp::DynamicValue::TEXT: {
        std::string_view t = ToView(v.as<capnp::Text>());
        if (!o_.full && t.size() > o_.max_text) {
          absl::StrAppend(out, Quote(t.substr(0, o_.max_text)), "...(", t.size(), " bytes)");
        } else {
          *out += Quote(t);
        }
        return true;
      }
      case capnp::DynamicValue::DATA: {
        auto d = v.as<capnp::Data>();
        const auto* p = reinterpret_cast<const std::byte*>(d.begin());
        if (!o_.full && d.size() > o_.max_bytes) {
          absl::StrAppend(out, "0x\"", Hex(p, o_.max_bytes, ""), "...\" (", d.size(), " bytes)");
        } else {
          absl::StrAppend(out, "0x\"", Hex(p, d.size(), ""), "\"");
        }
        return true;
      }
      case capnp::DynamicValue::ENUM: {
        auto e = v.as<capnp::DynamicEnum>();
        KJ_IF_MAYBE(en, e.getEnumerant()) {
          auto name = en->getProto().getName();
          out->append(name.cStr(), name.size());
        } else {
          absl::StrAppend(out, e.getRaw());
        }
        return true;
      }
      case capnp::DynamicValue::STRUCT: {
        auto s = v.as<capnp::DynamicStruct>();
        *out += "(";
        bool first = true;
        for (auto field : ShownFields(s)) {
          if (!first) *out += ", ";
          first = false;
          auto name = field.getProto().getName();
          out->append(name.cStr(), name.size());
          *out += " = ";
          if (!Flat(s.get(field), out, budget) || out->size() > budget) return false;
        }
        *out += ")";
        return out->size() <= budget;
      }
      case capnp::DynamicValue::LIST: {
        auto list = v.as<capnp::DynamicList>();
        size_t n = list.size(), shown = o_.full ? n : std::min(n, o_.max_list);
        *out += "[";
        for (size_t i = 0; i < shown; ++i) {
          if (i != 0) *out += ", ";
          if (!Flat(list[static_cast<unsigned>(i)], out, budget) || out->size() > budget) {
            return false;
          }
        }
        if (shown < n) absl::StrAppend(out, ", ... (", n - shown, " more)");
        *out += "]";
        return out->size() <= budget;
      }
      default: *out += "<opaque>"; return true;
    }
  }

 private:
  const InspectOptions& o_;
};

json ToJson(capnp::DynamicValue::Reader v, const InspectOptions& o) {
  switch (v.getType()) {
    case capnp::DynamicValue::VOID: return nullptr;
    case capnp::DynamicValue::BOOL: return v.as<bool>();
    case capnp::DynamicValue::INT: return v.as<int64_t>();
    case capnp::DynamicValue::UINT: return v.as<uint64_t>();
    case capnp::DynamicValue::FLOAT: return v.as<double>();
    case capnp::DynamicValue::TEXT: {
      std::string_view t = ToView(v.as<capnp::Text>());
      if (!o.full && t.size() > o.max_text) {
        return json{{"text", std::string(t.substr(0, o.max_text))}, {"bytes", t.size()},
                    {"complete", false}};
      }
      return std::string(t);
    }
    case capnp::DynamicValue::DATA: {
      auto d = v.as<capnp::Data>();
      size_t shown = o.full ? d.size() : std::min(d.size(), o.max_bytes);
      return json{{"bytes", d.size()},
                  {"hex", Hex(reinterpret_cast<const std::byte*>(d.begin()), shown, "")},
                  {"complete", shown == d.size()}};
    }
    case capnp::DynamicValue::ENUM: {
      auto e = v.as<capnp::DynamicEnum>();
      KJ_IF_MAYBE(en, e.getEnumerant()) { return std::string(en->getProto().getName().cStr()); }
      return e.getRaw();
    }
    case capnp::DynamicValue::STRUCT: {
      auto s = v.as<capnp::DynamicStruct>();
      json obj = json::object();
      for (auto field : ShownFields(s)) {
        obj[field.getProto().getName().cStr()] = ToJson(s.get(field), o);
      }
      return obj;
    }
    case capnp::DynamicValue::LIST: {
      auto list = v.as<capnp::DynamicList>();
      size_t n = list.size(), shown = o.full ? n : std::min(n, o.max_list);
      json arr = json::array();
      for (size_t i = 0; i < shown; ++i) arr.push_back(ToJson(list[static_cast<unsigned>(i)], o));
      if (shown < n) arr.push_back(json{{"more", n - shown}});
      return arr;
    }
    default: return "<opaque>";
  }
}

// ---- payloads -------------------------------------------------------------------------------

struct FrameRow {
  std::string role;
  uint64_t size = 0;
  std::set<uint64_t> align;          // data offsets mod 8 of the payloads it holds
  std::vector<std::string> refs;     // value paths that refer to it
};

struct PayloadRow {
  std::string path;
  std::string kind;                  // "bytes" or "tensor"
  uint64_t bytes = 0;
  bool in_frame = false;
  size_t frame = 0;                  // index in the record's frames
  uint32_t ref_index = 0;            // FrameRef.index (1 = first payload frame)
  uint64_t offset = 0;               // within the frame, or within the envelope when inline
  bool offset_known = true;
  std::string arena;                 // Payload.shared: the arena named (offset within it)
  std::string dtype, order, byte_order, packing;
  Shape shape;
  std::string access;                // "view" or "copy (...)"
  std::vector<std::string> first;    // first values, formatted
  json first_json = json::array();
  bool complete = true;              // all values / bytes shown
};

struct Context {
  const InspectOptions& o;
  const Message& message;
  size_t first_message_frame;
  std::vector<FrameRow>* frames;
  std::vector<PayloadRow>* payloads;
  size_t inline_payloads = 0;
};

std::string_view PackingName(wire::Packing p) {
  switch (p) {
    case wire::Packing::NONE: return "none";
    case wire::Packing::INT8: return "int8";
    case wire::Packing::INT16: return "int16";
    case wire::Packing::INT32: return "int32";
    case wire::Packing::UINT8: return "uint8";
    case wire::Packing::UINT16: return "uint16";
    case wire::Packing::UINT32: return "uint32";
  }
  return "unknown";
}

void Place(Context& c, wire::Payload::Reader payload, PayloadRow* row) {
  if (payload.isShared()) {
    auto ref = payload.getShared();
    row->arena.assign(ref.getArena().begin(), ref.getArena().size());
    row->offset = ref.getOffset();
    row->bytes = ref.getLength();
    row->access = "shared memory, not read here";
    row->complete = false;
  } else if (payload.isFrame()) {
    auto ref = payload.getFrame();
    row->in_frame = true;
    row->ref_index = ref.getIndex();
    row->frame = c.first_message_frame + ref.getIndex();
    row->offset = ref.getOffset();
    FrameRow& f = (*c.frames)[row->frame];
    f.align.insert(row->offset % 8);
    f.refs.push_back(row->path);
  } else {
    ++c.inline_payloads;
    auto data = payload.getInline();
    if (c.message.envelope_copied()) {
      row->offset_known = false;
    } else {
      const auto* base = reinterpret_cast<const unsigned char*>(c.message.frames()[0].data());
      row->offset = static_cast<uint64_t>(reinterpret_cast<const unsigned char*>(data.begin()) - base);
    }
  }
}

// Element i of raw wire bytes: memcpy (the data may sit at any offset), then a byte
// swap for big-endian data. Reading the wire bytes directly, rather than through
// Value::AsTensor(), means a packed, swapped or misaligned tensor costs only the values
// shown, not a converted copy of the whole payload.
template <class T>
T ReadElement(const std::byte* p, size_t i, bool swap) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, p + i * sizeof(T), sizeof(T));
  if (swap) std::reverse(bytes, bytes + sizeof(T));
  T v;
  std::memcpy(&v, bytes, sizeof(T));
  return v;
}

template <class T>
void AppendValues(const std::byte* p, size_t n, bool swap, PayloadRow* row) {
  for (size_t i = 0; i < n; ++i) {
    T v = ReadElement<T>(p, i, swap);
    if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t>) {
      row->first.push_back(absl::StrCat(static_cast<int>(v)));
      row->first_json.push_back(static_cast<int>(v));
    } else if constexpr (std::is_same_v<T, float>) {
      row->first.push_back(FormatFloat(v));
      row->first_json.push_back(v);
    } else if constexpr (std::is_same_v<T, double>) {
      row->first.push_back(FormatDouble(v));
      row->first_json.push_back(v);
    } else {
      row->first.push_back(absl::StrCat(v));
      row->first_json.push_back(v);
    }
  }
}

template <class T>
void AppendComplex(const std::byte* p, size_t n, bool swap, PayloadRow* row) {
  for (size_t i = 0; i < n; ++i) {
    T re = ReadElement<T>(p, 2 * i, swap), im = ReadElement<T>(p, 2 * i + 1, swap);
    std::string r = sizeof(T) == 4 ? FormatFloat(static_cast<float>(re)) : FormatDouble(re);
    std::string m = sizeof(T) == 4 ? FormatFloat(static_cast<float>(im)) : FormatDouble(im);
    row->first.push_back(absl::StrCat(r, std::signbit(im) ? "" : "+", m, "j"));
    row->first_json.push_back(json::array({re, im}));
  }
}

void FirstValues(const Context& c, const Value& v, PayloadRow* row) {
  auto t = GeneratedValue(v).getTensor();
  Buffer raw = v.TensorBytes();  // checked by Decode: shape x item size == length
  const std::byte* p = raw.data();
  bool swap = t.getByteOrder() == wire::ByteOrder::BIG;
  uint64_t count = ElementCount(v.shape()).value_or(0);
  size_t n = c.o.full ? static_cast<size_t>(count)
                      : static_cast<size_t>(std::min<uint64_t>(count, c.o.max_values));
  row->complete = n == count;
  // Packed integers are read as stored (the narrower type) and shown as their values.
  switch (t.getPacking()) {
    case wire::Packing::INT8: return AppendValues<int8_t>(p, n, swap, row);
    case wire::Packing::INT16: return AppendValues<int16_t>(p, n, swap, row);
    case wire::Packing::INT32: return AppendValues<int32_t>(p, n, swap, row);
    case wire::Packing::UINT8: return AppendValues<uint8_t>(p, n, swap, row);
    case wire::Packing::UINT16: return AppendValues<uint16_t>(p, n, swap, row);
    case wire::Packing::UINT32: return AppendValues<uint32_t>(p, n, swap, row);
    default: break;
  }
  switch (v.dtype()) {
    case DType::kBool:
      for (size_t i = 0; i < n; ++i) {
        bool b = static_cast<uint8_t>(p[i]) != 0;
        row->first.push_back(b ? "true" : "false");
        row->first_json.push_back(b);
      }
      break;
    case DType::kInt8: AppendValues<int8_t>(p, n, swap, row); break;
    case DType::kInt16: AppendValues<int16_t>(p, n, swap, row); break;
    case DType::kInt32: AppendValues<int32_t>(p, n, swap, row); break;
    case DType::kInt64: AppendValues<int64_t>(p, n, swap, row); break;
    case DType::kUInt8: AppendValues<uint8_t>(p, n, swap, row); break;
    case DType::kUInt16: AppendValues<uint16_t>(p, n, swap, row); break;
    case DType::kUInt32: AppendValues<uint32_t>(p, n, swap, row); break;
    case DType::kUInt64: AppendValues<uint64_t>(p, n, swap, row); break;
    case DType::kFloat16:
      for (size_t i = 0; i < n; ++i) {
        float f = HalfToFloat(ReadElement<uint16_t>(p, i, swap));
        row->first.push_back(FormatFloat(f));
        row->first_json.push_back(f);
      }
      break;
    case DType::kFloat32: AppendValues<float>(p, n, swap, row); break;
    case DType::kFloat64: AppendValues<double>(p, n, swap, row); break;
    case DType::kComplex64: AppendComplex<float>(p, n, swap, row); break;
    case DType::kComplex128: AppendComplex<double>(p, n, swap, row); break;
  }
}

void Walk(Context& c, const Value& v, const std::string& path, uint32_t depth) {
  if (depth > c.o.limits.max_depth) return;  // Decode enforced it; belt and braces
  switch (v.kind()) {
    case Kind::kBytes: {
      PayloadRow row;
      row.path = path;
      row.kind = "bytes";
      auto payload = GeneratedValue(v).getBytes();
      Place(c, payload, &row);
      if (!row.arena.empty()) {
        c.payloads->push_back(std::move(row));
        return;
      }
      Buffer b = v.AsBytes();
      row.bytes = b.size();
      row.access = "view";
      size_t n = c.o.full ? b.size() : std::min(b.size(), c.o.max_bytes);
      row.complete = n == b.size();
      row.first.push_back(Hex(b.data(), n, " "));
      row.first_json = Hex(b.data(), n, "");
      c.payloads->push_back(std::move(row));
      return;
    }
    case Kind::kTensor: {
      PayloadRow row;
      row.path = path;
      row.kind = "tensor";
      auto t = GeneratedValue(v).getTensor();
      Place(c, t.getData(), &row);
      DType dtype = v.dtype();
      row.dtype = std::string(DTypeName(dtype));
      row.shape = v.shape();
      row.order = t.getOrder() == wire::Order::C ? "C" : "Fortran";
      row.byte_order = t.getByteOrder() == wire::ByteOrder::LITTLE ? "little" : "big";
      row.packing = std::string(PackingName(t.getPacking()));
      if (!row.arena.empty()) {
        c.payloads->push_back(std::move(row));
        return;
      }
      row.bytes = v.TensorBytes().size();
      if (t.getPacking() != wire::Packing::NONE) {
        row.access = absl::StrCat("copy (packed as ", Sv(row.packing), ", widened on receive)");
      } else if (t.getByteOrder() != wire::ByteOrder::LITTLE) {
        row.access = "copy (big-endian, swapped on receive)";
      } else if (row.offset_known && row.offset % ItemAlignment(dtype) != 0) {
        row.access = absl::StrCat("copy (data at +", row.offset, " is not aligned for ",
                                  Sv(row.dtype), ")");
      } else {
        row.access = "view";
      }
      FirstValues(c, v, &row);
      c.payloads->push_back(std::move(row));
      return;
    }
    case Kind::kList:
      for (size_t i = 0; i < v.size(); ++i) Walk(c, v[i], absl::StrCat(path, "[", i, "]"), depth + 1);
      return;
    case Kind::kMap:
      for (size_t i = 0; i < v.size(); ++i) {
        Walk(c, v.key(i), absl::StrCat(path, "[", i, "].key"), depth + 1);
        Walk(c, v.value(i), absl::StrCat(path, "[", i, "].value"), depth + 1);
      }
      return;
    case Kind::kExtension:
      Walk(c, v.extension_state(), absl::StrCat(path, ".state"), depth + 1);
      return;
    default: return;
  }
}

// ---- one message ---------------------------------------------------------------------------

struct Inspection {
  const CaptureRecord* record = nullptr;
  uint64_t number = 0;
  std::vector<FrameRow> frames;
  bool ok = false;
  std::string error_code, reason, path;
  Message message;
  std::string kind;                  // "apply", "result", ...
  std::string function;              // apply's function, or the one a result answers
  uint64_t message_id = 0;
  std::optional<uint64_t> call_id;   // results
  std::vector<PayloadRow> payloads;
  size_t inline_payloads = 0;
  std::string envelope_text;
  json envelope_json;
  std::string summary;               // "apply 7 add(2 args, 1 kwarg)"
  // Signature: present? checked? verdict.
  bool signature_present = false;
  std::string signature_verdict;     // "" when not checked
  std::string render_error;          // a bug in this file, shown rather than thrown
};

std::string KindOf(BodyKind kind) {
  switch (kind) {
    case BodyKind::kApply: return "apply";
    case BodyKind::kResult: return "result";
    case BodyKind::kHello: return "hello";
    case BodyKind::kHeartbeat: return "heartbeat";
    case BodyKind::kGoodbye: return "goodbye";
    case BodyKind::kCancel: return "cancel";
    case BodyKind::kCredit: return "credit";
    case BodyKind::kUnknown: return "unknown";
    case BodyKind::kStarted: return "started";
    case BodyKind::kDraining: return "draining";
  }
  return "unknown";
}

void Describe(const InspectOptions& o, size_t first_message_frame, Inspection* in) {
  const Message& m = in->message;
  in->kind = KindOf(m.body_kind());
  in->message_id = m.message_id();
  Context c{o, m, first_message_frame, &in->frames, &in->payloads};
  auto body = GeneratedEnvelope(m).getBody();
  switch (m.body_kind()) {
    case BodyKind::kApply: {
      in->function = std::string(m.function());
      for (size_t i = 0; i < m.arg_count(); ++i) Walk(c, m.arg(i), absl::StrCat("apply.args[", i, "]"), 1);
      for (size_t i = 0; i < m.kwarg_count(); ++i) {
        Walk(c, m.kwarg(i), absl::StrCat("apply.kwargs[", i, "].value"), 1);
      }
      in->summary = absl::StrCat("apply ", in->message_id, " ", Quote(in->function), " (",
                                 Plural(m.arg_count(), "arg", "args"), ", ",
                                 Plural(m.kwarg_count(), "kwarg", "kwargs"), ")");
      break;
    }
    case BodyKind::kResult: {
      in->call_id = m.call_id();
      if (m.ok()) {
        Walk(c, m.result(), "result.ok", 1);
        in->summary = absl::StrCat("result ", in->message_id, " for call ", *in->call_id,
                                   " from ", Quote(m.engine_id()), ": ok ",
                                   Printable(m.result().Describe()));
      } else {
        RemoteErrorInfo e = m.error();
        if (in->function.empty()) in->function = e.function;
        in->summary = absl::StrCat("result ", in->message_id, " for call ", *in->call_id,
                                   " from ", Quote(m.engine_id()), ": error ", Quote(e.type),
                                   " ", Quote(e.message));
      }
      break;
    }
    case BodyKind::kHello: {
      auto h = body.getHello();
      in->summary = absl::StrCat("hello ", in->message_id, " from ", Quote(ToView(h.getPeerId())),
                                 " (", Quote(ToView(h.getRole())), ", ",
                                 Plural(h.getFunctions().size(), "function", "functions"), ")");
      break;
    }
    case BodyKind::kHeartbeat:
      in->summary = absl::StrCat("heartbeat ", in->message_id, " from ",
                                 Quote(ToView(body.getHeartbeat().getPeerId())));
      break;
    case BodyKind::kGoodbye: in->summary = absl::StrCat("goodbye ", in->message_id); break;
    case BodyKind::kStarted:
      in->call_id = m.call_id();
      in->summary = absl::StrCat("started ", in->message_id, " call ", *in->call_id);
      break;
    case BodyKind::kDraining: in->summary = absl::StrCat("draining ", in->message_id); break;
    case BodyKind::kCancel:
      in->summary = absl::StrCat("cancel ", in->message_id, " of call ", m.target_call_id());
      break;
    case BodyKind::kCredit:
      in->summary = absl::StrCat("credit ", in->message_id, ": ", m.credit_items(),
                                 " items for call ", m.target_call_id());
      break;
    case BodyKind::kUnknown: in->summary = "unknown body"; break;
  }
  in->inline_payloads = c.inline_payloads;
  capnp::DynamicStruct::Reader env = GeneratedEnvelope(m);
  if (o.json) {
    in->envelope_json = ToJson(env, o);
  } else {
    TextPrinter printer(o);
    printer.Pretty(env, 4, &in->envelope_text);
  }
}

Inspection Examine(const CaptureRecord& record, const InspectOptions& o) {
  Inspection in;
  in.record = &record;
  FrameSplit split = SplitFrames(record);
  in.frames.resize(record.frames.size());
  for (size_t i = 0; i < record.frames.size(); ++i) {
    in.frames[i].size = record.frames[i].size();
    in.frames[i].role = i < split.routing ? "routing"
                        : (split.has_delimiter && i + 1 == split.first_message_frame)
                            ? "delimiter"
                            : i == split.first_message_frame ? "envelope" : "frame";
  }
  size_t message_frames = record.frames.size() - split.first_message_frame;
  if (message_frames == 0) {
    in.error_code = "malformed";
    in.reason = split.has_delimiter ? "no envelope frame after the delimiter"
                                    : "empty record: no frames";
    return in;
  }
  size_t drop = 0;
#ifdef ZEROCAN_INSPECT_SIGNING
  ReceivedMessage all = ToReceived(record);
  if (all.frames.size() >= 2 && LooksLikeSignature(all.frames.back())) {
    drop = 1;
    in.signature_present = true;
    in.frames.back().role = "signature";
    if (o.signer != nullptr) {
      switch (o.signer->Check(std::span<const Buffer>(all.frames.data(),
                                                              all.frames.size()))) {
        case Signer::Verdict::kOk: in.signature_verdict = "valid"; break;
        case Signer::Verdict::kUnsigned: in.signature_verdict = "unsigned"; break;
        case Signer::Verdict::kBadSignature: in.signature_verdict = "BAD"; break;
      }
    }
  } else if (o.signer != nullptr) {
    in.signature_verdict = "unsigned";
  }
#endif
  try {
    // References into shared memory are listed, not read: the arena they name may be
    // gone, or on another host, by the time a capture is inspected.
    DecodeLimits limits = o.limits;
    if (limits.shared_refs == DecodeLimits::SharedRefs::kRefuse) {
      limits.shared_refs = DecodeLimits::SharedRefs::kDescribe;
    }
    in.message = Message::Decode(ToReceived(record, drop), limits);
    in.ok = true;
  } catch (const DecodeError& e) {
    in.error_code = CodeName(e.code());
    in.reason = e.what();
    in.path = PathOf(in.reason);
    return in;
  } catch (const std::exception& e) {
    in.error_code = "malformed";
    in.reason = e.what();
    return in;
  }
  for (size_t i = split.first_message_frame + 1; i < record.frames.size() - drop; ++i) {
    in.frames[i].role = "payload";
  }
  try {
    internal::CatchKj("inspect", [&] { Describe(o, split.first_message_frame, &in); });
  } catch (const std::exception& e) {
    in.render_error = e.what();
  }
  return in;
}

bool Selected(const InspectOptions& o, const Inspection& in) {
  if (o.function.empty() && !o.id) return true;
  if (!in.ok) return false;
  if (!o.function.empty() && in.function != o.function) return false;
  if (o.id && in.message_id != *o.id && in.call_id != o.id) return false;
  return true;
}

std::string Header(const Inspection& in) {
  const CaptureRecord& r = *in.record;
  std::string out = absl::StrCat("message ", in.number);
  if (r.offset != 0) absl::StrAppend(&out, " at offset ", r.offset);
  absl::StrAppend(&out, ": ", IsoTime(r.time_ns), ", ",
                  r.direction == Direction::kUnknown ? std::string("direction unknown")
                                                     : DirectionName(r.direction));
  if (!r.source.empty()) absl::StrAppend(&out, " from ", Quote(r.source));
  return out;
}

std::string RenderText(const InspectOptions&, const Inspection& in) {
  std::string out = Header(in) + "\n";
  absl::StrAppend(&out, "  frame  role        bytes  align      contents\n");
  for (size_t i = 0; i < in.frames.size(); ++i) {
    const FrameRow& f = in.frames[i];
    std::string align = "-";
    if (!f.align.empty()) {
      align = "mod 8 = " + absl::StrJoin(f.align, ",");
    }
    std::string contents;
    if (f.role == "envelope" && in.ok) {
      contents = absl::StrCat(Sv(in.kind), ", ", Plural(in.inline_payloads, "inline payload",
                                                        "inline payloads"));
    } else if (f.role == "payload") {
      contents = f.refs.empty() ? "(not referenced)" : absl::StrJoin(f.refs, ", ");
    }
    char line[160];
    std::snprintf(line, sizeof(line), "  %-5zu  %-10s %6llu  %-9s  ", i, f.role.c_str(),
                  static_cast<unsigned long long>(f.size), align.c_str());
    std::string row = line + contents;
    while (!row.empty() && row.back() == ' ') row.pop_back();
    absl::StrAppend(&out, row, "\n");
  }
  if (in.signature_present || !in.signature_verdict.empty()) {
    absl::StrAppend(&out, "  signature: ",
                    in.signature_verdict.empty() ? "present, not checked (no --key-file)"
                                                 : in.signature_verdict,
                    "\n");
  }
  if (!in.ok) {
    absl::StrAppend(&out, "  MALFORMED (", in.error_code, "): ", Printable(in.reason), "\n");
    if (!in.path.empty()) absl::StrAppend(&out, "    field: ", in.path, "\n");
    return out;
  }
  absl::StrAppend(&out, "  ", in.summary, "\n");
  if (!in.render_error.empty()) {
    absl::StrAppend(&out, "  (could not render: ", in.render_error, ")\n");
    return out;
  }
  absl::StrAppend(&out, "  envelope:\n    ", in.envelope_text, "\n");
  if (!in.payloads.empty()) absl::StrAppend(&out, "  payloads:\n");
  for (const PayloadRow& p : in.payloads) {
    std::string where =
        !p.arena.empty()
            ? absl::StrCat("shared arena ", p.arena, " at +", p.offset)
        : p.in_frame
            ? absl::StrCat("frame ", p.frame, " (payload ", p.ref_index, ") at +", p.offset,
                           " (mod 8 = ", p.offset % 8, ")")
        : p.offset_known
            ? absl::StrCat("inline at envelope +", p.offset, " (mod 8 = ", p.offset % 8, ")")
            : std::string("inline");
    if (!p.arena.empty()) {
      std::string what = p.kind == "bytes" ? std::string("bytes")
                         : absl::StrCat("tensor ", p.dtype, " [",
                                        p.shape.empty() ? "scalar" : absl::StrJoin(p.shape, "x"),
                                        "]");
      absl::StrAppend(&out, "    ", p.path, ": ", what, ", ", p.bytes, " bytes, ", where, " (",
                      p.access, ")\n");
    } else if (p.kind == "bytes") {
      absl::StrAppend(&out, "    ", p.path, ": bytes, ", p.bytes, " bytes, ", where, ", ",
                      p.access, ": ", p.first.empty() ? "" : p.first[0],
                      p.complete ? "" : " ...", "\n");
    } else {
      std::string shape = p.shape.empty() ? "scalar" : absl::StrJoin(p.shape, "x");
      std::string layout = p.order == "C" ? "" : absl::StrCat(", ", p.order, " order");
      absl::StrAppend(&out, "    ", p.path, ": tensor ", p.dtype, " [", shape, "]", layout, ", ",
                      p.bytes, " bytes, ", where, ", ", p.access, "\n");
      absl::StrAppend(&out, "      values: [", absl::StrJoin(p.first, ", "),
                      p.complete ? "" : ", ...", "]\n");
    }
  }
  return out;
}

json FramesJson(const Inspection& in) {
  json frames = json::array();
  for (size_t i = 0; i < in.frames.size(); ++i) {
    const FrameRow& f = in.frames[i];
    json row{{"index", i}, {"role", f.role}, {"bytes", f.size}};
    if (!f.align.empty()) row["align_mod8"] = f.align;
    if (f.role == "payload") row["refs"] = f.refs;
    frames.push_back(std::move(row));
  }
  return frames;
}

std::string RenderJson(const InspectOptions&, const Inspection& in) {
  const CaptureRecord& r = *in.record;
  json j{{"message", in.number}, {"offset", r.offset}, {"time_ns", r.time_ns},
         {"direction", DirectionName(r.direction)}, {"source", r.source},
         {"frames", FramesJson(in)}, {"status", in.ok ? "ok" : "malformed"}};
  if (in.signature_present || !in.signature_verdict.empty()) {
    j["signature"] = json{{"present", in.signature_present},
                          {"verdict", in.signature_verdict.empty() ? json(nullptr)
                                                                   : json(in.signature_verdict)}};
  }
  if (!in.ok) {
    j["error"] = json{{"code", in.error_code}, {"reason", in.reason}, {"path", in.path}};
  } else {
    j["kind"] = in.kind;
    j["message_id"] = in.message_id;
    if (!in.function.empty()) j["function"] = in.function;
    if (in.call_id) j["call_id"] = *in.call_id;
    j["summary"] = in.summary;
    if (!in.render_error.empty()) {
      j["render_error"] = in.render_error;
    } else {
      j["envelope"] = in.envelope_json;
      json payloads = json::array();
      for (const PayloadRow& p : in.payloads) {
        json row{{"path", p.path}, {"kind", p.kind}, {"bytes", p.bytes},
                 {"placement", !p.arena.empty() ? "shared" : p.in_frame ? "frame" : "inline"},
                 {"access", p.access}};
        if (!p.arena.empty()) row["arena"] = p.arena;
        if (p.in_frame) {
          row["frame"] = p.frame;
          row["payload_index"] = p.ref_index;
        }
        if (p.offset_known) {
          row["offset"] = p.offset;
          row["align_mod8"] = p.offset % 8;
        }
        if (p.kind == "tensor") {
          row["dtype"] = p.dtype;
          row["shape"] = std::vector<uint64_t>(p.shape.begin(), p.shape.end());
          row["order"] = p.order;
          row["byte_order"] = p.byte_order;
          row["packing"] = p.packing;
          row["values"] = p.first_json;
        } else {
          row["hex"] = p.first_json;
        }
        row["complete"] = p.complete;
        payloads.push_back(std::move(row));
      }
      j["payloads"] = std::move(payloads);
    }
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace

// ---- Inspector ---------------------------------------------------------------------------------

Inspector::Inspector(InspectOptions options) : options_(std::move(options)) {}
Inspector::~Inspector() = default;

std::string Inspector::Render(const CaptureRecord& record) {
  Inspection in = Examine(record, options_);
  in.number = ++seen_;
  if (!in.ok) ++malformed_;
  if (in.ok && in.kind == "apply") {
    // Remembered so that results can be selected by function; bounded for --follow.
    if (functions_by_id_.size() >= (1u << 20)) functions_by_id_.erase(functions_by_id_.begin());
    functions_by_id_[in.message_id] = in.function;
  }
  if (in.ok && in.call_id) {
    auto it = functions_by_id_.find(*in.call_id);
    if (it != functions_by_id_.end()) in.function = it->second;
  }
  if (!Selected(options_, in)) {
    ++filtered_;
    return "";
  }
  ++shown_;
  try {
    return options_.json ? RenderJson(options_, in) : RenderText(options_, in);
  } catch (const std::exception& e) {
    return absl::StrCat("message ", in.number, ": could not render: ", e.what(), "\n");
  }
}

std::string Inspector::Summary(const CaptureReader* reader) const {
  std::string out = absl::StrCat(Plural(seen_, "message", "messages"), ", ", shown_, " shown, ",
                                 malformed_, " malformed");
  if (filtered_ != 0) absl::StrAppend(&out, ", ", filtered_, " left out by filters");
  if (reader != nullptr) {
    switch (reader->end()) {
      case CaptureReader::End::kNotYet:
      case CaptureReader::End::kClean:
        absl::StrAppend(&out, "; ", reader->end_reason());
        break;
      case CaptureReader::End::kTruncated:
      case CaptureReader::End::kCorrupt:
        absl::StrAppend(&out, "; capture damaged: ", reader->end_reason());
        break;
    }
  }
  return out + "\n";
}

std::string InspectMessage(const ReceivedMessage& message, const InspectOptions& options) {
  CaptureRecord record;
  for (const auto& f : message.routing) record.frames.push_back(Buffer::CopyOf(f.data(), f.size()));
  record.frames.push_back(Buffer());
  for (const auto& f : message.frames) record.frames.push_back(Buffer::CopyOf(f.data(), f.size()));
  Inspector inspector(options);
  return inspector.Render(record);
}

// ---- schema ------------------------------------------------------------------------------------

namespace {

std::string IdHex(uint64_t id) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%016llx", static_cast<unsigned long long>(id));
  return buf;
}

std::string TypeName(capnp::Type t) {
  switch (t.which()) {
    case capnp::schema::Type::VOID: return "Void";
    case capnp::schema::Type::BOOL: return "Bool";
    case capnp::schema::Type::INT8: return "Int8";
    case capnp::schema::Type::INT16: return "Int16";
    case capnp::schema::Type::INT32: return "Int32";
    case capnp::schema::Type::INT64: return "Int64";
    case capnp::schema::Type::UINT8: return "UInt8";
    case capnp::schema::Type::UINT16: return "UInt16";
    case capnp::schema::Type::UINT32: return "UInt32";
    case capnp::schema::Type::UINT64: return "UInt64";
    case capnp::schema::Type::FLOAT32: return "Float32";
    case capnp::schema::Type::FLOAT64: return "Float64";
    case capnp::schema::Type::TEXT: return "Text";
    case capnp::schema::Type::DATA: return "Data";
    case capnp::schema::Type::LIST: return "List(" + TypeName(t.asList().getElementType()) + ")";
    case capnp::schema::Type::ENUM: return t.asEnum().getShortDisplayName().cStr();
    case capnp::schema::Type::STRUCT: return t.asStruct().getShortDisplayName().cStr();
    case capnp::schema::Type::INTERFACE: return t.asInterface().getShortDisplayName().cStr();
    case capnp::schema::Type::ANY_POINTER: return "AnyPointer";
  }
  return "?";
}

class SchemaWalker {
 public:
  void Struct(capnp::StructSchema s) {
    if (!seen_.insert(s.getProto().getId()).second) return;
    structs_.push_back(s);
    for (auto f : s.getFields()) Field(f);
  }
  void Field(capnp::StructSchema::Field f) {
    if (f.getProto().isGroup()) {
      auto group = f.getType().asStruct();
      for (auto g : group.getFields()) Field(g);
      return;
    }
    Type(f.getType());
  }
  void Type(capnp::Type t) {
    if (t.isStruct()) Struct(t.asStruct());
    if (t.isEnum() && seen_.insert(t.asEnum().getProto().getId()).second) {
      enums_.push_back(t.asEnum());
    }
    if (t.isList()) Type(t.asList().getElementType());
  }

  void StructText(capnp::StructSchema s, size_t indent, std::string* out) {
    std::string pad(indent, ' ');
    bool union_done = false;
    for (auto f : s.getFields()) {
      if (IsUnionMember(f)) {
        if (union_done) continue;
        union_done = true;
        absl::StrAppend(out, pad, "union {\n");
        for (auto u : s.getUnionFields()) FieldText(u, indent + 2, out);
        absl::StrAppend(out, pad, "}\n");
        continue;
      }
      FieldText(f, indent, out);
    }
  }
  void FieldText(capnp::StructSchema::Field f, size_t indent, std::string* out) {
    std::string pad(indent, ' ');
    std::string name = f.getProto().getName().cStr();
    if (f.getProto().isGroup()) {
      auto group = f.getType().asStruct();
      bool only_union = group.getNonUnionFields().size() == 0;
      absl::StrAppend(out, pad, name, " :", only_union ? "union" : "group", " {  # ",
                      IdHex(group.getProto().getId()), "\n");
      if (only_union) {
        for (auto u : group.getUnionFields()) FieldText(u, indent + 2, out);
      } else {
        StructText(group, indent + 2, out);
      }
      absl::StrAppend(out, pad, "}\n");
      return;
    }
    absl::StrAppend(out, pad, name, " @", f.getProto().getOrdinal().getExplicit(), " :",
                    TypeName(f.getType()), ";\n");
  }

  json StructJson(capnp::StructSchema s) {
    json fields = json::array();
    for (auto f : s.getFields()) {
      json row{{"name", f.getProto().getName().cStr()}, {"union", IsUnionMember(f)}};
      if (f.getProto().isGroup()) {
        auto group = f.getType().asStruct();
        row["group"] = StructJson(group);
      } else {
        row["ordinal"] = f.getProto().getOrdinal().getExplicit();
        row["type"] = TypeName(f.getType());
      }
      fields.push_back(std::move(row));
    }
    return json{{"name", s.getShortDisplayName().cStr()},
                {"id", IdHex(s.getProto().getId())},
                {"fields", std::move(fields)}};
  }

  std::vector<capnp::StructSchema> structs_;
  std::vector<capnp::EnumSchema> enums_;
  std::set<uint64_t> seen_;
};

}  // namespace

std::string DescribeSchema(bool as_json) {
  SchemaWalker w;
  auto root = capnp::Schema::from<wire::Envelope>();
  w.Struct(root);
  uint64_t file_id = root.getProto().getScopeId();
  if (as_json) {
    json structs = json::array(), enums = json::array();
    for (auto s : w.structs_) structs.push_back(w.StructJson(s));
    for (auto e : w.enums_) {
      json names = json::array();
      for (auto en : e.getEnumerants()) {
        names.push_back(json{{"name", en.getProto().getName().cStr()}, {"ordinal", en.getOrdinal()}});
      }
      enums.push_back(json{{"name", e.getShortDisplayName().cStr()},
                           {"id", IdHex(e.getProto().getId())},
                           {"enumerants", std::move(names)}});
    }
    json j{{"file", "zerocan.capnp"}, {"file_id", IdHex(file_id)},
           {"namespace", "zerocan::wire"}, {"protocol_version", wire::PROTOCOL_VERSION},
           {"root", "Envelope"}, {"structs", std::move(structs)}, {"enums", std::move(enums)}};
    return j.dump(2) + "\n";
  }
  std::string out = absl::StrCat(
      "# zerocan wire schema (zerocan.capnp, file id @", IdHex(file_id),
      ", C++ namespace zerocan::wire)\n# protocolVersion = ", wire::PROTOCOL_VERSION,
      " (Envelope.version must equal it; this program speaks ", kProtocolVersion,
      ")\n# root: Envelope. Fields: name @ordinal :Type; ids are the 64-bit node ids.\n");
  for (auto s : w.structs_) {
    absl::StrAppend(&out, "\nstruct ", s.getShortDisplayName().cStr(), " @",
                    IdHex(s.getProto().getId()), " {\n");
    w.StructText(s, 2, &out);
    absl::StrAppend(&out, "}\n");
  }
  for (auto e : w.enums_) {
    absl::StrAppend(&out, "\nenum ", e.getShortDisplayName().cStr(), " @",
                    IdHex(e.getProto().getId()), " {\n");
    for (auto en : e.getEnumerants()) {
      absl::StrAppend(&out, "  ", en.getProto().getName().cStr(), " @", en.getOrdinal(), ";\n");
    }
    absl::StrAppend(&out, "}\n");
  }
  return out;
}

}  // namespace zerocan::tools
