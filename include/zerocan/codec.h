// Built-in codecs: how each C++ type maps onto a wire Value, in both directions.
//
// Together with Registry (named, runtime codecs for any other type) this is the one
// place where a type's wire form is decided. Each codec is a specialisation of
// Codec<T> with
//   static void Encode(ValueWriter&, const T&);
//   static T Decode(const Value&, const Registry&);
// and optionally EncodeOwned(ValueWriter&, T&&) to adopt an rvalue without copying.
//
// Mapping: bool, integers and floats are scalars; std::string / string_view / const
// char* are text; Buffer and std::vector<std::byte> are bytes; std::vector and
// std::span of arithmetic types are typed arrays.
//
// Ownership is chosen at the call site. At or above the inline threshold an array goes
// as a frame of its own: an rvalue vector is ADOPTED (moved into the message, no copy);
// an lvalue vector or a span is COPIED (once, counted in Stats::buffer_copies), so the
// caller may change or free it as soon as the call returns; zerocan::Borrow(v) LENDS
// it without a copy, and the caller keeps it alive and unchanged until the send's
// Tracker completes. Below the threshold every array is copied into the envelope.
// A Buffer or Tensor goes with the ownership its Buffer already states.
//
// std::vector of anything else is a list; std::pair/std::tuple are lists; maps with
// string keys are maps (order of iteration kept); std::optional is the value or null;
// Tensor and TensorView are tensors; Value re-encodes a received value.
#pragma once

#include <complex>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "zerocan/error.h"
#include "zerocan/registry.h"
#include "zerocan/tensor.h"
#include "zerocan/value.h"
#include "zerocan/writer.h"

namespace zerocan {

namespace internal {
[[noreturn]] void ThrowNoCodec(const std::type_info& type);
[[noreturn]] void ThrowOutOfRange(const Value& value, std::string_view target);
// Converts tensor elements of any numeric dtype into `out` (count elements of
// `target`); throws kTypeMismatch for non-numeric pairs or values out of range.
void ConvertElements(const Tensor& source, DType target, void* out);
const Registry& RegistryOf(const ValueWriter& writer);
}  // namespace internal

// Fallback: a type without a built-in codec goes through the registry. (Declared, with
// its default argument, in writer.h.)
template <class T, class Enable>
struct Codec {
  static void Encode(ValueWriter& w, const T& value) {
    const Registry::Entry* entry = internal::RegistryOf(w).FindType(typeid(T));
    if (entry == nullptr) internal::ThrowNoCodec(typeid(T));
    ValueWriter state = w.Extension(entry->name);
    entry->encode(state, &value);
  }
  static T Decode(const Value& v, const Registry& registry) {
    const Registry::Entry* entry = registry.FindType(typeid(T));
    if (entry == nullptr) internal::ThrowNoCodec(typeid(T));
    if (v.kind() != Kind::kExtension || v.extension_name() != entry->name) {
      v.Mismatch(entry->name);
    }
    std::optional<T> out;
    entry->decode(v.extension_state(), &out);
    return std::move(*out);
  }
};

// ---- scalars --------------------------------------------------------------------

template <>
struct Codec<bool> {
  static void Encode(ValueWriter& w, bool v) { w.Bool(v); }
  static bool Decode(const Value& v, const Registry&) { return Decode(v); }
  static bool Decode(const Value& v) { return v.AsBool(); }
};

template <class T>
struct Codec<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
  static void Encode(ValueWriter& w, T v) {
    if constexpr (std::is_signed_v<T>) {
      w.Int(static_cast<int64_t>(v));
    } else {
      w.UInt(static_cast<uint64_t>(v));
    }
  }
  static T Decode(const Value& v, const Registry&) { return Decode(v); }
  static T Decode(const Value& v) {
    if constexpr (std::is_signed_v<T>) {
      int64_t x = v.AsInt();
      if (x < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          x > static_cast<int64_t>(std::numeric_limits<T>::max())) {
        internal::ThrowOutOfRange(v, DTypeName(DTypeOf<T>::value));
      }
      return static_cast<T>(x);
    } else {
      uint64_t x = v.AsUInt();
      if (x > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
        internal::ThrowOutOfRange(v, DTypeName(DTypeOf<T>::value));
      }
      return static_cast<T>(x);
    }
  }
};

template <class T>
struct Codec<T, std::enable_if_t<std::is_floating_point_v<T>>> {
  static void Encode(ValueWriter& w, T v) { w.Float(static_cast<double>(v)); }
  static T Decode(const Value& v, const Registry&) { return Decode(v); }
  static T Decode(const Value& v) { return static_cast<T>(v.AsDouble()); }
};

