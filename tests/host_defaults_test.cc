// A library user who starts an engine, a client and a broker with default options finds
// the host as it was: no congestion control changed on any TCP socket of the process, no
// thread's CPU affinity set, no allocator option changed, no signal handler installed,
// no environment variable changed. The settings are read back from the kernel and libc.
//
// Its own executable: it defines mallopt (counting, then forwarding to the C library's),
// which every mallopt call of the library, linked into this program, reaches.
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/host_util.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/policy.h"
#include "zerocan/signing.h"

namespace {
std::atomic<int> g_mallopt_calls{0};
}  // namespace

extern "C" int mallopt(int param, int value) {
  g_mallopt_calls.fetch_add(1);
  using Fn = int (*)(int, int);
  static Fn next = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "mallopt"));
  return next != nullptr ? next(param, value) : 0;
}

extern char** environ;

namespace zerocan {
namespace {

using testing::HostCongestionControlName;
using testing::OwnCpuList;
using testing::TcpCongestionControls;
using testing::ThreadCpuLists;
using std::chrono::milliseconds;

// Each signal's disposition, as a comparable string.
std::map<int, std::string> SignalHandlers() {
  std::map<int, std::string> out;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    struct sigaction sa{};
    if (sigaction(sig, nullptr, &sa) != 0) continue;
    void* handler = (sa.sa_flags & SA_SIGINFO) ? reinterpret_cast<void*>(sa.sa_sigaction)
                                                : reinterpret_cast<void*>(sa.sa_handler);
    out[sig] = std::to_string(reinterpret_cast<uintptr_t>(handler)) + "/" +
               std::to_string(sa.sa_flags);
  }
  return out;
}

std::vector<std::string> Environment() {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) out.emplace_back(*e);
  return out;
}

std::string SignalBlockMask() {
  sigset_t set;
  pthread_sigmask(SIG_BLOCK, nullptr, &set);
  std::string out;
  for (int sig = 1; sig < NSIG; ++sig) out += sigismember(&set, sig) ? '1' : '0';
  return out;
}

TEST(HostDefaultsTest, DefaultEngineClientAndBrokerLeaveTheHostAsItWas) {
  const std::string cpus = OwnCpuList();
  ASSERT_FALSE(cpus.empty()) << "no Cpus_allowed_list in /proc/thread-self/status";
  const std::string host_cc = HostCongestionControlName();
  ASSERT_FALSE(host_cc.empty()) << "cannot read /proc/sys/net/ipv4/tcp_congestion_control";
  const auto handlers = SignalHandlers();
  const auto environment = Environment();
  const std::string blocked = SignalBlockMask();
  const int mallopt_calls = g_mallopt_calls.load();
  {
    Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    broker.Start();
    auto add = [](int64_t a, int64_t b) { return a + b; };
    auto sum = [](TensorView<const double> x) {
      double s = 0;
      for (double v : x) s += v;
      return s;
    };
    Engine direct;
    direct.def("add", add);
    direct.Bind("tcp://127.0.0.1:*");
    direct.Start();
    Engine behind;
    behind.def("add", add);
    behind.Connect(broker.backend_endpoint());
    behind.Start();
    // Signing with a frame over kSignatureChunkSize brings in the signer's helper threads.
    EngineOptions signed_engine_options;
    signed_engine_options.signer.emplace("host-defaults-key");
    Engine signed_engine(signed_engine_options);
    signed_engine.def("sum", sum);
    signed_engine.Bind("tcp://127.0.0.1:*");
    signed_engine.Start();

    Client to_engine(direct.last_endpoint());
    EXPECT_EQ(to_engine.apply("add", 20, 22).get().as<int64_t>(), 42);
    for (int i = 0; i < 500 && broker.counters().engines_live < 1; ++i) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    ASSERT_EQ(broker.counters().engines_live, 1u);
    Client via_broker(broker.frontend_endpoint());
    EXPECT_EQ(via_broker.apply("add", 1, 2).get().as<int64_t>(), 3);
    ClientOptions signed_client_options;
    signed_client_options.signer.emplace("host-defaults-key");
    signed_client_options.shared_memory = false;  // a frame, which the helpers sign
    Client signed_client(signed_engine.last_endpoint(), signed_client_options);
    std::vector<double> big((size_t{3} << 20) / sizeof(double) + 1, 0.5);
    EXPECT_DOUBLE_EQ(signed_client.apply("sum", std::move(big)).get().as<double>(),
                     ((size_t{3} << 20) / sizeof(double) + 1) * 0.5);

    // Everything is still open and running: listeners, accepted and connected sockets,
    // I/O threads, workers, signing helpers.
    std::map<int, std::string> sockets = TcpCongestionControls();
    // 4 listeners + 4 connections, both ends of each in this process.
    EXPECT_GE(sockets.size(), 12u);
    for (const auto& [fd, cc] : sockets) {
      EXPECT_EQ(cc, host_cc) << "TCP socket " << fd << " left the host's congestion control";
    }
    std::map<int, std::string> threads = ThreadCpuLists();
    EXPECT_GE(threads.size(), 10u);
    for (const auto& [tid, thread_cpus] : threads) {
      EXPECT_EQ(thread_cpus, cpus) << "thread " << tid << " has its own CPU affinity";
    }
  }
  EXPECT_EQ(g_mallopt_calls.load(), mallopt_calls) << "the library called mallopt";
  EXPECT_FALSE(ReusingAllocatorEnabled());
  EXPECT_EQ(SignalHandlers(), handlers) << "a signal handler was installed";
  EXPECT_EQ(SignalBlockMask(), blocked) << "the calling thread's signal mask changed";
  EXPECT_EQ(Environment(), environment) << "the environment changed";
  EXPECT_EQ(OwnCpuList(), cpus);
}

