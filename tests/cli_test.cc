// The `zerocan call` and `zerocan inspect` command lines at their edges: option values out
// of range, endpoints where nothing listens, numbers JSON cannot carry (as arguments and
// as results), arguments from a file or stdin of any size, and unreadable input files.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tool_process.h"
#include "tools/apply_util.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"

namespace zerocan {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ToolOutput;
using Clock = std::chrono::steady_clock;

std::string Ipc(const std::string& name) {
  return "ipc:///tmp/zerocan-cli-test-" + std::to_string(getpid()) + "-" + name;
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/zerocan-cli-test-" + std::to_string(getpid()) + "-" + name;
}

ToolOutput RunCall(std::vector<std::string> args) {
  args.insert(args.begin(), "call");
  return testing::RunTool(args);
}

// An engine process serving the built-ins at `url`, answering by the time it returns.
class BuiltinsEngine {
 public:
  explicit BuiltinsEngine(const std::string& url) : process_({"engine", "--bind", url, "--builtins"}) {
    Client client(url);
    for (int i = 0; i < 100; ++i) {
      if (client.apply_for(std::chrono::milliseconds(100), "add", 0, 0).get().ok()) return;
    }
    ADD_FAILURE() << "engine at " << url << " never answered";
  }

 private:
  testing::ToolProcess process_;
};

// A tcp port on 127.0.0.1 that nothing listens on (bound, then closed).
int ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  bind(fd, reinterpret_cast<sockaddr*>(&address), length);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

TEST(CliTest, TimeoutOutOfRangeIsAUsageErrorNamingTheOption) {
  for (const char* value : {"1e10", "9.3e9", "1e16", "inf", "-inf", "nan", "0", "-1", "abc", ""}) {
    ToolOutput r = RunCall({Ipc("never"), "add", "1", "2", "--timeout", value});
    EXPECT_EQ(r.status, 2) << "--timeout " << value << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr("--timeout")) << value;
    EXPECT_THAT(r.err, Not(HasSubstr("stod"))) << value;
    EXPECT_EQ(r.out, "") << value;
  }
  ToolOutput r = RunCall({Ipc("never"), "add", "--timeout", "1e10"});
  EXPECT_THAT(r.err, HasSubstr("at most 1e9 seconds"));
  r = RunCall({Ipc("never"), "add", "--timeout", "abc"});
  EXPECT_THAT(r.err, HasSubstr("expected a number of seconds"));

  // Up to the maximum, any positive value works: no overflow that times out at once.
  std::string url = Ipc("timeout");
  BuiltinsEngine engine(url);
  for (const char* value : {"1e9", "9.9e8", "5000000", "0.5"}) {
    r = RunCall({url, "add", "1", "2", "--timeout", value});
    EXPECT_EQ(r.status, 0) << "--timeout " << value << "\n" << r.err;
    EXPECT_EQ(r.out, "3\n") << value;
  }
  // Less than a millisecond is a millisecond (which a loaded machine may miss), not none.
  r = RunCall({url, "add", "1", "2", "--timeout", "1e-4"});
  EXPECT_THAT(r.out + r.err, AnyOf(HasSubstr("3\n"), HasSubstr("no reply within")));
  r = RunCall({url, "sleep", "0.5", "--timeout", "0.1"});
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("no reply within"));
}

TEST(CliTest, EndpointsWhereNothingListensSaySoAtOnce) {
  struct Case {
    std::string url;
    int status;
    ::testing::Matcher<const std::string&> says;
  };
  std::string closed = "tcp://127.0.0.1:" + std::to_string(ClosedPort());
  // A socket file without a listener: connecting to it is refused.
  std::string stale = "/tmp/zerocan-cli-test-" + std::to_string(getpid()) + "-stale";
  int stale_fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un unix_address{};
  unix_address.sun_family = AF_UNIX;
  std::strncpy(unix_address.sun_path, stale.c_str(), sizeof(unix_address.sun_path) - 1);
  ASSERT_EQ(bind(stale_fd, reinterpret_cast<sockaddr*>(&unix_address), sizeof(unix_address)), 0);
  const Case cases[] = {
      {closed, 1, HasSubstr("connection refused: nothing listening at 127.0.0.1 port")},
      // A resolver that cannot reach its servers says so instead of "unknown".
      {"tcp://no-such-host.invalid:5555", 1,
       AnyOf(HasSubstr("unknown host no-such-host.invalid"),
             HasSubstr("cannot resolve host no-such-host.invalid"))},
      {"tcp://127.0.0.1:99999", 2, HasSubstr("port 99999 is not between 1 and 65535")},
      {"tcp://127.0.0.1:0", 2, HasSubstr("port 0 is not between 1 and 65535")},
      {"tcp://127.0.0.1:http", 2, HasSubstr("port \"http\" is not a number")},
      {"tcp://127.0.0.1", 2, HasSubstr("needs a port")},
      {"127.0.0.1:5555", 2, HasSubstr("expected TRANSPORT://ADDRESS")},
      {Ipc("nobody"), 1, HasSubstr("nothing listening: no socket file")},
      {"ipc://" + stale, 1, HasSubstr("connection refused: nothing listening at " + stale)},
  };
  for (const Case& c : cases) {
    Clock::time_point start = Clock::now();
    ToolOutput r = RunCall({c.url, "add", "1", "2", "--timeout", "30"});
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    EXPECT_EQ(r.status, c.status) << c.url << "\n" << r.err;
    EXPECT_THAT(r.err, c.says) << c.url;
    EXPECT_THAT(r.err, Not(HasSubstr("no reply within"))) << c.url;
    EXPECT_LT(seconds, 2.0) << c.url;
  }
  close(stale_fd);
  unlink(stale.c_str());
}

