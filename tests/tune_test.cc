// The threshold tuner: the choice rule on synthetic curves (tools/tune_choice.h), and one
// tiny end-to-end run of `zerocan tune --write` whose thresholds the library then reads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "tools/tune_choice.h"
#include "zerocan/policy.h"

namespace zerocan {
namespace {

using tools::ChooseThreshold;

constexpr size_t kNever = std::numeric_limits<size_t>::max();

const std::vector<size_t> kSizes = {64, 256, 1024, 4096, 16384, 65536};

TEST(TuneTest, ClearCrossoverIsBetweenTheSampledSizes) {
  // Inline cheaper up to 1 KiB, frames cheaper from 4 KiB on.
  std::vector<double> inl = {1.0, 1.1, 1.3, 3.0, 9.0, 30.0};
  std::vector<double> frame = {2.0, 2.0, 2.0, 2.1, 2.2, 2.5};
  size_t t = ChooseThreshold(kSizes, inl, frame);
  EXPECT_GT(t, 1024u);
  EXPECT_LE(t, 4096u);
  EXPECT_EQ(t, 2048u);  // geometric middle, a power of two
}

TEST(TuneTest, FramesAlwaysBetterMeansEverythingIsAFrame) {
  std::vector<double> inl = {3, 3, 3, 4, 8, 20};
  std::vector<double> frame = {1, 1, 1, 1, 1, 1};
  EXPECT_EQ(ChooseThreshold(kSizes, inl, frame), 1u);
}

TEST(TuneTest, InlineAlwaysBetterMeansNever) {
  std::vector<double> inl = {1, 1, 1, 1, 1, 1};
  std::vector<double> frame = {3, 3, 3, 3, 3, 3};
  EXPECT_EQ(ChooseThreshold(kSizes, inl, frame), kNever);
}

TEST(TuneTest, TiedRegionTakesTheMiddle) {
  // Inline clearly better at 64 B, frames clearly better at 64 KiB, a tie in between:
  // every cut from 256 B to 16 KiB scores the same; the middle one is taken.
  std::vector<double> inl = {1.0, 2.0, 2.0, 2.0, 2.0, 10.0};
  std::vector<double> frame = {2.0, 2.0, 2.0, 2.0, 2.0, 2.0};
  size_t t = ChooseThreshold(kSizes, inl, frame);
  EXPECT_GT(t, 1024u);
  EXPECT_LE(t, 4096u);
}

TEST(TuneTest, ChoiceMinimisesTheWorstRatio) {
  // Noisy curves crossing twice: the chosen cut keeps every size within the best
  // achievable worst-case ratio.
  std::vector<double> inl = {1.0, 1.5, 1.9, 2.2, 5.0, 20.0};
  std::vector<double> frame = {1.6, 1.6, 1.8, 2.3, 2.4, 2.5};
  size_t t = ChooseThreshold(kSizes, inl, frame);
  double worst = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    double chosen = kSizes[i] >= t ? frame[i] : inl[i];
    worst = std::max(worst, chosen / std::min(inl[i], frame[i]));
  }
  EXPECT_LE(worst, 1.07);
}

TEST(TuneTest, EmptyInputIsNever) { EXPECT_EQ(ChooseThreshold({}, {}, {}), kNever); }

// Runs the real tool on a tiny sweep (inproc, two sizes, one round) and checks that what
// it wrote is what the library's policy reads back.
TEST(TuneTest, WrittenThresholdsAreReadByThePolicy) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("zerocan-tune-test-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::optional<std::string> old_xdg;
  if (const char* v = std::getenv("XDG_CONFIG_HOME")) old_xdg = v;
  setenv("XDG_CONFIG_HOME", dir.c_str(), 1);
  unsetenv("ZEROCAN_INLINE_THRESHOLD");

  std::string out = (dir / "out.json").string();
  std::string cmd = std::string(ZEROCAN_TOOL_PATH) +
                    " tune --transport inproc --sizes 64,1M --rounds 1 --no-memory --write --json > " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  std::string warning;
  std::optional<ThresholdConfig> config = ReadThresholdConfig(ThresholdConfigPath(), &warning);
  ASSERT_TRUE(config.has_value()) << warning;
  ASSERT_EQ(config->inline_threshold.count("inproc"), 1u);
  size_t written = config->inline_threshold.at("inproc");
  EXPECT_EQ(Policy::Load("inproc://anything").inline_threshold, written);
  EXPECT_FALSE(config->machine.empty());
  // A 1 MiB payload over inproc costs far less as a zero-copy frame than copied inline.
  EXPECT_LE(written, size_t{1} << 20);

  std::ifstream json(out);
  std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"transport\": \"inproc\""), std::string::npos) << text;

  if (old_xdg) {
    setenv("XDG_CONFIG_HOME", old_xdg->c_str(), 1);
  } else {
    unsetenv("XDG_CONFIG_HOME");
  }
  std::filesystem::remove_all(dir);
}

TEST(TuneTest, PlotFileIsWritten) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  std::filesystem::path png = std::filesystem::temp_directory_path() /
                              ("zerocan-tune-plot-" + std::to_string(getpid()) + ".png");
  std::string cmd = std::string(ZEROCAN_TOOL_PATH) +
                    " tune --transport inproc --sizes 64,64k --rounds 1 --no-memory --json --plot " +
                    png.string() + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(png, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  std::filesystem::remove(png);
}

}  // namespace
}  // namespace zerocan
