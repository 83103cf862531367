// `zerocan-bench --only apply`: apply calls side by side with raw libzmq carrying the
// same bytes over the same kind of sockets, in one run.
//
//  1. Small apply round trips (one call in flight), over tcp loopback: zerocan Client ->
//     Engine vs a raw DEALER -> ROUTER ping-pong of the very same envelope bytes; then
//     through a broker: zerocan through zerocan::Broker vs raw libzmq through the same
//     Broker (the raw peer speaks just enough protocol: pre-encoded hello, heartbeat and
//     reply envelopes), and raw libzmq through zmq_proxy (ROUTER/DEALER) for reference.
//  2. 256 MB tensor echo over tcp: zerocan vs raw libzmq sending the same frames (zero-
//     copy both), with glibc's default allocator settings (in a child process that never
//     changed them) and with the reusing allocator (policy.h): with the defaults every
//     received 256 MB frame is a fresh mmap whose pages fault in one by one, and is
//     unmapped again when freed; reusing freed memory removes that cost. Four
//     connections per contender, best one counted (BBR: see the section).
//  3. Calls per second through the broker with 1, 2 and 4 engines (pipelined, window
//     256): a trivial function (add) and a 5 ms one (sleep), where engines add capacity.
//
// Wall-clock time: a round trip is a latency, and the machine's other load shows up in
// every contender alike because they alternate (several rounds, medians).
#include <algorithm>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "absl/strings/str_split.h"

#include "bench.h"
#include "bench_util.h"
#include "zerocan/broker.h"
#include "zerocan/client.h"
#include "zerocan/engine.h"
#include "zerocan/transport/zmq.h"
#include "zerocan/policy.h"

namespace zerocan::bench {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double WallNs() { return NowNs(); }

std::string Bound(zmq::socket_t& s) { return s.get(zmq::sockopt::last_endpoint); }

// The bytes of one small apply ("add", 1, 2) and of its reply, as zerocan sends them.
struct SmallBytes {
  std::string apply, reply, hello, heartbeat;
};

SmallBytes EncodeSmall() {
  SmallBytes b;
  auto bytes = [](Outgoing&& out) {
    return std::string(reinterpret_cast<const char*>(out.envelope().data()), out.envelope().size());
  };
  {
    EnvelopeWriter w;
    Header h;
    h.message_id = 1;
    h.session_id = 99;
    h.sequence = 1;
    w.SetHeader(h);
    ApplyWriter a = w.StartApply("add", 2, 0, 60000);
    a.arg(0).Int(1);
    a.arg(1).Int(2);
    b.apply = bytes(w.Finish());
  }
  {
    EnvelopeWriter w;
    Header h;
    h.message_id = 1;
    h.session_id = 98;
    h.sequence = 1;
    w.SetHeader(h);
    w.StartResult(1, "raw-engine").Int(3);
    b.reply = bytes(w.Finish());
  }
  {
    EnvelopeWriter w;
    w.SetHello("raw-engine", "engine", {"add"});
    b.hello = bytes(w.Finish());
  }
  {
    EnvelopeWriter w;
    w.SetHeartbeat("raw-engine", 0);
    b.heartbeat = bytes(w.Finish());
  }
  return b;
}

// A raw libzmq server: answers every request with `reply` (routing frames kept). With
// `heartbeat` it is a DEALER attached to a zerocan broker and heartbeats like an engine.
class RawServer {
 public:
  RawServer(zmq::context_t& ctx, const std::string& url, bool bind, const SmallBytes& bytes,
            bool echo_frames, bool heartbeat)
      : socket_(ctx, bind ? zmq::socket_type::router : zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::sndhwm, 0);
    socket_.set(zmq::sockopt::rcvhwm, 0);
    if (heartbeat) socket_.set(zmq::sockopt::routing_id, zmq::buffer(std::string("raw-engine")));
    if (bind) {
      socket_.bind(url);
      endpoint_ = Bound(socket_);
    } else {
      socket_.connect(url);
    }
    thread_ = std::thread([this, bytes, echo_frames, heartbeat] { Loop(bytes, echo_frames, heartbeat); });
  }
  ~RawServer() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }

 private:
  void Loop(const SmallBytes& bytes, bool echo_frames, bool heartbeat) {
    if (heartbeat) {
      socket_.send(zmq::message_t(), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(bytes.hello));
    }
    auto next_beat = Clock::now() + milliseconds(200);
    std::vector<zmq::message_t> parts;
    while (!stop_) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, milliseconds(50));
      if (heartbeat && Clock::now() >= next_beat) {
        socket_.send(zmq::message_t(), zmq::send_flags::sndmore);
        socket_.send(zmq::buffer(bytes.heartbeat));
        next_beat = Clock::now() + milliseconds(200);
      }
      while (true) {
        parts.clear();
        zmq::message_t part;
        if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
        bool more = part.more();
        parts.push_back(std::move(part));
        while (more) {
          zmq::message_t p;
          (void)socket_.recv(p);
          more = p.more();
          parts.push_back(std::move(p));
        }
        // Routing frames and the delimiter go back; then the reply (or, echoing, every
        // frame received after the delimiter, moved: no copy).
        size_t i = 0;
        while (i < parts.size() && parts[i].size() != 0) ++i;
        for (size_t k = 0; k <= i && k < parts.size(); ++k) {
          socket_.send(parts[k], zmq::send_flags::sndmore);
        }
        if (echo_frames) {
          for (size_t k = i + 1; k < parts.size(); ++k) {
            socket_.send(parts[k], k + 1 < parts.size() ? zmq::send_flags::sndmore
                                                        : zmq::send_flags::none);
          }
        } else {
          socket_.send(zmq::buffer(bytes.reply));
        }
      }
    }
  }

  zmq::socket_t socket_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A raw DEALER client: sends [""][apply bytes] and waits for the reply.