// What the test above reads can show each change it forbids (the host's default here
// being one other than reno, or at least two CPUs, for the first two).
TEST(HostDefaultsTest, TheReadersSeeEveryChangeTheyLookFor) {
  const std::string host_cc = HostCongestionControlName();
  const std::string other_cc = host_cc == "reno" ? "cubic" : "reno";
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, other_cc.data(), other_cc.size()) == 0) {
    EXPECT_EQ(TcpCongestionControls()[fd], other_cc);
  }
  close(fd);

  std::vector<int> cpus;
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &mine)) cpus.push_back(c);
  }
  if (cpus.size() >= 2) {
    std::atomic<bool> pinned{false}, done{false};
    std::atomic<int> tid{0};
    std::thread narrow([&] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpus.back(), &one);
      pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      tid = static_cast<int>(gettid());
      pinned = true;
      while (!done) std::this_thread::sleep_for(milliseconds(1));
    });
    while (!pinned) std::this_thread::sleep_for(milliseconds(1));
    EXPECT_EQ(ThreadCpuLists()[tid.load()], std::to_string(cpus.back()));
    EXPECT_NE(ThreadCpuLists()[tid.load()], OwnCpuList());
    done = true;
    narrow.join();
  }

  // The opt-in allocator setting goes through the counted mallopt.
  const int before = g_mallopt_calls.load();
  EXPECT_TRUE(UseReusingAllocator(true));
  EXPECT_TRUE(ReusingAllocatorEnabled());
  EXPECT_GT(g_mallopt_calls.load(), before);
  UseReusingAllocator(false);
}

// The opt-ins do what the defaults do not: an engine asked to unpace its loopback
// listener moves it off a pacing default, and a signer asked to steer its helpers gives
// them CPU sets of their own.
TEST(HostDefaultsTest, OptInsChangeWhatTheyName) {
  const std::string host_cc = HostCongestionControlName();
  if (host_cc.rfind("bbr", 0) == 0) {
    EngineOptions options;
    options.unpace_local_tcp = true;
    Engine engine(options);
    engine.Bind("tcp://127.0.0.1:*");
    std::map<int, std::string> sockets = TcpCongestionControls();
    EXPECT_THAT(sockets, ::testing::Contains(::testing::Pair(::testing::_, "reno")));
  }
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  if (CPU_COUNT(&mine) >= 2) {
    const std::string cpus = OwnCpuList();
    Signer signer("host-defaults-key", SignerOptions{.chunk_threads = 2,
                                                     .steer_chunk_threads = true});
    std::string frame(size_t{4} << 20, 'x');
    FrameList frames;
    frames.push_back(Buffer::Borrow(frame.data(), frame.size()));
    signer.SignFrames(&frames);
    int narrowed = 0;
    for (const auto& [tid, thread_cpus] : ThreadCpuLists()) narrowed += thread_cpus != cpus;
    EXPECT_EQ(narrowed, 2) << "the two helpers, steered off this thread's CPU";
  }
}

}  // namespace
}  // namespace zerocan
