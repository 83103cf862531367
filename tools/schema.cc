// `zerocan schema [--path]` and `zerocan version`.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <sys/stat.h>

#include "tools/commands.h"
#include "zerocan/version.h"

namespace zerocan::tools {

namespace {
// The installed copy when it exists (an installed program), else the source tree's
// (a program run from its build directory).
std::string SchemaPath() {
  struct stat st;
  if (stat(ZEROCAN_SCHEMA_INSTALLED_PATH, &st) == 0) return ZEROCAN_SCHEMA_INSTALLED_PATH;
  return ZEROCAN_SCHEMA_SOURCE_PATH;
}
}  // namespace

int RunSchema(int argc, char** argv) {
  std::string path = SchemaPath();
  if (argc >= 2 && std::string_view(argv[1]) == "--path") {
    std::printf("%s\n", path.c_str());
    return 0;
  }
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "zerocan schema: cannot read %s\n", path.c_str());
    return 1;
  }
  std::cout << in.rdbuf();
  return 0;
}

int RunVersion(int, char**) {
  std::printf("zerocan %s, protocol version %u\n", kLibraryVersion,
              static_cast<unsigned>(kProtocolVersion));
  return 0;
}

}  // namespace zerocan::tools