class RawClient {
 public:
  RawClient(zmq::context_t& ctx, const std::string& url) : socket_(ctx, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(url);
  }
  void Call(const std::string& apply) {
    socket_.send(zmq::message_t(), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(apply));
    zmq::message_t part;
    do {
      (void)socket_.recv(part);
    } while (part.more());
  }
  zmq::socket_t& socket() { return socket_; }

 private:
  zmq::socket_t socket_;
};

// `in_flight` calls of add(1, 2) sent before the first reply is read.
std::function<void()> PipelinedCalls(Client& client, int in_flight) {
  return [&client, in_flight] {
    std::vector<ResultFuture> futures;
    futures.reserve(in_flight);
    for (int i = 0; i < in_flight; ++i) futures.push_back(client.apply("add", 1, 2));
    for (auto& f : futures) Sink(f.get().as<int64_t>());
  };
}

// The same with raw libzmq: `in_flight` copies of the apply's bytes, then every reply.
std::function<void()> RawPipelinedCalls(RawClient& client, const SmallBytes& bytes,
                                        int in_flight) {
  return [&client, &bytes, in_flight] {
    zmq::socket_t& s = client.socket();
    for (int i = 0; i < in_flight; ++i) {
      s.send(zmq::message_t(), zmq::send_flags::sndmore);
      s.send(zmq::buffer(bytes.apply));
    }
    for (int i = 0; i < in_flight; ++i) {
      zmq::message_t part;
      do {
        (void)s.recv(part);
      } while (part.more());
    }
  };
}

// Alternates the contenders for `rounds` rounds of `calls` round trips each; returns
// the median round trips per second of each.
std::vector<double> RoundTripRates(const std::vector<std::function<void()>>& calls, int per_round,
                                   int rounds) {
  std::vector<std::vector<double>> samples(calls.size());
  for (auto& c : calls) {
    for (int i = 0; i < per_round / 10 + 1; ++i) c();  // warm
  }
  for (int r = 0; r < rounds; ++r) {
    for (size_t k = 0; k < calls.size(); ++k) {
      double t0 = WallNs();
      for (int i = 0; i < per_round; ++i) calls[k]();
      samples[k].push_back(per_round / ((WallNs() - t0) / 1e9));
    }
  }
  std::vector<double> out;
  for (auto& s : samples) out.push_back(Median(s));
  return out;
}

// Diagnostics: ZEROCAN_APPLY_TRIPS=WHO:N in the calls child makes exactly N round trips
// of one contender (direct: declared inline; pool: the default worker pool; raw-direct,
// broker, raw-broker; one call in flight, as in section 1; pipelined and raw-pipelined:
// the pipelined row's calls, 1,000 in flight at a time) and reports nothing. Its
// wall-clock rates swing with the machine; the instructions each thread spends per
// round trip do not:
//   ZEROCAN_APPLY_CHILD=calls ZEROCAN_APPLY_TRIPS=broker:2000 valgrind --tool=callgrind \
//     --separate-threads=yes zerocan-bench --only apply
// and again with 4000: the difference between the two runs' counts, over 2000.
struct Trips {
  std::string who;
  int count = 0;
};
std::optional<Trips> TripsFromEnv() {
  const char* value = std::getenv("ZEROCAN_APPLY_TRIPS");
  if (value == nullptr) return std::nullopt;
  std::vector<std::string> f = absl::StrSplit(value, ':');
  static const char* const kWho[] = {"direct",    "pool",          "raw-direct", "pipelined",
                                     "raw-pipelined", "broker", "raw-broker"};
  if (f.size() != 2 || std::find(std::begin(kWho), std::end(kWho), f[0]) == std::end(kWho) ||
      std::atoi(f[1].c_str()) <= 0) {
    std::fprintf(stderr, "apply: ZEROCAN_APPLY_TRIPS=%s: expected WHO:N, WHO one of direct, "
                         "pool, raw-direct, pipelined, raw-pipelined, broker, raw-broker\n", value);
    std::exit(2);
  }
  return Trips{f[0], std::atoi(f[1].c_str())};
}

