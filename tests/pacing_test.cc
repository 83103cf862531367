// Loopback listeners that take their connections off BBR (pacing.h), read back from the
// kernel: the congestion control of each connection an engine or broker accepted.
#include "zerocan/transport/zmq.h"
#include "zerocan/pacing.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"

namespace zerocan {
namespace {

using ::testing::AllOf;
using ::testing::Each;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

std::string HostDefault() {
  std::ifstream in("/proc/sys/net/ipv4/tcp_congestion_control");
  std::string name;
  in >> name;
  return name;
}

bool Paces(const std::string& cc) { return cc.rfind("bbr", 0) == 0; }

// What a loopback listener's accepted connections should run: reno where the host's
// default paces, else the default itself (the listener is left alone).
std::string ExpectedAccepted() { return Paces(HostDefault()) ? "reno" : HostDefault(); }

int PortOf(const std::string& endpoint) {
  return std::atoi(endpoint.substr(endpoint.rfind(':') + 1).c_str());
}

int LocalPort(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return -1;
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The congestion controls of this process's connected TCP sockets on local `port`:
// the connections a listener there accepted (the listener itself has no peer).
std::vector<std::string> AcceptedOn(int port) {
  std::vector<std::string> out;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    int fd = std::atoi(e->d_name);
    if (e->d_name[0] == '.' || fd == dirfd(dir)) continue;
    std::string cc = CongestionControl(fd);
    if (cc.empty() || LocalPort(fd) != port) continue;
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    out.push_back(cc);
  }
  closedir(dir);
  return out;
}

// Waits (up to 5 s) for `n` accepted connections on `port`; returns their controls.
std::vector<std::string> AwaitAccepted(int port, size_t n) {
  std::vector<std::string> got;
  for (int i = 0; i < 500; ++i) {
    got = AcceptedOn(port);
    if (got.size() >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return got;
}

// At least one connection, and every one on `cc`.
auto AllOn(const std::string& cc) { return AllOf(Not(IsEmpty()), Each(cc)); }

// A plain TCP connection to 127.0.0.1:`port` (libzmq accepts it before any handshake).
int ConnectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(PacingTest, ALoopbackListenerAcceptsOnlyUnpacedConnections) {
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  Unpacing u = BindUnpaced(ctx, router, "tcp://127.0.0.1:*");
  EXPECT_EQ(u, Paces(HostDefault()) ? Unpacing::kSwitched : Unpacing::kNotPaced)
      << UnpacingName(u) << "; host default " << HostDefault();
  int port = PortOf(router.get(zmq::sockopt::last_endpoint));
  int a = ConnectTo(port), b = ConnectTo(port);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_THAT(AwaitAccepted(port, 2), SizeIs(2));
  EXPECT_THAT(AcceptedOn(port), AllOn(ExpectedAccepted()));
  // The connecting side is not the listener's to choose: the host's default.
  EXPECT_EQ(CongestionControl(a), HostDefault());
  close(a);
  close(b);
}

TEST(PacingTest, ListenersOnOtherAddressesAndOtherTransportsAreLeftAlone) {
  zmq::context_t ctx(1);
  zmq::socket_t any(ctx, zmq::socket_type::router);
  any.set(zmq::sockopt::linger, 0);
  // A wildcard listener may accept remote peers, where pacing is BBR's job.
  EXPECT_EQ(BindUnpaced(ctx, any, "tcp://0.0.0.0:*"), Unpacing::kNotLoopback);
  int port = PortOf(any.get(zmq::sockopt::last_endpoint));
  int a = ConnectTo(port);
  ASSERT_GE(a, 0);
  EXPECT_THAT(AwaitAccepted(port, 1), SizeIs(1));
  EXPECT_THAT(AcceptedOn(port), AllOn(HostDefault()));
  close(a);

  zmq::socket_t ipc(ctx, zmq::socket_type::router);
  ipc.set(zmq::sockopt::linger, 0);
  std::string path = "ipc:///tmp/zerocan-pacing-test-" + std::to_string(getpid());
  EXPECT_EQ(BindUnpaced(ctx, ipc, path), Unpacing::kNoTcpListener);
  EXPECT_EQ(BindUnpaced(ctx, ipc, "inproc://zerocan-pacing-test"), Unpacing::kNoTcpListener);
  EXPECT_EQ(ipc.get(zmq::sockopt::last_endpoint), "inproc://zerocan-pacing-test");
}

TEST(PacingTest, AFailedBindThrowsAsBindDoesAndLeavesNoMonitorBehind) {
  zmq::context_t ctx(1);
  zmq::socket_t first(ctx, zmq::socket_type::router), second(ctx, zmq::socket_type::router);
  first.set(zmq::sockopt::linger, 0);
  second.set(zmq::sockopt::linger, 0);
  BindUnpaced(ctx, first, "tcp://127.0.0.1:*");
  std::string taken = first.get(zmq::sockopt::last_endpoint);
  EXPECT_THROW(BindUnpaced(ctx, second, taken), zmq::error_t);
  // The monitor of the failed call is gone: with it still there (and no reader), libzmq
  // would block this plain bind for ever on reporting the new listener.
  second.bind("tcp://127.0.0.1:*");
  EXPECT_NE(second.get(zmq::sockopt::last_endpoint), taken);
}

// The switch itself, on any host that has BBR: a listener made here and set to bbr,
// handed to libzmq with ZMQ_USE_FD (it reports that descriptor as the listener).
TEST(PacingTest, ABbrListenerHandedToLibzmqIsSwitchedToReno) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  static constexpr char kBbr[] = "bbr";
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, kBbr, sizeof(kBbr) - 1) != 0) {
    close(fd);
    GTEST_SKIP() << "this kernel offers no bbr (tcp_available_congestion_control)";
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  int port = LocalPort(fd);
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::use_fd, fd);  // libzmq closes it with the socket
  EXPECT_EQ(BindUnpaced(ctx, router, "tcp://127.0.0.1:" + std::to_string(port)),
            Unpacing::kSwitched);
  EXPECT_EQ(CongestionControl(fd), "reno");
  int peer = ConnectTo(port);
  ASSERT_GE(peer, 0);
  EXPECT_THAT(AwaitAccepted(port, 1), AllOn("reno"));
  close(peer);
}

// Unpacing is the application's opt-in: by default engines and brokers bind plainly and
// their connections keep the host's congestion control.
TEST(PacingTest, EnginesAndBrokersBindUnpacedOnlyWhenTold) {
  zmq::context_t ctx(1);
  EngineOptions eo;
  eo.builtins = true;
  eo.context = &ctx;
  Engine paced(eo);  // the default
  paced.Bind("tcp://127.0.0.1:*");
  paced.Start();
  eo.unpace_local_tcp = true;
  Engine unpaced(eo);
  unpaced.Bind("tcp://127.0.0.1:*");
  unpaced.Start();
  ClientOptions co;
  co.context = &ctx;
  Client to_unpaced(unpaced.last_endpoint(), co), to_paced(paced.last_endpoint(), co);
  EXPECT_EQ(to_unpaced.apply("add", 1, 2).get().as<int64_t>(), 3);
  EXPECT_EQ(to_paced.apply("add", 1, 2).get().as<int64_t>(), 3);
  EXPECT_THAT(AwaitAccepted(PortOf(unpaced.last_endpoint()), 1), AllOn(ExpectedAccepted()));
  EXPECT_THAT(AwaitAccepted(PortOf(paced.last_endpoint()), 1), AllOn(HostDefault()));

  EngineOptions beo;
  beo.builtins = true;
  beo.context = &ctx;
  for (bool unpace : {false, true}) {
    BrokerOptions bo;
    bo.context = &ctx;
    bo.unpace_local_tcp = unpace;
    Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
    broker.Start();
    Engine behind(beo);
    behind.Connect(broker.backend_endpoint());
    behind.Start();
    Client via_broker(broker.frontend_endpoint(), co);
    EXPECT_EQ(via_broker.apply("add", 2, 3).get().as<int64_t>(), 5);
    std::string want = unpace ? ExpectedAccepted() : HostDefault();
    EXPECT_THAT(AwaitAccepted(PortOf(broker.frontend_endpoint()), 1), AllOn(want)) << unpace;
    EXPECT_THAT(AwaitAccepted(PortOf(broker.backend_endpoint()), 1), AllOn(want)) << unpace;
  }
}

}  // namespace
}  // namespace zerocan
