// Policy: sizes, the threshold config file (round trip, corrupt file, missing file),
// the environment override, per-transport lookup, and the large-buffer pool.
#include "zerocan/policy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>

namespace zerocan {
namespace {

// Points XDG_CONFIG_HOME at a fresh directory and clears ZEROCAN_INLINE_THRESHOLD for
// the test's duration; restores both afterwards.
class ConfigEnv {
 public:
  ConfigEnv() {
    dir_ = std::filesystem::temp_directory_path() /
           ("zerocan-policy-test-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Save("XDG_CONFIG_HOME", &old_xdg_);
    Save("ZEROCAN_INLINE_THRESHOLD", &old_env_);
    setenv("XDG_CONFIG_HOME", dir_.c_str(), 1);
    unsetenv("ZEROCAN_INLINE_THRESHOLD");
  }
  ~ConfigEnv() {
    Restore("XDG_CONFIG_HOME", old_xdg_);
    Restore("ZEROCAN_INLINE_THRESHOLD", old_env_);
    std::filesystem::remove_all(dir_);
  }
  std::string path() const { return (dir_ / "zerocan" / "threshold.json").string(); }
  void WriteRaw(const std::string& text) const {
    std::filesystem::create_directories(dir_ / "zerocan");
    std::ofstream(path()) << text;
  }

 private:
  static void Save(const char* name, std::optional<std::string>* out) {
    if (const char* v = std::getenv(name)) *out = v;
  }
  static void Restore(const char* name, const std::optional<std::string>& v) {
    if (v) {
      setenv(name, v->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  static inline int counter_ = 0;
  std::filesystem::path dir_;
  std::optional<std::string> old_xdg_, old_env_;
};

TEST(PolicyTest, ParseSize) {
  EXPECT_EQ(Policy::ParseSize("0"), 0);
  EXPECT_EQ(Policy::ParseSize("4096"), 4096);
  EXPECT_EQ(Policy::ParseSize("64k"), 64 * 1024);
  EXPECT_EQ(Policy::ParseSize("64KiB"), 64 * 1024);
  EXPECT_EQ(Policy::ParseSize("1M"), 1 << 20);
  EXPECT_EQ(Policy::ParseSize("2GiB"), 2LL << 30);
  EXPECT_EQ(Policy::ParseSize("12B"), 12);
  EXPECT_EQ(Policy::ParseSize(""), -1);
  EXPECT_EQ(Policy::ParseSize("-5"), -1);
  EXPECT_EQ(Policy::ParseSize("+5"), -1);
  EXPECT_EQ(Policy::ParseSize(" 5"), -1);
  EXPECT_EQ(Policy::ParseSize("5x"), -1);
  EXPECT_EQ(Policy::ParseSize("k"), -1);
  EXPECT_EQ(Policy::ParseSize("99999999999999999999"), -1);
  EXPECT_EQ(Policy::ParseSize("9999999999G"), -1);  // overflows 2^62
}

TEST(PolicyTest, TransportOf) {
  EXPECT_EQ(TransportOf("tcp://127.0.0.1:5555"), "tcp");
  EXPECT_EQ(TransportOf("ipc:///tmp/x"), "ipc");
  EXPECT_EQ(TransportOf("inproc://a"), "inproc");
  EXPECT_EQ(TransportOf("tcp"), "tcp");
}

TEST(PolicyTest, ConfigPathFollowsXdg) {
  ConfigEnv env;
  EXPECT_EQ(ThresholdConfigPath(), env.path());
}

TEST(PolicyTest, ConfigRoundTripThroughTheLibrary) {
  ConfigEnv env;
  ThresholdConfig config;
  config.inline_threshold = {{"inproc", 512}, {"ipc", 8192}, {"tcp", 3000}};
  config.default_threshold = 3000;
  config.reuse_memory = true;
  config.machine = "test machine";
  config.measured_at = "2026-01-01T00:00:00Z";
  WriteThresholdConfig(config, ThresholdConfigPath());

  std::string warning;
  std::optional<ThresholdConfig> back = ReadThresholdConfig(ThresholdConfigPath(), &warning);
  ASSERT_TRUE(back.has_value()) << warning;
  EXPECT_TRUE(warning.empty());
  EXPECT_EQ(back->inline_threshold, config.inline_threshold);
  EXPECT_EQ(back->default_threshold, std::optional<size_t>(3000));
  EXPECT_EQ(back->reuse_memory, std::optional<bool>(true));
  EXPECT_EQ(back->machine, "test machine");
  EXPECT_EQ(back->measured_at, "2026-01-01T00:00:00Z");

  // What the library's policies then use, per transport and for unknown transports.
  std::string warnings;
  EXPECT_EQ(Policy::Load("inproc://x", &warnings).inline_threshold, 512u);
  EXPECT_EQ(Policy::Load("ipc:///tmp/y", &warnings).inline_threshold, 8192u);
  EXPECT_EQ(Policy::Load("tcp://127.0.0.1:1", &warnings).inline_threshold, 3000u);
  EXPECT_EQ(Policy::Load("tcp", &warnings).inline_threshold, 3000u);
  EXPECT_EQ(Policy::Load("pgm://eth0;239.1.1.1:5555", &warnings).inline_threshold, 3000u);
  EXPECT_EQ(Policy::Load("", &warnings).inline_threshold, 3000u);
  EXPECT_TRUE(warnings.empty()) << warnings;
}

TEST(PolicyTest, MissingFileIsSilentDefault) {
  ConfigEnv env;
  std::string warning;
  EXPECT_FALSE(ReadThresholdConfig(env.path(), &warning).has_value());
  EXPECT_TRUE(warning.empty());
  std::string warnings = "unchanged?";
  EXPECT_EQ(Policy::Load("tcp", &warnings).inline_threshold, kDefaultInlineThreshold);
  EXPECT_TRUE(warnings.empty());
}

TEST(PolicyTest, CorruptFileWarnsAndFallsBackToDefault) {
  ConfigEnv env;
  const char* corrupt[] = {
      "{ not json",
      "[1, 2, 3]",
      "{\"format\": \"something-else/9\", \"inline_threshold\": {\"tcp\": 10}}",
      "{\"format\": \"zerocan-threshold/1\", \"inline_threshold\": {\"tcp\": -10}}",
      "{\"format\": \"zerocan-threshold/1\", \"inline_threshold\": {\"tcp\": \"lots\"}}",
      "{\"format\": \"zerocan-threshold/1\", \"inline_threshold\": 7}",
      "{\"format\": \"zerocan-threshold/1\", \"default\": true}",
      "{\"format\": \"zerocan-threshold/1\", \"reuse_memory\": \"yes\"}",
      "",
  };
  for (const char* text : corrupt) {
    env.WriteRaw(text);
    std::string warning;
    EXPECT_FALSE(ReadThresholdConfig(env.path(), &warning).has_value()) << text;
    EXPECT_NE(warning.find(env.path()), std::string::npos) << warning;
    std::string warnings;
    Policy p = Policy::Load("tcp", &warnings);
    EXPECT_EQ(p.inline_threshold, kDefaultInlineThreshold) << text;
    EXPECT_FALSE(warnings.empty()) << text;
  }
}

TEST(PolicyTest, SizeStringsInTheFileAreAccepted) {
  ConfigEnv env;
  env.WriteRaw(R"({"format": "zerocan-threshold/1", "inline_threshold": {"tcp": "8k"}, "default": 1024})");
  EXPECT_EQ(Policy::Load("tcp").inline_threshold, 8192u);
  EXPECT_EQ(Policy::Load("ipc").inline_threshold, 1024u);
}

TEST(PolicyTest, EnvironmentOverridesTheFile) {
  ConfigEnv env;
  ThresholdConfig config;
  config.inline_threshold = {{"tcp", 3000}};
  config.default_threshold = 3000;
  WriteThresholdConfig(config, ThresholdConfigPath());
  setenv("ZEROCAN_INLINE_THRESHOLD", "64k", 1);
  std::string warnings;
  EXPECT_EQ(Policy::Load("tcp", &warnings).inline_threshold, 64u * 1024);
  EXPECT_EQ(Policy::Load("inproc", &warnings).inline_threshold, 64u * 1024);
  EXPECT_TRUE(warnings.empty());

  // An invalid value is reported and ignored: the file applies.
  setenv("ZEROCAN_INLINE_THRESHOLD", "lots", 1);
  EXPECT_EQ(Policy::Load("tcp", &warnings).inline_threshold, 3000u);
  EXPECT_NE(warnings.find("ZEROCAN_INLINE_THRESHOLD"), std::string::npos) << warnings;
}

TEST(PolicyTest, WriteReplacesAnExistingFile) {
  ConfigEnv env;
  env.WriteRaw("garbage");
  ThresholdConfig config;
  config.inline_threshold = {{"ipc", 77}};
  WriteThresholdConfig(config, ThresholdConfigPath());
  std::optional<ThresholdConfig> back = ReadThresholdConfig(ThresholdConfigPath());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->inline_threshold.at("ipc"), 77u);
  EXPECT_FALSE(back->default_threshold.has_value());
  // No default in the file: unknown transports get the built-in one.
  EXPECT_EQ(back->ThresholdFor("tcp"), std::nullopt);
  EXPECT_EQ(Policy::Load("tcp").inline_threshold, kDefaultInlineThreshold);
}

TEST(PolicyTest, WriteToAnUnwritablePlaceThrowsError) {
  EXPECT_THROW(WriteThresholdConfig(ThresholdConfig{}, "/proc/zerocan/threshold.json"), Error);
  EXPECT_THROW(WriteThresholdConfig(ThresholdConfig{}, ""), Error);
}

TEST(PolicyTest, LargeBufferPoolReusesReleasedBuffers) {
  bool was = ReusingAllocatorEnabled();
  UseReusingAllocator(true);
  const size_t size = (size_t{3} << 20) + 5;  // 3 MiB + 5: the 4 MiB class
  const std::byte* first;
  {
    Buffer a = AllocateLarge(size);
    ASSERT_EQ(a.size(), size);
    EXPECT_TRUE(IsAligned(a.data(), 64));
    a.mutable_data()[size - 1] = std::byte{7};
    first = a.data();
  }
  // Released into the pool; the next buffer of the same class is the same memory.
  Buffer b = AllocateLarge(size - 100);
  EXPECT_EQ(b.data(), first);
  Buffer c = AllocateLarge(size);  // b is still held: a different buffer
  EXPECT_NE(c.data(), b.data());
  // Small buffers bypass the pool.
  EXPECT_EQ(AllocateLarge(100).size(), 100u);
  UseReusingAllocator(false);
  Buffer d = AllocateLarge(size);  // policy off: a plain allocation
  EXPECT_EQ(d.size(), size);
  UseReusingAllocator(was);
}

}  // namespace
}  // namespace zerocan
