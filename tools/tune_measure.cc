#include "tools/tune_measure.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tools/measure_util.h"
#include "zerocan/zerocan.h"

namespace zerocan::tools {

const char* PlacementName(Placement p) {
  switch (p) {
    case Placement::kInline: return "inline";
    case Placement::kCopiedFrame: return "copied frame";
    case Placement::kFrame: return "zero-copy frame";
    case Placement::kTuned: return "tuned";
  }
  return "?";
}

std::vector<size_t> DefaultSizes(bool quick) {
  std::vector<size_t> sizes;
  size_t top = quick ? (size_t{16} << 20) : (size_t{64} << 20);
  for (size_t s = 64; s <= top; s *= quick ? 16 : 4) sizes.push_back(s);
  return sizes;
}

namespace {

double ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

long MinorFaults() {
  rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_minflt;
}

Stat MakeStat(const std::vector<double>& v) { return Stat{Median(v), RelativeSpread(v)}; }

std::string Endpoint(const std::string& transport) {
  static std::atomic<int> counter{0};
  int n = counter++;
  if (transport == "inproc") return absl::StrCat("inproc://zerocan-tune-", n);
  if (transport == "ipc") return absl::StrCat("ipc:///tmp/zerocan-tune-", getpid(), "-", n);
  return "tcp://127.0.0.1:*";
}

// A PUSH -> PULL pair with a receiver thread that receives, decodes and reads the
// payload of every message, and counts them.
class Channel {
 public:
  Channel(zmq::context_t& ctx, const std::string& transport)
      : tx_(ctx, zmq::socket_type::push), rx_(ctx, zmq::socket_type::pull) {
    rx_.set(zmq::sockopt::linger, 0);
    tx_.set(zmq::sockopt::linger, 0);
    rx_.bind(Endpoint(transport));
    endpoint_ = rx_.get(zmq::sockopt::last_endpoint);
    tx_.connect(endpoint_);
    receiver_ = std::thread([this] { Receive(); });
  }
  ~Channel() {
    EnvelopeWriter w;
    w.StartApply("stop", 0, 0);
    Send(tx_, w.Finish());
    receiver_.join();
    if (endpoint_.rfind("ipc://", 0) == 0) ::unlink(endpoint_.c_str() + 6);
  }

  zmq::socket_t& tx() { return tx_; }

  // Blocks until the receiver has read `count` messages in all.
  void WaitFor(uint64_t count) {
    for (uint64_t seen = received_.load(std::memory_order_acquire); seen < count;
         seen = received_.load(std::memory_order_acquire)) {
      received_.wait(seen, std::memory_order_acquire);
    }
  }
  uint64_t received() const { return received_.load(std::memory_order_acquire); }

 private:
  void Receive() {
    while (true) {
      std::optional<ReceivedMessage> got = zerocan::Receive(rx_);
      if (!got) continue;
      Message m = Message::Decode(std::move(*got));
      if (m.function() == "stop") return;
      Buffer b = m.arg(0).AsBytes();
      if (!b.empty()) Sink(static_cast<uint64_t>(b.data()[0]) + static_cast<uint64_t>(b.data()[b.size() - 1]));
      received_.fetch_add(1, std::memory_order_release);
      received_.notify_one();
    }
  }

