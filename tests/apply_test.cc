// The apply subcommands as processes: `zerocan engine` (with a plugin), `zerocan call`
// (JSON in, one JSON value out, errors and timeouts on stderr with exit 1), and an
// engine process killed with SIGKILL behind a broker while it holds calls.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "zerocan/broker.h"
#include "zerocan/client.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;

const std::string kTool = ZEROCAN_TOOL_PATH;

std::string PluginPath() {
  return kTool.substr(0, kTool.rfind('/')) + "/examples/libzerocan_example_plugin.so";
}

std::string Ipc(const std::string& name) {
  return "ipc:///tmp/zerocan-apply-test-" + std::to_string(getpid()) + "-" + name;
}

// A child process running `zerocan ARGS...`, stopped (SIGTERM) and reaped on destruction.
class Process {
 public:
  explicit Process(const std::vector<std::string>& args) {
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(kTool.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(kTool.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

struct CallOutput {
  int status = -1;
  std::string out, err;
};

// Runs `zerocan call ARGS...` to completion.
CallOutput RunCall(const std::vector<std::string>& args) {
  std::string err_path = "/tmp/zerocan-apply-test-err-" + std::to_string(getpid());
  std::string command = "'" + kTool + "' call";
  for (const std::string& a : args) command += " '" + a + "'";
  command += " 2>" + err_path;
  CallOutput result;
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.out.append(buf.data(), n);
  int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  std::stringstream ss;
  ss << err.rdbuf();
  result.err = ss.str();
  unlink(err_path.c_str());
  return result;
}

// Waits until the engine at `url` answers.
void WaitUntilServing(const std::string& url) {
  ClientOptions options;
  Client client(url, options);
  for (int i = 0; i < 100; ++i) {
    if (client.apply_for(milliseconds(100), "add", 0, 0).get().ok()) return;
  }
  FAIL() << "engine at " << url << " never answered";
}

TEST(ApplyToolsTest, CallPrintsOneJsonValue) {
  std::string url = Ipc("call");
  Process engine({"engine", "--bind", url, "--plugin", PluginPath()});
  WaitUntilServing(url);
  CallOutput r = RunCall({url, "add", "1", "2"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "3\n");
  r = RunCall({url, "echo", "[1, 2, 3]", "--timeout", "5"});
  EXPECT_EQ(r.out, "{\"dtype\":\"int64\",\"shape\":[3],\"data\":[1,2,3]}\n");
  r = RunCall({"--timeout=5", url, "echo", "{\"k\": \"v\"}", "null", "true", "text"});
  EXPECT_EQ(r.out, "[{\"k\":\"v\"},null,true,\"text\"]\n");
  r = RunCall({url, "norm", "[3.0, 4.0]"});  // from the plugin
  EXPECT_EQ(r.out, "5.0\n");
  r = RunCall({url, "ramp", "1000"});
  EXPECT_THAT(r.out, HasSubstr("\"elided\":900"));
  r = RunCall({url, "ramp", "1000", "--full"});
  EXPECT_THAT(r.out, HasSubstr("999.0]"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("elided")));
  r = RunCall({url, "echo", "{\"dtype\": \"float32\", \"shape\": [2, 2], \"data\": [1, 2, 3, 4]}"});
  EXPECT_EQ(r.out, "{\"dtype\":\"float32\",\"shape\":[2,2],\"data\":[1.0,2.0,3.0,4.0]}\n");
}

TEST(ApplyToolsTest, CallReportsErrorsAndTimeouts) {
  std::string url = Ipc("errors");
  Process engine({"engine", "--bind", url});
  WaitUntilServing(url);
  CallOutput r = RunCall({url, "fail", "\"broken\""});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("zerocan.Fail: broken"));
  r = RunCall({url, "sleep", "1", "--timeout", "0.2"});
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("no reply within"));
  r = RunCall({url, "add", "1"});
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("zerocan.ArgumentError"));
  r = RunCall({url});
  EXPECT_EQ(r.status, 2);
}

TEST(ApplyToolsTest, KilledEngineProcessBehindBroker) {
  zmq::context_t ctx(1);
  BrokerOptions bo;
  bo.context = &ctx;
  bo.heartbeat = milliseconds(100);
  bo.liveness = 5;
  Broker broker(Ipc("front"), Ipc("back"), bo);
  broker.Start();
  Process a({"engine", "--connect", Ipc("back"), "--id", "proc-a", "--heartbeat-ms", "100"});
  Process b({"engine", "--connect", Ipc("back"), "--id", "proc-b", "--heartbeat-ms", "100"});
  for (int i = 0; i < 200 && broker.counters().engines_live < 2; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(broker.counters().engines_live, 2u);
  ClientOptions co;
  co.context = &ctx;
  co.timeout = milliseconds(10000);
  Client client(Ipc("front"), co);
  std::vector<ResultFuture> calls;
  for (int i = 0; i < 6; ++i) calls.push_back(client.apply("sleep", 0.4));
  std::this_thread::sleep_for(milliseconds(100));
  a.Kill();
  int lost = 0, ok = 0;
  for (auto& f : calls) {
    Result r = f.get();
    if (r.ok()) {
      EXPECT_EQ(r.engine_id(), "proc-b");
      ++ok;
    } else {
      EXPECT_THROW(r.ThrowIfError(), RemoteError);
      ++lost;
    }
  }
  EXPECT_EQ(lost, 3);
  EXPECT_EQ(ok, 3);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(client.apply("add", i, i).get().as<int>(), 2 * i);
  EXPECT_EQ(client.counters().late, 0u);
}

}  // namespace
}  // namespace zerocan