template <>
struct Codec<std::nullptr_t> {
  static void Encode(ValueWriter& w, std::nullptr_t) { w.Null(); }
  static std::nullptr_t Decode(const Value& v, const Registry&) {
    if (!v.is_null()) v.Mismatch("null");
    return nullptr;
  }
};

// ---- text and bytes -------------------------------------------------------------

template <>
struct Codec<std::string> {
  static void Encode(ValueWriter& w, const std::string& v) { w.Text(v); }
  static std::string Decode(const Value& v, const Registry&) { return std::string(v.AsText()); }
};
template <>
struct Codec<std::string_view> {
  static void Encode(ValueWriter& w, std::string_view v) { w.Text(v); }
  // Borrowed from the message.
  static std::string_view Decode(const Value& v, const Registry&) { return v.AsText(); }
};
template <>
struct Codec<const char*> {
  static void Encode(ValueWriter& w, const char* v) { w.Text(v); }
};
template <>
struct Codec<char*> {
  static void Encode(ValueWriter& w, const char* v) { w.Text(v); }
};

template <>
struct Codec<Buffer> {
  static void Encode(ValueWriter& w, const Buffer& v) { w.Bytes(v); }
  static Buffer Decode(const Value& v, const Registry&) { return v.AsBytes(); }
};
template <>
struct Codec<std::vector<std::byte>> {
  static void Encode(ValueWriter& w, const std::vector<std::byte>& v) {
    w.CopyBytes(std::span<const std::byte>(v.data(), v.size()));
  }
  static void EncodeOwned(ValueWriter& w, std::vector<std::byte>&& v) {
    w.Bytes(Buffer::Adopt(std::move(v)));
  }
  static std::vector<std::byte> Decode(const Value& v, const Registry&) {
    Buffer b = v.AsBytes();
    return std::vector<std::byte>(b.data(), b.data() + b.size());
  }
};

// ---- typed arrays -----------------------------------------------------------------

template <class T>
inline constexpr bool kIsArrayElement =
    HasDType<T>::value && !std::is_same_v<std::remove_cv_t<T>, bool>;

template <class T>
struct Codec<std::vector<T>, std::enable_if_t<kIsArrayElement<T>>> {
  static void Encode(ValueWriter& w, const std::vector<T>& v) {
    w.CopyArray(DTypeOf<T>::value, Shape{v.size()}, std::as_bytes(std::span<const T>(v)));
  }
  static void EncodeOwned(ValueWriter& w, std::vector<T>&& v) {
    size_t n = v.size();
    w.Array(DTypeOf<T>::value, Shape{n}, Buffer::Adopt(std::move(v)));
  }
  static std::vector<T> Decode(const Value& v, const Registry& registry) {
    if (v.kind() == Kind::kList) {
      std::vector<T> out;
      out.reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) out.push_back(v[i].As<T>(registry));
      return out;
    }
    if (v.kind() != Kind::kTensor) v.Mismatch(std::string("array of ") +
                                              std::string(DTypeName(DTypeOf<T>::value)));
    Tensor t = v.AsTensor();
    std::vector<T> out(t.size());
    if (t.dtype() == DTypeOf<T>::value) {
      if (t.nbytes() != 0) std::memcpy(out.data(), t.data().data(), t.nbytes());
    } else {
      internal::ConvertElements(t, DTypeOf<T>::value, out.data());
    }
    return out;
  }
};

template <class T>
struct Codec<std::span<T>, std::enable_if_t<kIsArrayElement<T>>> {
  // Copied: a span says nothing about how long its bytes live (zerocan::Borrow lends).
  static void Encode(ValueWriter& w, std::span<T> v) {
    w.CopyArray(DTypeOf<std::remove_cv_t<T>>::value, Shape{v.size()}, std::as_bytes(v));
  }
};

// ---- lending --------------------------------------------------------------------

// A contiguous array or byte container lent to a send without a copy: made by
// zerocan::Borrow. The caller keeps the container alive and unchanged until the
// Tracker of the send that carries it completes (Tracker::Wait, or Client futures: the
// call's result has arrived).
template <class T>
class Borrowed {
 public:
  explicit Borrowed(std::span<const T> items) noexcept : items_(items) {}
  std::span<const T> items() const noexcept { return items_; }

 private:
  std::span<const T> items_;
};