// The cost of one fresh 4 KiB page: first touch of anonymous memory just mapped (the
// fault, zeroing and mapping glibc's defaults pay for every page of a large received
// frame). Best of three 64 MiB runs.
double FreshPageMicros() {
  constexpr size_t kBytes = size_t{64} << 20;
  double best = 0;
  for (int run = 0; run < 3; ++run) {
    void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    volatile char* bytes = static_cast<char*>(p);
    double t0 = WallNs();
    for (size_t i = 0; i < kBytes; i += 4096) bytes[i] = 1;
    double us = (WallNs() - t0) / 1e3 / (kBytes / 4096);
    munmap(p, kBytes);
    if (run == 0 || us < best) best = us;
  }
  return best;
}

// Parts of this section run in child processes (this program again, with kChildEnv set
// to the part's name), each under the allocator settings its rows name:
//  - "calls": the small calls and the broker rows, under glibc's defaults, as a user's
//    process has them. The reusing allocator limits malloc to one arena (large frames
//    are reused only there), so every thread of a pipelined run would take turns on one
//    lock: about 0.6x of the default's rate for zerocan and 0.8x for raw libzmq here.
//    It prints each row as a kRowLine line (tab-separated Add arguments).
//  - "defaults-echo": the 256 MB echo under glibc's defaults (section 2 says why); it
//    prints one kDefaultsEchoLine line with two numbers in GB/s: zerocan's best
//    connection and raw's.
constexpr char kChildEnv[] = "ZEROCAN_APPLY_CHILD";
constexpr char kRowLine[] = "apply-row";
constexpr char kDefaultsEchoLine[] = "apply-defaults-echo";

// Runs part `part` in a child; its output, or nullopt (and `error`) when it failed.
std::optional<std::string> RunChild(const std::string& part, bool quick, std::string* error) {
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) {
    *error = "cannot find this program (/proc/self/exe)";
    return std::nullopt;
  }
  self[len] = '\0';
  std::string command = std::string(kChildEnv) + "=" + part + " '" + self + "' --only apply" +
                        (quick ? " --quick" : "") + " 2>&1";
  std::FILE* out = popen(command.c_str(), "r");
  if (out == nullptr) {
    *error = "cannot start " + command;
    return std::nullopt;
  }
  std::string all;
  char line[1024];
  while (std::fgets(line, sizeof line, out) != nullptr) all += line;
  int status = pclose(out);
  if (status != 0) {
    *error = "child exited with status " + std::to_string(status) + ": " + all;
    return std::nullopt;
  }
  return all;
}

struct DefaultsEcho {
  double zc_best = 0, raw_best = 0;
};

std::optional<DefaultsEcho> MeasureDefaultsInChild(bool quick, std::string* error) {
  std::optional<std::string> out = RunChild("defaults-echo", quick, error);
  if (!out) return std::nullopt;
  for (absl::string_view line : absl::StrSplit(*out, '\n')) {
    DefaultsEcho e;
    char tag[64];
    if (std::sscanf(std::string(line).c_str(), "%63s %lf %lf", tag, &e.zc_best, &e.raw_best) == 3 &&
        std::string(tag) == kDefaultsEchoLine) {
      return e;
    }
  }
  *error = "no result line in: " + *out;
  return std::nullopt;
}

