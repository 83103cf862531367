// SharedArena (zerocan/shared.h): a sealed memfd, a first-fit allocator over it with
// coalescing, and the server that hands its descriptor to peers.
#include "zerocan/shared.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>

#include <absl/strings/str_cat.h>

#include "internal/testing.h"
#include "transport/shared_segments.h"
#include "zerocan/error.h"
#include "zerocan/policy.h"

namespace zerocan {
namespace {

constexpr size_t kAlignment = 64;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

// A block handed out: returned to its arena when the last Buffer over it (the owner's,
// or a reader's hold) is gone. It holds the arena's state, not the SharedArena handle,
// so blocks may outlive the handle.
struct SharedArena::Block {
  Block(std::shared_ptr<Impl> a, size_t o, size_t s) : arena(std::move(a)), offset(o), size(s) {}
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block();
  std::shared_ptr<Impl> arena;
  size_t offset, size;
  std::atomic<uint32_t> holds{0};  // receivers' holds on it now (holds_on)
};


struct SharedArena::Impl : internal::ArenaBlocks {
  // A receiver's hold on a block: keeps it, and counts itself while it lives.
  struct HoldToken {
    explicit HoldToken(std::shared_ptr<Block> b) : block(std::move(b)) {
      block->holds.fetch_add(1, std::memory_order_relaxed);
    }
    HoldToken(const HoldToken&) = delete;
    HoldToken& operator=(const HoldToken&) = delete;
    ~HoldToken() { block->holds.fetch_sub(1, std::memory_order_relaxed); }
    std::shared_ptr<Block> block;
  };

  int fd = -1;
  int read_only_fd = -1;  // what peers get: they can map it for reading only
  std::byte* base = nullptr;
  size_t capacity = 0;
  std::unique_ptr<internal::SegmentServer> server;  // null: an arena of this process only
  std::string name;

  mutable std::mutex mu;
  std::map<size_t, size_t> free_runs;  // mu: offset -> length, disjoint, coalesced
  size_t used = 0;                     // mu
  struct Live {
    size_t size;
    uint64_t serial;
    std::weak_ptr<Block> block;
  };
  uint64_t next_serial = 1;  // mu
  std::map<size_t, Live> live;  // mu: the blocks handed out, by offset
  struct Lent {
    std::shared_ptr<const void> block;
    std::chrono::steady_clock::time_point until;
  };
  std::multimap<const void*, Lent> lent;  // mu: by block

  // Where `bytes` lie in the arena, when they lie inside it at all.
  std::optional<uint64_t> OffsetOf(const Buffer& bytes) const noexcept {
    const std::byte* p = bytes.data();
    if (p < base || bytes.size() > capacity ||
        static_cast<size_t>(p - base) > capacity - bytes.size()) {
      return std::nullopt;
    }
    return static_cast<uint64_t>(p - base);
  }

  // The live block that holds [offset, offset + length), or live.end() (mu held).
  std::map<size_t, Live>::iterator LiveAt(uint64_t offset, uint64_t length) {
    auto it = live.upper_bound(offset);
    if (it == live.begin()) return live.end();
    --it;
    uint64_t into = offset - it->first;
    if (into > it->second.size || length > it->second.size - into) return live.end();
    return it;
  }