TEST(CliTest, ArgumentsJsonCannotCarryAreRefusedNamingThem) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const Case cases[] = {
      {{"add", "18446744073709551616", "1"}, "argument 0: 18446744073709551616 is an integer beyond 64 bits"},
      {{"add", "1", "-9223372036854775809"}, "argument 1: -9223372036854775809 is an integer beyond 64 bits"},
      {{"echo", "[1, 18446744073709551616]"}, "argument 0: 18446744073709551616 is an integer beyond"},
      {{"add", "NaN", "1"}, "argument 0: NaN is not a finite number"},
      {{"add", "1", "Infinity"}, "argument 1: Infinity is not a finite number"},
      {{"add", "1", "--", "-Infinity"}, "argument 1: -Infinity is not a finite number"},
      {{"add", "1e400", "1"}, "argument 0: 1e400 is beyond the float64 range"},
      {{"echo", "[1, NaN]"}, "argument 0: NaN is not a finite number"},
      {{"echo", "{\"k\": [1e400]}"}, "argument 0: 1e400 is beyond the float64 range"},
      {{"add", "+1", "2"}, "argument 0: +1 is not a number as JSON writes it"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.begin(), Ipc("never"));
    ToolOutput r = RunCall(args);
    EXPECT_EQ(r.status, 2) << c.says << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.says));
    EXPECT_EQ(r.out, "");
  }

  // What JSON does carry goes through as before: the extremes of 64 bits, quoted words
  // and text that is not JSON.
  std::string url = Ipc("args");
  BuiltinsEngine engine(url);
  ToolOutput r = RunCall({url, "echo", "18446744073709551615", "-9223372036854775808", "\"NaN\"",
                          "infinite", "[x, y]"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "[18446744073709551615,-9223372036854775808,\"NaN\",\"infinite\",\"[x, y]\"]\n");
}

