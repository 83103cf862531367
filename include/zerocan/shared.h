// zerocan::SharedArena: memory that processes on one host share without copying.
//
// An arena is one anonymous memory file (memfd) of a fixed size, mapped into this
// process. Blocks allocated from it are ordinary Buffers: write into them, keep them,
// pass them on. Another process of the same user on the same host can map the arena
// (read-only) and read a block in place, given its location (offset and length); the
// arena hands its file descriptor to such a peer over an abstract Unix socket named by
// name(), and only to a peer running as the same user.
//
// A reader holds the block of every view it decoded (a lease, over the same socket):
// a block returns to the arena only when the owner's Buffers over it and every peer's
// hold are gone, so a peer may keep a view as long as it likes, and a peer that dies
// (its socket closes) lets go of its holds.
//
// Nothing is left behind by a crash: the memory file has no path (nothing in /dev/shm)
// and the kernel frees it once the last process that maps it is gone. Its size is
// sealed, so a peer that maps it can rely on every byte of it staying there.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "zerocan/buffer.h"

namespace zerocan {

namespace internal {
struct TestHooks;  // src/internal/testing.h
}  // namespace internal

// Where a process runs, as far as sharing memory goes. Two processes can map each
// other's arenas when they run on the same kernel (boot id), in the same network
// namespace (arenas are served on abstract Unix sockets, which are private to one) and
// as the same user. Peers exchange this in their hello (Hello.host).
struct HostIdentity {
  std::string boot_id;  // /proc/sys/kernel/random/boot_id
  uint64_t netns = 0;   // inode of /proc/self/ns/net
  uint32_t uid = 0;     // effective user id

  // This process's identity (read once; boot_id empty when /proc is not there, and
  // then it shares memory with nobody).
  static const HostIdentity& This();
  bool SharesMemoryWith(const HostIdentity& other) const noexcept {
    return !boot_id.empty() && boot_id == other.boot_id && netns == other.netns &&
           uid == other.uid;
  }
};

// A received payload that lies in its sender's arena (Payload.shared), as the decoder
// mapped it (Message::shared_origins()).
struct SharedOrigin {
  std::string arena;    // the sender's arena
  uint64_t offset = 0;  // where the payload begins in it
  uint64_t block = 0;   // the serial number of the arena block it lies in (SharedRef.block)
  Buffer view;          // its bytes, mapped read-only here
};

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

  // Keeps blocks of this arena (Buffers that Allocate returned, or slices of them) until
  // a reader in another process holds each of them, or until `until`: for blocks sent
  // to a peer that has not read them yet and a sender that has no further use for them
  // (an engine's results). Blocks not of this arena are ignored.
  void Lend(std::vector<Buffer> blocks, std::chrono::steady_clock::time_point until);
  // Blocks lent and neither held nor expired yet.
  size_t lent() const noexcept;
  // Receivers' holds now on the block `bytes` lie in (views decoded by peers, or by this
  // process); 0 when `bytes` lie in no block in use. A sender may write a block it
  // passed in place once the call is answered and this is 0.
  size_t holds_on(const Buffer& bytes) const;

  // Where `bytes` lie in this arena, when all of them do.
  struct Location {
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t block = 0;  // the serial number of the block they lie in (0: in none)
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
  // Holds that readers in other processes have on blocks now (a lease per view that a
  // peer decoded; a block returns to the arena only when its own Buffers and every hold
  // on it are gone).
  size_t holds() const noexcept;

  // The process's default arena, created at first use with ZEROCAN_ARENA_BYTES bytes
  // (a size such as "256M"; default 1 GiB of address space, committed as written).
  // Clients use it for shared-memory calls unless given one (ClientOptions). Throws
  // Error when the system refuses it.
  static std::shared_ptr<SharedArena> ProcessDefault();
  // ZEROCAN_ARENA_BYTES, or 1 GiB when it is not set. Throws Error when it is not a size.
  static size_t DefaultCapacity();

 private:
  friend struct internal::TestHooks;
  struct Impl;
  struct Block;
  explicit SharedArena(std::shared_ptr<Impl> impl);
  // `local_name` set: an arena under that name, read only by this process (tests).
  static std::shared_ptr<SharedArena> Create(size_t capacity, std::string local_name);
  std::shared_ptr<Impl> impl_;  // shared with the blocks handed out
};

}  // namespace zerocan
