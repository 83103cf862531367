// Leases on arena blocks (src/transport/shared_segments.h, docs/FORMAT.md "Leases"): a
// reader in another process holds the block of every view it decoded; the owner does not
// reuse a held block; a reader that lets go, dies or breaks the protocol drops its holds.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "transport/shared_segments.h"
#include "zerocan/error.h"
#include "zerocan/shared.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;

// Polls `done` for up to two seconds (the arena's thread serves readers on its own).
bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 200; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// One byte over a pipe: the parent and the forked reader take turns.
void Put(int fd, char c) { ASSERT_EQ(write(fd, &c, 1), 1); }
char Get(int fd) {
  char c = 0;
  return read(fd, &c, 1) == 1 ? c : 0;
}

// A reader speaking the lease protocol by hand: connected, descriptor received (and
// dropped), then requests.
class RawReader {
 public:
  explicit RawReader(const std::string& arena) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + 1, arena.data(), arena.size());
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + arena.size());
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&addr), len), 0);
    timeval timeout{2, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    char byte = 0;
    EXPECT_EQ(recv(fd_, &byte, 1, 0), 1);  // the descriptor is discarded (no room for it)
  }
  ~RawReader() { close(fd_); }

  void Send(char op, uint64_t offset, uint64_t length, uint64_t block = 0) {
    char request[internal::kLeaseRequestSize];
    request[0] = op;
    std::memcpy(request + 1, &offset, 8);  // little-endian host
    std::memcpy(request + 9, &length, 8);
    std::memcpy(request + 17, &block, 8);
    ASSERT_EQ(send(fd_, request, sizeof(request), MSG_NOSIGNAL), ssize_t{sizeof(request)});
  }
  // The answer to a hold: 'Y', 'N', or 0 when the owner closed the connection.
  char Hold(uint64_t offset, uint64_t length, uint64_t block = 0) {
    Send(internal::kHold, offset, length, block);
    return Answer();
  }
  char Answer() {
    char answer = 0;
    return recv(fd_, &answer, 1, 0) == 1 ? answer : 0;
  }

 private:
  int fd_ = -1;
};

TEST(SharedLeaseTest, AReaderInAnotherProcessHoldsItsBlockUntilItLetsGo) {
  auto arena = SharedArena::Create(1 << 20);
  std::optional<Buffer> block = arena->Allocate(256 << 10);
  ASSERT_TRUE(block);
  std::memset(block->mutable_data(), 'a', block->size());
  SharedArena::Location at = *arena->Find(*block);
  std::string name = arena->name();
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  if (pid == 0) {
    bool ok = true;
    {
      internal::SharedSegments segments;
      std::optional<Buffer> view = segments.Resolve(name, at.offset, at.length, at.block, "result");
      ok = write(to_parent[1], "h", 1) == 1 && Get(to_child[0]) == 'r';
      // The owner let go of its Buffer and allocated and wrote meanwhile: not over this.
      for (size_t i = 0; ok && i < view->size(); i += 4096) ok = view->data()[i] == std::byte{'a'};
      view.reset();
      // The next view of the same range fails: the block went back when this one let go.
      ok = ok && write(to_parent[1], "d", 1) == 1 && Get(to_child[0]) == 'n';
      try {
        segments.Resolve(name, at.offset, at.length, at.block, "result");
        ok = false;
      } catch (const DecodeError& e) {
        ok = ok && std::string(e.what()).find("in no block of the arena that is in use") !=
                       std::string::npos;
      }
    }
    _exit(ok ? 0 : 1);
  }
  ASSERT_EQ(Get(to_parent[0]), 'h');
  EXPECT_EQ(arena->holds(), 1u);
  EXPECT_EQ(arena->holds_on(*block), 1u);
  EXPECT_EQ(arena->holds_on(block->Slice(4096, 100)), 1u);  // the same block
  block.reset();  // the owner is done with it; the reader is not
  EXPECT_EQ(arena->used(), 256u << 10);
  std::optional<Buffer> other = arena->Allocate(256 << 10);
  ASSERT_TRUE(other);
  EXPECT_NE(arena->Find(*other)->offset, at.offset);
  std::memset(other->mutable_data(), 'b', other->size());
  Put(to_child[1], 'r');
  ASSERT_EQ(Get(to_parent[0]), 'd');
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 0 && arena->used() == (256u << 10); }))
      << arena->holds() << " holds, " << arena->used() << " bytes used";
  Put(to_child[1], 'n');
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(SharedLeaseTest, AReaderThatDiesLetsGoOfItsHolds) {
  auto arena = SharedArena::Create(1 << 20);
  std::optional<Buffer> block = arena->Allocate(64 << 10);
  ASSERT_TRUE(block);
  SharedArena::Location at = *arena->Find(*block);
  std::string name = arena->name();
  int to_parent[2];
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  if (pid == 0) {
    internal::SharedSegments segments;
    Buffer view = segments.Resolve(name, at.offset, at.length, at.block, "args[0]");
    Buffer again = segments.Resolve(name, at.offset, at.length, 0, "args[1]");
    if (write(to_parent[1], "h", 1) != 1) _exit(1);
    pause();  // until killed, holding both
    _exit(0);
  }
  ASSERT_EQ(Get(to_parent[0]), 'h');
  EXPECT_EQ(arena->holds(), 2u);
  block.reset();
  EXPECT_EQ(arena->used(), 64u << 10);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 0 && arena->used() == 0; }))
      << arena->holds() << " holds, " << arena->used() << " bytes used";
}