// The host's default TCP congestion control ("bbr", "cubic"; "?" when unreadable).
std::string HostCongestionControl() {
  std::FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_congestion_control", "r");
  if (f == nullptr) return "?";
  char name[32] = {};
  bool ok = std::fgets(name, sizeof name, f) != nullptr;
  std::fclose(f);
  std::string s = ok ? name : "?";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Peak resident memory in MiB of this process (RUSAGE_SELF) or of the largest child
// waited for so far (RUSAGE_CHILDREN).
double PeakMiB(int who) {
  rusage usage{};
  getrusage(who, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// In the "calls" child: rows go to the parent, as kRowLine lines.
bool rows_to_parent = false;

void Add(std::vector<Row>* rows, Table* table, const std::string& name, double value,
         const std::string& metric, const std::string& baseline, double baseline_value,
         const std::string& target) {
  if (rows_to_parent) {
    std::printf("%s\t%s\t%.17g\t%s\t%s\t%.17g\t%s\n", kRowLine, name.c_str(), value,
                metric.c_str(), baseline.c_str(), baseline_value, target.c_str());
    std::fflush(stdout);  // one write per row: the pipe also carries the child's stderr
    return;
  }
  double ratio = baseline_value > 0 ? value / baseline_value : 0;
  rows->push_back(Row{"apply", name, metric, value, baseline, baseline_value, ratio});
  char v[32], b[32];
  std::snprintf(v, sizeof v, "%.4g", value);
  std::snprintf(b, sizeof b, "%.4g", baseline_value);
  table->Add({name, std::string(v) + " " + metric, baseline.empty() ? "" : baseline,
              baseline.empty() ? "" : std::string(b) + " " + metric,
              baseline.empty() ? "" : FormatRatio(ratio), target});
}

}  // namespace

void RunApply(const Options& options, std::vector<Row>* rows) {
  const bool quick = options.quick;
  Table table({"measurement", "zerocan", "baseline", "baseline value", "ratio", "target"});
  // One libzmq I/O thread, as zerocan's engine, client and broker programs each use
  // (and libzmq's default). With two, which sockets shared an I/O thread decided the
  // small-apply ratios on this 2-core machine (0.59-1.12x run to run, against
  // 0.97-1.03x with one). ZEROCAN_APPLY_IO_THREADS overrides it (diagnostics).
  const char* io_threads = std::getenv("ZEROCAN_APPLY_IO_THREADS");
  zmq::context_t ctx(io_threads != nullptr ? std::max(1, std::atoi(io_threads)) : 1);
  SmallBytes bytes = EncodeSmall();
  const int per_round = quick ? 500 : 2000;
  const int rounds = quick ? 3 : 7;
  // Which part this process runs (kChildEnv): the parent runs the 256 MB echo with the
  // reusing allocator and gathers the rest from its children, which never touch the
  // allocator's settings.
  const char* child = std::getenv(kChildEnv);
  const std::string part = child != nullptr ? child : "";
  const bool defaults_child = part == "defaults-echo";
  const bool calls_child = part == "calls";
  if (!part.empty() && !defaults_child && !calls_child) {
    std::fprintf(stderr, "apply: unknown %s=%s (calls, defaults-echo)\n", kChildEnv, child);
    std::exit(2);
  }
  rows_to_parent = calls_child;
  if (!calls_child && std::getenv("ZEROCAN_APPLY_TRIPS") != nullptr) {
    std::fprintf(stderr, "apply: ZEROCAN_APPLY_TRIPS is for the calls child alone: set "
                         "%s=calls too\n", kChildEnv);
    std::exit(2);
  }
  const std::optional<Trips> trips = calls_child ? TripsFromEnv() : std::nullopt;
  // Runs `call` trips->count times when the trips are `who`'s.
  auto run_trips = [&](const char* who, const std::function<void()>& call) {
    if (trips->who != who) return;
    for (int i = 0; i < trips->count; ++i) call();
  };
  // Diagnostics: ZEROCAN_APPLY_ECHO_ONLY=1 runs only the 256 MB echo (section 2).
  if (part.empty() && std::getenv("ZEROCAN_APPLY_ECHO_ONLY") == nullptr) {
    std::string error;
    std::optional<std::string> out = RunChild("calls", quick, &error);
    if (!out) {
      // Rows silently missing would read as a complete run.
      std::fprintf(stderr, "apply: the calls child failed: %s\n", error.c_str());
      std::exit(1);
    }
    for (absl::string_view line : absl::StrSplit(*out, '\n')) {
      std::vector<std::string> f = absl::StrSplit(line, '\t');
      if (f.size() != 7 || f[0] != kRowLine) continue;
      Add(rows, &table, f[1], std::strtod(f[2].c_str(), nullptr), f[3], f[4],
          std::strtod(f[5].c_str(), nullptr), f[6]);
    }
    Add(rows, &table, "peak memory, calls child", PeakMiB(RUSAGE_CHILDREN), "MiB", "", 0,
        "(memory)");
  }
  if (part.empty()) UseReusingAllocator(true);

  // ---- 1. small apply, direct and through a broker --------------------------------------
  if (calls_child) {
    EngineOptions eo;
    eo.builtins = true;  // calls the built-ins add and echo
    eo.context = &ctx;
    eo.builtins = true;
    eo.unpace_local_tcp = true;
    Engine engine(eo);  // default: 2 worker threads
    engine.Bind("tcp://127.0.0.1:*");
    engine.Start();
    EngineOptions eo0 = eo;
    eo0.threads = 0;
    Engine inline_engine(eo0);
    inline_engine.Bind("tcp://127.0.0.1:*");
    inline_engine.Start();
    EngineOptions eo_w = eo;
    eo_w.builtins = false;
    Engine worker_engine(eo_w);  // the built-ins declared inline
    AddBuiltins(worker_engine, FunctionOptions{.inline_execution = true});
    worker_engine.Bind("tcp://127.0.0.1:*");
    worker_engine.Start();
    RawServer raw(ctx, "tcp://127.0.0.1:*", true, bytes, false, false);
    ClientOptions co;
    co.context = &ctx;
    Client client(engine.last_endpoint(), co);
    Client inline_client(inline_engine.last_endpoint(), co);
    Client worker_client(worker_engine.last_endpoint(), co);
    RawClient raw_client(ctx, raw.endpoint());
    if (trips) {
      run_trips("direct", [&] { Sink(worker_client.apply("add", 1, 2).get().as<int64_t>()); });
      run_trips("pool", [&] { Sink(client.apply("add", 1, 2).get().as<int64_t>()); });
      run_trips("raw-direct", [&] { raw_client.Call(bytes.apply); });
      if (trips->who == "pipelined" || trips->who == "raw-pipelined") {
        auto batch = trips->who == "pipelined" ? PipelinedCalls(worker_client, 1000)
                                               : RawPipelinedCalls(raw_client, bytes, 1000);
        for (int done = 0; done < trips->count; done += 1000) batch();
      }
    } else {
      std::vector<double> rates = RoundTripRates(
          {[&] { Sink(client.apply("add", 1, 2).get().as<int64_t>()); },
           [&] { Sink(inline_client.apply("add", 1, 2).get().as<int64_t>()); },
           [&] { Sink(worker_client.apply("add", 1, 2).get().as<int64_t>()); },
           [&] { raw_client.Call(bytes.apply); }},
          per_round, rounds);
      Add(rows, &table, "small apply, tcp direct (default engine: worker pool)", rates[0],
          "calls/s", "raw libzmq ping-pong, same bytes", rates[3], "");
      Add(rows, &table, "small apply, tcp direct (threads=0)", rates[1], "calls/s",
          "raw libzmq ping-pong, same bytes", rates[3], "");
      Add(rows, &table, "small apply, tcp direct (function declared inline)", rates[2],
          "calls/s", "raw libzmq ping-pong, same bytes", rates[3], ">= 0.9x");

      // Pipelined: `in_flight` calls sent before the first reply is read, over the same
      // sockets as above (the engine with the built-ins declared inline; the raw server).
      const int in_flight = quick ? 2000 : 10000;
      std::vector<double> batches =
          RoundTripRates({PipelinedCalls(worker_client, in_flight),
                          RawPipelinedCalls(raw_client, bytes, in_flight)},
                         1, rounds);
      Add(rows, &table, "small apply, " + std::to_string(in_flight) + " in flight (declared inline)",
          batches[0] * in_flight, "calls/s", "raw libzmq, same sockets", batches[1] * in_flight,
          ">= 0.5x");
    }
  }
  if (calls_child) {
    BrokerOptions bo;
    bo.context = &ctx;
    bo.unpace_local_tcp = true;
    Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
    broker.Start();
    // A second broker whose only engine is the raw server.
    Broker raw_broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
    raw_broker.Start();
    EngineOptions eo;
    eo.builtins = true;  // calls the built-ins add and echo
    eo.context = &ctx;
    Engine engine(eo);
    AddBuiltins(engine, FunctionOptions{.inline_execution = true});
    engine.Connect(broker.backend_endpoint());
    engine.Start();
    RawServer raw(ctx, raw_broker.backend_endpoint(), false, bytes, false, true);
    // zmq_proxy(ROUTER, DEALER) with a raw server behind it, for reference.
    zmq::socket_t pf(ctx, zmq::socket_type::router), pb(ctx, zmq::socket_type::dealer);
    zmq::socket_t ctl_pub(ctx, zmq::socket_type::pair), ctl_sub(ctx, zmq::socket_type::pair);
    ctl_sub.bind("inproc://apply-bench-proxy-control");
    ctl_pub.connect("inproc://apply-bench-proxy-control");
    pf.bind("tcp://127.0.0.1:*");
    pb.bind("tcp://127.0.0.1:*");
    std::string pf_url = Bound(pf), pb_url = Bound(pb);
    std::thread proxy([&] {
      zmq_proxy_steerable(pf.handle(), pb.handle(), nullptr, ctl_sub.handle());
    });
    {
      RawServer proxied(ctx, pb_url, false, bytes, false, false);
      ClientOptions co;
      co.context = &ctx;
      Client client(broker.frontend_endpoint(), co);
      RawClient raw_client(ctx, raw_broker.frontend_endpoint());
      RawClient proxy_client(ctx, pf_url);
      for (int i = 0; i < 200 && (broker.counters().engines_live < 1 ||
                                  raw_broker.counters().engines_live < 1);
           ++i) {
        std::this_thread::sleep_for(milliseconds(10));
      }
      if (trips) {
        run_trips("broker", [&] { Sink(client.apply("add", 1, 2).get().as<int64_t>()); });
        run_trips("raw-broker", [&] { raw_client.Call(bytes.apply); });
      } else {
        std::vector<double> rates = RoundTripRates(
            {[&] { Sink(client.apply("add", 1, 2).get().as<int64_t>()); },
             [&] { raw_client.Call(bytes.apply); }, [&] { proxy_client.Call(bytes.apply); }},
            per_round, rounds);
        Add(rows, &table, "small apply via zerocan broker", rates[0], "calls/s",
            "raw libzmq via the same broker", rates[1], ">= 0.9x");
        Add(rows, &table, "small apply via zerocan broker ", rates[0], "calls/s",
            "raw libzmq via zmq_proxy", rates[2], "(reference)");
      }
    }
    ctl_pub.send(zmq::buffer(std::string("TERMINATE")));
    proxy.join();
  }

  // ---- 2. 256 MB echo over tcp ---------------------------------------------------------
  if (!calls_child) {
    size_t mb = quick ? 64 : 256;
    size_t n = mb << 20;
    std::vector<uint8_t> big(n, 1);
    for (size_t i = 0; i < n; i += 4096) big[i] = static_cast<uint8_t>(i >> 12);
    // Raw: the same envelope zerocan would send plus the payload as a zero-copy frame.
    EnvelopeWriter w;
    w.StartApply("echo", 1, 0).arg(0).Array(DType::kUInt8, Shape{n}, Buffer::Borrow(big.data(), n));
    Outgoing proto = w.Finish();
    std::string env(reinterpret_cast<const char*>(proto.envelope().data()), proto.envelope().size());

    // glibc's defaults are measured in a child process that never changed them (this
    // program, re-run with kDefaultsChildEnv set). In this process, switching the
    // reusing allocator off does not restore them: the heap keeps the 256 MB blocks
    // earlier frames left free in its middle (trimming returns only its top), and
    // the next frames reuse them without a page fault. That had "glibc defaults" at
    // 4.8-6.1 GB/s in some runs, as fast as reuse.
    std::string child_error;
    std::optional<DefaultsEcho> defaults;
    if (!defaults_child) defaults = MeasureDefaultsInChild(quick, &child_error);

    // Each contender gets `kConnections` connections of its own (an engine and a client;
    // a raw server and a raw client), and its number is its best connection's median.
    // Why: on a host whose TCP congestion control is BBR (this one's: see the
    // "congestion control" row), BBR paces each connection at its own estimate of the
    // bandwidth, and over loopback with one burst per call that estimate settles ~30%
    // low on about one connection in four, for the connection's life. That decided the
    // 256 MB ratios of earlier sessions (0.67-1.43x with one connection each, for
    // zerocan and raw libzmq alike); with the host on cubic or reno every connection
    // ran at the same ~6 GB/s (20 runs of 20). zerocan's engine binds its loopback
    // listener on reno (pacing.h), so its replies are never paced; its client's calls
    // are, as raw libzmq's are both ways: a connection's congestion control is fixed
    // before libzmq reports the connection to anyone. Best of four puts each contender
    // on a connection BBR did not throttle; the spread rows show the slowest.
    constexpr int kConnections = 4;
    struct ZcPair {
      std::unique_ptr<Engine> engine;
      std::unique_ptr<Client> client;
    };
    struct RawPair {
      std::unique_ptr<RawServer> server;
      std::unique_ptr<RawClient> client;
    };
    std::vector<ZcPair> zc(kConnections);
    std::vector<RawPair> raw(kConnections);
    for (int c = 0; c < kConnections; ++c) {
      EngineOptions eo;
      eo.builtins = true;  // calls the built-ins add and echo
      eo.context = &ctx;
      eo.unpace_local_tcp = true;
      // Over tcp, as the raw client: peers on one host would otherwise pass the tensor in
      // shared memory (the shared section measures that path).
      eo.shared_memory = false;
      zc[c].engine = std::make_unique<Engine>(eo);
      zc[c].engine->Bind("tcp://127.0.0.1:*");
      zc[c].engine->Start();
      ClientOptions co;
      co.context = &ctx;
      co.shared_memory = false;
      zc[c].client = std::make_unique<Client>(zc[c].engine->last_endpoint(), co);
      raw[c].server = std::make_unique<RawServer>(ctx, "tcp://127.0.0.1:*", true, bytes, true, false);
      raw[c].client = std::make_unique<RawClient>(ctx, raw[c].server->endpoint());
    }
    auto zc_call = [&](int c) {
      // Lent, as the raw client sends it: zero-copy both ways, the tracker says when done.
      ResultFuture f = zc[c].client->apply("echo", Borrow(big));
      Result r = f.get();
      Sink(r.value().TensorBytes().size());
      f.tracker().Wait();
    };
    auto raw_call = [&](int c) {
      zmq::socket_t& s = raw[c].client->socket();
      s.send(zmq::message_t(), zmq::send_flags::sndmore);
      s.send(zmq::buffer(env), zmq::send_flags::sndmore);
      std::atomic<bool> released{false};
      zmq::message_t payload(big.data(), n, [](void*, void* hint) {
        static_cast<std::atomic<bool>*>(hint)->store(true);
      }, &released);
      s.send(payload, zmq::send_flags::none);
      zmq::message_t part;
      uint64_t got = 0;
      do {
        (void)s.recv(part);
        got += part.size();
      } while (part.more());
      Sink(got);
      while (!released) std::this_thread::yield();
    };
    int reps = quick ? 2 : 5;
    // Warm-up calls on each connection before timing. One primes the heap (with the
    // reusing allocator); more let each connection through BBR's start-up: its first
    // echoes after a switch of allocator often ran at 3.2-4.5 GB/s, then ~6 GB/s.
    int warm = quick ? 1 : 3;
    // What one contender measured: the median of each of its connections, in GB/s
    // (bytes both ways over wall time).
    struct Echo {
      std::vector<double> per_connection;
      double best() const { return *std::max_element(per_connection.begin(), per_connection.end()); }
      double worst() const { return *std::min_element(per_connection.begin(), per_connection.end()); }
    };
    // Alternates zerocan and raw, connection by connection, `reps` rounds after `warm`.
    auto time_both = [&](Echo* zc_echo, Echo* raw_echo) {
      std::vector<std::vector<double>> zs(kConnections), rs(kConnections);
      for (int i = 0; i < warm; ++i) {
        for (int c = 0; c < kConnections; ++c) {
          zc_call(c);
          raw_call(c);
        }
      }
      for (int i = 0; i < reps; ++i) {
        for (int c = 0; c < kConnections; ++c) {
          double t0 = WallNs();
          zc_call(c);
          zs[c].push_back(2.0 * n / (WallNs() - t0));
          t0 = WallNs();
          raw_call(c);
          rs[c].push_back(2.0 * n / (WallNs() - t0));
        }
      }
      for (int c = 0; c < kConnections; ++c) {
        zc_echo->per_connection.push_back(Median(zs[c]));
        raw_echo->per_connection.push_back(Median(rs[c]));
      }
    };
    if (defaults_child) {
      Echo zc_default, raw_default;
      time_both(&zc_default, &raw_default);
      std::printf("%s %.6f %.6f\n", kDefaultsEchoLine, zc_default.best(), raw_default.best());
      return;
    }
    Echo zc_reuse, raw_reuse;
    time_both(&zc_reuse, &raw_reuse);
    if (!defaults) {
      std::fprintf(stderr, "apply: the glibc-defaults echo failed: %s\n", child_error.c_str());
    }
    const double zc_default = defaults ? defaults->zc_best : 0;
    const double raw_default = defaults ? defaults->raw_best : 0;
    std::string label = std::to_string(mb) + " MB echo, tcp";
    Add(rows, &table, label + " (reusing allocator)", zc_reuse.best(), "GB/s",
        "raw libzmq, reusing allocator", raw_reuse.best(), ">= 0.9x");
    Add(rows, &table, label + " (reusing allocator) ", zc_reuse.best(), "GB/s",
        "raw libzmq, glibc defaults", raw_default, ">= 3x");
    Add(rows, &table, label + " (glibc defaults)", zc_default, "GB/s",
        "raw libzmq, glibc defaults", raw_default, "");
    // The spread over connections: each contender's slowest connection against its best.
    Add(rows, &table, "  zerocan's slowest connection (reusing)", zc_reuse.worst(), "GB/s",
        "its best", zc_reuse.best(), "(spread)");
    Add(rows, &table, "  raw's slowest connection (reusing)", raw_reuse.worst(), "GB/s", "its best",
        raw_reuse.best(), "(spread)");
    // What reusing memory alone is worth to raw libzmq on this machine: the ratio any
    // library running at raw's speed would show against glibc's defaults. The ">= 3x"
    // target assumes ~10 us per fresh page; the row below measures it.
    Add(rows, &table, "raw libzmq, reusing allocator", raw_reuse.best(), "GB/s",
        "raw libzmq, glibc defaults", raw_default, "(machine)");
    Add(rows, &table, "fresh page (first touch, 64 MiB mmap)", FreshPageMicros(), "us", "", 0,
        "(machine)");
    table.Add({"tcp congestion control: " + HostCongestionControl(), "", "", "", "", "(machine)"});
  }

  // ---- 3. calls/s with 1, 2, 4 engines through the broker ---------------------------------
  if (calls_child && !trips) {
    double one_add = 0, one_sleep = 0;
    for (int engines : {1, 2, 4}) {
      BrokerOptions bo;
      bo.context = &ctx;
      bo.unpace_local_tcp = true;
      Broker broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", bo);
      broker.Start();
      std::vector<std::unique_ptr<Engine>> es;
      for (int i = 0; i < engines; ++i) {
        EngineOptions eo;
        eo.builtins = true;  // calls the built-ins add and echo
        eo.context = &ctx;
        eo.threads = 1;
        eo.builtins = true;
        es.push_back(std::make_unique<Engine>(eo));
        es.back()->Connect(broker.backend_endpoint());
        es.back()->Start();
      }
      for (int i = 0; i < 300 && broker.counters().engines_live < static_cast<uint64_t>(engines);
           ++i) {
        std::this_thread::sleep_for(milliseconds(10));
      }
      ClientOptions co;
      co.context = &ctx;
      Client client(broker.frontend_endpoint(), co);
      auto pipelined = [&](int total, auto call) {
        constexpr int kWindow = 256;
        std::vector<ResultFuture> ring(kWindow);
        double t0 = WallNs();
        for (int i = 0; i < total + kWindow; ++i) {
          int slot = i % kWindow;
          if (i >= kWindow) Sink(ring[slot].get().ok());
          if (i < total) ring[slot] = call();
        }
        return total / ((WallNs() - t0) / 1e9);
      };
      double add = pipelined(quick ? 5000 : 20000, [&] { return client.apply("add", 1, 2); });
      double sleep = pipelined(quick ? 100 : 400, [&] { return client.apply("sleep", 0.005); });
      if (engines == 1) {
        one_add = add;
        one_sleep = sleep;
      }
      std::string e = std::to_string(engines) + " engine" + (engines > 1 ? "s" : "");
      Add(rows, &table, "broker, " + e + ", add (pipelined)", add, "calls/s",
          engines > 1 ? "1 engine" : "", one_add, "");
      Add(rows, &table, "broker, " + e + ", sleep 5 ms (pipelined)", sleep, "calls/s",
          engines > 1 ? "1 engine" : "", one_sleep, "");
    }
  }

  if (calls_child) return;
  if (!defaults_child) {
    Add(rows, &table, "peak memory, this process (echo rows)", PeakMiB(RUSAGE_SELF),
        "MiB", "", 0, "(memory)");
  }
  if (!options.json) {
    std::printf("== apply: calls end to end, side by side with raw libzmq (same bytes) ==\n");
    table.Print();
    std::printf(
        "\nNotes: engines and clients share a process (own threads, tcp loopback). Calls and\n"
        "broker rows run in a child process under glibc's default malloc, as a user's\n"
        "process has it. Memory policy of the echo rows: glibc's default malloc gives each\n"
        "large frame fresh mmap'd pages (a page fault per 4 KiB on first touch); the reusing\n"
        "allocator (zerocan::UseReusingAllocator: one arena, M_MMAP_MAX=0, no trimming)\n"
        "keeps freed memory for the next frame. 'threads=0'\n"
        "runs every function on the engine's I/O thread; the default engine hands every call\n"
        "to a worker thread (two more thread wake-ups); 'declared inline' runs the functions\n"
        "registered with FunctionOptions::inline_execution on the I/O thread.\n"
        "256 MB echo: glibc's defaults are measured in a child process that never changed\n"
        "them; each contender has four connections and counts its best one's median, since\n"
        "BBR (when it is the host's congestion control) throttles about one loopback\n"
        "connection in four for its life; the spread rows show each one's slowest.\n\n");
  }
}

}  // namespace zerocan::bench
