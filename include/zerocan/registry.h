// zerocan::Registry: named codecs for types the built-in codecs (codec.h) do not cover.
//
// A third-party type is added with one call: a stable wire name shared with other
// languages ("pandas.DataFrame"), an encoder that writes the type's state as a Value
// (handing out its own Buffers as zero-copy payloads with their owner), and a decoder.
// Lookup is one hash-map access by C++ type (encoding) or by wire name (decoding).
// Registries are instances; Registry::Default() is the process default.
//
// Example: an image whose pixels travel as a zero-copy frame (its state: [width, height,
// pixels]).
//
//   struct Image { int width, height; std::shared_ptr<std::vector<uint8_t>> pixels; };
//   zerocan::Registry::Default().Register<Image>("example.Image",
//       [](zerocan::ValueWriter& w, const Image& img) {       // state: [width, height, pixels]
//         auto list = w.List(3);
//         list[0].Write(img.width);
//         list[1].Write(img.height);
//         list[2].Bytes(zerocan::Buffer(reinterpret_cast<std::byte*>(img.pixels->data()),
//                                       img.pixels->size(), img.pixels));  // zero-copy, kept alive
//       },
//       [](const zerocan::Value& v) {                         // v[2] views the received frame
//         zerocan::Buffer px = v[2].AsBytes();
//         auto* p = reinterpret_cast<const uint8_t*>(px.data());
//         return Image{v[0].As<int>(), v[1].As<int>(),
//                      std::make_shared<std::vector<uint8_t>>(p, p + px.size())};
//       });
//
// Threading: register before sharing a registry between threads; lookups are then safe
// from any thread (they do not mutate).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <typeindex>
#include <typeinfo>

#include "absl/container/flat_hash_map.h"
#include "zerocan/error.h"

namespace zerocan {

class Value;
class ValueWriter;

class Registry {
 public:
  template <class T>
  using EncodeFn = std::function<void(ValueWriter& state, const T& value)>;
  template <class T>
  using DecodeFn = std::function<T(const Value& state)>;

  struct Entry {
    std::string name;
    std::type_index type;
    // Writes the state of the object at `object` (a const T*).
    std::function<void(ValueWriter&, const void* object)> encode;
    // Decodes `state` into `out` (a std::optional<T>*).
    std::function<void(const Value& state, void* out)> decode;
  };

  Registry() = default;
  Registry(const Registry&) = default;
  Registry& operator=(const Registry&) = default;

  // Adds a codec for T under `name`. Throws EncodeError if the name or the type is
  // already registered here (codecs are never silently replaced).
  template <class T>
  void Register(std::string_view name, EncodeFn<T> encode, DecodeFn<T> decode) {
    Entry entry{std::string(name), std::type_index(typeid(T)),
                [encode = std::move(encode)](ValueWriter& w, const void* object) {
                  encode(w, *static_cast<const T*>(object));
                },
                [decode = std::move(decode)](const Value& state, void* out) {
                  static_cast<std::optional<T>*>(out)->emplace(decode(state));
                }};
    Add(std::move(entry));
  }

  const Entry* FindType(std::type_index type) const noexcept;
  const Entry* FindName(std::string_view name) const noexcept;
  size_t size() const noexcept { return by_name_.size(); }

  static Registry& Default();

 private:
  void Add(Entry entry);

  // Entries live in shared_ptrs so both maps point at one copy and copies of a
  // Registry stay cheap and independent in membership.
  absl::flat_hash_map<std::string, std::shared_ptr<const Entry>> by_name_;
  absl::flat_hash_map<std::type_index, std::shared_ptr<const Entry>> by_type_;
};

}  // namespace zerocan
