// `zerocan engine --connect|--bind URL [--threads N] [--plugin LIB.so]... [--id ID]
//  [--heartbeat-ms MS] [--key-file F] [--curve-secret-key-file F] [--curve-server-key K]
//  [--io-cpus LIST]`:
// an engine process serving the built-ins and plugin functions.
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/curve.h"
#include "zerocan/engine.h"
#include "zerocan/placement.h"
#include "zerocan/policy.h"

namespace zerocan::tools {

namespace {

constexpr char kEngineHelp[] =
    "usage: zerocan engine (--connect URL | --bind URL)... [--threads N] [--plugin LIB.so]...\n"
    "                      [--id ID] [--heartbeat-ms MS] [--key-file FILE]\n"
    "                      [--curve-secret-key-file FILE] [--curve-server-key KEY_OR_FILE]\n"
    "                      [--io-cpus LIST]\n"
    "\n"
    "Serves functions to clients: --bind URL takes clients directly (ROUTER), --connect URL\n"
    "attaches to a broker's backend (DEALER; hello, heartbeats, goodbye). Runs until SIGINT\n"
    "or SIGTERM, then finishes the calls it holds.\n"
    "\n"
    "Built-in functions (every engine, C++ or Python):\n"
    "  echo(x)        x unchanged (payload frames go back out without a copy);\n"
    "                 echo(a, b, ...) -> [a, b, ...]\n"
    "  add(a, b)      a + b\n"
    "  sum(x)         float64 sum of a numeric tensor or list of numbers\n"
    "  nbytes(...)    total payload bytes received in the arguments\n"
    "  sleep(s)       sleeps s seconds, returns s\n"
    "  fail(msg)      answers with a remote error (type zerocan.Fail) carrying msg\n"
    "\n"
    "--plugin LIB.so loads a shared library exporting\n"
    "    extern \"C\" void zerocan_register(zerocan::Engine& engine);\n"
    "which registers more functions with engine.def(name, callable). See examples/.\n"
    "--threads N: worker threads (default 2; 0 runs calls on the I/O thread).\n"
    "--key-file FILE: sign every message and accept only messages signed with this key\n"
    "(docs/SECURITY.md; JSON with a \"key\" string, or the raw key), with replay protection.\n"
    "--curve-secret-key-file FILE: encrypt with CurveZMQ; every --bind URL is a Curve server\n"
    "with this key pair (zerocan keygen --curve FILE), so clients need its public key.\n"
    "--curve-server-key KEY_OR_FILE: the broker backend's public key (40-character Z85, or\n"
    "a key file whose public_key is used); every --connect URL is then a Curve client.\n"
    "--io-cpus LIST: run the engine's I/O thread (which receives and sends every frame) only\n"
    "on these CPUs (\"1\", \"0,2\", \"2-3\"). On one host, giving the engine and its clients\n"
    "different CPUs keeps a large transfer's two kernel copies running side by side.\n";

}  // namespace

int RunEngine(int argc, char** argv) {
  BlockStopSignals();
  EngineOptions options;
  options.builtins = true;
  std::vector<std::string> binds, connects, plugins;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string value;
      std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(kEngineHelp, stdout);
        return 0;
      } else if (TakeOption(argc, argv, &i, "--bind", &value)) {
        binds.push_back(value);
      } else if (TakeOption(argc, argv, &i, "--connect", &value)) {
        connects.push_back(value);
      } else if (TakeOption(argc, argv, &i, "--plugin", &value)) {
        plugins.push_back(value);
      } else if (TakeOption(argc, argv, &i, "--threads", &value)) {
        options.threads = std::stoi(value);
      } else if (TakeOption(argc, argv, &i, "--id", &value)) {
        options.id = value;
      } else if (TakeOption(argc, argv, &i, "--key-file", &value)) {
        options.signer = Signer::FromKeyFile(value);
      } else if (TakeOption(argc, argv, &i, "--curve-secret-key-file", &value)) {
        options.curve = ReadCurveServerKeys(value);
      } else if (TakeOption(argc, argv, &i, "--curve-server-key", &value)) {
        options.curve_server_key = ReadCurvePublicKey(value);
      } else if (TakeOption(argc, argv, &i, "--heartbeat-ms", &value)) {
        options.heartbeat = std::chrono::milliseconds(std::stoi(value));
      } else if (TakeOption(argc, argv, &i, "--io-cpus", &value)) {
        options.io_cpus = ParseCpuList(value);
      } else {
        std::fprintf(stderr, "zerocan engine: unknown option \"%s\"\n\n%s", argv[i], kEngineHelp);
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan engine: %s\n", e.what());
    return 2;
  }
  if (binds.empty() && connects.empty()) {
    std::fprintf(stderr, "zerocan engine: need --bind URL or --connect URL\n\n%s", kEngineHelp);
    return 2;
  }
  ApplyMemoryPolicy();  // large frames reuse freed memory instead of fresh pages
  try {
    Engine engine(options);
    for (const std::string& p : plugins) LoadPlugin(engine, p);
    for (const std::string& url : binds) engine.Bind(url);
    for (const std::string& url : connects) engine.Connect(url);
    engine.Start();
    std::fprintf(stderr, "zerocan engine %s: %zu functions, %d threads", engine.id().c_str(),
                 engine.functions().size(), options.threads);
    if (!binds.empty()) std::fprintf(stderr, ", bound at %s", engine.last_endpoint().c_str());
    for (const std::string& url : connects) std::fprintf(stderr, ", attached to %s", url.c_str());
    std::fprintf(stderr, "\n");
    WaitForStopSignal();
    engine.Stop();
    EngineCounters c = engine.counters();
    std::fprintf(stderr, "zerocan engine %s: stopped after %llu calls (%llu errors)\n",
                 engine.id().c_str(), static_cast<unsigned long long>(c.calls),
                 static_cast<unsigned long long>(c.errors));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan engine: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace zerocan::tools
