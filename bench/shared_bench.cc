// The shared section: an argument of 64 KiB .. 1 GiB handed to an engine in another
// process on this host, `nbytes(x)` per call, side by side in one run:
//   arena     the argument already lies in the client's shared arena (a reference, no copy)
//   broker    the same through a broker process on this host (the reference passes on)
//   ordinary  a plain buffer, copied once into the arena (then a reference)
//   tcp, ipc  the same call with shared memory off: frames through the kernel
// and raw memcpy of the same bytes as the physical yardstick; then `echo(x)` of 100 MiB
// and 256 MiB, whose result is the argument handed back (in place in the arena); then
// results the engine makes: `block(n)` returns n bytes the engine allocated in its own
// arena (in place, leased to the caller), `fresh(n)` n bytes of ordinary memory (copied
// into the engine's arena once; over tcp, frames). The engines are `zerocan engine`
// programs (and a `zerocan broker`), and for results an engine process forked before any
// client exists, so nothing is shared by accident. Peak memory: this process's and each
// engine's high-water mark (VmHWM).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <absl/strings/str_cat.h>

#include "bench.h"
#include "bench_util.h"
#include <zmq.hpp>

#include "zerocan/client.h"
#include "zerocan/shared.h"
#include "zerocan/stats.h"
#include "zerocan/zerocan.h"

namespace zerocan::bench {
namespace {

// Process `pid`'s peak resident memory so far, in bytes (VmHWM).
uint64_t PeakBytesOf(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// A `zerocan ARGS...` process (an engine, a broker), stopped at destruction.
class ToolProcess {
 public:
  explicit ToolProcess(std::vector<std::string> args) {
    pid_ = fork();
    if (pid_ == 0) {
      std::string tool = ZEROCAN_TOOL_PATH;
      std::vector<char*> argv{tool.data()};
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(tool.c_str(), argv.data());
      _exit(127);
    }
  }
  // `zerocan engine --builtins`, bound at `url` (or connected to a broker's backend).
  static std::vector<std::string> Engine(const std::string& url, bool connect = false) {
    return {"engine", connect ? "--connect" : "--bind", url, "--builtins"};
  }
  ~ToolProcess() {
    kill(pid_, SIGTERM);  // it drains (nothing is running) and removes its ipc file
    waitpid(pid_, nullptr, 0);
  }
  // The engine's peak resident memory so far, in bytes (VmHWM).
  uint64_t PeakBytes() const { return PeakBytesOf(pid_); }

 private:
  pid_t pid_ = -1;
};

// An engine process with the result functions (block, fresh) bound at `url`; forked
// before this process makes any client or context, stopped at destruction.
class ResultEngine {
 public:
  explicit ResultEngine(const std::string& url) {
    pid_ = fork();
    if (pid_ != 0) return;
    signal(SIGTERM, SIG_DFL);
    EngineOptions eo;
    // Room for one cached block of each size and one copy of the largest.
    eo.shared_arena = SharedArena::Create(size_t{3} << 30);
    Engine engine(eo);
    // One block per size, written once: the cost measured is the call's, not a memset's.
    auto blocks = std::make_shared<std::map<int64_t, Buffer>>();
    auto mu = std::make_shared<std::mutex>();
    engine.def("block", [blocks, mu, arena = eo.shared_arena](int64_t n) {
      std::lock_guard<std::mutex> lock(*mu);
      Buffer& b = (*blocks)[n];
      if (b.empty()) {
        std::optional<Buffer> fresh = arena->Allocate(static_cast<size_t>(n));
        if (!fresh) throw Error("block: the engine's arena is full");
        b = std::move(*fresh);
        std::memset(b.mutable_data(), 1, b.size());
      }
      return b;
    });
    auto plain = std::make_shared<std::map<int64_t, Buffer>>();
    engine.def("fresh", [plain, mu](int64_t n) {
      std::lock_guard<std::mutex> lock(*mu);
      Buffer& b = (*plain)[n];
      if (b.empty()) {
        b = Buffer::Allocate(static_cast<size_t>(n));
        std::memset(b.mutable_data(), 1, b.size());
      }
      return b;  // ordinary memory, shared: a frame, or one copy into the arena
    });
    engine.def("add", [](int64_t a, int64_t b) { return a + b; });
    engine.Bind(url);
    engine.Start();
    pause();  // until SIGTERM
    _exit(0);
  }
  ~ResultEngine() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  uint64_t PeakBytes() const { return PeakBytesOf(pid_); }

 private:
  pid_t pid_ = -1;
};

int FreePort() {
  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::router);
  socket.set(zmq::sockopt::linger, 0);
  socket.bind("tcp://127.0.0.1:*");
  std::string endpoint = socket.get(zmq::sockopt::last_endpoint);
  return std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
}

uint64_t OwnPeakBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

// Waits until `client` gets answers (the engine process is up); for shared memory, also
// until its hello said it shares this host.
bool Ready(Client& client, bool shared) {
  for (int i = 0; i < 200; ++i) {
    Result r = client.apply_for(std::chrono::milliseconds(100), "add", 1, 2).get();
    if (r.ok() && (!shared || client.shares_memory())) return true;
  }
  return false;
}

double MedianMs(const std::function<void()>& op, int reps) {
  op();  // warm: connections, first touch of pages
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    double t0 = NowNs();
    op();
    ms.push_back((NowNs() - t0) / 1e6);
  }
  return Median(ms);
}

}  // namespace

