// ConnectionLimits (limits.h) on an engine's bound socket, against a raw ZMTP 3.0 peer
// that does what no zerocan peer does: stalls inside a frame, never finishes its
// handshake, or announces a frame over the limit. The engine keeps serving others.
// And the connection guard (src/transport/connection_guard.h) that bounds what all such
// peers together hold, with the wire accounting it rests on.
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "transport/connection_guard.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/curve.h"
#include "zerocan/engine.h"
#include "zerocan/transport/zmq.h"

namespace zerocan {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

int Port(const std::string& endpoint) { return std::stoi(endpoint.substr(endpoint.rfind(':') + 1)); }

// A plain TCP connection to 127.0.0.1:port.
class RawPeer {
 public:
  explicit RawPeer(int port, int receive_buffer = 0) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    if (receive_buffer > 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
    }
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
  // Reads the server's greeting and READY: until then, libzmq would take a frame for a
  // handshake command.
  bool AwaitReady() {
    std::string greeting, head, ready;
    return Read(64, &greeting) && Read(2, &head) && head[0] == '\x04' &&
           Read(static_cast<uint8_t>(head[1]), &ready);
  }
  // Reads what is there, up to `n` bytes (waiting up to a second for something); nullopt
  // once the connection closed.
  std::optional<size_t> ReadSome(size_t n) {
    std::string buf(n, '\0');
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) return 0;
    ssize_t got = ::recv(fd_, buf.data(), n, 0);
    if (got <= 0) return std::nullopt;
    return static_cast<size_t>(got);
  }
  bool Read(size_t n, std::string* out) {
    out->resize(n);
    size_t off = 0;
    while (off < n) {
      ssize_t got = ::recv(fd_, out->data() + off, n - off, 0);
      if (got <= 0) return false;
      off += static_cast<size_t>(got);
    }
    return true;
  }
  // A short frame (at most 255 bytes) or a long one, whole.
  bool Frame(const std::string& body, bool more) {
    std::string f;
    if (body.size() <= 255) {
      f += static_cast<char>(more ? 1 : 0);
      f += static_cast<char>(body.size());
      return Write(f + body);
    }
    return FrameHeader(body.size(), more) && Write(body);
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

// Waits up to a second for `counter()` to reach `want` (a counter moves just after the
// close a peer sees); returns its value then.
template <class F>
uint64_t Eventually(F counter, uint64_t want) {
  for (int i = 0; i < 100 && counter() < want; ++i) std::this_thread::sleep_for(milliseconds(10));
  return counter();
}

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
  // Cut once no byte came for the idle timeout (the guard looks every 50 ms).
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

// ---- the connection guard: the receive budget ---------------------------------------

// What libzmq has read from tcp connection `fd` (received, less what waits in the kernel).
uint64_t TakenFromKernel(int fd) {
  tcp_info info{};
  socklen_t size = sizeof(info);
  EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size), 0);
  int unread = 0;
  EXPECT_EQ(ioctl(fd, SIOCINQ, &unread), 0);
  return info.tcpi_bytes_received - static_cast<uint64_t>(unread);
}

// Sends messages of many sizes (short and long frames, several frames) through a DEALER
// to a ROUTER, and checks that the wire bytes Receive reports for them add up to what the
// kernel says arrived, less only the handshake: any error per frame would add up.
void ExpectWireBytesMatchTheKernel(bool curve) {
  zmq::context_t context;
  zmq::socket_t router(context, zmq::socket_type::router);
  zmq::socket_t dealer(context, zmq::socket_type::dealer);
  if (curve) {
    CurveKeyPair server = GenerateCurveKeyPair();
    ConfigureCurveServer(router, server);
    ConfigureCurveClient(dealer, GenerateCurveKeyPair(), server.public_key);
  }
  router.bind("tcp://127.0.0.1:*");
  dealer.connect(router.get(zmq::sockopt::last_endpoint));
  const std::vector<size_t> sizes = {0, 1, 100, 222, 223, 255, 256, 300, 4096, 70000, 1 << 20};
  uint64_t wire = 0;
  int fd = -1;
  size_t count = 0;
  for (int round = 0; round < 40; ++round) {
    for (size_t size : sizes) {
      dealer.send(zmq::message_t(), zmq::send_flags::sndmore);  // the delimiter
      dealer.send(zmq::message_t(std::string(size, 'e')), zmq::send_flags::sndmore);
      dealer.send(zmq::message_t(std::string(size / 2, 'p')), zmq::send_flags::none);
      Arrival arrival{.curve = curve};
      std::optional<ReceivedMessage> m =
          Receive(router, DecodeLimits{}, zmq::recv_flags::none, true, &arrival);
      ASSERT_TRUE(m.has_value());
      ASSERT_EQ(m->frames.size(), 2u);
      ASSERT_GE(arrival.fd, 0);
      fd = arrival.fd;
      wire += arrival.wire_bytes;
      ++count;
    }
  }
  uint64_t taken = TakenFromKernel(fd);
  ASSERT_GE(taken, wire) << count << " messages";
  // The greeting and the handshake commands: a few hundred bytes (Curve's under 1 KiB).
  EXPECT_LE(taken - wire, 1024u) << count << " messages; the rest is framing miscounted";
}