TEST(CliTest, FloatsJsonCannotHoldPrintAsTokens) {
  std::string url = Ipc("results");
  BuiltinsEngine engine(url);
  ToolOutput r = RunCall({url, "add", "1e308", "1e308"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "Infinity\n");
  r = RunCall({url, "add", "-1e308", "-1e308"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "-Infinity\n");
  r = RunCall({url, "sum", "[1e308, 1e308, 1.5]"});
  EXPECT_EQ(r.out, "Infinity\n");

  double nan = std::numeric_limits<double>::quiet_NaN();
  double inf = std::numeric_limits<double>::infinity();
  nlohmann::ordered_json j = {{"x", nan}, {"y", {1.5, -inf, inf}}, {"text", "NaN"}};
  EXPECT_EQ(tools::DumpJson(j), "{\"x\":NaN,\"y\":[1.5,-Infinity,Infinity],\"text\":\"NaN\"}");
  EXPECT_EQ(tools::DumpJson(nlohmann::ordered_json(nan)), "NaN");
  EXPECT_EQ(tools::DumpJson({{"a", 1}, {"b", 2.5}}), "{\"a\":1,\"b\":2.5}");
  r = testing::RunTool({"call", "--help"});
  EXPECT_THAT(r.out, HasSubstr("NaN, Infinity and -Infinity"));
}

// Runs `zerocan ARGS` through the shell with `stdin_file` as its stdin.
ToolOutput RunToolWithStdin(const std::string& args, const std::string& stdin_file) {
  std::string err_path = TempPath("stdin-err");
  std::string command = "'" + testing::ToolPath() + "' " + args + " < '" + stdin_file + "' 2>'" + err_path + "'";
  ToolOutput result;
  FILE* pipe = popen(command.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.out.append(buf, n);
  int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  result.err.assign(std::istreambuf_iterator<char>(err), {});
  unlink(err_path.c_str());
  return result;
}

TEST(CliTest, KeywordArgumentsComeFromKwargOptionsOrAnArgsFileObject) {
  std::string url = Ipc("kwargs");
  Engine engine(EngineOptions{});
  engine.def("affine", [](double x, double k, double shift) { return x * k + shift; },
             {"x", "k", "shift"});
  engine.Bind(url);
  engine.Start();
  ToolOutput r = RunCall({url, "affine", "2", "--kwarg", "k=3", "--kwarg", "shift=0.5"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "6.5\n");
  r = RunCall({url, "affine", "--kwarg=shift=1", "--kwarg", "k=2", "4"});  // options anywhere
  EXPECT_EQ(r.out, "9.0\n") << r.err;
  std::string file = TempPath("kwargs.json");
  std::ofstream(file) << R"({"args": [1], "kwargs": {"k": 10, "shift": 2}})";
  r = RunCall({url, "affine", "--args-file", file});
  EXPECT_EQ(r.out, "12.0\n") << r.err;
  // Refused before anything is sent (2), or by the engine (1), each saying why.
  struct Case {
    std::vector<std::string> args;
    int status;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{
           {{"1", "--kwarg", "k"}, 2, "--kwarg k: expected NAME=VALUE"},
           {{"1", "--kwarg", "=3"}, 2, "a keyword argument needs a name"},
           {{"1", "--kwarg", "k=1", "--kwarg", "k=2"}, 2, "keyword argument 'k' given twice"},
           {{"1", "--kwarg", "k=1e400"}, 2, "--kwarg k: 1e400 is beyond the float64 range"},
           {{"1", "--kwarg", "k=1", "--kwarg", "q=2"}, 1, "unexpected keyword argument 'q'"},
           {{"--args-file", file, "--kwarg", "k=1"}, 2, "excludes"}}) {
    std::vector<std::string> argv = {url, "affine"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    r = RunCall(argv);
    EXPECT_EQ(r.status, c.status) << c.says << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.says));
  }
  std::ofstream(file, std::ios::trunc) << R"({"args": [1], "kwarg": {"k": 10}})";
  r = RunCall({url, "affine", "--args-file", file});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr(R"(expected "args" (an array) and "kwargs" (an object), got "kwarg")"));
  unlink(file.c_str());
}

TEST(CliTest, ArgsFileCarriesArgumentsOfAnySize) {
  std::string url = Ipc("file");
  BuiltinsEngine engine(url);
  // 12.5 million integers of 7 digits: a 100 MB file and a 100 MB int64 array.
  constexpr size_t kCount = 12'500'000;
  std::string big = TempPath("big.json");
  {
    std::string text;
    text.reserve(kCount * 8 + 4);
    text += "[[";
    for (size_t i = 0; i < kCount; ++i) text += i == 0 ? "1234567" : ",1234567";
    text += "]]";
    std::ofstream(big, std::ios::binary) << text;
  }
  EXPECT_GE(std::filesystem::file_size(big), size_t{100'000'000});
  ToolOutput r = RunCall({url, "nbytes", "--args-file", big, "--timeout", "120"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "100000000\n");
  r = RunCall({url, "sum", "--args-file", big, "--timeout", "120"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "15432087500000.0\n");  // 12.5e6 * 1234567, exact in float64
  std::filesystem::remove(big);

  std::string small = TempPath("small.json");
  std::ofstream(small) << "[1, \"two\", [3, 4], {\"k\": null}]";
  r = RunToolWithStdin("call " + url + " echo --args-file -", small);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "[1,\"two\",{\"dtype\":\"int64\",\"shape\":[2],\"data\":[3,4]},{\"k\":null}]\n");
  r = RunCall({url, "add", "--args-file", small, "1"});  // not both
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("--args-file"));

  std::ofstream(small) << "{\"a\": 1}";  // an object holds "args" and "kwargs" only
  r = RunCall({url, "echo", "--args-file", small});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("expected \"args\" (an array) and \"kwargs\" (an object), got \"a\""));
  std::ofstream(small) << "\"text\"";
  r = RunCall({url, "echo", "--args-file", small});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("expected a JSON array of the arguments, or an object"));
  std::ofstream(small) << "[1, NaN]";
  r = RunCall({url, "echo", "--args-file", small});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("NaN is not a finite number"));
  std::ofstream(small) << "[1, 2";
  r = RunCall({url, "echo", "--args-file", small});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("--args-file " + small + ": [json.exception.parse_error"));
  std::filesystem::remove(small);

  r = RunCall({url, "echo", "--args-file", ::testing::TempDir()});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("--args-file: is a directory"));
  r = RunCall({url, "echo", "--args-file", TempPath("missing.json")});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("No such file or directory"));
}

TEST(CliTest, InspectSaysWhyItCannotReadAFile) {
  std::string dir = ::testing::TempDir();
  ToolOutput r = testing::RunTool({"inspect", dir});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("is a directory: " + dir));
  r = testing::RunTool({"inspect", TempPath("missing.zcap")});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("cannot read " + TempPath("missing.zcap") + ": No such file or directory"));
  r = testing::RunTool({"inspect", "-", "--key-file", dir});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("--key-file: is a directory"));
}

TEST(CliTest, InspectSaysAFileIsUnreadable) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads files whatever their mode";
  std::string locked = TempPath("locked.zcap");
  std::ofstream(locked) << "x";
  chmod(locked.c_str(), 0);
  ToolOutput r = testing::RunTool({"inspect", locked});
  EXPECT_EQ(r.status, 2);
  EXPECT_THAT(r.err, HasSubstr("cannot read " + locked + ": Permission denied"));
  unlink(locked.c_str());
}

}  // namespace
}  // namespace zerocan