TEST(SharedLeaseTest, OnlyLiveBlocksCanBeHeldAndEachReaderIsBounded) {
  auto arena = SharedArena::Create(1 << 20);
  std::optional<Buffer> block = arena->Allocate(4096);
  ASSERT_TRUE(block);
  SharedArena::Location at = *arena->Find(*block);
  RawReader reader(arena->name());
  EXPECT_EQ(reader.Hold(at.offset, at.length), internal::kHeld);
  EXPECT_EQ(reader.Hold(at.offset + 100, 10), internal::kHeld);  // inside the block
  EXPECT_EQ(reader.Hold(at.offset, at.length + 1), internal::kNotHeld);  // past its end
  EXPECT_EQ(reader.Hold(at.offset + 8192, 16), internal::kNotHeld);  // free space
  EXPECT_EQ(reader.Hold(UINT64_MAX, 2), internal::kNotHeld);
  // Named by its serial number: the block's own holds, another's does not.
  EXPECT_NE(at.block, 0u);
  EXPECT_EQ(reader.Hold(at.offset, 64, at.block + 1), internal::kNotHeld);
  EXPECT_EQ(reader.Hold(at.offset, 64, at.block), internal::kHeld);
  reader.Send(internal::kRelease, at.offset, 64, at.block);
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 2; }));
  reader.Send(internal::kRelease, at.offset + 100, 10);
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 1; }));
  // Holds per reader are bounded: one reader cannot grow the owner's tables at will.
  const size_t limit = internal::SegmentServer::kMaxHoldsPerReader;
  size_t held = 1, refused = 0;
  for (size_t sent = 1; sent <= limit;) {
    // A few requests at a time: answers a reader leaves unread past its socket buffer
    // get it dropped (a reader waits for each answer).
    size_t batch = std::min<size_t>(32, limit + 1 - sent);
    for (size_t i = 0; i < batch; ++i) reader.Send(internal::kHold, at.offset, 64);
    for (size_t i = 0; i < batch; ++i) {
      char answer = reader.Answer();
      held += answer == internal::kHeld;
      refused += answer == internal::kNotHeld;
    }
    sent += batch;
  }
  EXPECT_EQ(held, limit);
  EXPECT_EQ(refused, 1u);
  EXPECT_EQ(arena->holds(), limit);
}

