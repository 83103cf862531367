// SegmentServer and SharedSegments (shared_segments.h).
#include "transport/shared_segments.h"

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
#include <system_error>

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

SegmentServer::SegmentServer(int memfd) : memfd_(memfd) {
  std::random_device rd;
  // 128 random bits: a name is also a capability (a peer of another user is refused
  // anyway; one of the same user, or a reference from the network, must know it).
  name_ = absl::StrCat(Sv(kArenaNamePrefix), getpid(), "-", absl::Hex(rd(), absl::kZeroPad8),
                       absl::Hex(rd(), absl::kZeroPad8), absl::Hex(rd(), absl::kZeroPad8),
                       absl::Hex(rd(), absl::kZeroPad8));
  listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr;
  socklen_t len = AbstractAddress(name_, &addr);
  if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(listener_, 64) != 0) {
    int err = errno;
    if (listener_ >= 0) ::close(listener_);
    throw TransportError(absl::StrCat("shared memory: cannot listen on @", name_, ": ",
                                      std::strerror(err)));
  }
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    ::close(listener_);
    throw TransportError("shared memory: eventfd failed");
  }
  try {
    thread_ = std::thread([this] { Serve(); });
  } catch (const std::system_error& e) {
    ::close(listener_);
    ::close(wake_fd_);
    throw TransportError(
        absl::StrCat("shared memory: no thread to serve @", name_, ": ", e.what()));
  }
}

SegmentServer::~SegmentServer() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  thread_.join();
  ::close(listener_);
  ::close(wake_fd_);
}

void SegmentServer::Serve() {
  const long me = static_cast<long>(geteuid());  // SO_PEERCRED reports effective ids
  while (true) {
    pollfd fds[2] = {{listener_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    int peer = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (peer < 0) continue;
    if (PeerUser(peer) != me) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      ::close(peer);
      continue;
    }
    FdMessage out;
    cmsghdr* c = CMSG_FIRSTHDR(&out.msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &memfd_, sizeof(int));
    [[maybe_unused]] ssize_t sent = ::sendmsg(peer, &out.msg, MSG_NOSIGNAL);
    ::close(peer);
  }
}

// ---- SharedSegments -----------------------------------------------------------------

struct SharedSegments::Mapping {
  std::byte* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
  }
};

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
  FdMessage in;
  ssize_t got = ::recvmsg(s, &in.msg, MSG_CMSG_CLOEXEC);
  ::close(s);
  cmsghdr* c = got == 1 ? CMSG_FIRSTHDR(&in.msg) : nullptr;
  if (c == nullptr || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(sizeof(int))) {
    throw fail("no descriptor came");
  }
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  struct stat st{};
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0 || ::fstat(fd, &st) != 0 || st.st_size <= 0) {
    ::close(fd);
    throw fail("not a sealed memory file");
  }
  auto m = std::make_shared<Mapping>();
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
  std::weak_ptr<const void> owner;
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

void RegisterLocalArena(const std::string& name, std::weak_ptr<const void> owner,
                        const std::byte* base, size_t size) {
  std::lock_guard<std::mutex> lock(local_mu);
  LocalArenas()[name] = LocalArena{std::move(owner), base, size, getpid()};
}

void UnregisterLocalArena(const std::string& name) {
  std::lock_guard<std::mutex> lock(local_mu);
  LocalArenas().erase(name);
}

Buffer SharedSegments::Resolve(std::string_view name, uint64_t offset, uint64_t length,
                               std::string_view path) {
  auto outside = [&](uint64_t size) {
    return DecodeError(DecodeError::Code::kMalformed,
                       absl::StrCat(Sv(path), ": shared memory @", Sv(name), ": ", length,
                                    " bytes at offset ", offset, " are outside the arena (",
                                    size, " bytes)"));
  };
  {
    std::lock_guard<std::mutex> lock(local_mu);
    auto it = LocalArenas().find(Sv(name));
    std::shared_ptr<const void> owner;
    if (it != LocalArenas().end() && it->second.pid == getpid()) owner = it->second.owner.lock();
    if (owner) {
      const LocalArena& local = it->second;
      if (offset > local.size || length > local.size - offset) throw outside(local.size);
      return Buffer(const_cast<std::byte*>(local.base) + offset, length, std::move(owner));
    }
  }
  std::shared_ptr<Mapping> m;
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = mappings_.find(Sv(name));
    if (it != mappings_.end()) {
      m = it->second.mapping.lock();
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
    if (std::shared_ptr<Mapping> other = kept.mapping.lock()) {
      m = std::move(other);  // mapped meanwhile by another thread: use that one
    } else {
      kept.mapping = m;
    }
    kept.recent = m;
    kept.last_used = now;
    SweepLocked(now);  // let go of arenas unused for a while
  }
  if (offset > m->size || length > m->size - offset) throw outside(m->size);
  return Buffer(m->data + offset, length, m);
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
