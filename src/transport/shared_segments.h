// Shared memory between processes of one user on one host: handing an arena's memory
// file to a peer (SegmentServer, the arena's side) and mapping peers' arenas to read
// locations in them (SharedSegments, the receiver's side).
//
// The descriptor travels over an abstract Unix socket (SCM_RIGHTS). Abstract sockets
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

class SegmentServer {
 public:
  // Serves descriptor `memfd` (not owned; it must outlive the server) under a fresh
  // abstract name. Throws TransportError.
  explicit SegmentServer(int memfd);
  ~SegmentServer();
  SegmentServer(const SegmentServer&) = delete;
  SegmentServer& operator=(const SegmentServer&) = delete;

  // The abstract socket's name, without its leading NUL.
  const std::string& name() const noexcept { return name_; }
  // Peers refused: another user.
  uint64_t refused() const noexcept { return refused_.load(std::memory_order_relaxed); }

 private:
  void Serve();

  int memfd_;
  int listener_ = -1;
  int wake_fd_ = -1;
  std::string name_;
  std::atomic<uint64_t> refused_{0};
  std::thread thread_;
};

class SharedSegments {
 public:
  // Bytes [offset, offset + length) of the arena served under `name`, as a read-only
  // Buffer that keeps the mapping alive (do not write through its mutable_data()). An
  // arena stays mapped while a Buffer over it lives, and for kKeepMapped after its last
  // use (a peer sends call after call: mapping costs a connection, a descriptor and an
  // mmap); past that it is unmapped at the next Resolve or Sweep, so an arena whose
  // process is gone is not held for long.
  // Throws DecodeError naming `path` (the field of the message that held the location)
  // when the arena cannot be reached or mapped, or the range is not inside it.
  Buffer Resolve(std::string_view name, uint64_t offset, uint64_t length,
                 std::string_view path);
  // Unmaps the arenas that no Buffer holds and nobody used for kKeepMapped.
  void Sweep();
  // Arenas mapped now.
  size_t mapped() const;

  static constexpr std::chrono::milliseconds kKeepMapped{1000};

 private:
  struct Mapping;
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
// mapping, with no second mapping to keep and sweep. `owner` keeps the mapping alive.
void RegisterLocalArena(const std::string& name, std::weak_ptr<const void> owner,
                        const std::byte* base, size_t size);
void UnregisterLocalArena(const std::string& name);

}  // namespace zerocan::internal