TEST(ConnectionGuardTest, WireBytesOfMessagesAddUpToWhatTheKernelReceived) {
  ExpectWireBytesMatchTheKernel(/*curve=*/false);
}

TEST(ConnectionGuardTest, WireBytesUnderCurveAddUpToWhatTheKernelReceived) {
  if (!CurveAvailable()) GTEST_SKIP() << "libzmq built without CurveZMQ";
  ExpectWireBytesMatchTheKernel(/*curve=*/true);
}

// A ROUTER with a receive budget, served by the test: every message read and counted.
struct BudgetedRouter {
  explicit BudgetedRouter(uint64_t max_bytes, milliseconds idle_timeout = milliseconds(0),
                          int send_buffer = 0)
      : router(context, zmq::socket_type::router), budget(context, max_bytes, idle_timeout) {
    router.set(zmq::sockopt::linger, 0);
    if (send_buffer > 0) router.set(zmq::sockopt::sndbuf, send_buffer);
    internal::ApplyIdlePings(router, idle_timeout);
    router.bind("tcp://127.0.0.1:*");
    budget.Watch(router, "test");
    endpoint = router.get(zmq::sockopt::last_endpoint);
  }
  // Reads and checks for `how_long`.
  void Serve(milliseconds how_long) {
    Clock::time_point until = Clock::now() + how_long;
    while (Clock::now() < until) {
      zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0}, budget.MonitorItem(0)};
      zmq::poll(items, 2, milliseconds(5));
      budget.Check();
      budget.TakeClosed(0, items[1].revents & ZMQ_POLLIN);
      while (true) {
        Arrival arrival;
        std::optional<ReceivedMessage> got;
        try {
          got = Receive(router, DecodeLimits{}, zmq::recv_flags::dontwait, true, &arrival);
          if (!got) break;
        } catch (const DecodeError&) {
        }
        budget.Delivered(arrival);
        ++messages;
        last = std::move(got);
      }
    }
  }
  zmq::context_t context;
  zmq::socket_t router;
  internal::ConnectionGuard budget;
  std::string endpoint;
  size_t messages = 0;
  std::optional<ReceivedMessage> last;
};

TEST(ConnectionGuardTest, HeldBytesAreThePartialFrameAfterManyCompleteMessages) {
  BudgetedRouter r(uint64_t{1} << 30);
  RawPeer peer(Port(r.endpoint));
  ASSERT_TRUE(peer.Handshake() && peer.AwaitReady());
  for (int i = 0; i < 300; ++i) {
    // Short and long frames (a miscount per frame is caught by the kernel comparison above).
    ASSERT_TRUE(peer.Frame("", true));
    ASSERT_TRUE(peer.Frame(std::string(static_cast<size_t>(i), 'a'), true));
    ASSERT_TRUE(peer.Frame(std::string(static_cast<size_t>(i * 7 + 250), 'b'), false));
  }
  r.Serve(milliseconds(300));
  EXPECT_EQ(r.messages, 300u);
  EXPECT_EQ(r.budget.held_bytes(), 0u);
  const uint64_t partial = 4 << 20;
  ASSERT_TRUE(peer.FrameHeader(64 << 20, false));
  ASSERT_TRUE(peer.Write(std::string(partial, 'x')));
  r.Serve(milliseconds(300));
  // Up to the handshake's allowance (4 KiB) less the handshake itself is not counted.
  EXPECT_LE(r.budget.held_bytes(), partial);
  EXPECT_GE(r.budget.held_bytes(), partial - 4096);
  EXPECT_EQ(r.budget.closed_over_budget(), 0u);
  EXPECT_FALSE(peer.ClosedWithin(milliseconds(100)).has_value());
}