// Lends `container` (a std::vector, std::array or span of numbers or std::byte) to the
// next send without copying it; see Borrowed for the caller's promise.
template <class Container>
auto Borrow(const Container& container) noexcept {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(*std::data(container))>>;
  return Borrowed<T>(std::span<const T>(std::data(container), std::size(container)));
}
// A temporary dies before the send completes: adopt it with std::move instead.
template <class Container>
void Borrow(const Container&& temporary) = delete;

template <class T>
struct Codec<Borrowed<T>> {
  static void Encode(ValueWriter& w, const Borrowed<T>& v) {
    Buffer lent = Buffer::Borrow(v.items().data(), v.items().size_bytes());
    if constexpr (std::is_same_v<T, std::byte>) {
      w.Bytes(std::move(lent));
    } else {
      static_assert(kIsArrayElement<T>, "zerocan::Borrow lends arrays of numbers or bytes");
      w.Array(DTypeOf<T>::value, Shape{v.items().size()}, std::move(lent));
    }
  }
};

template <>
struct Codec<std::vector<bool>> {
  static void Encode(ValueWriter& w, const std::vector<bool>& v) {
    // std::vector<bool> is bit-packed: one byte per element on the wire (numpy's bool).
    std::vector<uint8_t> bytes(v.begin(), v.end());
    size_t n = bytes.size();
    w.Array(DType::kBool, Shape{n}, Buffer::Adopt(std::move(bytes)));
  }
  static std::vector<bool> Decode(const Value& v, const Registry& registry) {
    if (v.kind() == Kind::kList) {
      std::vector<bool> out;
      for (size_t i = 0; i < v.size(); ++i) out.push_back(v[i].As<bool>(registry));
      return out;
    }
    Tensor t = v.AsTensor();
    if (t.dtype() != DType::kBool) v.Mismatch("array of bool");
    const auto* p = reinterpret_cast<const uint8_t*>(t.data().data());
    return std::vector<bool>(p, p + t.size());
  }
};

template <>
struct Codec<Tensor> {
  static void Encode(ValueWriter& w, const Tensor& t) { w.WriteTensor(t); }
  static Tensor Decode(const Value& v, const Registry&) {
    if (v.kind() != Kind::kTensor) v.Mismatch("tensor");
    return v.AsTensor();
  }
};

template <class T>
struct Codec<TensorView<T>> {
  static void Encode(ValueWriter& w, const TensorView<T>& t) { w.WriteTensor(t.tensor()); }
  static TensorView<T> Decode(const Value& v, const Registry&) {
    if (v.kind() != Kind::kTensor) {
      v.Mismatch(std::string(DTypeName(DTypeOf<std::remove_cv_t<T>>::value)) + " tensor");
    }
    Tensor t = v.AsTensor();
    if (t.dtype() != DTypeOf<std::remove_cv_t<T>>::value) {
      v.Mismatch(std::string(DTypeName(DTypeOf<std::remove_cv_t<T>>::value)) + " tensor");
    }
    if constexpr (!std::is_const_v<T>) {
      // A peer's arena is mapped read-only: a view to write through gets its own copy
      // (counted in Stats::buffer_copies). TensorView<const T> reads in place.
      if (v.InSharedMemory()) {
        t = Tensor(t.dtype(), t.shape(), Buffer::CopyOf(t.data().data(), t.data().size()),
                   t.order());
      }
    }
    return TensorView<T>(t);
  }
};

// ---- containers ---------------------------------------------------------------------

template <class T>
struct Codec<std::vector<T>, std::enable_if_t<!kIsArrayElement<T> && !std::is_same_v<T, bool> &&
                                              !std::is_same_v<T, std::byte>>> {
  static void Encode(ValueWriter& w, const std::vector<T>& v) {
    ListWriter list = w.List(v.size());
    for (size_t i = 0; i < v.size(); ++i) list[i].Write(v[i]);
  }
  static void EncodeOwned(ValueWriter& w, std::vector<T>&& v) {
    ListWriter list = w.List(v.size());
    for (size_t i = 0; i < v.size(); ++i) list[i].Write(std::move(v[i]));
  }
  static std::vector<T> Decode(const Value& v, const Registry& registry) {
    if (v.kind() != Kind::kList) v.Mismatch("list");
    std::vector<T> out;
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) out.push_back(v[i].As<T>(registry));
    return out;
  }
};

template <class T>
struct Codec<std::optional<T>> {
  static void Encode(ValueWriter& w, const std::optional<T>& v) {
    if (v) {
      w.Write(*v);
    } else {
      w.Null();
    }
  }
  // An rvalue optional hands its value on as an rvalue (adopted, not borrowed).
  static void EncodeOwned(ValueWriter& w, std::optional<T>&& v) {
    if (v) {
      w.Write(std::move(*v));
    } else {
      w.Null();
    }
  }
  static std::optional<T> Decode(const Value& v, const Registry& registry) {
    if (v.is_null()) return std::nullopt;
    return v.As<T>(registry);
  }
};

