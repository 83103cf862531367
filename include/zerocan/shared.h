// zerocan::SharedArena: memory that processes on one host share without copying.
//
// An arena is one anonymous memory file (memfd) of a fixed size, mapped into this
// process. Blocks allocated from it are ordinary Buffers: write into them, keep them,
// pass them on. Another process of the same user on the same host can map the arena
// (read-only) and read a block in place, given its location (offset and length); the
// arena hands its file descriptor to such a peer over an abstract Unix socket named by
// name(), and only to a peer running as the same user.
//
// Nothing is left behind by a crash: the memory file has no path (nothing in /dev/shm)
// and the kernel frees it once the last process that maps it is gone. Its size is
// sealed, so a peer that maps it can rely on every byte of it staying there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "zerocan/buffer.h"

namespace zerocan {

class SharedArena {
 public:
  // An arena of `capacity` bytes (rounded up to the page size). Pages are committed as
  // blocks are written. Throws Error when the system refuses (no memfd, no memory).
  static std::shared_ptr<SharedArena> Create(size_t capacity);
  ~SharedArena();
  SharedArena(const SharedArena&) = delete;
  SharedArena& operator=(const SharedArena&) = delete;

  // A block of `size` bytes, 64-byte aligned, uninitialised and writable; nullopt when
  // the arena has no free run that large (the caller falls back to ordinary memory).
  // The block returns to the arena when the last Buffer over it is gone; the Buffer
  // also keeps the arena itself alive.
  std::optional<Buffer> Allocate(size_t size);

  // Where `bytes` lie in this arena, when all of them do.
  struct Location {
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  std::optional<Location> Find(const Buffer& bytes) const noexcept;

  // The abstract Unix socket name (without its leading NUL) under which peers obtain
  // the arena's file descriptor.
  const std::string& name() const noexcept;
  size_t capacity() const noexcept;
  // Bytes in blocks handed out and not yet returned.
  size_t used() const noexcept;
  // Peers refused the arena's descriptor (another user).
  uint64_t peers_refused() const noexcept;

 private:
  struct Impl;
  explicit SharedArena(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with the blocks handed out
};

}  // namespace zerocan