// The clients of one run: shared memory on (directly, and through a broker), and off.
struct Clients {
  Client& shared;
  Client& brokered;
  Client& over_tcp;
  Client& over_ipc;
};

void Measure(const std::vector<size_t>& sizes, const std::shared_ptr<SharedArena>& arena,
             const Clients& clients, const Options& options, std::vector<Row>* rows);
void MeasureEcho(const std::shared_ptr<SharedArena>& arena, const Clients& clients,
                 const Options& options, std::vector<Row>* rows);
void MeasureResults(const std::vector<size_t>& sizes, const std::string& url,
                    const Options& options, std::vector<Row>* rows);

void RunShared(const Options& options, std::vector<Row>* rows) {
  std::vector<size_t> sizes = {size_t{64} << 10, size_t{1} << 20, size_t{64} << 20,
                               size_t{256} << 20, size_t{1} << 30};
  if (options.quick) sizes = {size_t{64} << 10, size_t{1} << 20, size_t{64} << 20};
  const std::string tag = std::to_string(getpid());
  const std::string tcp = "tcp://127.0.0.1:" + std::to_string(FreePort());
  const std::string ipc = "ipc:///tmp/zerocan-bench-shared-" + tag;
  const std::string front = "tcp://127.0.0.1:" + std::to_string(FreePort());
  const std::string back = "ipc:///tmp/zerocan-bench-shared-back-" + tag;
  const std::string results_url = "tcp://127.0.0.1:" + std::to_string(FreePort());
  ResultEngine result_engine(results_url);
  ToolProcess tcp_engine(ToolProcess::Engine(tcp)), ipc_engine(ToolProcess::Engine(ipc));
  ToolProcess broker({"broker", "--frontend", front, "--backend", back});
  ToolProcess brokered_engine(ToolProcess::Engine(back, /*connect=*/true));

  auto arena = SharedArena::Create(sizes.back() * 2 + (size_t{64} << 20));
  ClientOptions shared_options;
  shared_options.shared_arena = arena;
  shared_options.shared_memory = true;
  shared_options.timeout = std::chrono::milliseconds(120000);
  ClientOptions frame_options = shared_options;
  frame_options.shared_memory = false;
  Client shared(tcp, shared_options), over_tcp(tcp, frame_options), over_ipc(ipc, frame_options);
  Client brokered(front, shared_options);
  if (!Ready(shared, true) || !Ready(over_tcp, false) || !Ready(over_ipc, false) ||
      !Ready(brokered, true)) {
    std::fprintf(stderr, "shared: the engines did not come up (or share no memory)\n");
    return;
  }

  Clients clients{shared, brokered, over_tcp, over_ipc};
  try {
    Measure(sizes, arena, clients, options, rows);
    MeasureEcho(arena, clients, options, rows);
    MeasureResults(sizes, results_url, options, rows);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shared: %s\n", e.what());  // the engines stop with this scope
  }
  if (!options.json) {
    std::printf("peak memory: this process %s; engines: tcp %s, ipc %s, behind the broker %s, "
                "results %s\n",
                FormatBytes(OwnPeakBytes()).c_str(), FormatBytes(tcp_engine.PeakBytes()).c_str(),
                FormatBytes(ipc_engine.PeakBytes()).c_str(),
                FormatBytes(brokered_engine.PeakBytes()).c_str(),
                FormatBytes(result_engine.PeakBytes()).c_str());
  }
}

