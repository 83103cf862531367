// main() for the fuzz targets when built without libFuzzer: runs every file under the
// given files or directories through LLVMFuzzerTestOneInput, then (so that a plain
// sanitizer build explores a little beyond the seeds) each file truncated at every
// 1/16th and with ZEROCAN_FUZZ_MUTATIONS (default 64) pseudo-random byte changes.
// Exit status 0 when every input ran; a crash or sanitizer report fails the test.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void Run(const std::vector<uint8_t>& input) { LLVMFuzzerTestOneInput(input.data(), input.size()); }

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      for (const auto& entry : fs::recursive_directory_iterator(p)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  const char* env = std::getenv("ZEROCAN_FUZZ_MUTATIONS");
  int mutations = env != nullptr ? std::atoi(env) : 64;
  std::mt19937_64 rng(12345);
  size_t runs = 0;
  for (const fs::path& file : files) {
    std::ifstream in(file, std::ios::binary);
    std::vector<uint8_t> input((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Run(input);
    ++runs;
    for (int k = 1; k < 16 && !input.empty(); ++k) {
      Run(std::vector<uint8_t>(input.begin(), input.begin() + input.size() * k / 16));
      ++runs;
    }
    for (int m = 0; m < mutations && !input.empty(); ++m) {
      std::vector<uint8_t> mutated = input;
      int changes = 1 + static_cast<int>(rng() % 4);
      for (int c = 0; c < changes; ++c) mutated[rng() % mutated.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
      Run(mutated);
      ++runs;
    }
  }
  std::printf("%zu inputs from %zu files ran\n", runs, files.size());
  return files.empty() ? 1 : 0;
}