TEST(ConnectionGuardTest, StalledPeersPastTheBudgetAreClosedUntilTheRestFit) {
  BudgetedRouter r(uint64_t{20} << 20);
  std::vector<std::unique_ptr<RawPeer>> peers;
  for (int i = 0; i < 5; ++i) {
    peers.push_back(std::make_unique<RawPeer>(Port(r.endpoint)));
    ASSERT_TRUE(peers.back()->Handshake() && peers.back()->AwaitReady());
    ASSERT_TRUE(peers.back()->FrameHeader(32 << 20, false));
    ASSERT_TRUE(peers.back()->Write(std::string(6 << 20, 'x')));  // 6 of 32 MiB, then nothing
    r.Serve(milliseconds(100));
  }
  r.Serve(milliseconds(300));
  // 5 x 6 MiB against 20 MiB: two go, three (18 MiB) stay.
  EXPECT_EQ(r.budget.closed_over_budget(), 2u);
  EXPECT_LE(r.budget.held_bytes(), uint64_t{20} << 20);
  int closed = 0;
  for (auto& p : peers) closed += p->ClosedWithin(milliseconds(200)).has_value() ? 1 : 0;
  EXPECT_EQ(closed, 2);
}

TEST(ConnectionGuardTest, APeerStillSendingIsClosedAfterThoseThatStalled) {
  BudgetedRouter r(uint64_t{12} << 20);
  RawPeer stalled(Port(r.endpoint)), sending(Port(r.endpoint));
  ASSERT_TRUE(stalled.Handshake() && sending.Handshake());
  ASSERT_TRUE(stalled.AwaitReady() && sending.AwaitReady());
  ASSERT_TRUE(sending.FrameHeader(64 << 20, false));
  ASSERT_TRUE(sending.Write(std::string(6 << 20, 's')));  // the larger, but still coming
  ASSERT_TRUE(stalled.FrameHeader(32 << 20, false));
  ASSERT_TRUE(stalled.Write(std::string(4 << 20, 'x')));
  r.Serve(milliseconds(100));
  ASSERT_TRUE(sending.Write(std::string(4 << 20, 's')));  // 14 MiB held: over the budget
  r.Serve(milliseconds(200));
  EXPECT_EQ(r.budget.closed_over_budget(), 1u);
  EXPECT_TRUE(stalled.ClosedWithin(milliseconds(500)).has_value());
  EXPECT_FALSE(sending.ClosedWithin(milliseconds(100)).has_value());
}

TEST(ConnectionGuardTest, AnEngineClosesStalledPeersPastItsBudgetAndServesOthers) {
  ConnectionLimits limits;
  limits.idle_timeout = milliseconds(0);  // only the budget acts
  limits.receive_budget_bytes = uint64_t{20} << 20;
  BoundEngine e(limits);
  std::vector<std::unique_ptr<RawPeer>> peers;
  for (int i = 0; i < 5; ++i) {
    peers.push_back(std::make_unique<RawPeer>(Port(e.endpoint)));
    ASSERT_TRUE(peers.back()->Handshake() && peers.back()->AwaitReady());
    ASSERT_TRUE(peers.back()->FrameHeader(32 << 20, false));
    ASSERT_TRUE(peers.back()->Write(std::string(6 << 20, 'x')));
  }
  EXPECT_TRUE(AddWorks(e.endpoint));
  int closed = 0;
  for (auto& p : peers) closed += p->ClosedWithin(milliseconds(500)).has_value() ? 1 : 0;
  EXPECT_EQ(closed, 2);
  EXPECT_EQ(Eventually([&] { return e.engine->counters().connections_closed_over_budget; }, 2), 2u);
  EXPECT_EQ(e.engine->counters().connections_closed_idle, 0u);
  // An honest client's large arguments pass, call after call (its complete messages
  // are counted as read, so nothing adds up): 80 MiB over tcp, four times the budget
  // (without shared memory, which would carry them past the socket).
  ClientOptions options;
  options.shared_memory = false;
  Client client(e.endpoint, options);
  std::vector<double> big(1 << 20, 1.0);  // 8 MiB
  for (int i = 0; i < 10; ++i) {
    Result r = client.apply_for(milliseconds(5000), "nbytes", big).get();
    ASSERT_TRUE(r.ok());
  }
  EXPECT_TRUE(AddWorks(e.endpoint));
}

