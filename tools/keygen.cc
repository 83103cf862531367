// `zerocan keygen --curve FILE`: writes a fresh CurveZMQ key pair (mode 0600) for
// `zerocan engine|broker --curve-secret-key-file FILE` and prints its public key, which
// clients pass as --curve-server-key.
#include <cstdio>
#include <memory>
#include <string>

#include "tools/commands.h"
#include "zerocan/curve.h"

namespace zerocan::tools {

void AddKeygen(CLI::App& app, RunFunction* chosen) {
  auto path = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand("keygen", "write a CurveZMQ key pair (--curve FILE)");
  sub->description(
      "write a CurveZMQ key pair\n"
      "\n"
      "Writes a fresh CurveZMQ key pair to FILE as JSON {\"public_key\", \"secret_key\"},\n"
      "readable by its owner only, and prints the public key on stdout. Give FILE to\n"
      "zerocan engine|broker --curve-secret-key-file; give the public key (or FILE) to\n"
      "zerocan call|engine --curve-server-key. See docs/SECURITY.md.");
  sub->add_option("--curve", *path, "the key file to write")->type_name("FILE")->required();
  sub->callback([path, chosen] {
    *chosen = [path] {
      try {
        CurveKeyPair keys = GenerateCurveKeyPair();
        WriteCurveKeyFile(*path, keys);
        std::printf("%s\n", keys.public_key.c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "zerocan keygen: %s\n", e.what());
        return 1;
      }
      return 0;
    };
  });
}

}  // namespace zerocan::tools
