// io_cpus: CPU lists, and channels whose libzmq I/O thread runs only where it was put.
#include "zerocan/transport/zmq.h"
#include "zerocan/placement.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/tool_process.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/error.h"

namespace zerocan {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PlacementTest, ParsesCpuLists) {
  EXPECT_THAT(ParseCpuList("3"), ElementsAre(3));
  EXPECT_THAT(ParseCpuList("0,2"), ElementsAre(0, 2));
  EXPECT_THAT(ParseCpuList("0-3,8"), ElementsAre(0, 1, 2, 3, 8));
  EXPECT_THAT(ParseCpuList("5,1,1,2-3"), ElementsAre(1, 2, 3, 5));
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(FormatCpuList(ParseCpuList("7,0-2")), "0-2,7");
}

TEST(PlacementTest, BadCpuListsNameTheBadPart) {
  EXPECT_THAT(ErrorOf([] { ParseCpuList(""); }), HasSubstr("\"\" is not a CPU number"));
  EXPECT_THAT(ErrorOf([] { ParseCpuList("1,x"); }),
              HasSubstr("CPU list \"1,x\": \"x\" is not a CPU number"));
  EXPECT_THAT(ErrorOf([] { ParseCpuList("1,,2"); }), HasSubstr("\"\" is not a CPU number"));
  EXPECT_THAT(ErrorOf([] { ParseCpuList("3-1"); }), HasSubstr("range \"3-1\" runs backwards"));
  EXPECT_THAT(ErrorOf([] { ParseCpuList("-1"); }), HasSubstr("is not a CPU number"));
  EXPECT_THAT(ErrorOf([] { ParseCpuList("100000"); }),
              HasSubstr("\"100000\" is not a CPU number (0..1023)"));
}

// The libzmq I/O threads of this process ("ZMQbg/IO/<n>"), by thread id, with the CPU
// list each may run on (from /proc).
std::map<std::string, std::string> IoThreads() {
  std::map<std::string, std::string> out;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    std::string tid = e->d_name;
    if (tid == "." || tid == "..") continue;
    std::string comm;
    std::getline(std::ifstream("/proc/self/task/" + tid + "/comm"), comm);
    if (comm.rfind("ZMQbg/IO/", 0) != 0) continue;
    std::ifstream status("/proc/self/task/" + tid + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("Cpus_allowed_list:", 0) == 0) {
        out[tid] = line.substr(line.find_first_not_of(" \t", 18));
      }
    }
  }
  closedir(dir);
  return out;
}

// The CPU lists of I/O threads present now and not in `before`. libzmq's thread names
// itself and applies its CPU set once running, so this waits (up to 5 s) for a new
// thread whose list is `expected`, and returns what it saw last.
std::vector<std::string> NewIoThreadCpus(const std::map<std::string, std::string>& before,
                                         const std::string& expected) {
  std::vector<std::string> out;
  for (int i = 0; i < 500; ++i) {
    out.clear();
    for (const auto& [tid, cpus] : IoThreads()) {
      if (!before.count(tid)) out.push_back(cpus);
    }
    if (out.size() == 1 && out[0] == expected) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return out;
}

TEST(PlacementTest, EngineClientAndBrokerIoThreadsRunOnlyOnTheirCpus) {
  std::vector<int> usable = UsableCpus();
  ASSERT_FALSE(usable.empty());
  // Distinct CPUs where there are two, so a mix-up between channels shows.
  const int engine_cpu = usable.back();
  const int client_cpu = usable.front();

  auto before = IoThreads();
  BrokerOptions bo;
  bo.io_cpus = {client_cpu};
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(client_cpu)),
              ElementsAre(std::to_string(client_cpu)));

  before = IoThreads();
  EngineOptions eo;
  eo.builtins = true;
  eo.io_cpus = {engine_cpu};
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(engine_cpu)),
              ElementsAre(std::to_string(engine_cpu)));

  before = IoThreads();
  ClientOptions co;
  co.io_cpus = {client_cpu};
  co.shared_memory = false;  // the payloads below cross the placed I/O threads as frames
  Client client(engine.last_endpoint(), co);
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(client_cpu)),
              ElementsAre(std::to_string(client_cpu)));
  // Placed channels work as any other: a 4 MiB payload there and back.
  std::vector<double> xs(1 << 19, 2.5);
  EXPECT_EQ(client.apply("nbytes", xs).get().as<uint64_t>(), xs.size() * 8);
  EXPECT_DOUBLE_EQ(client.apply("sum", xs).get().as<double>(), 2.5 * xs.size());

  // Unplaced: wherever the thread that made it may run (libzmq's threads inherit its mask).
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  std::vector<int> inherited;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &mine)) inherited.push_back(c);
  }
  before = IoThreads();
  Client unplaced(engine.last_endpoint());
  EXPECT_THAT(NewIoThreadCpus(before, FormatCpuList(inherited)),
              ElementsAre(FormatCpuList(inherited)));
}

