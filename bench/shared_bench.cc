// The shared section: an argument of 64 KiB .. 1 GiB handed to an engine in another
// process on this host, `nbytes(x)` per call, four ways side by side in one run:
//   arena     the argument already lies in the client's shared arena (a reference, no copy)
//   ordinary  a plain buffer, copied once into the arena (then a reference)
//   tcp, ipc  the same call with shared memory off: frames through the kernel
// and raw memcpy of the same bytes as the physical yardstick. The engine is the `zerocan
// engine` program (one process per transport), so nothing is shared by accident.
// Peak memory: this process's and each engine's high-water mark (VmHWM).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "bench_util.h"
#include <zmq.hpp>

#include "zerocan/client.h"
#include "zerocan/shared.h"
#include "zerocan/stats.h"
#include "zerocan/zerocan.h"

namespace zerocan::bench {
namespace {

// A `zerocan engine --builtins` process bound at `url`, stopped at destruction.
class EngineProcess {
 public:
  explicit EngineProcess(const std::string& url) {
    pid_ = fork();
    if (pid_ == 0) {
      std::string tool = ZEROCAN_TOOL_PATH;
      execl(tool.c_str(), tool.c_str(), "engine", "--bind", url.c_str(), "--builtins",
            static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~EngineProcess() {
    kill(pid_, SIGTERM);  // it drains (nothing is running) and removes its ipc file
    waitpid(pid_, nullptr, 0);
  }
  // The engine's peak resident memory so far, in bytes (VmHWM).
  uint64_t PeakBytes() const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }

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

void Measure(const std::vector<size_t>& sizes, const std::shared_ptr<SharedArena>& arena,
             Client& shared, Client& over_tcp, Client& over_ipc, const Options& options,
             std::vector<Row>* rows, const EngineProcess& tcp_engine,
             const EngineProcess& ipc_engine);

void RunShared(const Options& options, std::vector<Row>* rows) {
  std::vector<size_t> sizes = {size_t{64} << 10, size_t{1} << 20, size_t{64} << 20,
                               size_t{256} << 20, size_t{1} << 30};
  if (options.quick) sizes = {size_t{64} << 10, size_t{1} << 20, size_t{64} << 20};
  const std::string tag = std::to_string(getpid());
  const std::string tcp = "tcp://127.0.0.1:" + std::to_string(FreePort());
  const std::string ipc = "ipc:///tmp/zerocan-bench-shared-" + tag;
  EngineProcess tcp_engine(tcp), ipc_engine(ipc);

  auto arena = SharedArena::Create(sizes.back() * 2 + (size_t{64} << 20));
  ClientOptions shared_options;
  shared_options.shared_arena = arena;
  shared_options.shared_memory = true;
  shared_options.timeout = std::chrono::milliseconds(120000);
  ClientOptions frame_options = shared_options;
  frame_options.shared_memory = false;
  Client shared(tcp, shared_options), over_tcp(tcp, frame_options), over_ipc(ipc, frame_options);
  if (!Ready(shared, true) || !Ready(over_tcp, false) || !Ready(over_ipc, false)) {
    std::fprintf(stderr, "shared: the engines did not come up (or share no memory)\n");
    return;
  }

  try {
    Measure(sizes, arena, shared, over_tcp, over_ipc, options, rows, tcp_engine, ipc_engine);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shared: %s\n", e.what());  // the engines stop with this scope
  }
}

void Measure(const std::vector<size_t>& sizes, const std::shared_ptr<SharedArena>& arena,
             Client& shared, Client& over_tcp, Client& over_ipc, const Options& options,
             std::vector<Row>* rows, const EngineProcess& tcp_engine,
             const EngineProcess& ipc_engine) {
  Table table({"size", "arena", "ordinary (1 copy)", "tcp", "ipc", "memcpy", "tcp / arena",
               "tcp / ordinary"});
  double arena_smallest = 0, arena_largest = 0;
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
    double arena_ms = MedianMs([&] { nbytes(shared, block); }, 50);
    bool no_copy = GlobalStats().Snapshot().shared_bytes_copied == copied;
    // A borrowed plain buffer: the arena path copies it in once per call.
    double ordinary_ms =
        MedianMs([&] { nbytes(shared, Buffer::Borrow(plain.data(), plain.size())); }, reps);
    double tcp_ms = MedianMs([&] { nbytes(over_tcp, plain); }, reps);
    double ipc_ms = MedianMs([&] { nbytes(over_ipc, plain); }, reps);
    double memcpy_ms = MedianMs(
        [&] {
          std::memcpy(target.mutable_data(), plain.data(), size);
          Sink(static_cast<uint64_t>(target.data()[size / 2]));
        },
        reps);
    if (arena_smallest == 0) arena_smallest = arena_ms;
    arena_largest = arena_ms;
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
    add("ipc", ipc_ms, "tcp", tcp_ms);
    add("memcpy", memcpy_ms, "", 0);
    auto ms = [](double v) {
      char out[32];
      std::snprintf(out, sizeof out, v < 1 ? "%.3f ms" : "%.1f ms", v);
      return std::string(out);
    };
    table.Add({name, ms(arena_ms) + (no_copy ? "" : " (copied!)"), ms(ordinary_ms), ms(tcp_ms),
               ms(ipc_ms), ms(memcpy_ms), FormatRatio(tcp_ms / arena_ms),
               FormatRatio(tcp_ms / ordinary_ms)});
  }
  if (!options.json) {
    std::printf("\n== shared: nbytes(x) on an engine process on this host, median per call\n");
    table.Print();
    std::printf("arena: %s per call %.3f ms, 64 KiB %.3f ms: %.2fx (target: at most 2x)\n",
                FormatBytes(sizes.back()).c_str(), arena_largest,
                arena_smallest, arena_largest / arena_smallest);
    std::printf("peak memory: this process %s, tcp engine %s, ipc engine %s\n",
                FormatBytes(OwnPeakBytes()).c_str(), FormatBytes(tcp_engine.PeakBytes()).c_str(),
                FormatBytes(ipc_engine.PeakBytes()).c_str());
  }
}

}  // namespace zerocan::bench
