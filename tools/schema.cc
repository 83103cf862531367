// `zerocan schema [--path]` and `zerocan version`.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

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

int RunSchema(bool path_only) {
  std::string path = SchemaPath();
  if (path_only) {
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
}  // namespace

void AddSchema(CLI::App& app, RunFunction* chosen) {
  auto path_only = std::make_shared<bool>(false);
  CLI::App* sub = app.add_subcommand("schema", "print the schema's path (--path) or text");
  sub->add_flag("--path", *path_only, "print where the schema file is, not its text");
  sub->callback([path_only, chosen] { *chosen = [path_only] { return RunSchema(*path_only); }; });
}

void AddVersion(CLI::App& app, RunFunction* chosen) {
  CLI::App* sub = app.add_subcommand("version", "print library and protocol versions");
  sub->callback([chosen] {
    *chosen = [] {
      std::printf("zerocan %s, protocol version %u\n", kLibraryVersion,
                  static_cast<unsigned>(kProtocolVersion));
      return 0;
    };
  });
}

}  // namespace zerocan::tools
