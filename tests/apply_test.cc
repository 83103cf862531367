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

#include "zerocan/transport/zmq.h"
#include "tool_process.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"

namespace zerocan {
namespace {

using ::testing::HasSubstr;
using std::chrono::milliseconds;


std::string PluginPath() {
  return testing::ToolPath().substr(0, testing::ToolPath().rfind('/')) + "/examples/libzerocan_example_plugin.so";
}

std::string Ipc(const std::string& name) {
  return "ipc:///tmp/zerocan-apply-test-" + std::to_string(getpid()) + "-" + name;
}

using Process = testing::ToolProcess;
using CallOutput = testing::ToolOutput;

// Runs `zerocan call ARGS...` to completion.
CallOutput RunCall(std::vector<std::string> args) {
  args.insert(args.begin(), "call");
  return testing::RunTool(args);
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
  Process engine({"engine", "--bind", url, "--builtins", "--plugin", PluginPath()});
  WaitUntilServing(url);
  CallOutput r = RunCall({url, "add", "1", "2"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "3\n");
  r = RunCall({url, "echo", "[1, 2, 3]", "--timeout", "5"});
  EXPECT_EQ(r.out, "{\"dtype\":\"int64\",\"shape\":[3],\"data\":[1,2,3]}\n");
  r = RunCall({"--timeout=5", url, "echo", "{\"k\": \"v\"}", "null", "true", "text"});
  EXPECT_EQ(r.out, "[{\"k\":\"v\"},null,true,\"text\"]\n");
  r = RunCall({url, "add", "-1", "-2.5"});  // negative numbers are arguments, not options
  EXPECT_EQ(r.out, "-3.5\n") << r.err;
  r = RunCall({url, "echo", "[1,2]", "--", "--text", "[x, y]"});  // `--` ends the options
  EXPECT_EQ(r.out, "[{\"dtype\":\"int64\",\"shape\":[2],\"data\":[1,2]},\"--text\",\"[x, y]\"]\n") << r.err;
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
  Process engine({"engine", "--bind", url, "--builtins"});
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

// Every subcommand's options are checked while parsing (CLI11): a bad value is a usage
// error (exit status 2) whose message names the option.
TEST(ApplyToolsTest, BadOptionValuesNameTheOption) {
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const Case cases[] = {
      {{"engine", "--bind", Ipc("bad"), "--threads", "5000"}, "--threads"},
      {{"engine", "--bind", Ipc("bad"), "--heartbeat-ms", "0"}, "--heartbeat-ms"},
      {{"engine", "--bind", Ipc("bad"), "--threads", "two"}, "--threads"},
      {{"engine", "--threads", "1"}, "--bind URL or --connect URL"},
      {{"broker", "--frontend", Ipc("f"), "--backend", Ipc("b"), "--liveness", "0"}, "--liveness"},
      {{"broker", "--frontend", Ipc("f")}, "--backend"},
      {{"call", Ipc("x"), "add", "--timeout", "0"}, "--timeout"},
      {{"call", Ipc("x"), "add", "--bogus"}, "--bogus"},
      {{"demo", "--tensor-mb", "5000"}, "--tensor-mb"},
      {{"tune", "--transport", "udp"}, "--transport"},
      {{"inspect", "--count", "many", "--follow", Ipc("x")}, "--count"},
      {{"record", Ipc("x")}, "FILE"},
      {{"record", Ipc("x"), "/tmp/zerocan-never-written.zcap", "--count", "-1"}, "--count"},
      {{"tune", "--sizes", "64,abc"}, "--sizes"},
      {{"inspect", "--schema", "--id", "-3"}, "--id"},
      {{"keygen"}, "--curve"},
      {{"nosuch"}, "nosuch"},
  };
  for (const Case& c : cases) {
    testing::ToolOutput r = testing::RunTool(c.args);
    std::string line;
    for (const std::string& a : c.args) line += " " + a;
    EXPECT_EQ(r.status, 2) << "zerocan" << line << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.names)) << "zerocan" << line;
    EXPECT_EQ(r.out, "") << "zerocan" << line;
  }
}

TEST(ApplyToolsTest, HelpListsEveryOption) {
  testing::ToolOutput r = testing::RunTool({"engine", "--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* option : {"--bind", "--connect", "--plugin", "--threads", "--id", "--heartbeat-ms",
                             "--key-file", "--curve-secret-key-file", "--curve-server-key", "--io-cpus",
                             "--builtins", "--unpace-loopback", "echo(x)"}) {
    EXPECT_THAT(r.out, HasSubstr(option));
  }
  r = testing::RunTool({"broker", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("--unpace-loopback"));
  r = testing::RunTool({"--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* command : {"demo", "engine", "broker", "call", "inspect", "record", "schema", "tune",
                              "keygen", "version"}) {
    EXPECT_THAT(r.out, HasSubstr(std::string("\n  ") + command + " "));
  }
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("bench")));
  r = testing::RunTool({});
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
  Process a({"engine", "--connect", Ipc("back"), "--id", "proc-a", "--heartbeat-ms", "100", "--builtins"});
  Process b({"engine", "--connect", Ipc("back"), "--id", "proc-b", "--heartbeat-ms", "100", "--builtins"});
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
  // proc-a was running 2 calls (2 worker threads) and held a third that had not
  // started: the 2 fail with EngineLost, the third runs on proc-b.
  EXPECT_EQ(lost, 2);
  EXPECT_EQ(ok, 4);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(client.apply("add", i, i).get().as<int>(), 2 * i);
  EXPECT_EQ(client.counters().late, 0u);
}

}  // namespace
}  // namespace zerocan
