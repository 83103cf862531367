// `zerocan broker --frontend URL --backend URL [--capture URL] [--heartbeat-ms MS]
//  [--curve-secret-key-file FILE] ...`.
#include <cstdio>
#include <string>
#include <string_view>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/broker.h"
#include "zerocan/curve.h"
#include "zerocan/placement.h"
#include "zerocan/policy.h"

namespace zerocan::tools {

namespace {

constexpr char kBrokerHelp[] =
    "usage: zerocan broker --frontend URL --backend URL [--capture URL] [--heartbeat-ms MS]\n"
    "                      [--capture-file FILE] [--liveness N] [--key-file FILE]\n"
    "                      [--curve-secret-key-file FILE] [--io-cpus LIST]\n"
    "\n"
    "Clients connect to --frontend, engines (zerocan engine --connect) to --backend. Calls\n"
    "go to the live engine with the fewest calls in flight; frames are forwarded without\n"
    "being decoded or copied (only the envelope header is read). An engine silent for N\n"
    "(--liveness, default 3) heartbeat intervals (default 500 ms; engines must use the same interval) is lost, and\n"
    "its calls fail at once with a zerocan.EngineLost error. --capture URL publishes a copy\n"
    "of every message (PUB) for `zerocan inspect --follow URL` / `zerocan record`;\n"
    "--capture-file FILE writes every message to a capture file for `zerocan inspect FILE`.\n"
    "--key-file FILE: sign the broker's own errors, ignore engines not holding the key.\n"
    "--curve-secret-key-file FILE: encrypt with CurveZMQ; --frontend, --backend and\n"
    "--capture are Curve servers with this key pair (zerocan keygen --curve FILE): clients\n"
    "(zerocan call --curve-server-key) and engines (zerocan engine --curve-server-key)\n"
    "need its public key.\n"
    "--io-cpus LIST: run the broker's I/O thread only on these CPUs (\"1\", \"0,2\", \"2-3\").\n"
    "Runs until SIGINT or SIGTERM.\n";

}  // namespace

int RunBroker(int argc, char** argv) {
  BlockStopSignals();
  std::string frontend, backend;
  BrokerOptions options;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string value;
      std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(kBrokerHelp, stdout);
        return 0;
      } else if (TakeOption(argc, argv, &i, "--frontend", &value)) {
        frontend = value;
      } else if (TakeOption(argc, argv, &i, "--backend", &value)) {
        backend = value;
      } else if (TakeOption(argc, argv, &i, "--capture", &value)) {
        options.capture = value;
      } else if (TakeOption(argc, argv, &i, "--capture-file", &value)) {
        options.capture_file = value;
      } else if (TakeOption(argc, argv, &i, "--key-file", &value)) {
        options.signer = Signer::FromKeyFile(value);
      } else if (TakeOption(argc, argv, &i, "--curve-secret-key-file", &value)) {
        options.curve = ReadCurveServerKeys(value);
      } else if (TakeOption(argc, argv, &i, "--heartbeat-ms", &value)) {
        options.heartbeat = std::chrono::milliseconds(std::stoi(value));
      } else if (TakeOption(argc, argv, &i, "--liveness", &value)) {
        options.liveness = std::stoi(value);
      } else if (TakeOption(argc, argv, &i, "--io-cpus", &value)) {
        options.io_cpus = ParseCpuList(value);
      } else {
        std::fprintf(stderr, "zerocan broker: unknown option \"%s\"\n\n%s", argv[i], kBrokerHelp);
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan broker: %s\n", e.what());
    return 2;
  }
  if (frontend.empty() || backend.empty()) {
    std::fprintf(stderr, "zerocan broker: need --frontend URL and --backend URL\n\n%s",
                 kBrokerHelp);
    return 2;
  }
  ApplyMemoryPolicy();  // received large frames reuse memory instead of fresh pages
  try {
    Broker broker(frontend, backend, options);
    broker.Start();
    std::fprintf(stderr, "zerocan broker: clients at %s, engines at %s%s%s\n",
                 broker.frontend_endpoint().c_str(), broker.backend_endpoint().c_str(),
                 options.capture.empty() ? "" : ", capture at ", options.capture.c_str());
    WaitForStopSignal();
    broker.Stop();
    BrokerCounters c = broker.counters();
    std::fprintf(stderr, "zerocan broker: stopped; %llu calls, %llu replies, %llu lost\n",
                 static_cast<unsigned long long>(c.requests),
                 static_cast<unsigned long long>(c.replies),
                 static_cast<unsigned long long>(c.lost));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan broker: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace zerocan::tools