TEST(ConnectionLimitsTest, AnUploadSlowerThanTheIdleTimeoutIsNotCutButAStallIs) {
  ConnectionLimits limits;
  limits.idle_timeout = milliseconds(600);
  BoundEngine e(limits);
  RawPeer peer(Port(e.endpoint));
  ASSERT_TRUE(peer.Handshake() && peer.AwaitReady());
  // 2 MiB at about 1.3 MiB/s: the frame takes 1.6 s to arrive, longer than the timeout
  // (libzmq's own, which counts complete frames only, would cut it).
  ASSERT_TRUE(peer.FrameHeader(2 << 20, false));
  Clock::time_point start = Clock::now();
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE(peer.Write(std::string(64 << 10, 'u'))) << "cut after " << i << " chunks";
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_GE(Clock::now() - start, milliseconds(1500));
  EXPECT_FALSE(peer.ClosedWithin(milliseconds(100)).has_value());
  // The frame done, the peer stalls: no byte, no pong, for the timeout.
  ASSERT_TRUE(peer.Frame("", true) && peer.FrameHeader(8 << 20, false));
  ASSERT_TRUE(peer.Write(std::string(1 << 20, 'x')));
  auto closed = peer.ClosedWithin(milliseconds(3000));
  ASSERT_TRUE(closed.has_value()) << "a peer stalled inside a frame was kept";
  EXPECT_GE(closed->count(), 500);
  EXPECT_EQ(Eventually([&] { return e.engine->counters().connections_closed_idle; }, 1), 1u);
  EXPECT_TRUE(AddWorks(e.endpoint));
}

TEST(ConnectionGuardTest, APeerStillTakingALargeFrameIsNotIdleButOneThatStopsIs) {
  // Small socket buffers: the frame cannot sit in the kernels, the peer takes it as it
  // reads. It sends nothing meanwhile (the router's pings wait behind the frame).
  BudgetedRouter r(0, milliseconds(600), 64 << 10);
  RawPeer peer(Port(r.endpoint), 64 << 10);
  ASSERT_TRUE(peer.Handshake() && peer.AwaitReady());
  ASSERT_TRUE(peer.Frame("", true) && peer.Frame("hello", false));
  r.Serve(milliseconds(100));
  ASSERT_TRUE(r.last.has_value() && r.last->routing.size() == 1);
  const Buffer& routing_id = r.last->routing[0];
  std::string id(reinterpret_cast<const char*>(routing_id.data()), routing_id.size());
  r.router.send(zmq::buffer(id), zmq::send_flags::sndmore);
  r.router.send(zmq::message_t(std::string(3 << 20, 'd')), zmq::send_flags::none);
  // About 1 MiB/s: 3 s for the frame, five times the idle timeout.
  size_t read = 0;
  Clock::time_point start = Clock::now();
  while (read < (3u << 20)) {
    std::optional<size_t> n = peer.ReadSome(32 << 10);
    ASSERT_TRUE(n.has_value()) << "cut after " << read << " bytes";
    read += *n;
    r.Serve(milliseconds(30));
  }
  EXPECT_GE(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(r.budget.closed_idle(), 0u);
  // Then silent (no pong either): cut after the timeout.
  r.Serve(milliseconds(1500));
  EXPECT_EQ(r.budget.closed_idle(), 1u);
}

TEST(ConnectionLimitsTest, ABrokerClosesAClientStalledInsideAFrameAndCountsIt) {
  BrokerOptions options;
  options.connection_limits.idle_timeout = milliseconds(600);
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", options);
  broker.Start();
  RawPeer peer(Port(broker.frontend_endpoint()));
  ASSERT_TRUE(peer.Handshake() && peer.AwaitReady());
  ASSERT_TRUE(peer.FrameHeader(8 << 20, false));
  ASSERT_TRUE(peer.Write(std::string(1 << 20, 'x')));
  auto closed = peer.ClosedWithin(milliseconds(3000));
  ASSERT_TRUE(closed.has_value()) << "a client stalled inside a frame was kept";
  EXPECT_GE(closed->count(), 500);
  EXPECT_EQ(Eventually([&] { return broker.counters().connections_closed_idle; }, 1), 1u);
  EXPECT_EQ(broker.counters().connections_closed_over_budget, 0u);
}

}  // namespace
}  // namespace zerocan