  // Takes the lent blocks past their time out of `lent` (mu held): the caller drops them
  // after unlocking (a block's return takes mu).
  void TakeExpired(std::chrono::steady_clock::time_point now,
                   std::vector<std::shared_ptr<const void>>* out) {
    for (auto it = lent.begin(); it != lent.end();) {
      if (it->second.until <= now) {
        out->push_back(std::move(it->second.block));
        it = lent.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::shared_ptr<const void> Hold(uint64_t offset, uint64_t length, uint64_t serial) override {
    std::vector<std::shared_ptr<const void>> dropped;  // after the lock
    std::lock_guard<std::mutex> lock(mu);
    auto it = LiveAt(offset, length);
    if (it == live.end()) return nullptr;
    if (serial != 0 && serial != it->second.serial) return nullptr;  // a later block there
    std::shared_ptr<Block> live_block = it->second.block.lock();  // null while being returned
    if (live_block == nullptr) return nullptr;
    // A reader holds it now: one loan of it ends (the reader's hold keeps it).
    if (auto loan = lent.find(live_block.get()); loan != lent.end()) {
      dropped.push_back(std::move(loan->second.block));
      lent.erase(loan);
    }
    return std::make_shared<HoldToken>(std::move(live_block));
  }

  ~Impl() {
    internal::UnregisterLocalArena(name);
    server.reset();
    if (base != nullptr) ::munmap(base, capacity);
    if (fd >= 0) ::close(fd);
    if (read_only_fd >= 0) ::close(read_only_fd);
  }

  std::optional<size_t> Take(size_t size) {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = free_runs.begin(); it != free_runs.end(); ++it) {
      if (it->second < size) continue;
      size_t offset = it->first, left = it->second - size;
      free_runs.erase(it);
      if (left > 0) free_runs.emplace(offset + size, left);
      used += size;
      return offset;
    }
    return std::nullopt;
  }

  void Give(size_t offset, size_t size) {
    std::lock_guard<std::mutex> lock(mu);
    live.erase(offset);
    used -= size;
    auto next = free_runs.lower_bound(offset);
    if (next != free_runs.end() && offset + size == next->first) {
      size += next->second;
      next = free_runs.erase(next);
    }
    if (next != free_runs.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == offset) {
        prev->second += size;
        return;
      }
    }
    free_runs.emplace(offset, size);
  }
};

SharedArena::Block::~Block() { arena->Give(offset, size); }

SharedArena::SharedArena(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
SharedArena::~SharedArena() = default;

std::shared_ptr<SharedArena> SharedArena::Create(size_t capacity) { return Create(capacity, {}); }

std::shared_ptr<SharedArena> SharedArena::Create(size_t capacity, std::string local_name) {
  if (capacity == 0) throw Error("shared arena: capacity 0");
  auto impl = std::make_shared<Impl>();
  impl->capacity = RoundUp(capacity, static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
  impl->fd = ::memfd_create("zerocan-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  auto fail = [&](const char* what) {
    return Error(absl::StrCat("shared arena of ", impl->capacity, " bytes: ", what, ": ",
                              std::strerror(errno)));
  };
  if (impl->fd < 0) throw fail("memfd_create");
  if (::ftruncate(impl->fd, static_cast<off_t>(impl->capacity)) != 0) throw fail("ftruncate");
  // Peers rely on the size: every byte they mapped stays (no SIGBUS under a reader).
  if (::fcntl(impl->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    throw fail("sealing");
  }
  void* p = ::mmap(nullptr, impl->capacity, PROT_READ | PROT_WRITE, MAP_SHARED, impl->fd, 0);
  if (p == MAP_FAILED) throw fail("mmap");
  impl->base = static_cast<std::byte*>(p);
  impl->free_runs.emplace(0, impl->capacity);
  // Peers get a descriptor opened read-only on the same file: a MAP_SHARED mapping of it
  // cannot be made writable, so no peer can change the owner's blocks.
  impl->read_only_fd =
      ::open(absl::StrCat("/proc/self/fd/", impl->fd).c_str(), O_RDONLY | O_CLOEXEC);
  if (impl->read_only_fd < 0) throw fail("reopening read-only");
  if (local_name.empty()) {
    impl->server = std::make_unique<internal::SegmentServer>(impl->read_only_fd, impl.get());
    impl->name = impl->server->name();
  } else {
    impl->name = std::move(local_name);  // served to no peer (tests)
  }
  internal::RegisterLocalArena(impl->name, std::weak_ptr<internal::ArenaBlocks>(impl), impl->base,
                               impl->capacity);
  return std::shared_ptr<SharedArena>(new SharedArena(std::move(impl)));
}

std::shared_ptr<SharedArena> internal::TestHooks::LocalArenaNamed(size_t capacity,
                                                                   std::string name) {
  return SharedArena::Create(capacity, std::move(name));
}

std::optional<Buffer> SharedArena::Allocate(size_t size) {
  {
    std::vector<std::shared_ptr<const void>> dropped;  // after the lock
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->TakeExpired(std::chrono::steady_clock::now(), &dropped);
  }
  size_t rounded = RoundUp(std::max<size_t>(size, 1), kAlignment);
  if (rounded < size) return std::nullopt;  // overflow
  std::optional<size_t> offset = impl_->Take(rounded);
  if (!offset) return std::nullopt;
  auto block = std::make_shared<Block>(impl_, *offset, rounded);
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->live[*offset] = Impl::Live{rounded, impl_->next_serial++, block};
  }
  return Buffer(impl_->base + *offset, size, std::move(block));
}

void SharedArena::Lend(std::vector<Buffer> blocks, std::chrono::steady_clock::time_point until) {
  std::erase_if(blocks, [this](const Buffer& b) {
    std::optional<Location> at = Find(b);  // takes the lock
    return !at || at->block == 0 || b.keep_alive() == nullptr;
  });
  std::vector<std::shared_ptr<const void>> dropped;  // after the lock
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->TakeExpired(std::chrono::steady_clock::now(), &dropped);
  for (Buffer& b : blocks) {
    const void* key = b.keep_alive().get();
    impl_->lent.emplace(key, Impl::Lent{b.keep_alive(), until});
  }
}

size_t SharedArena::lent() const noexcept {
  std::vector<std::shared_ptr<const void>> dropped;  // after the lock
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->TakeExpired(std::chrono::steady_clock::now(), &dropped);
  return impl_->lent.size();
}

std::optional<SharedArena::Location> SharedArena::Find(const Buffer& bytes) const noexcept {
  std::optional<uint64_t> offset = impl_->OffsetOf(bytes);
  if (!offset) return std::nullopt;
  Location at{*offset, bytes.size(), 0};
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->LiveAt(at.offset, at.length);
  if (it != impl_->live.end()) at.block = it->second.serial;
  return at;
}

const std::string& SharedArena::name() const noexcept { return impl_->name; }
size_t SharedArena::capacity() const noexcept { return impl_->capacity; }

size_t SharedArena::used() const noexcept {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->used;
}

uint64_t SharedArena::peers_refused() const noexcept {
  return impl_->server != nullptr ? impl_->server->refused() : 0;
}

size_t SharedArena::holds_on(const Buffer& bytes) const {
  std::optional<uint64_t> offset = impl_->OffsetOf(bytes);
  if (!offset) return 0;
  std::shared_ptr<Block> block;  // let go of after the lock (a block's return takes it)
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->LiveAt(*offset, bytes.size());
  if (it == impl_->live.end()) return 0;
  block = it->second.block.lock();
  return block != nullptr ? block->holds.load(std::memory_order_relaxed) : 0;
}

size_t SharedArena::holds() const noexcept {
  return impl_->server != nullptr ? impl_->server->holds() : 0;
}

std::shared_ptr<SharedArena> SharedArena::ProcessDefault() {
  static std::mutex mu;
  static std::shared_ptr<SharedArena> arena;
  std::lock_guard<std::mutex> lock(mu);
  if (!arena) arena = Create(DefaultCapacity());
  return arena;
}

size_t SharedArena::DefaultCapacity() {
  long long bytes = 1ll << 30;
  if (const char* text = std::getenv("ZEROCAN_ARENA_BYTES"); text != nullptr && *text != 0) {
    bytes = Policy::ParseSize(text);
    if (bytes <= 0) {
      throw Error(absl::StrCat("ZEROCAN_ARENA_BYTES=\"", text,
                               "\": not a size (examples: 268435456, 256M, 1GiB)"));
    }
  }
  return static_cast<size_t>(bytes);
}

const HostIdentity& HostIdentity::This() {
  static const HostIdentity identity = [] {
    HostIdentity id;
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::getline(boot, id.boot_id);
    struct stat st{};
    if (::stat("/proc/self/ns/net", &st) == 0) {
      id.netns = static_cast<uint64_t>(st.st_ino);
    } else {
      id.boot_id.clear();  // no way to tell namespaces apart: share with nobody
    }
    id.uid = static_cast<uint32_t>(::geteuid());
    return id;
  }();
  return identity;
}

}  // namespace zerocan
