// Shared memory between processes of one user on one host: handing an arena's memory
// file to a peer (SegmentServer, the arena's side) and mapping peers' arenas to read
// locations in them (SharedSegments, the receiver's side).
//
// The descriptor travels over an abstract Unix socket (SCM_RIGHTS). The reader keeps
// that connection while it maps the arena and holds every block it reads through it (a
// lease, docs/FORMAT.md "Leases"): the owner's block is not reused while any reader
// holds it, and a reader's death (its connection closes) drops its holds. Abstract sockets
// have no file to clean up and are private to a network namespace, so a peer in
// another namespace (another host, as far as zerocan is concerned) cannot reach one.
// Both ends check the other's credentials (SO_PEERCRED): same user only. The receiver
// also checks that the memory file's size is sealed (F_SEAL_SHRINK), so that no byte of
// a mapping can vanish under a reader (a read past the end of a shrunk file is SIGBUS).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include <absl/container/flat_hash_map.h>

#include "zerocan/buffer.h"

namespace zerocan::internal {

// Every arena's name begins with this (then the owner's pid and 32 hex digits).
inline constexpr std::string_view kArenaNamePrefix = "zerocan-arena-";

// The lease requests a reader sends on an arena's connection after it received the
// descriptor: one byte (kHold or kRelease), then offset, length and block serial
// (SharedRef.block) as little-endian 64-bit integers. The owner answers each hold with
// kHeld or kNotHeld; a release has no answer.
inline constexpr char kHold = 'H', kRelease = 'R', kHeld = 'Y', kNotHeld = 'N';
inline constexpr size_t kLeaseRequestSize = 25;

// The owner's side of leases: an arena's live blocks.
class ArenaBlocks {
 public:
  virtual ~ArenaBlocks() = default;
  // Keeps the live block that holds all of [offset, offset + length) from returning to
  // the arena while the handle lives; null when no live block holds that range, or its
  // serial number is not `block` (0: any).
  virtual std::shared_ptr<const void> Hold(uint64_t offset, uint64_t length, uint64_t block) = 0;
};

class SegmentServer {
 public:
  // Serves a duplicate of descriptor `memfd` under a fresh abstract name, and holds
  // blocks of `blocks` for the readers connected (`blocks` must outlive the server, or
  // the server must be destroyed from a block's release). Throws TransportError.
  SegmentServer(int memfd, ArenaBlocks* blocks);
  ~SegmentServer();
  SegmentServer(const SegmentServer&) = delete;
  SegmentServer& operator=(const SegmentServer&) = delete;

  // The abstract socket's name, without its leading NUL.
  const std::string& name() const noexcept;
  // Peers refused: another user.
  uint64_t refused() const noexcept;
  // Holds of connected readers now (each a reader's view of a block).
  size_t holds() const noexcept;

  // Readers connected at once beyond which a new reader gets the descriptor but no
  // leases (its holds fail), and holds one reader may have at once.
  static constexpr size_t kMaxReaders = 1024;
  static constexpr size_t kMaxHoldsPerReader = size_t{1} << 16;

 private:
  struct State;
  static void Serve(std::shared_ptr<State> state);
  // Shared with the serving thread, which outlives the server when the server is
  // destroyed on it (a release dropped the last block, and with it the arena).
  std::shared_ptr<State> state_;
  std::thread thread_;
};

class SharedSegments {
 public:
  // Bytes [offset, offset + length) of the arena served under `name`, as a read-only
  // Buffer that keeps the mapping alive and holds the owner's block (a lease) until the
  // last copy of the Buffer is gone (do not write through its mutable_data()). An
  // arena stays mapped while a Buffer over it lives, and for kKeepMapped after its last
  // use (a peer sends call after call: mapping costs a connection, a descriptor and an
  // mmap); past that it is unmapped at the next Resolve or Sweep, so an arena whose
  // process is gone is not held for long.
  // Throws DecodeError naming `path` (the field of the message that held the location)
  // when the arena cannot be reached or mapped, the range is not inside it, or its
  // owner holds no live block there (returned already, or never handed out).
  Buffer Resolve(std::string_view name, uint64_t offset, uint64_t length, uint64_t block,
                 std::string_view path);
  // Unmaps the arenas that no Buffer holds and nobody used for kKeepMapped.
  void Sweep();
  // Arenas mapped now.
  size_t mapped() const;

  static constexpr std::chrono::milliseconds kKeepMapped{1000};

  // One peer's arena mapped here, with the connection its leases go on.
  struct Mapping;

 private:
  std::shared_ptr<Mapping> Map(std::string_view name, std::string_view path);

  void SweepLocked(std::chrono::steady_clock::time_point now);  // mu_ held

  struct Kept {
    std::weak_ptr<Mapping> mapping;
    std::shared_ptr<Mapping> recent;  // held until kKeepMapped after last_used
    std::chrono::steady_clock::time_point last_used;
  };
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Kept> mappings_;  // mu_
};

// The process's mappings of peers' arenas, shared by every decoder (Message::Decode maps
// Payload.shared references through it).
SharedSegments& ProcessSegments();

// This process's own arenas (SharedArena registers each while it lives): a reference
// into one (a result handing the caller's argument back) is read from the arena's own
// mapping, with no second mapping to keep and sweep, holding the block directly.
void RegisterLocalArena(const std::string& name, std::weak_ptr<ArenaBlocks> blocks,
                        const std::byte* base, size_t size);
void UnregisterLocalArena(const std::string& name);

}  // namespace zerocan::internal