std::string Ms(double v) {
  char out[32];
  std::snprintf(out, sizeof out, v < 1 ? "%.3f ms" : "%.1f ms", v);
  return out;
}

void Measure(const std::vector<size_t>& sizes, const std::shared_ptr<SharedArena>& arena,
             const Clients& clients, const Options& options, std::vector<Row>* rows) {
  Table table({"size", "arena", "via broker", "ordinary (1 copy)", "tcp", "ipc", "memcpy",
               "tcp / arena", "tcp / ordinary"});
  double arena_smallest = 0, arena_largest = 0, broker_smallest = 0, broker_largest = 0;
  for (size_t size : sizes) {
    const int reps = size >= (size_t{256} << 20) ? 3 : size >= (size_t{64} << 20) ? 5 : 50;
    Buffer block = *arena->Allocate(size);
    std::memset(block.mutable_data(), 1, size);
    Buffer plain = Buffer::Allocate(size);
    std::memset(plain.mutable_data(), 1, size);
    Buffer target = Buffer::Allocate(size);
    std::memset(target.mutable_data(), 0, size);
    auto nbytes = [&](Client& client, const Buffer& bytes) {
      Result r = client.apply("nbytes", Tensor(DType::kUInt8, Shape{size}, bytes)).get();
      r.ThrowIfError();
      if (r.as<int64_t>() != static_cast<int64_t>(size)) throw Error("nbytes: wrong count");
    };
    uint64_t copied = GlobalStats().Snapshot().shared_bytes_copied;
    // A reference costs the same at every size: enough repetitions to see that through
    // the noise of one machine (the others move every byte, a few suffice).
    double arena_ms = MedianMs([&] { nbytes(clients.shared, block); }, 50);
    double broker_ms = MedianMs([&] { nbytes(clients.brokered, block); }, 50);
    bool no_copy = GlobalStats().Snapshot().shared_bytes_copied == copied;
    // A borrowed plain buffer: the arena path copies it in once per call.
    double ordinary_ms =
        MedianMs([&] { nbytes(clients.shared, Buffer::Borrow(plain.data(), plain.size())); },
                 reps);
    double tcp_ms = MedianMs([&] { nbytes(clients.over_tcp, plain); }, reps);
    double ipc_ms = MedianMs([&] { nbytes(clients.over_ipc, plain); }, reps);
    double memcpy_ms = MedianMs(
        [&] {
          std::memcpy(target.mutable_data(), plain.data(), size);
          Sink(static_cast<uint64_t>(target.data()[size / 2]));
        },
        reps);
    if (arena_smallest == 0) arena_smallest = arena_ms;
    if (broker_smallest == 0) broker_smallest = broker_ms;
    arena_largest = arena_ms;
    broker_largest = broker_ms;
    std::string name = FormatBytes(size);
    std::fprintf(stderr, "shared: %s done\n", name.c_str());
    auto add = [&](const std::string& what, double value, const std::string& baseline,
                   double base) {
      rows->push_back(Row{"shared", name + " " + what, "ms", value, baseline, base,
                          value > 0 ? base / value : 0});
    };
    add("arena", arena_ms, "tcp", tcp_ms);
    add("ordinary", ordinary_ms, "tcp", tcp_ms);
    add("arena", arena_ms, "arena 64 KiB", arena_smallest);
    add("arena via broker", broker_ms, "arena via broker 64 KiB", broker_smallest);
    add("ipc", ipc_ms, "tcp", tcp_ms);
    add("memcpy", memcpy_ms, "", 0);
    table.Add({name, Ms(arena_ms) + (no_copy ? "" : " (copied!)"), Ms(broker_ms),
               Ms(ordinary_ms), Ms(tcp_ms), Ms(ipc_ms), Ms(memcpy_ms),
               FormatRatio(tcp_ms / arena_ms), FormatRatio(tcp_ms / ordinary_ms)});
  }
  if (!options.json) {
    std::printf("\n== shared: nbytes(x) on an engine process on this host, median per call\n");
    table.Print();
    std::printf("arena: %s per call %.3f ms, 64 KiB %.3f ms: %.2fx (target: at most 2x)\n",
                FormatBytes(sizes.back()).c_str(), arena_largest,
                arena_smallest, arena_largest / arena_smallest);
    std::printf("via broker: %s per call %.3f ms, 64 KiB %.3f ms: %.2fx (target: at most 2x)\n",
                FormatBytes(sizes.back()).c_str(), broker_largest, broker_smallest,
                broker_largest / broker_smallest);
  }
}

