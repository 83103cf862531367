// ConnectionLimits (limits.h) on an engine's bound socket, against a raw ZMTP 3.0 peer
// that does what no zerocan peer does: stalls inside a frame, never finishes its
// handshake, or announces a frame over the limit. The engine keeps serving others.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>

#include "zerocan/client.h"
#include "zerocan/engine.h"

namespace zerocan {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

int Port(const std::string& endpoint) { return std::stoi(endpoint.substr(endpoint.rfind(':') + 1)); }

// A plain TCP connection to 127.0.0.1:port.
class RawPeer {
 public:
  explicit RawPeer(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawPeer() { ::close(fd_); }
  bool connected() const { return connected_; }

  // The ZMTP 3.0 greeting (NULL mechanism) and a READY command as a DEALER.
  bool Handshake() {
    std::string g(64, '\0');
    g[0] = '\xff';
    g[9] = '\x7f';
    g[10] = 3;
    std::memcpy(&g[12], "NULL", 4);
    const std::string name = "Socket-Type", value = "DEALER";
    std::string body = "\x05READY";
    body += static_cast<char>(name.size());
    body += name;
    body += std::string(3, '\0');
    body += static_cast<char>(value.size());
    body += value;
    g += '\x04';
    g += static_cast<char>(body.size());
    g += body;
    return Write(g);
  }
  // A long frame's header announcing `size` bytes (more: another frame follows).
  bool FrameHeader(uint64_t size, bool more) {
    std::string h(9, '\0');
    h[0] = static_cast<char>(0x02 | (more ? 1 : 0));
    for (int i = 0; i < 8; ++i) h[8 - i] = static_cast<char>((size >> (8 * i)) & 0xff);
    return Write(h);
  }
  bool Write(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads (and discards) until the peer closes; how long that took, or nullopt when it
  // was still open after `wait`.
  std::optional<milliseconds> ClosedWithin(milliseconds wait) {
    Clock::time_point start = Clock::now();
    char buf[4096];
    while (true) {
      auto left = wait - std::chrono::duration_cast<milliseconds>(Clock::now() - start);
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
    }
  }

 private:
  int fd_;
  bool connected_ = false;
};

struct BoundEngine {
  explicit BoundEngine(ConnectionLimits limits) {
    EngineOptions options;
    options.builtins = true;
    options.threads = 1;
    options.connection_limits = limits;
    engine = std::make_unique<Engine>(options);
    engine->Bind("tcp://127.0.0.1:*");
    engine->Start();
    endpoint = engine->last_endpoint();
  }
  std::unique_ptr<Engine> engine;
  std::string endpoint;
};

bool AddWorks(const std::string& endpoint) {
  Client client(endpoint);
  Result r = client.apply_for(milliseconds(5000), "add", 2, 3).get();
  return r.ok() && r.as<int>() == 5;
}

TEST(ConnectionLimitsTest, APeerStalledInsideAFrameIsDisconnectedAfterTheIdleTimeout) {
  ConnectionLimits limits;
  limits.idle_timeout = milliseconds(600);
  BoundEngine e(limits);
  RawPeer peer(Port(e.endpoint));
  ASSERT_TRUE(peer.connected());
  ASSERT_TRUE(peer.Handshake());
  ASSERT_TRUE(peer.FrameHeader(8 << 20, false));
  ASSERT_TRUE(peer.Write(std::string(1 << 20, 'x')));  // 1 of 8 MiB, then nothing
  Clock::time_point start = Clock::now();
  EXPECT_TRUE(AddWorks(e.endpoint));  // others are served meanwhile
  auto closed = peer.ClosedWithin(milliseconds(5000));
  ASSERT_TRUE(closed.has_value()) << "a peer stalled inside a frame was kept for 5 s";
  auto after = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  // Pings every idle_timeout / 3; the timeout runs from the first unanswered one.
  EXPECT_GE(after.count(), 500);
  EXPECT_LE(after.count(), 600 + 200 + 1500);
  EXPECT_TRUE(AddWorks(e.endpoint));
}

TEST(ConnectionLimitsTest, WithoutAnIdleTimeoutAStalledPeerIsKept) {
  ConnectionLimits limits;
  limits.idle_timeout = milliseconds(0);
  BoundEngine e(limits);
  RawPeer peer(Port(e.endpoint));
  ASSERT_TRUE(peer.Handshake());
  ASSERT_TRUE(peer.FrameHeader(8 << 20, false));
  ASSERT_TRUE(peer.Write(std::string(1 << 20, 'x')));
  EXPECT_FALSE(peer.ClosedWithin(milliseconds(1500)).has_value());
}

TEST(ConnectionLimitsTest, AConnectionThatNeverHandshakesIsClosed) {
  ConnectionLimits limits;
  limits.handshake_timeout = milliseconds(300);
  BoundEngine e(limits);
  RawPeer silent(Port(e.endpoint));
  ASSERT_TRUE(silent.connected());
  auto closed = silent.ClosedWithin(milliseconds(5000));
  ASSERT_TRUE(closed.has_value()) << "a connection that sent nothing was kept for 5 s";
  EXPECT_GE(closed->count(), 250);
  EXPECT_TRUE(AddWorks(e.endpoint));
}

TEST(ConnectionLimitsTest, AFrameOverTheDefaultLimitIsRefusedFromItsHeader) {
  BoundEngine e(ConnectionLimits{});
  RawPeer peer(Port(e.endpoint));
  ASSERT_TRUE(peer.Handshake());
  // 1.9 GiB announced: over DecodeLimits::max_frame_bytes (1 GiB), so libzmq drops the
  // connection on the header, before allocating or reading any of it.
  ASSERT_TRUE(peer.FrameHeader((uint64_t{19} << 30) / 10, true));
  auto closed = peer.ClosedWithin(milliseconds(2000));
  ASSERT_TRUE(closed.has_value());
  EXPECT_LT(closed->count(), 1000);
  EXPECT_TRUE(AddWorks(e.endpoint));
}

}  // namespace
}  // namespace zerocan
