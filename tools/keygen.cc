// `zerocan keygen --curve FILE`: writes a fresh CurveZMQ key pair (mode 0600) for
// `zerocan engine|broker --curve-secret-key-file FILE` and prints its public key, which
// clients pass as --curve-server-key.
#include <cstdio>
#include <string>
#include <string_view>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/curve.h"

namespace zerocan::tools {

namespace {

constexpr char kKeygenHelp[] =
    "usage: zerocan keygen --curve FILE\n"
    "\n"
    "Writes a fresh CurveZMQ key pair to FILE as JSON {\"public_key\", \"secret_key\"},\n"
    "readable by its owner only, and prints the public key on stdout. Give FILE to\n"
    "zerocan engine|broker --curve-secret-key-file; give the public key (or FILE) to\n"
    "zerocan call|engine --curve-server-key. See docs/SECURITY.md.\n";

}  // namespace

int RunKeygen(int argc, char** argv) {
  std::string path;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string value;
      std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(kKeygenHelp, stdout);
        return 0;
      } else if (TakeOption(argc, argv, &i, "--curve", &value)) {
        path = value;
      } else {
        std::fprintf(stderr, "zerocan keygen: unknown option \"%s\"\n\n%s", argv[i], kKeygenHelp);
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan keygen: %s\n", e.what());
    return 2;
  }
  if (path.empty()) {
    std::fprintf(stderr, "zerocan keygen: need --curve FILE\n\n%s", kKeygenHelp);
    return 2;
  }
  try {
    CurveKeyPair keys = GenerateCurveKeyPair();
    WriteCurveKeyFile(path, keys);
    std::printf("%s\n", keys.public_key.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan keygen: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace zerocan::tools