TEST(PlacementTest, AThreadPinnedToOneCpuCanPlaceAChannelOnAnother) {
  std::vector<int> usable = UsableCpus();
  if (usable.size() < 2) GTEST_SKIP() << "one usable CPU: nothing else to place on";
  // The caller's own mask is narrower than the process's: a client pinned to its CPU
  // asks for its channel's I/O thread on another, as placement.h advises.
  std::string seen, error;
  std::thread caller([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(usable.front(), &one);
    ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof(one), &one), 0);
    EXPECT_THAT(UsableCpus(), ElementsAreArray(usable));
    auto before = IoThreads();
    try {
      ClientOptions co;
      co.io_cpus = {usable.back()};
      Client client("tcp://127.0.0.1:1", co);
      std::vector<std::string> cpus = NewIoThreadCpus(before, std::to_string(usable.back()));
      seen = cpus.size() == 1 ? cpus[0] : "(" + std::to_string(cpus.size()) + " threads)";
    } catch (const Error& e) {
      error = e.what();
    }
  });
  caller.join();
  EXPECT_EQ(error, "");
  EXPECT_EQ(seen, std::to_string(usable.back()));
}

TEST(PlacementTest, CpusOutsideTheAffinityMaskAreRefusedBeforeLibzmqSeesThem) {
  std::vector<int> usable = UsableCpus();
  ASSERT_FALSE(usable.empty());
  // libzmq would abort the process on a set the kernel refuses, and drop a refused CPU
  // from a set it accepts; zerocan names it instead.
  const int outside = usable.back() + 1;
  ASSERT_LT(outside, CPU_SETSIZE);
  EngineOptions eo;
  eo.io_cpus = {usable.front(), outside};
  EXPECT_THAT(ErrorOf([&] { Engine engine(eo); }),
              HasSubstr("engine: io_cpus: CPU " + std::to_string(outside) +
                        " is not one this process may run on (" + FormatCpuList(usable) +
                        ")"));
  ClientOptions co;
  co.io_cpus = {outside};
  EXPECT_THAT(ErrorOf([&] { Client client("tcp://127.0.0.1:1", co); }),
              HasSubstr("client: io_cpus: CPU " + std::to_string(outside)));
}

TEST(PlacementTest, IoCpusWithTheCallersContextIsRefused) {
  zmq::context_t context(1);
  EngineOptions eo;
  eo.context = &context;
  eo.io_cpus = {UsableCpus().front()};
  EXPECT_THAT(ErrorOf([&] { Engine engine(eo); }),
              HasSubstr("with options.context given, set ZMQ_THREAD_AFFINITY_CPU_ADD"));
  BrokerOptions bo;
  bo.context = &context;
  bo.io_cpus = eo.io_cpus;
  EXPECT_THAT(ErrorOf([&] { Broker broker("inproc://a", "inproc://b", bo); }),
              HasSubstr("broker: io_cpus places the threads of a context the broker makes"));
}

TEST(PlacementTest, EngineProgramReportsABadCpuList) {
  using testing::RunTool;
  auto bad = RunTool({"engine", "--bind", "tcp://127.0.0.1:*", "--io-cpus", "2-x"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_THAT(bad.err, HasSubstr("CPU list \"2-x\": \"x\" is not a CPU number"));
  const int outside = UsableCpus().back() + 1;
  auto refused = RunTool({"engine", "--bind", "tcp://127.0.0.1:*", "--io-cpus",
                          std::to_string(outside)});
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("io_cpus: CPU " + std::to_string(outside) + " is not"));
}

}  // namespace
}  // namespace zerocan
