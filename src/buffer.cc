#include "zerocan/buffer.h"

#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "zerocan/stats.h"

namespace zerocan {

namespace {
struct AlignedFree {
  void operator()(void* p) const noexcept { std::free(p); }
};
}  // namespace

Buffer Buffer::Allocate(size_t size) {
  // 64-byte alignment suits every dtype and SIMD loads; round the size up as
  // aligned_alloc requires.
  size_t rounded = (size + 63) & ~size_t{63};
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::shared_ptr<void> owner(p, AlignedFree());
  return Buffer(static_cast<std::byte*>(p), size, std::move(owner));
}

Buffer Buffer::CopyOf(const void* data, size_t size) {
  Buffer out = Allocate(size);
  if (size != 0) std::memcpy(out.mutable_data(), data, size);
  Bump(GlobalStats().buffer_copies);
  return out;
}

Buffer Buffer::Slice(size_t offset, size_t length) const {
  if (offset > size_ || length > size_ - offset) {
    throw std::out_of_range("Buffer::Slice: [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") outside " + std::to_string(size_) +
                            " bytes");
  }
  return Buffer(data_ + offset, length, keep_alive_);
}

}  // namespace zerocan
