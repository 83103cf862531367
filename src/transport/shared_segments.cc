// SegmentServer and SharedSegments (shared_segments.h).
#include "transport/shared_segments.h"

#include <endian.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <deque>
#include <system_error>
#include <tuple>

#include <absl/strings/str_cat.h>

#include "internal/strings.h"
#include "zerocan/error.h"

namespace zerocan::internal {
namespace {

// An abstract Unix address: a NUL, then the name (no file behind it).
socklen_t AbstractAddress(std::string_view name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path + 1, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

// The user at the other end of Unix socket `fd`, or -1.
// zerocan-arena-<pid>-<32 hex digits>, as SegmentServer (and Python's Arena) names them.
bool IsArenaName(std::string_view name) {
  if (name.size() >= sizeof(sockaddr_un::sun_path) ||
      name.substr(0, kArenaNamePrefix.size()) != kArenaNamePrefix) {
    return false;
  }
  name.remove_prefix(kArenaNamePrefix.size());
  size_t dash = name.find('-');
  if (dash == 0 || dash == std::string_view::npos || dash > 10) return false;
  for (char c : name.substr(0, dash)) {
    if (c < '0' || c > '9') return false;
  }
  std::string_view hex = name.substr(dash + 1);
  if (hex.size() != 32) return false;
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

long PeerUser(int fd) {
  ucred cred{};
  socklen_t size = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0) return -1;
  return static_cast<long>(cred.uid);
}

constexpr size_t kMaxName = sizeof(sockaddr_un::sun_path) - 1;

// One byte of data with room for one descriptor (SCM_RIGHTS), for sendmsg and recvmsg.
struct FdMessage {
  FdMessage() {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;

  char byte = 'z';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

}  // namespace

// ---- SegmentServer ------------------------------------------------------------------

struct SegmentServer::State {
  using Key = std::tuple<uint64_t, uint64_t, uint64_t>;  // offset, length, block serial
  int memfd = -1;  // a duplicate, owned
  int listener = -1;
  int wake_fd = -1;
  std::string name;
  ArenaBlocks* blocks = nullptr;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> refused{0};
  std::atomic<size_t> holds{0};

  // A connected reader: its unfinished request and the blocks it holds. Serving thread.
  struct Reader {
    int fd = -1;
    char request[kLeaseRequestSize] = {};
    size_t have = 0;
    size_t count = 0;
    absl::flat_hash_map<Key, std::vector<std::shared_ptr<const void>>> held;
  };
  std::vector<std::unique_ptr<Reader>> readers;

  ~State() {
    for (auto& r : readers) Drop(*r);
    for (int fd : {memfd, listener, wake_fd}) {
      if (fd >= 0) ::close(fd);
    }
  }

  // Closes a reader's connection and lets go of its holds (a reader gone, or broken).
  void Drop(Reader& r) {
    holds.fetch_sub(r.count, std::memory_order_relaxed);
    r.count = 0;
    auto held = std::move(r.held);  // released here, after the reader is consistent
    r.held.clear();
    if (r.fd >= 0) ::close(r.fd);
    r.fd = -1;
  }

  // One complete request from `r`; false when the reader broke the protocol.
  bool Handle(Reader& r) {
    uint64_t offset = 0, length = 0, serial = 0;
    std::memcpy(&offset, r.request + 1, 8);
    std::memcpy(&length, r.request + 9, 8);
    std::memcpy(&serial, r.request + 17, 8);
    offset = le64toh(offset);
    length = le64toh(length);
    serial = le64toh(serial);
    const Key key{offset, length, serial};
    if (r.request[0] == kHold) {
      std::shared_ptr<const void> block;
      if (r.count < kMaxHoldsPerReader) block = blocks->Hold(offset, length, serial);
      char answer = block ? kHeld : kNotHeld;
      if (block) {
        r.held[key].push_back(std::move(block));
        ++r.count;
        holds.fetch_add(1, std::memory_order_relaxed);
      }
      // The reader waits for this byte: its socket buffer has room.
      return ::send(r.fd, &answer, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1;
    }
    if (r.request[0] == kRelease) {
      auto it = r.held.find(key);
      if (it == r.held.end()) return false;  // never held: a broken reader
      std::shared_ptr<const void> dropped = std::move(it->second.back());
      it->second.pop_back();
      if (it->second.empty()) r.held.erase(it);
      --r.count;
      holds.fetch_sub(1, std::memory_order_relaxed);
      // May return the last block, and with it destroy the arena and this server (on
      // this thread): `stop` is set then, and the loop ends.
      dropped.reset();
      return true;
    }
    return false;
  }
};

SegmentServer::SegmentServer(int memfd, ArenaBlocks* blocks) : state_(std::make_shared<State>()) {
  State& st = *state_;
  st.blocks = blocks;
  std::random_device rd;
  // 128 random bits: a name is also a capability (a peer of another user is refused
  // anyway; one of the same user, or a reference from the network, must know it).
  st.name = absl::StrCat(Sv(kArenaNamePrefix), getpid(), "-", absl::Hex(rd(), absl::kZeroPad8),
                         absl::Hex(rd(), absl::kZeroPad8), absl::Hex(rd(), absl::kZeroPad8),
                         absl::Hex(rd(), absl::kZeroPad8));
  st.memfd = ::fcntl(memfd, F_DUPFD_CLOEXEC, 0);
  st.listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr;
  socklen_t len = AbstractAddress(st.name, &addr);
  if (st.memfd < 0 || st.listener < 0 ||
      ::bind(st.listener, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(st.listener, 64) != 0) {
    throw TransportError(absl::StrCat("shared memory: cannot listen on @", st.name, ": ",
                                      std::strerror(errno)));
  }
  st.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (st.wake_fd < 0) throw TransportError("shared memory: eventfd failed");
  try {
    thread_ = std::thread(&SegmentServer::Serve, state_);
  } catch (const std::system_error& e) {
    throw TransportError(
        absl::StrCat("shared memory: no thread to serve @", st.name, ": ", e.what()));
  }
}

SegmentServer::~SegmentServer() {
  state_->stop.store(true, std::memory_order_release);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(state_->wake_fd, &one, sizeof(one));
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();  // destroyed by a release on the serving thread: it ends on its own
  } else {
    thread_.join();
  }
}

const std::string& SegmentServer::name() const noexcept { return state_->name; }
uint64_t SegmentServer::refused() const noexcept {
  return state_->refused.load(std::memory_order_relaxed);
}
size_t SegmentServer::holds() const noexcept {
  return state_->holds.load(std::memory_order_relaxed);
}

void SegmentServer::Serve(std::shared_ptr<State> state) {
  State& st = *state;
  const long me = static_cast<long>(geteuid());  // SO_PEERCRED reports effective ids
  std::vector<pollfd> fds;
  while (!st.stop.load(std::memory_order_acquire)) {
    fds.assign({{st.listener, POLLIN, 0}, {st.wake_fd, POLLIN, 0}});
    for (auto& r : st.readers) fds.push_back({r->fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    // Readers first (the vector may change below). A reader's request comes whole in
    // practice (17 bytes); partial ones wait for the rest.
    for (size_t i = 0; i < st.readers.size() && !st.stop.load(std::memory_order_acquire); ++i) {
      State::Reader& r = *st.readers[i];
      if (fds[2 + i].revents == 0) continue;
      bool ok = true;
      // A bounded number of requests per reader per round: one that keeps sending does
      // not starve the others into their timeouts.
      for (int requests = 0; ok && requests < 64 && !st.stop.load(std::memory_order_acquire);) {
        ssize_t got = ::recv(r.fd, r.request + r.have, kLeaseRequestSize - r.have, MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (got <= 0) {
          ok = false;  // closed: the reader unmapped the arena, or its process is gone
          break;
        }
        r.have += static_cast<size_t>(got);
        if (r.have < kLeaseRequestSize) continue;
        r.have = 0;
        ++requests;
        ok = st.Handle(r);
      }
      if (!ok) st.Drop(r);
    }
    if (st.stop.load(std::memory_order_acquire)) return;
    std::erase_if(st.readers, [](const auto& r) { return r->fd < 0; });
    if (fds[0].revents == 0) continue;
    int peer = ::accept4(st.listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (peer < 0) {
      // Out of descriptors: the listener stays readable; wait rather than spin.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      continue;
    }
    if (PeerUser(peer) != me) {
      st.refused.fetch_add(1, std::memory_order_relaxed);
      ::close(peer);
      continue;
    }
    FdMessage out;
    cmsghdr* c = CMSG_FIRSTHDR(&out.msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &st.memfd, sizeof(int));
    if (::sendmsg(peer, &out.msg, MSG_NOSIGNAL) != 1 || st.readers.size() >= kMaxReaders) {
      ::close(peer);  // beyond kMaxReaders: mapped, but its holds fail (no connection)
      continue;
    }
    auto reader = std::make_unique<State::Reader>();
    reader->fd = peer;
    st.readers.push_back(std::move(reader));
  }
}

// ---- SharedSegments -----------------------------------------------------------------

struct SharedSegments::Mapping {
  std::byte* data = nullptr;
  size_t size = 0;
  pid_t pid = getpid();  // a child after fork() inherits the mapping, not the leases
  int lease_fd = -1;  // the connection the descriptor came on: leases go there
  std::mutex lease_mu;  // one request at a time on lease_fd
  // Holds sent whose answer was not read in time (lease_mu): their answers come first,
  // in order, and a late kHeld is released at once (nobody reads that view).
  std::deque<std::tuple<uint64_t, uint64_t, uint64_t>> owed;
  bool broken = false;  // a request went out in part: the stream is lost (lease_mu)

  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
    if (lease_fd >= 0) ::close(lease_fd);  // the owner drops whatever is still held
  }

  static void Encode(char op, uint64_t offset, uint64_t length, uint64_t block, char* out) {
    out[0] = op;
    offset = htole64(offset);
    length = htole64(length);
    block = htole64(block);
    std::memcpy(out + 1, &offset, 8);
    std::memcpy(out + 9, &length, 8);
    std::memcpy(out + 17, &block, 8);
  }

  // Sends one request whole (lease_mu held); false when it did not go (a part that went
  // leaves the stream unusable: `broken`).
  bool SendLocked(char op, uint64_t offset, uint64_t length, uint64_t block) {
    if (broken) return false;
    char request[kLeaseRequestSize];
    Encode(op, offset, length, block, request);
    ssize_t sent = ::send(lease_fd, request, sizeof(request), MSG_NOSIGNAL);
    if (sent > 0 && sent != static_cast<ssize_t>(sizeof(request))) broken = true;
    return sent == static_cast<ssize_t>(sizeof(request));
  }

  // Asks the owner to hold the block under [offset, offset + length): its answer, or 0
  // when none came within the socket's timeout (an owner gone, stalled, or serving too
  // many readers to keep this one). An answer that comes later is matched to its own
  // request at the next hold, so the stream stays in step.
  char Hold(uint64_t offset, uint64_t length, uint64_t block) {
    std::lock_guard<std::mutex> lock(lease_mu);
    if (pid != getpid() || !SendLocked(kHold, offset, length, block)) return 0;
    owed.emplace_back(offset, length, block);
    while (!owed.empty()) {
      char answer = 0;
      if (::recv(lease_fd, &answer, 1, 0) != 1) return 0;  // ours stays owed
      auto [o, l, b] = owed.front();
      owed.pop_front();
      if (owed.empty()) return answer;  // the answer to this request
      if (answer == kHeld) SendLocked(kRelease, o, l, b);  // a late hold nobody uses
    }
    return 0;
  }

  void Release(uint64_t offset, uint64_t length, uint64_t block) noexcept {
    std::lock_guard<std::mutex> lock(lease_mu);
    // Not from a child after fork(): the parent's views still hold the block. Nothing to
    // do when it fails: the owner is gone, and its holds with it.
    if (pid == getpid()) SendLocked(kRelease, offset, length, block);
  }
};

namespace {

// A reader's hold on a block of a peer's arena: released when the last view goes.
struct Lease {
  Lease(std::shared_ptr<SharedSegments::Mapping> m, uint64_t o, uint64_t l, uint64_t b)
      : mapping(std::move(m)), offset(o), length(l), block(b) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { mapping->Release(offset, length, block); }
  std::shared_ptr<SharedSegments::Mapping> mapping;
  uint64_t offset, length, block;
};

}  // namespace

std::shared_ptr<SharedSegments::Mapping> SharedSegments::Map(std::string_view name,
                                                             std::string_view path) {
  auto fail = [&](const std::string& why) {
    return DecodeError(DecodeError::Code::kMalformed,
                       absl::StrCat(Sv(path), ": shared memory @", Sv(name), ": ", why));
  };
  // Only names of the form arenas are given: a reference from the network can make this
  // process connect to no other abstract socket than an arena's.
  if (!IsArenaName(name)) throw fail("not an arena name");
  // Non-blocking connect: a listener whose backlog is full answers EAGAIN at once rather
  // than holding the decoder.
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) throw fail("no socket");
  sockaddr_un addr;
  socklen_t len = AbstractAddress(name, &addr);
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    int err = errno;
    ::close(s);
    throw fail(absl::StrCat("no arena there on this host (", std::strerror(err), ")"));
  }
  int flags = ::fcntl(s, F_GETFL);
  ::fcntl(s, F_SETFL, flags & ~O_NONBLOCK);
  timeval timeout{1, 0};  // an arena's server answers at once
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (PeerUser(s) != static_cast<long>(geteuid())) {
    ::close(s);
    throw fail("served by another user");
  }
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  FdMessage in;
  ssize_t got = ::recvmsg(s, &in.msg, MSG_CMSG_CLOEXEC);
  cmsghdr* c = got == 1 ? CMSG_FIRSTHDR(&in.msg) : nullptr;
  if (c == nullptr || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(sizeof(int))) {
    ::close(s);
    throw fail("no descriptor came");
  }
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  struct stat st{};
  int seals = ::fcntl(fd, F_GET_SEALS);
  auto m = std::make_shared<Mapping>();
  m->lease_fd = s;  // closed with the mapping
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0 || ::fstat(fd, &st) != 0 || st.st_size <= 0) {
    ::close(fd);
    throw fail("not a sealed memory file");
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the memory
  if (p == MAP_FAILED) throw fail(absl::StrCat("mmap failed (", std::strerror(errno), ")"));
  m->data = static_cast<std::byte*>(p);
  m->size = static_cast<size_t>(st.st_size);
  return m;
}

void SharedSegments::SweepLocked(std::chrono::steady_clock::time_point now) {
  absl::erase_if(mappings_, [now](auto& entry) {
    Kept& kept = entry.second;
    if (kept.recent && now - kept.last_used > kKeepMapped) kept.recent.reset();
    return kept.mapping.expired();
  });
}

void SharedSegments::Sweep() {
  std::lock_guard<std::mutex> lock(mu_);
  SweepLocked(std::chrono::steady_clock::now());
}

namespace {
struct LocalArena {
  std::weak_ptr<ArenaBlocks> blocks;
  const std::byte* base = nullptr;
  size_t size = 0;
  pid_t pid = 0;  // a child after fork() has the mapping, not the arena
};
std::mutex local_mu;
absl::flat_hash_map<std::string, LocalArena>& LocalArenas() {  // local_mu
  static auto* arenas = new absl::flat_hash_map<std::string, LocalArena>();
  return *arenas;
}
}  // namespace

void RegisterLocalArena(const std::string& name, std::weak_ptr<ArenaBlocks> blocks,
                        const std::byte* base, size_t size) {
  std::lock_guard<std::mutex> lock(local_mu);
  LocalArenas()[name] = LocalArena{std::move(blocks), base, size, getpid()};
}

void UnregisterLocalArena(const std::string& name) {
  std::lock_guard<std::mutex> lock(local_mu);
  LocalArenas().erase(name);
}

Buffer SharedSegments::Resolve(std::string_view name, uint64_t offset, uint64_t length,
                               uint64_t block, std::string_view path) {
  const pid_t pid = getpid();  // (a system call: asked once) mappings are per process
  auto outside = [&](uint64_t size) {
    return DecodeError(DecodeError::Code::kMalformed,
                       absl::StrCat(Sv(path), ": shared memory @", Sv(name), ": ", length,
                                    " bytes at offset ", offset, " are outside the arena (",
                                    size, " bytes)"));
  };
  static constexpr std::string_view kNoBlock =
      "are in no block of the arena that is in use (returned, or never handed out)";
  auto not_held = [&](std::string_view why) {
    return DecodeError(DecodeError::Code::kMalformed,
                       absl::StrCat(Sv(path), ": shared memory @", Sv(name), ": ", length,
                                    " bytes at offset ", offset, " ", Sv(why)));
  };
  {
    std::unique_lock<std::mutex> lock(local_mu);
    auto it = LocalArenas().find(Sv(name));
    std::shared_ptr<ArenaBlocks> blocks;
    if (it != LocalArenas().end() && it->second.pid == pid) blocks = it->second.blocks.lock();
    if (blocks) {
      const LocalArena local = it->second;
      lock.unlock();
      if (offset > local.size || length > local.size - offset) throw outside(local.size);
      std::byte* at = const_cast<std::byte*>(local.base) + offset;
      if (length == 0) return Buffer(at, 0, std::move(blocks));
      std::shared_ptr<const void> held = blocks->Hold(offset, length, block);
      if (!held) throw not_held(kNoBlock);
      return Buffer(at, length, std::move(held));
    }
  }
  std::shared_ptr<Mapping> m;
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mappings_.find(Sv(name));
    if (it != mappings_.end()) {
      m = it->second.mapping.lock();
      if (m && m->pid != pid) m.reset();  // the parent's (fork): map it anew
      if (m) {
        it->second.recent = m;
        it->second.last_used = now;
      }
    }
  }
  if (!m) {
    m = Map(name, path);  // outside the lock: it waits on a peer
    std::lock_guard<std::mutex> lock(mu_);
    Kept& kept = mappings_[std::string(name)];
    if (std::shared_ptr<Mapping> other = kept.mapping.lock(); other && other->pid == pid) {
      m = std::move(other);  // mapped meanwhile by another thread: use that one
    } else {
      kept.mapping = m;
    }
    kept.recent = m;
    kept.last_used = now;
    SweepLocked(now);  // let go of arenas unused for a while
  }
  if (offset > m->size || length > m->size - offset) throw outside(m->size);
  if (length == 0) return Buffer(m->data + offset, 0, std::move(m));
  switch (m->Hold(offset, length, block)) {
    case kHeld: break;
    case kNotHeld: throw not_held(kNoBlock);
    default: throw not_held("could not be leased: the arena's owner did not answer (gone?)");
  }
  std::byte* at = m->data + offset;
  return Buffer(at, length, std::make_shared<Lease>(std::move(m), offset, length, block));
}

SharedSegments& ProcessSegments() {
  static auto* segments = new SharedSegments();  // never destroyed: Buffers may outlive exit
  return *segments;
}

size_t SharedSegments::mapped() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [name, kept] : mappings_) n += kept.mapping.expired() ? 0 : 1;
  return n;
}

}  // namespace zerocan::internal