template <class... Ts>
struct Codec<std::tuple<Ts...>> {
  static void Encode(ValueWriter& w, const std::tuple<Ts...>& v) {
    ListWriter list = w.List(sizeof...(Ts));
    std::apply([&](const auto&... items) {
      size_t i = 0;
      (list[i++].Write(items), ...);
    }, v);
  }
  // Each element goes on as its declared type: a value member is adopted, a reference
  // member (std::tie, std::forward_as_tuple of lvalues) stays an lvalue and is copied.
  static void EncodeOwned(ValueWriter& w, std::tuple<Ts...>&& v) {
    ListWriter list = w.List(sizeof...(Ts));
    WriteOwned(list, std::move(v), std::index_sequence_for<Ts...>{});
  }
  template <size_t... I>
  static void WriteOwned(ListWriter& list, std::tuple<Ts...>&& v, std::index_sequence<I...>) {
    (list[I].Write(std::get<I>(std::move(v))), ...);
  }
  static std::tuple<Ts...> Decode(const Value& v, const Registry& registry) {
    if (v.kind() != Kind::kList || v.size() != sizeof...(Ts)) {
      v.Mismatch("list[" + std::to_string(sizeof...(Ts)) + "]");
    }
    return DecodeItems(v, registry, std::index_sequence_for<Ts...>{});
  }
  template <size_t... I>
  static std::tuple<Ts...> DecodeItems(const Value& v, const Registry& r, std::index_sequence<I...>) {
    return std::tuple<Ts...>(v[I].template As<Ts>(r)...);
  }
};

template <class A, class B>
struct Codec<std::pair<A, B>> {
  static void Encode(ValueWriter& w, const std::pair<A, B>& v) {
    ListWriter list = w.List(2);
    list[0].Write(v.first);
    list[1].Write(v.second);
  }
  static void EncodeOwned(ValueWriter& w, std::pair<A, B>&& v) {
    ListWriter list = w.List(2);
    list[0].Write(std::forward<A>(v.first));
    list[1].Write(std::forward<B>(v.second));
  }
  static std::pair<A, B> Decode(const Value& v, const Registry& registry) {
    if (v.kind() != Kind::kList || v.size() != 2) v.Mismatch("list[2]");
    return {v[0].As<A>(registry), v[1].As<B>(registry)};
  }
};

namespace internal {
template <class MapType>
struct MapCodec {
  using V = typename MapType::mapped_type;
  static void Encode(ValueWriter& w, const MapType& m) {
    MapWriter map = w.Map(m.size());
    size_t i = 0;
    for (const auto& [k, v] : m) {
      map.TextKey(i, k);
      map.value(i).Write(v);
      ++i;
    }
  }
  // An rvalue map's values are moved on, so their arrays are adopted rather than
  // borrowed from a container that dies before the send completes.
  static void EncodeOwned(ValueWriter& w, MapType&& m) {
    MapWriter map = w.Map(m.size());
    size_t i = 0;
    for (auto& [k, v] : m) {
      map.TextKey(i, k);
      map.value(i).Write(std::move(v));
      ++i;
    }
  }
  static MapType Decode(const Value& v, const Registry& registry) {
    if (v.kind() != Kind::kMap) v.Mismatch("map");
    MapType out;
    for (size_t i = 0; i < v.size(); ++i) {
      out.emplace(std::string(v.key(i).AsText()), v.value(i).As<V>(registry));
    }
    return out;
  }
};
}  // namespace internal

template <class V, class C, class A>
struct Codec<std::map<std::string, V, C, A>>
    : internal::MapCodec<std::map<std::string, V, C, A>> {};
template <class V, class H, class E, class A>
struct Codec<std::unordered_map<std::string, V, H, E, A>>
    : internal::MapCodec<std::unordered_map<std::string, V, H, E, A>> {};
template <class V, class H, class E, class A>
struct Codec<absl::flat_hash_map<std::string, V, H, E, A>>
    : internal::MapCodec<absl::flat_hash_map<std::string, V, H, E, A>> {};

// A received value, forwarded: frames are shared, not copied.
template <>
struct Codec<Value> {
  static void Encode(ValueWriter& w, const Value& v) { w.Copy(v); }
  static Value Decode(const Value& v, const Registry&) { return v; }
};

}  // namespace zerocan
