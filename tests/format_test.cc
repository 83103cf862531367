// The protocol version is stated in three places that must agree: the C++ constant, the
// schema's `protocolVersion` and docs/FORMAT.md ("Protocol version: N").
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "zerocan/generated.h"
#include "zerocan/version.h"
#include "zerocan/wire/zerocan.capnp.h"

namespace zerocan {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(FormatTest, SchemaConstantMatchesLibrary) {
  std::string schema = ReadFile(std::string(ZEROCAN_SOURCE_DIR) + "/schema/zerocan.capnp");
  ASSERT_FALSE(schema.empty()) << "cannot read schema/zerocan.capnp";
  std::smatch match;
  ASSERT_TRUE(std::regex_search(
      schema, match, std::regex(R"(const\s+protocolVersion\s*:\s*UInt16\s*=\s*(\d+)\s*;)")));
  EXPECT_EQ(std::stoi(match[1].str()), kProtocolVersion);
  // The generated constant, compiled from the same schema.
  EXPECT_EQ(wire::PROTOCOL_VERSION, kProtocolVersion);
}

TEST(FormatTest, FormatDocumentStatesTheSameVersion) {
  std::string doc = ReadFile(std::string(ZEROCAN_SOURCE_DIR) + "/docs/FORMAT.md");
  if (doc.empty()) GTEST_SKIP() << "docs/FORMAT.md not written yet";
  std::smatch match;
  ASSERT_TRUE(std::regex_search(doc, match, std::regex(R"(Protocol version:\s*\**\s*(\d+))")))
      << "docs/FORMAT.md must contain a line \"Protocol version: N\"";
  EXPECT_EQ(std::stoi(match[1].str()), kProtocolVersion);
  // Every statement of it agrees (no stale second mention).
  std::regex all(R"(Protocol version:\s*\**\s*(\d+))");
  for (auto it = std::sregex_iterator(doc.begin(), doc.end(), all); it != std::sregex_iterator();
       ++it) {
    EXPECT_EQ(std::stoi((*it)[1].str()), kProtocolVersion) << (*it)[0].str();
  }
}

}  // namespace
}  // namespace zerocan
