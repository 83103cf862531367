// `zerocan demo`: a broker and two engines on loopback (child processes of this same
// program), a scripted tour as a client, a table, then everything stopped.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "tools/apply_util.h"
#include "tools/commands.h"
#include "zerocan/client.h"
#include "zerocan/policy.h"
#include "zerocan/stats.h"

namespace zerocan::tools {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Short, so a killed engine is noticed quickly, yet long enough (x liveness 3) that a
// 256 MB frame in transit on the same connection does not hide an engine's heartbeats.
constexpr int kHeartbeatMs = 250;

// A free tcp port on 127.0.0.1 (bound, read back and released).
std::string FreeEndpoint() {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  std::string ep = s.get(zmq::sockopt::last_endpoint);
  s.close();
  return ep;
}

pid_t Spawn(const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid < 0) throw Error("demo: fork failed");
  if (pid == 0) {
    // The parent blocked SIGINT/SIGTERM for its own use; the child waits for them.
    std::vector<char*> argv;
    std::string self = "zerocan";
    argv.push_back(self.data());
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  return pid;
}

struct Row {
  explicit Row(std::string name) : step(std::move(name)) {}
  std::string step;
  uint64_t calls = 0;
  uint64_t bytes = 0;  // argument + result payload bytes
  uint64_t zero_copy = 0;
  uint64_t inlined = 0;
  std::vector<double> rtt_us;
  std::string note;
};

struct Meter {
  StatsSnapshot before = GlobalStats().Snapshot();
  void Finish(Row* row) const {
    StatsSnapshot after = GlobalStats().Snapshot();
    row->zero_copy = after.frames_sent_zero_copy - before.frames_sent_zero_copy;
    row->inlined = after.payloads_inlined - before.payloads_inlined;
  }
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::string Bytes(uint64_t n) {
  char buf[32];
  if (n >= (1u << 20)) {
    std::snprintf(buf, sizeof(buf), "%.0f MB", n / 1048576.0);
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KB", n / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
  }
  return buf;
}

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

int RunDemo(const std::string& capture_file, size_t tensor_mb) {
  auto demo_start = Clock::now();
  ApplyMemoryPolicy();
  std::string front = FreeEndpoint(), back = FreeEndpoint();
  std::string beat = std::to_string(kHeartbeatMs);
  std::vector<pid_t> children;
  auto stop_all = [&] {
    for (pid_t p : children) kill(p, SIGTERM);
    for (pid_t p : children) waitpid(p, nullptr, 0);
    children.clear();
  };
  int status = 0;
  try {
    std::printf("zerocan demo: broker at %s (engines at %s), 2 engines\n", front.c_str(),
                back.c_str());
    std::vector<std::string> broker_args = {"broker", "--frontend", front, "--backend", back,
                                            "--heartbeat-ms", beat};
    if (!capture_file.empty()) {
      broker_args.push_back("--capture-file");
      broker_args.push_back(capture_file);
    }
    children.push_back(Spawn(broker_args));
    // The tour calls the test built-ins (add, echo, fail, sleep).
    pid_t engine_a = Spawn({"engine", "--connect", back, "--id", "engine-a", "--heartbeat-ms", beat,
                            "--builtins"});
    pid_t engine_b = Spawn({"engine", "--connect", back, "--id", "engine-b", "--heartbeat-ms", beat,
                            "--builtins"});
    children.push_back(engine_a);
    children.push_back(engine_b);

    ClientOptions options;
    options.timeout = milliseconds(20000);
    Client client(front, options);
    // Both engines up: keep calling until each has answered.
    {
      bool a = false, b = false;
      auto until = Clock::now() + std::chrono::seconds(10);
      while (!(a && b) && Clock::now() < until) {
        std::vector<ResultFuture> fs;
        for (int i = 0; i < 4; ++i) fs.push_back(client.apply_for(milliseconds(500), "add", 0, 0));
        for (auto& f : fs) {
          Result r = f.get();
          if (!r.ok()) continue;
          a |= r.engine_id() == "engine-a";
          b |= r.engine_id() == "engine-b";
        }
      }
      if (!(a && b)) throw Error("the engines did not come up within 10 s");
    }
    std::vector<Row> rows;

    {  // 1. small calls, one at a time
      Row row{"small calls (add)"};
      Meter m;
      for (int i = 0; i < 2000; ++i) {
        auto t0 = Clock::now();
        int64_t got = client.apply("add", i, 1).get().as<int64_t>();
        row.rtt_us.push_back(Us(Clock::now() - t0));
        if (got != i + 1) throw Error("add returned a wrong sum");
      }
      row.calls = 2000;
      m.Finish(&row);
      row.note = "one in flight at a time";
      rows.push_back(row);
    }
    {  // 2. pipelined small calls
      Row row{"pipelined (echo)"};
      Meter m;
      auto t0 = Clock::now();
      std::vector<ResultFuture> fs;
      for (int i = 0; i < 5000; ++i) fs.push_back(client.apply("echo", i));
      for (int i = 0; i < 5000; ++i) {
        if (fs[i].get().as<int>() != i) throw Error("echo returned a wrong value");
      }
      double total = Us(Clock::now() - t0);
      row.calls = 5000;
      m.Finish(&row);
      row.rtt_us.push_back(total / 5000);
      char note[64];
      std::snprintf(note, sizeof(note), "5000 in flight, %.0f calls/s", 5000 / (total / 1e6));
      row.note = note;
      rows.push_back(row);
    }
    {  // 3. 256 MB tensor echoed
      Row row{std::to_string(tensor_mb) + " MB tensor echo"};
      std::vector<double> big((tensor_mb << 20) / sizeof(double));
      for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<double>(i);
      Meter m;
      uint64_t copies_before = GlobalStats().Snapshot().buffer_copies;
      for (int rep = 0; rep < 3; ++rep) {
        auto t0 = Clock::now();
        // Lent: sent from `big` itself; it stays unchanged until the tracker says done.
        ResultFuture f = client.apply("echo", Borrow(big));
        Result r = f.get();
        // A view of the reply: its frame, or on one host a block of the engine's arena.
        auto view = r.as<TensorView<const double>>();
        row.rtt_us.push_back(Us(Clock::now() - t0));
        if (view.size() != big.size() ||
            std::memcmp(view.data(), big.data(), big.size() * sizeof(double)) != 0) {
          throw Error("the echoed tensor differs");
        }
        f.tracker().Wait();
        row.calls += 1;
        row.bytes += 2 * big.size() * sizeof(double);
      }
      m.Finish(&row);
      uint64_t copies = GlobalStats().Snapshot().buffer_copies - copies_before;
      char note[96];
      std::snprintf(note, sizeof(note), "%.2f GB/s both ways; %llu client-side copies",
                    2.0 * big.size() * 8 / (Percentile(row.rtt_us, 0.5) * 1e3),
                    static_cast<unsigned long long>(copies));
      row.note = note;
      rows.push_back(row);
    }
    {  // 4. a remote error
      Row row{"remote error (fail)"};
      Meter m;
      auto t0 = Clock::now();
      Result r = client.apply("fail", std::string("this call fails on purpose")).get();
      row.rtt_us.push_back(Us(Clock::now() - t0));
      row.calls = 1;
      m.Finish(&row);
      try {
        r.ThrowIfError();
        throw Error("fail() did not fail");
      } catch (const RemoteError& e) {
        std::printf("remote error, as the client sees it: %s\n", e.what());
        row.note = e.type() + " from " + e.where();
      }
      rows.push_back(row);
    }
    {  // 5. an engine killed mid-run
      Row row{"engine killed mid-run"};
      Meter m;
      std::vector<ResultFuture> fs;
      std::vector<Clock::time_point> started;
      for (int i = 0; i < 8; ++i) {
        started.push_back(Clock::now());
        fs.push_back(client.apply("sleep", 0.5));
      }
      std::this_thread::sleep_for(milliseconds(100));
      kill(engine_a, SIGKILL);
      waitpid(engine_a, nullptr, 0);
      children.erase(std::find(children.begin(), children.end(), engine_a));
      int lost = 0, ok = 0, recovered = 0;
      for (size_t i = 0; i < fs.size(); ++i) {
        Result r = fs[i].get();
        if (r.ok()) {
          ++ok;
          row.rtt_us.push_back(Us(Clock::now() - started[i]));
          continue;
        }
        try {
          r.ThrowIfError();
        } catch (const RemoteError& e) {
          if (e.type() != kErrorEngineLost) throw;
          ++lost;
          // Recover: call again; the broker now knows only the live engine.
          auto t0 = Clock::now();
          Result again = client.apply("sleep", 0.05).get();
          row.rtt_us.push_back(Us(Clock::now() - t0));
          if (again.ok() && again.engine_id() == "engine-b") ++recovered;
        }
      }
      row.calls = fs.size() + lost;
      m.Finish(&row);
      char note[128];
      std::snprintf(note, sizeof(note), "%d finished, %d lost (EngineLost), %d retried on engine-b",
                    ok, lost, recovered);
      row.note = note;
      if (recovered != lost) status = 1;
      rows.push_back(row);
    }

    std::printf("\n%-24s %7s %9s %10s %7s %10s %10s  %s\n", "step", "calls", "payload",
                "zero-copy", "inline", "rtt p50", "rtt max", "");
    std::printf("%-24s %7s %9s %10s %7s %10s %10s\n", "", "", "", "frames", "", "(us)", "(us)");
    for (const Row& r : rows) {
      double p50 = Percentile(r.rtt_us, 0.5);
      double max = r.rtt_us.empty() ? 0 : *std::max_element(r.rtt_us.begin(), r.rtt_us.end());
      std::printf("%-24s %7llu %9s %10llu %7llu %10.1f %10.1f  %s\n", r.step.c_str(),
                  static_cast<unsigned long long>(r.calls), Bytes(r.bytes).c_str(),
                  static_cast<unsigned long long>(r.zero_copy),
                  static_cast<unsigned long long>(r.inlined), p50, max, r.note.c_str());
    }
    std::printf("\n(zero-copy frames and inline payloads are counted on the client's side; the\n"
                " engines forward echoed frames without a copy as well)\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zerocan demo: %s\n", e.what());
    status = 1;
  }
  stop_all();
  std::printf("stopped the broker and engines; demo took %.1f s\n",
              std::chrono::duration<double>(Clock::now() - demo_start).count());
  return status;
}

}  // namespace

void AddDemo(CLI::App& app, RunFunction* chosen) {
  struct DemoArgs {
    std::string capture_file;
    size_t tensor_mb = 256;
  };
  auto args = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand("demo", "start a broker and two engines on loopback and tour them");
  sub->description(
      "start a broker and two engines on loopback and tour them\n"
      "\n"
      "Starts a broker and two engines on 127.0.0.1 (child processes), tours them as a\n"
      "client (small calls, a large tensor echoed without a copy, a remote error, an engine\n"
      "killed mid-run and the calls that recover), prints a table, stops everything and\n"
      "exits 0.");
  sub->add_option("--capture-file", args->capture_file,
                  "the broker records every message it forwards (zerocan inspect FILE)")
      ->type_name("FILE");
  sub->add_option("--tensor-mb", args->tensor_mb, "size of the echoed tensor in MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->callback([args, chosen] {
    *chosen = [args] { return RunDemo(args->capture_file, args->tensor_mb); };
  });
}

}  // namespace zerocan::tools
