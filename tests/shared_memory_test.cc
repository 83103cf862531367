// SharedArena (zerocan/shared.h) and the mapping of peers' arenas
// (src/transport/shared_segments.h): blocks, reading them in place from another
// process, bounds, credentials and seals, and what is left after a crash.
#include "zerocan/shared.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "transport/shared_segments.h"
#include "zerocan/error.h"
#include "zerocan/stats.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;

TEST(SharedArenaTest, BlocksAreAlignedReturnedAndCoalesced) {
  auto arena = SharedArena::Create(1 << 20);
  EXPECT_EQ(arena->capacity(), 1u << 20);
  std::optional<Buffer> a = arena->Allocate(100 << 10), b = arena->Allocate(100 << 10),
                        c = arena->Allocate(100 << 10);
  ASSERT_TRUE(a && b && c);
  for (const Buffer* x : {&*a, &*b, &*c}) EXPECT_TRUE(IsAligned(x->data(), 64));
  EXPECT_EQ(arena->used(), 3u * (100 << 10));
  EXPECT_EQ(arena->Find(*a)->offset, 0u);
  EXPECT_EQ(arena->Find(*b)->offset, 100u << 10);
  EXPECT_EQ(arena->Find(b->Slice(10, 20))->offset, (100u << 10) + 10);
  std::vector<char> elsewhere(16);
  EXPECT_FALSE(arena->Find(Buffer::Borrow(elsewhere.data(), elsewhere.size())));
  EXPECT_FALSE(arena->Allocate(800 << 10));  // 700 KiB free, not 800
  a.reset();
  b.reset();  // the two runs join: 200 KiB at offset 0
  std::optional<Buffer> d = arena->Allocate(200 << 10);
  ASSERT_TRUE(d);
  EXPECT_EQ(arena->Find(*d)->offset, 0u);
  d.reset();
  c.reset();
  EXPECT_EQ(arena->used(), 0u);
  EXPECT_TRUE(arena->Allocate(1 << 20));  // all of it again, in one run
}

TEST(SharedArenaTest, ABlockOutlivesItsArenaHandle) {
  auto arena = SharedArena::Create(1 << 16);
  std::optional<Buffer> block = arena->Allocate(1000);
  ASSERT_TRUE(block);
  arena.reset();
  std::memset(block->mutable_data(), 7, block->size());  // still mapped
  EXPECT_EQ(static_cast<int>(block->data()[999]), 7);
}

// Runs `child` in a forked process; true when it exited with status 0.
template <class F>
bool InChild(F child) {
  pid_t pid = fork();
  if (pid == 0) _exit(child() ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(SharedArenaTest, AnotherProcessReadsABlockInPlace) {
  auto arena = SharedArena::Create(4 << 20);
  std::optional<Buffer> block = arena->Allocate(3 << 20);
  ASSERT_TRUE(block);
  std::memset(block->mutable_data(), 'a', block->size());
  SharedArena::Location at = *arena->Find(*block);
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  std::string name = arena->name();
  pid_t pid = fork();
  if (pid == 0) {
    internal::SharedSegments segments;
    uint64_t copies = GlobalStats().buffer_copies.load();
    Buffer seen = segments.Resolve(name, at.offset, at.length, at.block, "args[0]");
    bool ok = seen.size() == (3u << 20) && seen.data()[0] == std::byte{'a'} &&
              seen.data()[seen.size() - 1] == std::byte{'a'};
    char go = 0;
    ok = ok && write(to_parent[1], "m", 1) == 1 && read(to_child[0], &go, 1) == 1;
    // The parent wrote after we mapped: the same memory, not a copy of it.
    ok = ok && seen.data()[12345] == std::byte{'b'};
    ok = ok && GlobalStats().buffer_copies.load() == copies && segments.mapped() == 1;
    _exit(ok ? 0 : 1);
  }
  char mapped = 0;
  ASSERT_EQ(read(to_parent[0], &mapped, 1), 1);
  block->mutable_data()[12345] = std::byte{'b'};
  ASSERT_EQ(write(to_child[1], "g", 1), 1);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(arena->peers_refused(), 0u);
}

TEST(SharedArenaTest, LocationsOutsideAnArenaAreDecodeErrorsNamingTheField) {
  auto arena = SharedArena::Create(1 << 16);
  std::optional<Buffer> whole = arena->Allocate(1 << 16);
  ASSERT_TRUE(whole);
  internal::SharedSegments segments;
  EXPECT_EQ(segments.Resolve(arena->name(), 0, 1 << 16, 0, "args[0]").size(), 1u << 16);
  auto expect = [&](std::string_view name, uint64_t offset, uint64_t length, const char* why) {
    try {
      segments.Resolve(name, offset, length, 0, "args[1].tensor.data");
      ADD_FAILURE() << "resolved " << name << " " << offset << " " << length;
    } catch (const DecodeError& e) {
      EXPECT_THAT(e.what(), HasSubstr("args[1].tensor.data: shared memory @"));
      EXPECT_THAT(e.what(), HasSubstr(why));
    }
  };
  expect(arena->name(), 1 << 16, 1, "outside the arena (65536 bytes)");
  expect(arena->name(), 100, 1 << 16, "outside the arena");
  expect(arena->name(), UINT64_MAX, 2, "outside the arena");
  expect(arena->name(), 1, UINT64_MAX, "outside the arena");
  expect("zerocan-arena-1-" + std::string(32, '0'), 0, 1, "no arena there on this host");
  // Only arenas' names are connected to: never a path, never another abstract socket.
  expect("zerocan-arena-no-such-one", 0, 1, "not an arena name");
  expect("zerocan-arena-1-" + std::string(32, 'A'), 0, 1, "not an arena name");
  expect("", 0, 1, "not an arena name");
  expect(std::string(200, 'x'), 0, 1, "not an arena name");
  expect("/etc/passwd", 0, 1, "not an arena name");
  expect("/tmp/.X11-unix/X0", 0, 1, "not an arena name");
}

TEST(SharedArenaTest, AMemoryFileWhoseSizeIsNotSealedIsRefused) {
  int fd = memfd_create("unsealed", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 1 << 16), 0);
  {
    struct NoBlocks : internal::ArenaBlocks {
      std::shared_ptr<const void> Hold(uint64_t, uint64_t, uint64_t) override { return nullptr; }
    } no_blocks;
    internal::SegmentServer server(fd, &no_blocks);
    internal::SharedSegments segments;
    try {
      segments.Resolve(server.name(), 0, 16, 0, "result");
      ADD_FAILURE() << "an unsealed file was mapped";
    } catch (const DecodeError& e) {
      EXPECT_THAT(e.what(), HasSubstr("not a sealed memory file"));
    }
  }
  close(fd);
}

TEST(SharedArenaTest, AnotherUserIsRefusedTheArena) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to run a child as another user";
  auto arena = SharedArena::Create(1 << 16);
  std::string name = arena->name();
  EXPECT_TRUE(InChild([&] {
    if (setgid(65534) != 0 || setuid(65534) != 0) return false;
    internal::SharedSegments segments;
    try {
      segments.Resolve(name, 0, 16, 0, "args[0]");
      return false;
    } catch (const DecodeError& e) {
      return std::string(e.what()).find("another user") != std::string::npos ||
             std::string(e.what()).find("no descriptor came") != std::string::npos;
    }
  }));
  // The child refuses a root server on its own, possibly before the server has even
  // accepted it; the server refuses the child's user when it does.
  for (int i = 0; i < 200 && arena->peers_refused() == 0; ++i) usleep(10000);
  EXPECT_EQ(arena->peers_refused(), 1u);
}

