// io_cpus: CPU lists, and channels whose libzmq I/O thread runs only where it was put.
#include "zerocan/placement.h"

#include <dirent.h>
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
  std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  // Distinct CPUs where there are two, so a mix-up between channels shows.
  const int engine_cpu = allowed.back();
  const int client_cpu = allowed.front();
  const std::string everywhere = FormatCpuList(allowed);

  auto before = IoThreads();
  BrokerOptions bo;
  bo.io_cpus = {client_cpu};
  Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(client_cpu)),
              ElementsAre(std::to_string(client_cpu)));

  before = IoThreads();
  EngineOptions eo;
  eo.io_cpus = {engine_cpu};
  Engine engine(eo);
  engine.Bind("tcp://127.0.0.1:*");
  engine.Start();
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(engine_cpu)),
              ElementsAre(std::to_string(engine_cpu)));

  before = IoThreads();
  ClientOptions co;
  co.io_cpus = {client_cpu};
  Client client(engine.last_endpoint(), co);
  EXPECT_THAT(NewIoThreadCpus(before, std::to_string(client_cpu)),
              ElementsAre(std::to_string(client_cpu)));
  // Placed channels work as any other: a 4 MiB payload there and back.
  std::vector<double> xs(1 << 19, 2.5);
  EXPECT_EQ(client.apply("nbytes", xs).get().as<uint64_t>(), xs.size() * 8);
  EXPECT_DOUBLE_EQ(client.apply("sum", xs).get().as<double>(), 2.5 * xs.size());

  // Unplaced: anywhere this process may run.
  before = IoThreads();
  Client unplaced(engine.last_endpoint());
  EXPECT_THAT(NewIoThreadCpus(before, everywhere), ElementsAre(everywhere));
}

TEST(PlacementTest, CpusOutsideTheAffinityMaskAreRefusedBeforeLibzmqSeesThem) {
  std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  // libzmq would abort the process on a CPU the kernel refuses; zerocan refuses first.
  const int outside = allowed.back() + 1;
  ASSERT_LT(outside, CPU_SETSIZE);
  EngineOptions eo;
  eo.io_cpus = {allowed.front(), outside};
  EXPECT_THAT(ErrorOf([&] { Engine engine(eo); }),
              HasSubstr("engine: io_cpus: CPU " + std::to_string(outside) +
                        " is not one this process may run on (" + FormatCpuList(allowed) +
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
  eo.io_cpus = {AllowedCpus().front()};
  EXPECT_THAT(ErrorOf([&] { Engine engine(eo); }),
              HasSubstr("with options.context given, set ZMQ_THREAD_AFFINITY_CPU_ADD"));
  BrokerOptions bo;
  bo.context = &context;
  bo.io_cpus = eo.io_cpus;
  EXPECT_THAT(ErrorOf([&] { Broker broker("inproc://a", "inproc://b", bo); }),
              HasSubstr("broker: io_cpus places"));
}

TEST(PlacementTest, EngineProgramReportsABadCpuList) {
  using testing::RunTool;
  auto bad = RunTool({"engine", "--bind", "tcp://127.0.0.1:*", "--io-cpus", "2-x"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_THAT(bad.err, HasSubstr("CPU list \"2-x\": \"x\" is not a CPU number"));
  const int outside = AllowedCpus().back() + 1;
  auto refused = RunTool({"engine", "--bind", "tcp://127.0.0.1:*", "--io-cpus",
                          std::to_string(outside)});
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("io_cpus: CPU " + std::to_string(outside) + " is not"));
}

}  // namespace
}  // namespace zerocan
