// A per-thread cache of same-sized blocks for objects that live about as long as one
// message (a decoded message's state, a received message's frames, an envelope, a call's
// record), so that encoding or decoding a message reuses a block an earlier one released
// instead of a malloc/free pair.
//
// CachingAllocator<T> is a std allocator for allocate_shared: the control block and the
// object come as one block of sizeof(rebound T), cached by that size. A block released
// on another thread joins that thread's cache. How many free blocks a thread keeps
// follows what it allocates itself: kMinCachedBlocks, plus one for each time it found
// its cache empty, up to kCacheBytes of blocks; the rest go back to malloc. So a client
// with a few thousand calls in flight takes its next burst's blocks from the cache
// (where malloc would have returned the memory to the system and faulted it in again,
// page by page), while a thread that only frees blocks others allocated (an engine's
// I/O thread dropping the envelopes its workers wrote, libzmq's I/O thread) keeps at
// most kMinCachedBlocks of each size. A thread keeps what it cached until it exits.
// Off under AddressSanitizer, so it sees every use after free.
#pragma once

#include <algorithm>
#include <cstddef>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define ZEROCAN_BLOCK_CACHE_BYTES 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZEROCAN_BLOCK_CACHE_BYTES 0
#endif
#endif
#ifndef ZEROCAN_BLOCK_CACHE_BYTES
#define ZEROCAN_BLOCK_CACHE_BYTES (size_t{4} << 20)
#endif

namespace zerocan::internal {

template <size_t kBlockSize>
struct BlockCache {
  static constexpr size_t kCacheBytes = ZEROCAN_BLOCK_CACHE_BYTES;
  static constexpr size_t kMinCachedBlocks = 16;
  static constexpr size_t kMaxCachedBlocks =
      kCacheBytes == 0 ? 0 : std::max(kMinCachedBlocks, kCacheBytes / kBlockSize);
  void* head = nullptr;
  size_t count = 0;
  // Free blocks this thread may keep: grows by one with each allocation the cache could
  // not serve, from kMinCachedBlocks up to kMaxCachedBlocks.
  size_t limit = std::min(kMinCachedBlocks, kMaxCachedBlocks);
  bool alive = true;  // false once the thread's cache is destroyed (thread exit)
  ~BlockCache() {
    alive = false;
    while (head != nullptr) {
      void* next = *static_cast<void**>(head);
      ::operator delete(head);
      head = next;
    }
  }
  static BlockCache& Mine() {
    thread_local BlockCache cache;
    return cache;
  }
};

template <class T>
struct CachingAllocator {
  using value_type = T;
  CachingAllocator() = default;
  template <class U>
  CachingAllocator(const CachingAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    static_assert(sizeof(T) >= sizeof(void*));
    BlockCache<sizeof(T)>& cache = BlockCache<sizeof(T)>::Mine();
    if (n == 1 && cache.head != nullptr) {
      void* block = cache.head;
      cache.head = *static_cast<void**>(block);
      --cache.count;
      return static_cast<T*>(block);
    }
    if (n == 1 && cache.limit < BlockCache<sizeof(T)>::kMaxCachedBlocks) ++cache.limit;
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    BlockCache<sizeof(T)>& cache = BlockCache<sizeof(T)>::Mine();
    if (n == 1 && cache.alive && cache.count < cache.limit) {
      *reinterpret_cast<void**>(p) = cache.head;
      cache.head = p;
      ++cache.count;
      return;
    }
    ::operator delete(p);
  }
  template <class U>
  bool operator==(const CachingAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const CachingAllocator<U>&) const noexcept { return false; }
};

}  // namespace zerocan::internal
