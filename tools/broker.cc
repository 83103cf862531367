// `zerocan broker`: forwards calls from clients (--frontend) to engines (--backend).
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/broker.h"
#include "zerocan/curve.h"
#include "zerocan/placement.h"
#include "zerocan/policy.h"
#include "zerocan/signing.h"

namespace zerocan::tools {

namespace {

constexpr char kBrokerDescription[] =
    "forward calls from clients to engines\n"
    "\n"
    "Clients connect to --frontend, engines (zerocan engine --connect) to --backend. Calls\n"
    "go to the live engine with the fewest calls in flight; frames are forwarded without\n"
    "being decoded or copied (only the envelope header is read). An engine silent for\n"
    "--liveness heartbeat intervals is lost: its calls that had not started go to another\n"
    "engine, those it was running fail with zerocan.EngineLost (or run again, when their\n"
    "caller allowed retries). Runs until SIGINT or SIGTERM, then drains: new calls and calls\n"
    "still waiting for an engine get zerocan.BrokerStopping, calls in flight finish (at most\n"
    "--drain-timeout-ms). A second signal stops at once.";

struct BrokerArgs {
  BrokerOptions options;
  std::string frontend, backend;
  std::string key_file, curve_secret_key_file, io_cpus;
  int heartbeat_ms = 0;
  ServerFlags server;
  int drain_timeout_ms = 10000;
  bool unpace_loopback = false;
  bool no_shared_memory = false;
};

int RunBroker(BrokerArgs& args) {
  BrokerOptions& options = args.options;
  try {
    if (!args.key_file.empty()) options.signer = Signer::FromKeyFile(args.key_file);
    if (!args.curve_secret_key_file.empty()) options.curve = ReadCurveServerKeys(args.curve_secret_key_file);
    if (!args.server.curve_allow_file.empty()) {
      options.curve_allowed_clients = ReadCurveAllowList(args.server.curve_allow_file);
    }
    if (!args.io_cpus.empty()) options.io_cpus = ParseCpuList(args.io_cpus);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan broker: %s\n", e.what());
    return 2;
  }
  if (args.heartbeat_ms > 0) options.heartbeat = std::chrono::milliseconds(args.heartbeat_ms);
  options.connection_limits = args.server.limits();
  if (args.unpace_loopback) options.unpace_local_tcp = true;
  BlockStopSignals();
  ApplyMemoryPolicy();  // received large frames reuse memory instead of fresh pages
  try {
    if (args.no_shared_memory) options.shared_memory = false;
    Broker broker(args.frontend, args.backend, options);
    broker.Start();
    std::fprintf(stderr, "zerocan broker: clients at %s, engines at %s%s%s\n",
                 broker.frontend_endpoint().c_str(), broker.backend_endpoint().c_str(),
                 options.capture.empty() ? "" : ", capture at ", options.capture.c_str());
    IdleMemoryReturn memory;
    WaitForStopSignal([&memory] { memory.Tick(); });
    std::fprintf(stderr, "zerocan broker: draining (at most %d ms)\n", args.drain_timeout_ms);
    std::thread second([&broker] {
      WaitForStopSignal();
      broker.RequestStop();
    });
    second.detach();
    broker.Drain(std::chrono::milliseconds(args.drain_timeout_ms));
    BrokerCounters c = broker.counters();
    std::fprintf(stderr,
                 "zerocan broker: stopped; %llu calls, %llu replies, %llu lost; connections "
                 "closed: %llu idle, %llu over the receive budget; shared-memory calls "
                 "rewritten for engines elsewhere: %llu (%llu bytes)\n",
                 static_cast<unsigned long long>(c.requests),
                 static_cast<unsigned long long>(c.replies),
                 static_cast<unsigned long long>(c.lost),
                 static_cast<unsigned long long>(c.connections_closed_idle),
                 static_cast<unsigned long long>(c.connections_closed_over_budget),
                 static_cast<unsigned long long>(c.materialized),
                 static_cast<unsigned long long>(c.materialized_bytes));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan broker: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

void AddBroker(CLI::App& app, RunFunction* chosen) {
  auto args = std::make_shared<BrokerArgs>();
  CLI::App* sub = app.add_subcommand("broker", "forward calls from clients to engines");
  sub->description(kBrokerDescription);
  sub->add_option("--frontend", args->frontend, "where clients connect (ROUTER)")
      ->type_name("URL")
      ->required();
  sub->add_option("--backend", args->backend, "where engines connect (ROUTER)")
      ->type_name("URL")
      ->required();
  sub->add_option("--capture", args->options.capture,
                  "publish a copy of every message (PUB) for `zerocan inspect --follow URL` and\n"
                  "`zerocan record`")
      ->type_name("URL");
  sub->add_option("--capture-file", args->options.capture_file,
                  "write every message to a capture file for `zerocan inspect FILE`")
      ->type_name("FILE");
  sub->add_option("--heartbeat-ms", args->heartbeat_ms,
                  "heartbeat interval in ms (default 500; engines must use the same)")
      ->check(CLI::Range(1, 3600 * 1000));
  sub->add_option("--drain-timeout-ms", args->drain_timeout_ms,
                  "on SIGTERM/SIGINT, how long calls in flight may still finish")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600 * 1000));
  sub->add_option("--max-queued-calls", args->options.max_queued_calls,
                  "calls that may wait for an engine; more are answered zerocan.Busy")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 40));
  sub->add_option("--max-queued-bytes", args->options.max_queued_bytes,
                  "bytes of calls that may wait for an engine; more are answered zerocan.Busy")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 50));
  sub->add_option("--liveness", args->options.liveness,
                  "heartbeat intervals an engine may stay silent before it is lost")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  sub->add_flag("--no-shared-memory", args->no_shared_memory,
                "answer no client's hello: clients on this host send frames, never references\n"
                "(docs/FORMAT.md \"Shared memory arenas\")");
  sub->add_option("--key-file", args->key_file,
                  "sign the broker's own errors, ignore engines not holding the key")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { Signer::FromKeyFile(f); }));
  sub->add_option("--curve-secret-key-file", args->curve_secret_key_file,
                  "encrypt with CurveZMQ: --frontend, --backend and --capture are Curve servers\n"
                  "with this key pair (zerocan keygen --curve FILE); clients (zerocan call\n"
                  "--curve-server-key) and engines (zerocan engine --curve-server-key) need its\n"
                  "public key")
      ->type_name("FILE")
      ->check(Parses([](const std::string& f) { ReadCurveServerKeys(f); }));
  AddServerFlags(sub, &args->server, "clients", "clients, engines and capture subscribers");
  sub->add_option("--io-cpus", args->io_cpus,
                  "run the broker's I/O thread only on these CPUs (\"1\", \"0,2\", \"2-3\")")
      ->type_name("LIST")
      ->check(Parses([](const std::string& l) { ParseCpuList(l); }));
  sub->add_flag("--unpace-loopback", args->unpace_loopback,
                "take the connections of tcp:// binds to a loopback address off BBR's pacing\n"
                "(include/zerocan/pacing.h)");
  sub->callback([args, chosen] { *chosen = [args] { return RunBroker(*args); }; });
}

}  // namespace zerocan::tools