  zmq::socket_t tx_, rx_;
  std::string endpoint_;
  std::thread receiver_;
  std::atomic<uint64_t> received_{0};
};

struct Samples {
  std::vector<double> cost, sender, wall, faults;
};

// One batch of `count` messages of `payload` placed per `mode`; appends one sample.
void RunBatch(Channel& channel, const Buffer& payload, Placement mode, size_t tuned_threshold,
              int count, uint64_t* sent, Samples* out) {
  Policy policy = Policy::Default();
  switch (mode) {
    case Placement::kInline: policy.inline_threshold = std::numeric_limits<size_t>::max(); break;
    case Placement::kCopiedFrame:
    case Placement::kFrame: policy.inline_threshold = 1; break;
    case Placement::kTuned: policy.inline_threshold = tuned_threshold; break;
  }
  long faults0 = MinorFaults();
  double cpu0 = CpuNs(), sender0 = ThreadCpuNs(), wall0 = NowNs();
  for (int i = 0; i < count; ++i) {
    EnvelopeWriter w(policy);
    w.SetHeader(Header{*sent + 1, 1, *sent + 1, 0});
    Buffer data = mode == Placement::kCopiedFrame ? Buffer::CopyOf(payload.data(), payload.size()) : payload;
    w.StartApply("p", 1, 0).arg(0).Bytes(std::move(data));
    Send(channel.tx(), w.Finish());
    ++*sent;
  }
  double sender1 = ThreadCpuNs();
  channel.WaitFor(*sent);
  double wall1 = NowNs();
  SettleThreads();
  double cpu1 = CpuNs();
  long faults1 = MinorFaults();
  out->cost.push_back((cpu1 - cpu0) / count);
  out->sender.push_back((sender1 - sender0) / count);
  out->wall.push_back((wall1 - wall0) / count);
  out->faults.push_back(static_cast<double>(faults1 - faults0) / count);
}

// The most messages in one batch: 64 Ki messages of the cheapest kind (inproc, ~1 us
// each) make a batch of about 65 ms.
constexpr int kMaxBatch = 1 << 16;

// Sizes a batch of `mode` so it costs about `batch_ns` of process CPU. Batches of 1, 4,
// 16, ... messages run until one costs at least a quarter of that (the first ones also
// warm the path: first touch, socket buffers, the allocator); two more batches of the
// count that implies follow, and the median of the three costs per message sets the
// count. A probe of a message or two would not do: the first messages of a batch pay for
// waking the receiver and libzmq's I/O thread, which overstates a cheap message's cost
// tens of times, and the resulting sub-millisecond batches measure thread wake-ups, not
// placements. One probe alone is noisy too, and two modes doing the same work (the tuned
// policy and the placement it picks) should get about the same count.
int CalibrateCount(Channel& channel, const Buffer& payload, Placement mode, size_t tuned_threshold,
                   double batch_ns, uint64_t* sent) {
  auto count_for = [&](double per) {
    return static_cast<int>(std::clamp(per > 0 ? batch_ns / per : 1.0, 1.0, static_cast<double>(kMaxBatch)));
  };
  Samples probe;
  for (int n = 1;; n *= 4) {
    RunBatch(channel, payload, mode, tuned_threshold, n, sent, &probe);
    if (probe.cost.back() * n >= batch_ns / 4 || n >= kMaxBatch) break;
  }
  std::vector<double> per = {probe.cost.back()};
  for (int i = 0; i < 2; ++i) {
    RunBatch(channel, payload, mode, tuned_threshold, count_for(per.back()), sent, &probe);
    per.push_back(probe.cost.back());
  }
  return count_for(Median(per));
}

}  // namespace

std::vector<TransportResult> Sweep(const SweepOptions& options) {
  UseReusingAllocator(true);
  std::vector<size_t> sizes = options.sizes.empty() ? DefaultSizes(options.quick) : options.sizes;
  // Multiples of 6: every order of three modes equally often (see below).
  int rounds = options.rounds > 0 ? options.rounds : 6;
  double batch_ns = options.batch_ns > 0 ? options.batch_ns : (options.quick ? 5e6 : 20e6);
  std::vector<Placement> modes = {Placement::kInline, Placement::kFrame};
  if (options.copied_frame) modes.push_back(Placement::kCopiedFrame);
  if (options.tuned) modes.push_back(Placement::kTuned);

  size_t max_size = 0;
  for (size_t s : sizes) max_size = std::max(max_size, s);
  Buffer source = Buffer::Allocate(std::max<size_t>(max_size, 1));
  for (size_t i = 0; i < source.size(); ++i) source.mutable_data()[i] = static_cast<std::byte>(i * 131);

  zmq::context_t ctx(1);
  std::vector<TransportResult> results;
  double total_steps = static_cast<double>(options.transports.size() * sizes.size());
  double step = 0;
  for (const std::string& transport : options.transports) {
    TransportResult tr;
    tr.transport = transport;
    tr.tuned_threshold = Policy::Load(transport).inline_threshold;
    Channel channel(ctx, transport);
    uint64_t sent = 0;
    for (size_t size : sizes) {
      if (options.progress) {
        options.progress(step / total_steps, absl::StrCat(transport, " ", FormatBytes(static_cast<double>(size))));
      }
      Buffer payload = source.Slice(0, size);
      // Each mode's batch is sized on its own, so every batch costs about batch_ns of
      // process CPU whatever the placement costs (see CalibrateCount).
      int count[kPlacements] = {};
      for (Placement m : modes) {
        count[static_cast<int>(m)] = CalibrateCount(channel, payload, m, tr.tuned_threshold, batch_ns, &sent);
      }
      Samples samples[kPlacements];
      // Each round runs the modes in the next permutation of their order, so every mode
      // follows every other equally often (a batch can leave state behind: socket
      // buffers, the allocator, caches).
      std::vector<Placement> order = modes;
      std::sort(order.begin(), order.end());
      for (int r = 0; r < rounds; ++r) {
        for (Placement m : order) {
          RunBatch(channel, payload, m, tr.tuned_threshold, count[static_cast<int>(m)], &sent,
                   &samples[static_cast<int>(m)]);
        }
        if (!std::next_permutation(order.begin(), order.end())) std::sort(order.begin(), order.end());
      }
      if (std::getenv("ZEROCAN_TUNE_SAMPLES") != nullptr) {
        // Diagnostics: every round's sample (process CPU ns per message) per mode.
        std::fprintf(stderr, "%s %zu B\n", transport.c_str(), size);
        for (Placement m : modes) {
          std::fprintf(stderr, "  %-16s %6d:", PlacementName(m), count[static_cast<int>(m)]);
          for (double c : samples[static_cast<int>(m)].cost) std::fprintf(stderr, " %8.0f", c);
          std::fprintf(stderr, "  faults/msg %.1f", Median(samples[static_cast<int>(m)].faults));
          std::fprintf(stderr, "\n");
        }
      }
      PointResult point;
      point.size = size;
      for (Placement m : modes) {
        int k = static_cast<int>(m);
        point.measured[k] = true;
        point.cost[k] = MakeStat(samples[k].cost);
        point.sender_cpu[k] = MakeStat(samples[k].sender);
        point.wall[k] = MakeStat(samples[k].wall);
        point.faults[k] = MakeStat(samples[k].faults);
      }
      if (options.tuned) {
        const auto& inl = samples[static_cast<int>(Placement::kInline)].cost;
        const auto& frame = samples[static_cast<int>(Placement::kFrame)].cost;
        const auto& tuned = samples[static_cast<int>(Placement::kTuned)].cost;
        const auto& best = Median(inl) <= Median(frame) ? inl : frame;
        std::vector<double> ratios;
        for (size_t r = 0; r < tuned.size() && r < best.size(); ++r) {
          if (best[r] > 0) ratios.push_back(tuned[r] / best[r]);
        }
        point.tuned_paired = Median(ratios);
      }
      tr.points.push_back(point);
      step += 1;
    }
    std::vector<size_t> ss;
    std::vector<double> inl, frame, copied;
    for (const PointResult& p : tr.points) {
      ss.push_back(p.size);
      inl.push_back(p.cost[static_cast<int>(Placement::kInline)].median);
      frame.push_back(p.cost[static_cast<int>(Placement::kFrame)].median);
      copied.push_back(p.cost[static_cast<int>(Placement::kCopiedFrame)].median);
    }
    tr.threshold = ChooseThreshold(ss, inl, frame);
    if (options.copied_frame) tr.copy_crossover = ChooseThreshold(ss, copied, frame);
    results.push_back(std::move(tr));
  }
  if (options.progress) options.progress(1.0, "done");
  return results;
}

MemoryResult MeasureMemoryPolicy(bool quick, const std::function<void(double, const std::string&)>& progress) {
  MemoryResult result;
  result.message_bytes = quick ? (size_t{64} << 20) : (size_t{128} << 20);
  int rounds = quick ? 2 : 3;
  int per_batch = quick ? 2 : 3;
  bool was_on = ReusingAllocatorEnabled();
  // On while the threads start, so every thread allocates from the one reusable heap
  // (see UseReusingAllocator); the "defaults" rounds then switch it off.
  UseReusingAllocator(true);
  std::vector<double> gbps[2], faults[2], cpu_gbps[2];
  {
    zmq::context_t ctx(1);
    Channel channel(ctx, "tcp");
    uint64_t sent = 0;
    for (int r = 0; r < rounds * 2; ++r) {
      bool reuse = (r % 2) == 1;
      if (progress) progress(static_cast<double>(r) / (rounds * 2), reuse ? "memory: reuse" : "memory: glibc defaults");
      UseReusingAllocator(reuse);
      // A fresh buffer per message, as a program producing new data has: allocated,
      // filled, sent without a copy, released when libzmq is done with it. The first
      // message after switching policies is a warm-up (steady state is what counts).
      auto one = [&](int i) {
        Buffer data = reuse ? AllocateLarge(result.message_bytes) : Buffer::Allocate(result.message_bytes);
        std::memset(data.mutable_data(), i + 1, data.size());
        EnvelopeWriter w;
        w.StartApply("p", 1, 0).arg(0).Bytes(std::move(data));
        Send(channel.tx(), w.Finish());
        ++sent;
        channel.WaitFor(sent);
      };
      one(0);
      long f0 = MinorFaults();
      double t0 = NowNs(), c0 = CpuNs();
      for (int i = 0; i < per_batch; ++i) one(i + 1);
      double dt = NowNs() - t0, dc = CpuNs() - c0;
      long f1 = MinorFaults();
      cpu_gbps[reuse].push_back(static_cast<double>(result.message_bytes) * per_batch / dc);
      gbps[reuse].push_back(static_cast<double>(result.message_bytes) * per_batch / dt);
      faults[reuse].push_back(static_cast<double>(f1 - f0) / per_batch);
    }
  }
  UseReusingAllocator(was_on);
  result.default_gbps = MakeStat(gbps[0]);
  result.reuse_gbps = MakeStat(gbps[1]);
  result.default_faults = MakeStat(faults[0]);
  result.reuse_faults = MakeStat(faults[1]);
  result.ratio = result.default_gbps.median > 0 ? result.reuse_gbps.median / result.default_gbps.median : 0;
  result.default_cpu_gbps = MakeStat(cpu_gbps[0]);
  result.reuse_cpu_gbps = MakeStat(cpu_gbps[1]);
  result.cpu_ratio = result.default_cpu_gbps.median > 0
                         ? result.reuse_cpu_gbps.median / result.default_cpu_gbps.median
                         : 0;
  if (progress) progress(1.0, "memory: done");
  return result;
}

namespace {
bool g_progress_drawn = false;
}

std::function<void(double, const std::string&)> TerminalProgress() {
  if (!isatty(STDERR_FILENO)) return {};
  return [](double fraction, const std::string& what) {
    constexpr int kWidth = 30;
    int filled = static_cast<int>(fraction * kWidth + 0.5);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r[%s] %3.0f%% %-28s", bar.c_str(), fraction * 100, what.c_str());
    std::fflush(stderr);
    g_progress_drawn = true;
  };
}

void ClearProgress() {
  if (g_progress_drawn) {
    std::fprintf(stderr, "\r%70s\r", "");
    std::fflush(stderr);
    g_progress_drawn = false;
  }
}

}  // namespace zerocan::tools
