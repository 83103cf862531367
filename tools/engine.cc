// `zerocan engine`: an engine process serving the built-ins (with --builtins) and plugin
// functions.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/curve.h"
#include "zerocan/engine.h"
#include "zerocan/placement.h"
#include "zerocan/policy.h"
#include "zerocan/signing.h"

namespace zerocan::tools {

namespace {

constexpr char kEngineDescription[] =
    "serve functions (built-ins and --plugin libraries)\n"
    "\n"
    "Serves functions to clients: --bind URL takes clients directly (ROUTER), --connect URL\n"
    "attaches to a broker's backend (DEALER; hello, heartbeats, goodbye). Runs until SIGINT\n"
    "or SIGTERM, then drains: takes no new calls (a broker sends them elsewhere; a direct\n"
    "caller gets zerocan.EngineStopping), answers each call it holds as it finishes, and\n"
    "exits when done or after --drain-timeout-ms, answering what remains with\n"
    "zerocan.EngineStopping. A second signal stops at once.";

constexpr char kEngineFooter[] =
    "Built-in functions (with --builtins; the same in a Python engine):\n"
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
    "which registers more functions with engine.def(name, callable). See examples/.";

struct EngineArgs {
  EngineOptions options;
  std::vector<std::string> binds, connects, plugins;
  std::string key_file, curve_secret_key_file, curve_server_key;
  int heartbeat_ms = 0;
  ServerFlags server;
  int drain_timeout_ms = 30000;
  std::string io_cpus;
  bool builtins = false;
  bool unpace_loopback = false;
  bool no_shared_memory = false;
};

int RunEngine(EngineArgs& args) {
  EngineOptions& options = args.options;
  // The option values were checked while parsing; reading them again cannot fail but
  // for a file changed in between.
  try {
    if (!args.key_file.empty()) options.signer = Signer::FromKeyFile(args.key_file);
    if (!args.curve_secret_key_file.empty()) options.curve = ReadCurveServerKeys(args.curve_secret_key_file);
    if (!args.server.curve_allow_file.empty()) {
      options.curve_allowed_clients = ReadCurveAllowList(args.server.curve_allow_file);
    }
    if (!args.curve_server_key.empty()) options.curve_server_key = ReadCurvePublicKey(args.curve_server_key);
    if (!args.io_cpus.empty()) options.io_cpus = ParseCpuList(args.io_cpus);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan engine: %s\n", e.what());
    return 2;
  }
  if (args.heartbeat_ms > 0) options.heartbeat = std::chrono::milliseconds(args.heartbeat_ms);
  options.connection_limits = args.server.limits();
  if (args.builtins) options.builtins = true;
  if (args.no_shared_memory) options.shared_memory = false;
  if (args.unpace_loopback) options.unpace_local_tcp = true;
  BlockStopSignals();
  ApplyMemoryPolicy();  // large frames reuse freed memory instead of fresh pages
  try {
    Engine engine(options);
    for (const std::string& p : args.plugins) LoadPlugin(engine, p);
    for (const std::string& url : args.binds) engine.Bind(url);
    for (const std::string& url : args.connects) engine.Connect(url);
    engine.Start();
    std::fprintf(stderr, "zerocan engine %s: %zu functions, %d threads", engine.id().c_str(),
                 engine.functions().size(), options.threads);
    if (!args.binds.empty()) std::fprintf(stderr, ", bound at %s", engine.last_endpoint().c_str());
    for (const std::string& url : args.connects) std::fprintf(stderr, ", attached to %s", url.c_str());
    std::fprintf(stderr, "\n");
    IdleMemoryReturn memory;
    WaitForStopSignal([&memory] { memory.Tick(); });
    std::fprintf(stderr, "zerocan engine %s: draining (at most %d ms)\n", engine.id().c_str(),
                 args.drain_timeout_ms);
    // A second signal, or a function still running past the grace period, ends the
    // process without waiting further.
    std::thread second([&] {
      WaitForStopSignal();
      std::fprintf(stderr, "zerocan engine %s: stopped at once\n", engine.id().c_str());
      std::_Exit(1);
    });
    second.detach();
    std::thread watchdog([ms = args.drain_timeout_ms, id = engine.id()] {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms) + std::chrono::seconds(2));
      std::fprintf(stderr, "zerocan engine %s: a function outlived the drain; exiting\n",
                   id.c_str());
      std::_Exit(1);
    });
    watchdog.detach();
    engine.Stop(std::chrono::milliseconds(args.drain_timeout_ms));
    EngineCounters c = engine.counters();
    std::fprintf(stderr,
                 "zerocan engine %s: stopped after %llu calls (%llu errors); client connections "
                 "closed: %llu idle, %llu over the receive budget\n",
                 engine.id().c_str(), static_cast<unsigned long long>(c.calls),
                 static_cast<unsigned long long>(c.errors),
                 static_cast<unsigned long long>(c.connections_closed_idle),
                 static_cast<unsigned long long>(c.connections_closed_over_budget));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan engine: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

void AddEngine(CLI::App& app, RunFunction* chosen) {
  auto args = std::make_shared<EngineArgs>();
  CLI::App* sub = app.add_subcommand("engine", "serve functions (built-ins and --plugin libraries)");
  sub->description(kEngineDescription);
  sub->footer(kEngineFooter);
  auto* bind = sub->add_option("--bind", args->binds, "take clients directly at URL (ROUTER); repeatable")
                   ->type_name("URL");
  auto* connect = sub->add_option("--connect", args->connects, "attach to a broker's backend at URL (DEALER); repeatable")
                      ->type_name("URL");
  sub->add_option("--plugin", args->plugins, "load functions from a shared library; repeatable")
      ->type_name("LIB.so")
      ->check(CLI::ExistingFile);
  sub->add_option("--threads", args->options.threads, "worker threads (0 runs calls on the I/O thread)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  sub->add_option("--id", args->options.id, "the engine's id (default: made up from host and pid)");
  sub->add_option("--drain-timeout-ms", args->drain_timeout_ms,
                  "on SIGTERM/SIGINT, how long to keep finishing the calls held before answering the\n"
                  "rest with zerocan.EngineStopping")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600 * 1000));
  sub->add_option("--heartbeat-ms", args->heartbeat_ms,
                  "heartbeat interval towards a broker, in ms (the broker's must match; default 500)")
      ->check(CLI::Range(1, 3600 * 1000));
  sub->add_option("--key-file", args->key_file,
                  "sign every message and accept only messages signed with this key (docs/SECURITY.md;\n"
                  "JSON with a \"key\" string, or the raw key), with replay protection")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { Signer::FromKeyFile(f); }));
  sub->add_option("--curve-secret-key-file", args->curve_secret_key_file,
                  "encrypt with CurveZMQ: every --bind URL is a Curve server with this key pair\n"
                  "(zerocan keygen --curve FILE), so clients need its public key")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { ReadCurveServerKeys(f); }));
  AddServerFlags(sub, &args->server, "clients connecting to --bind", "clients");
  sub->add_option("--curve-server-key", args->curve_server_key,
                  "the broker backend's public key (40-character Z85, or a key file whose public_key\n"
                  "is used); every --connect URL is then a Curve client")
      ->type_name("KEY_OR_FILE")
      ->check(Parses([](const std::string& k) { ReadCurvePublicKey(k); }));
  sub->add_option("--io-cpus", args->io_cpus,
                  "run the engine's I/O thread (which receives and sends every frame) only on these\n"
                  "CPUs (\"1\", \"0,2\", \"2-3\"). On one host, giving the engine and its clients\n"
                  "different CPUs keeps a large transfer's two kernel copies running side by side")
      ->type_name("LIST")
      ->check(Parses([](const std::string& l) { ParseCpuList(l); }));
  sub->add_flag("--builtins", args->builtins,
                "register the test built-ins echo add sum nbytes sleep fail (see below)");
  sub->add_flag("--unpace-loopback", args->unpace_loopback,
                "take the connections of a tcp:// bind to a loopback address off BBR's pacing\n"
                "(include/zerocan/pacing.h): BBR paces a large transfer over loopback far below\n"
                "what the host can move");
  sub->add_flag("--no-shared-memory", args->no_shared_memory,
                "answer no client's hello and refuse shared-memory references: callers on this\n"
                "host send frames (docs/FORMAT.md \"Shared memory arenas\")");
  bind->group("where (one at least)");
  connect->group("where (one at least)");
  sub->callback([args, chosen, bind, connect] {
    if (bind->count() == 0 && connect->count() == 0) {
      throw CLI::RequiredError("--bind URL or --connect URL");
    }
    *chosen = [args] { return RunEngine(*args); };
  });
}

}  // namespace zerocan::tools