// echo(x): the result is the argument. From the arena it comes back in place (no copy
// either way); an ordinary buffer is copied into the arena once and comes back in place;
// over tcp it crosses the kernel both ways.
void MeasureEcho(const std::shared_ptr<SharedArena>& arena, const Clients& clients,
                 const Options& options, std::vector<Row>* rows) {
  std::vector<size_t> sizes = {size_t{100} << 20, size_t{256} << 20};
  if (options.quick) sizes = {size_t{16} << 20};
  Table table({"size", "arena", "ordinary (1 copy)", "tcp", "tcp / arena", "tcp / ordinary"});
  for (size_t size : sizes) {
    const int reps = options.quick ? 3 : 5;
    Buffer block = *arena->Allocate(size);
    std::memset(block.mutable_data(), 1, size);
    Buffer plain = Buffer::Allocate(size);
    std::memset(plain.mutable_data(), 1, size);
    auto echo = [&](Client& client, const Buffer& bytes) {
      Result r = client.apply("echo", Tensor(DType::kUInt8, Shape{size}, bytes)).get();
      r.ThrowIfError();
      Buffer got = r.value().TensorBytes();
      if (got.size() != size || got.data()[size - 1] != std::byte{1}) throw Error("echo: wrong");
    };
    double arena_ms = MedianMs([&] { echo(clients.shared, block); }, 20);
    double ordinary_ms = MedianMs(
        [&] { echo(clients.shared, Buffer::Borrow(plain.data(), plain.size())); }, reps);
    double tcp_ms = MedianMs([&] { echo(clients.over_tcp, plain); }, reps);
    std::string name = FormatBytes(size);
    std::fprintf(stderr, "shared: echo %s done\n", name.c_str());
    rows->push_back(Row{"shared", name + " echo arena", "ms", arena_ms, "tcp", tcp_ms,
                        tcp_ms / arena_ms});
    rows->push_back(Row{"shared", name + " echo ordinary", "ms", ordinary_ms, "tcp", tcp_ms,
                        tcp_ms / ordinary_ms});
    table.Add({name, Ms(arena_ms), Ms(ordinary_ms), Ms(tcp_ms), FormatRatio(tcp_ms / arena_ms),
               FormatRatio(tcp_ms / ordinary_ms)});
  }
  if (!options.json) {
    std::printf("\n== shared: echo(x) on an engine process on this host, median per call\n");
    table.Print();
    std::printf("targets at 256 MiB: tcp / ordinary at least 3x, tcp / arena at least 20x\n");
  }
}