TEST(SharedLeaseTest, AReaderThatBreaksTheProtocolIsDroppedWithItsHolds) {
  auto arena = SharedArena::Create(1 << 20);
  std::optional<Buffer> block = arena->Allocate(4096);
  ASSERT_TRUE(block);
  SharedArena::Location at = *arena->Find(*block);
  RawReader broken(arena->name()), good(arena->name());
  ASSERT_EQ(broken.Hold(at.offset, at.length), internal::kHeld);
  ASSERT_EQ(good.Hold(at.offset, at.length), internal::kHeld);
  // A release of something it never held: the owner closes the connection.
  broken.Send(internal::kRelease, at.offset + 64, 64);
  EXPECT_EQ(broken.Answer(), 0);
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 1; }));
  // An unknown request: the same. The other reader keeps its hold throughout.
  RawReader garbage(arena->name());
  garbage.Send('X', 0, 0);
  EXPECT_EQ(garbage.Answer(), 0);
  EXPECT_EQ(good.Hold(at.offset, 8), internal::kHeld);
  EXPECT_TRUE(Eventually([&] { return arena->holds() == 2; }));
  block.reset();
  EXPECT_EQ(arena->used(), 4096u);  // held by `good`
}


// An owner of its own making that answers the first hold late: the reader gives up on
// it, then matches the late answer to that request (releasing the hold nobody uses)
// rather than taking it for the answer to the next one.
TEST(SharedLeaseTest, ALateAnswerIsMatchedToItsOwnRequestAndItsHoldReleased) {
  int memfd = memfd_create("zerocan-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(memfd, 0);
  ASSERT_EQ(ftruncate(memfd, 1 << 16), 0);
  ASSERT_EQ(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  std::string name = "zerocan-arena-" + std::to_string(getpid()) + "-" + std::string(31, 'a') + "1";
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  std::vector<std::string> requests;  // "H offset", "R offset", as the owner read them
  std::thread owner([&] {
    int peer = accept(listener, nullptr, nullptr);
    char byte = 'z';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &memfd, sizeof(int));
    sendmsg(peer, &msg, 0);
    char request[internal::kLeaseRequestSize];
    for (int n = 0; n < 3; ++n) {
      if (recv(peer, request, sizeof(request), MSG_WAITALL) != ssize_t{sizeof(request)}) break;
      uint64_t offset = 0;
      std::memcpy(&offset, request + 1, 8);
      requests.push_back(std::string(1, request[0]) + " " + std::to_string(offset));
      if (n == 0) {  // the first hold: answered after the reader gave up on it
        std::this_thread::sleep_for(std::chrono::milliseconds(1300));
        send(peer, &internal::kHeld, 1, 0);
      } else if (request[0] == internal::kHold) {
        send(peer, &internal::kNotHeld, 1, 0);
      }
    }
    close(peer);
  });
  internal::SharedSegments segments;
  try {
    segments.Resolve(name, 0, 64, 1, "args[0]");
    ADD_FAILURE() << "a hold without an answer was taken";
  } catch (const DecodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("did not answer"));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the late answer is there
  try {
    segments.Resolve(name, 4096, 64, 2, "args[1]");
    ADD_FAILURE() << "the late answer to the first hold was taken for the second's";
  } catch (const DecodeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("args[1]"));
    EXPECT_THAT(e.what(), HasSubstr("in no block of the arena that is in use"));
  }
  owner.join();
  // The owner saw: the first hold, the second hold, then the release of the first (its
  // late hold, which nobody reads) in whichever order the reader sent them.
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0], "H 0");
  EXPECT_THAT(requests, ::testing::Contains("H 4096"));
  EXPECT_THAT(requests, ::testing::Contains("R 0"));
  close(listener);
  close(memfd);
}

}  // namespace
}  // namespace zerocan
