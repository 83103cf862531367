// Measuring helpers shared by `zerocan tune` (tools/tune_measure.cc) and the benchmark
// program (bench/): clocks, medians, a sink that keeps the optimiser honest, and table
// formatting. Header-only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

namespace zerocan::tools {

// Results fold into this so the compiler cannot drop the work being timed.
inline volatile uint64_t g_sink = 0;
inline void Sink(uint64_t v) { g_sink = g_sink + v; }

inline double NowNs() {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count());
}

// CPU time of the whole process (every thread, libzmq's I/O threads included). The
// machines these run on are small and shared: wall time of a batch includes whatever
// else was scheduled, CPU time is the cost of the work itself.
inline double CpuNs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Half the distance between the 25th and 75th percentile, relative to the median.
inline double RelativeSpread(std::vector<double> v) {
  if (v.size() < 2) return 0;
  std::sort(v.begin(), v.end());
  double q1 = v[v.size() / 4], q3 = v[(3 * v.size()) / 4];
  double m = Median(v);
  return m > 0 ? (q3 - q1) / 2 / m : 0;
}

// Lets the process's other threads (libzmq's I/O threads, a receiver) go idle. Linux
// brings a thread's CPU time up to date when it is switched out or at a scheduler tick:
// read while another thread is still running, the process clock misses up to a tick
// (4 ms at HZ=250) of that thread's time, which is tens of percent of a 20 ms batch.
// After this, every other thread has blocked and been accounted.
inline void SettleThreads() { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }

// "123 ns", "4.56 µs", "7.89 ms", "1.23 s".
inline std::string FormatNs(double ns) {
  char buf[32];
  if (ns < 1e3) {
    std::snprintf(buf, sizeof buf, "%.0f ns", ns);
  } else if (ns < 1e6) {
    std::snprintf(buf, sizeof buf, "%.2f us", ns / 1e3);
  } else if (ns < 1e9) {
    std::snprintf(buf, sizeof buf, "%.2f ms", ns / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f s", ns / 1e9);
  }
  return buf;
}

// "512 B", "2.0 KiB", "64.0 MiB", "1.00 GiB".
inline std::string FormatBytes(double b) {
  char buf[32];
  if (b < 1024) {
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  } else if (b < 1024.0 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024);
  } else if (b < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1024 / 1024);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1024 / 1024 / 1024);
  }
  return buf;
}

inline std::string FormatRatio(double r) {
  char buf[32];
  if (r <= 0) return "-";
  std::snprintf(buf, sizeof buf, r >= 100 ? "%.0fx" : r >= 10 ? "%.1fx" : "%.2fx", r);
  return buf;
}

// Fixed-width text table: columns sized to their widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(FILE* out = stdout) const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], DisplayWidth(r[i]));
    }
    for (size_t k = 0; k < rows_.size(); ++k) {
      const auto& r = rows_[k];
      for (size_t i = 0; i < r.size(); ++i) {
        std::fprintf(out, "%s%s", i == 0 ? "" : "  ", r[i].c_str());
        if (i + 1 < r.size()) {
          for (size_t p = DisplayWidth(r[i]); p < width[i]; ++p) std::fputc(' ', out);
        }
      }
      std::fputc('\n', out);
      if (k == 0) {
        size_t total = 0;
        for (size_t w : width) total += w + 2;
        std::fprintf(out, "%s\n", std::string(total > 2 ? total - 2 : 0, '-').c_str());
      }
    }
  }

 private:
  static size_t DisplayWidth(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;  // count UTF-8 code points
    return n;
  }
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace zerocan::tools
