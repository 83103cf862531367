// Puts generated Cap'n Proto readers and builders into the public types' opaque storage
// (zerocan/opaque.h) and takes them out again. The one place that knows what each
// OpaqueWire of writer.h and value.h holds.
#pragma once

#include <cstring>
#include <new>
#include <type_traits>

#include "zerocan/opaque.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan::internal {

template <class T>
OpaqueWire Wrap(const T& handle) noexcept {
  static_assert(sizeof(T) <= OpaqueWire::kBytes, "OpaqueWire is too small for this handle");
  static_assert(alignof(T) <= alignof(OpaqueWire));
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>);
  OpaqueWire out;
  std::memcpy(out.bytes, &handle, sizeof(T));
  return out;
}

template <class T>
T Unwrap(const OpaqueWire& opaque) noexcept {
  static_assert(sizeof(T) <= OpaqueWire::kBytes);
  static_assert(std::is_trivially_copyable_v<T>);
  // Builders have no default constructor; a trivially copyable type's object
  // representation is its value, so the bytes are copied into storage of its own.
  alignas(T) unsigned char raw[sizeof(T)];
  std::memcpy(raw, opaque.bytes, sizeof(T));
  return *std::launder(reinterpret_cast<T*>(raw));
}

}  // namespace zerocan::internal