// The inode of the arena memory file mapped at `address` (0: none), from /proc/self/maps.
std::string ArenaInodeAt(const void* address) {
  std::ifstream maps("/proc/self/maps");
  auto at = reinterpret_cast<uintptr_t>(address);
  for (std::string line; std::getline(maps, line);) {
    if (line.find("memfd:zerocan-arena") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string range, perms, offset, device, inode;
    fields >> range >> perms >> offset >> device >> inode;
    uintptr_t begin = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    uintptr_t end = std::stoull(range.substr(range.find('-') + 1), nullptr, 16);
    if (at >= begin && at < end) return inode;
  }
  return "0";
}

// Lines of /proc/self/maps that map the arena memory file with inode `inode` (other
// tests of this process may map arenas of their own meanwhile).
int ArenaMappings(const std::string& inode) {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("memfd:zerocan-arena") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string range, perms, offset, device, node;
    fields >> range >> perms >> offset >> device >> node;
    n += node == inode ? 1 : 0;
  }
  return n;
}

TEST(SharedArenaTest, NothingIsLeftOnceTheProcessesAreGone) {
  int to_parent[2];
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  if (pid == 0) {
    auto arena = SharedArena::Create(64 << 20);
    std::optional<Buffer> block = arena->Allocate(64 << 20);
    if (!block) _exit(1);
    std::memset(block->mutable_data(), 'k', block->size());
    std::string name = arena->name() + "\n";
    if (write(to_parent[1], name.data(), name.size()) != static_cast<ssize_t>(name.size())) {
      _exit(1);
    }
    pause();  // until killed
    _exit(0);
  }
  std::string name;
  for (char ch; read(to_parent[0], &ch, 1) == 1 && ch != '\n';) name += ch;
  ASSERT_FALSE(name.empty());
  std::optional<internal::SharedSegments> segments(std::in_place);
  std::optional<Buffer> seen = segments->Resolve(name, 0, 64 << 20, 0, "args[0]");
  kill(pid, SIGKILL);  // the arena's process crashes
  waitpid(pid, nullptr, 0);
  // What this process mapped stays readable while it holds it...
  EXPECT_EQ(seen->data()[(64 << 20) - 1], std::byte{'k'});
  std::string inode = ArenaInodeAt(seen->data());
  ASSERT_NE(inode, "0");
  EXPECT_EQ(ArenaMappings(inode), 1);
  // ...and a moment after it lets go (kept for the next reference meanwhile), no mapping,
  // no file: the kernel has the memory back.
  seen.reset();
  EXPECT_EQ(segments->mapped(), 1u);
  std::this_thread::sleep_for(internal::SharedSegments::kKeepMapped +
                              std::chrono::milliseconds(50));
  segments->Sweep();
  EXPECT_EQ(segments->mapped(), 0u);
  EXPECT_EQ(ArenaMappings(inode), 0);
  segments.reset();
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    EXPECT_EQ(entry.path().filename().string().find("zerocan"), std::string::npos)
        << entry.path();
  }
}

}  // namespace
}  // namespace zerocan