// Results the engine makes, median per call: `block(n)` from the engine's arena (the
// caller holds the engine's block: nothing copied either side), `fresh(n)` from ordinary
// memory (copied into the engine's arena once), and `fresh(n)` over tcp (frames).
void MeasureResults(const std::vector<size_t>& sizes, const std::string& url,
                    const Options& options, std::vector<Row>* rows) {
  ClientOptions shared_options;
  shared_options.shared_arena = SharedArena::Create(size_t{64} << 20);  // for arguments
  shared_options.shared_memory = true;
  shared_options.timeout = std::chrono::milliseconds(120000);
  ClientOptions frame_options = shared_options;
  frame_options.shared_memory = false;
  Client shared(url, shared_options), over_tcp(url, frame_options);
  if (!Ready(shared, true) || !Ready(over_tcp, false)) {
    std::fprintf(stderr, "shared: the result engine did not come up (or shares no memory)\n");
    return;
  }
  Table table({"size", "engine's arena", "ordinary (1 copy)", "tcp", "tcp / arena",
               "tcp / ordinary"});
  double smallest = 0, largest = 0;
  for (size_t size : sizes) {
    const int reps = size >= (size_t{256} << 20) ? 3 : size >= (size_t{64} << 20) ? 5 : 50;
    auto call = [&](Client& client, const char* function, bool in_place) {
      Result r = client.apply(function, static_cast<int64_t>(size)).get();
      r.ThrowIfError();
      Buffer got = r.value().AsBytes();
      if (got.size() != size || got.data()[size - 1] != std::byte{1}) {
        throw Error(absl::StrCat(function, ": wrong bytes"));
      }
      if (in_place && !r.value().InSharedMemory()) {
        throw Error(absl::StrCat(function, ": not in shared memory"));
      }
    };
    uint64_t copied = GlobalStats().Snapshot().shared_bytes_copied;
    double arena_ms = MedianMs([&] { call(shared, "block", true); }, 50);
    bool no_copy = GlobalStats().Snapshot().shared_bytes_copied == copied;
    double ordinary_ms = MedianMs([&] { call(shared, "fresh", true); }, reps);
    double tcp_ms = MedianMs([&] { call(over_tcp, "fresh", false); }, reps);
    if (smallest == 0) smallest = arena_ms;
    largest = arena_ms;
    std::string name = FormatBytes(size);
    std::fprintf(stderr, "shared: results %s done\n", name.c_str());
    rows->push_back(Row{"shared", name + " result arena", "ms", arena_ms, "tcp", tcp_ms,
                        tcp_ms / arena_ms});
    rows->push_back(Row{"shared", name + " result ordinary", "ms", ordinary_ms, "tcp", tcp_ms,
                        tcp_ms / ordinary_ms});
    rows->push_back(Row{"shared", name + " result arena", "ms", arena_ms,
                        "result arena 64 KiB", smallest, smallest / arena_ms});
    table.Add({name, Ms(arena_ms) + (no_copy ? "" : " (copied!)"), Ms(ordinary_ms),
               Ms(tcp_ms), FormatRatio(tcp_ms / arena_ms), FormatRatio(tcp_ms / ordinary_ms)});
  }
  if (!options.json) {
    std::printf("\n== shared: results an engine process on this host makes, median per call\n");
    table.Print();
    std::printf("engine's arena: %s per call %.3f ms, 64 KiB %.3f ms: %.2fx\n",
                FormatBytes(sizes.back()).c_str(), largest, smallest, largest / smallest);
  }
}

}  // namespace zerocan::bench
