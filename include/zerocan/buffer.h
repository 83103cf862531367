// zerocan::Buffer: a byte range with a visible owner.
//
// Every payload that zerocan sends or receives without copying is a Buffer: a pointer,
// a size and a shared keep-alive. Slices share their parent's keep-alive, so a slice
// keeps the whole parent (for a received payload: the whole received message) alive.
// A Buffer with no keep-alive is *borrowed*: the bytes belong to the caller, who must
// keep them alive and unchanged until the send's Tracker reports them released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "zerocan/error.h"

namespace zerocan {

class Buffer {
 public:
  Buffer() = default;

  // Wraps bytes owned by `keep_alive` (which may be null for a borrowed range).
  Buffer(std::byte* data, size_t size, std::shared_ptr<const void> keep_alive) noexcept
      : data_(data), size_(size), keep_alive_(std::move(keep_alive)) {}

  // A fresh, 64-byte aligned, uninitialised buffer that owns its bytes.
  static Buffer Allocate(size_t size);

  // An owned, aligned copy of `size` bytes at `data`. This is a copy; it is counted
  // in Stats::buffer_copies.
  static Buffer CopyOf(const void* data, size_t size);

  // Moves a contiguous container (std::vector, std::string...) into shared ownership:
  // no byte is copied and the container lives until the last Buffer referring to it.
  template <class Container>
  static Buffer Adopt(Container&& container) {
    auto holder = std::make_shared<std::decay_t<Container>>(std::move(container));
    auto* bytes = reinterpret_cast<std::byte*>(const_cast<void*>(
        static_cast<const void*>(holder->data())));
    size_t size = holder->size() * sizeof(*holder->data());
    return Buffer(bytes, size, std::move(holder));
  }

  // UNOWNED: refers to the caller's bytes without keeping them alive. When such a
  // Buffer is sent as a frame, the caller must not free or modify the bytes until the
  // Tracker returned by the send reports completion.
  static Buffer Borrow(const void* data, size_t size) noexcept {
    return Buffer(static_cast<std::byte*>(const_cast<void*>(data)), size, nullptr);
  }

  const std::byte* data() const noexcept { return data_; }
  // Writable access. Only meaningful for bytes the holder owns (received payloads are
  // owned by the receiver; borrowed sender buffers must not be written through this).
  std::byte* mutable_data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::span<const std::byte> span() const noexcept { return {data_, size_}; }
  const std::shared_ptr<const void>& keep_alive() const noexcept { return keep_alive_; }
  bool borrowed() const noexcept { return keep_alive_ == nullptr; }

  // A sub-range sharing this buffer's keep-alive. Throws std::out_of_range when
  // offset + length exceeds size() (checked without overflow).
  Buffer Slice(size_t offset, size_t length) const;

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::shared_ptr<const void> keep_alive_;
};

// True when `p` is a multiple of `alignment` (a power of two).
inline bool IsAligned(const void* p, size_t alignment) noexcept {
  return (reinterpret_cast<uintptr_t>(p) & (alignment - 1)) == 0;
}

}  // namespace zerocan
