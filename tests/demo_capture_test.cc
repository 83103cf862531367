// A capture of a whole `zerocan demo` run (the broker writes it with --capture-file)
// inspects to one JSON object per message, with every call and the one result it got.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

namespace {

TEST(DemoCaptureTest, InspectListsEveryCallAndItsResult) {
  const std::string tool = ZEROCAN_TOOL_PATH;
  const std::string capture =
      testing::TempDir() + "zerocan_demo_capture_" + std::to_string(getpid()) + ".zcap";
  std::remove(capture.c_str());
  // A 1 MB tensor instead of 256 MB keeps the capture file small; the tour is the same.
  std::string demo = tool + " demo --tensor-mb 1 --capture-file " + capture + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(demo.c_str()), 0) << demo;

  std::string inspect = tool + " inspect --json " + capture + " 2>/dev/null";
  FILE* pipe = popen(inspect.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::map<std::string, int> kinds;
  std::map<std::string, int> hellos;  // by role
  std::set<uint64_t> calls;
  std::map<uint64_t, int> results;  // callId -> how many results answered it
  std::string line;
  int c;
  size_t messages = 0;
  auto take = [&](const std::string& text) {
    nlohmann::json message = nlohmann::json::parse(text);  // throws if not JSON
    ++messages;
    ASSERT_EQ(message.at("status"), "ok") << text.substr(0, 300);
    ASSERT_TRUE(message.at("frames").is_array());
    ASSERT_FALSE(message.at("frames").empty());
    ASSERT_TRUE(message.at("envelope").is_object());
    std::string kind = message.at("kind");
    ++kinds[kind];
    if (kind == "apply") calls.insert(message.at("message_id").get<uint64_t>());
    if (kind == "hello") {
      ++hellos[message.at("envelope").at("body").at("hello").at("role").get<std::string>()];
    }
    if (kind == "result") {
      ++results[message.at("envelope").at("body").at("result").at("callId").get<uint64_t>()];
    }
  };
  while ((c = std::fgetc(pipe)) != EOF) {
    if (c == '\n') {
      take(line);
      line.clear();
    } else {
      line.push_back(static_cast<char>(c));
    }
  }
  int status = pclose(pipe);
  EXPECT_EQ(status, 0);
  std::remove(capture.c_str());

  // The tour: 2000 small calls, 5000 pipelined echoes, 3 tensor echoes, a failing call,
  // 12 calls around an engine being killed (some answered by the broker's EngineLost).
  EXPECT_GE(kinds["apply"], 7000);
  // Both engines announced themselves; the broker told each where it runs (whether
  // callers behind it may read results from the engine's arena), and each answered.
  EXPECT_EQ(hellos["engine"], 4);
  // The client asked where the broker runs (shared memory), and the broker answered.
  EXPECT_EQ(hellos["client"], 1);
  EXPECT_EQ(hellos["broker"], 3);
  EXPECT_EQ(kinds["hello"], 8);
  ASSERT_EQ(static_cast<size_t>(kinds["apply"]), calls.size()) << "apply ids repeat";
  for (uint64_t id : calls) {
    auto it = results.find(id);
    ASSERT_NE(it, results.end()) << "call " << id << " has no result in the capture";
    EXPECT_EQ(it->second, 1) << "call " << id << " answered " << it->second << " times";
  }
  EXPECT_EQ(results.size(), calls.size());
  EXPECT_EQ(messages, static_cast<size_t>(kinds["apply"] + kinds["result"] + kinds["hello"] +
                                          kinds["heartbeat"] + kinds["goodbye"] +
                                          kinds["started"] + kinds["draining"]));
}

}  // namespace
