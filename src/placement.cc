#include "zerocan/placement.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "zerocan/error.h"

namespace zerocan {

namespace {

int ParseCpu(std::string_view part, std::string_view text) {
  int cpu = -1;
  auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), cpu);
  if (ec != std::errc() || end != part.data() + part.size() || part.empty() || cpu < 0 ||
      cpu >= CPU_SETSIZE) {
    throw Error(absl::StrCat("CPU list \"", internal::Sv(text), "\": \"", internal::Sv(part),
                             "\" is not a CPU number (0..", CPU_SETSIZE - 1, ")"));
  }
  return cpu;
}

}  // namespace

std::vector<int> ParseCpuList(std::string_view text) {
  std::vector<int> cpus;
  std::string_view rest = text;
  while (true) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    size_t dash = item.find('-');
    if (dash == std::string_view::npos) {
      cpus.push_back(ParseCpu(item, text));
    } else {
      int first = ParseCpu(item.substr(0, dash), text);
      int last = ParseCpu(item.substr(dash + 1), text);
      if (last < first) {
        throw Error(absl::StrCat("CPU list \"", internal::Sv(text), "\": range \"",
                                 internal::Sv(item), "\" runs backwards"));
      }
      for (int c = first; c <= last; ++c) cpus.push_back(c);
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    absl::StrAppend(&out, cpus[i]);
    if (j > i) absl::StrAppend(&out, "-", cpus[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> UsableCpus() {
  long configured = sysconf(_SC_NPROCESSORS_CONF);
  const int limit = configured > 0 && configured < CPU_SETSIZE ? static_cast<int>(configured)
                                                                : CPU_SETSIZE;
  std::vector<int> usable;
  // On a thread of its own: placing it changes nothing else, and the caller's mask may
  // be narrower than what the process's other threads may use.
  std::thread probe([&usable, limit] {
    for (int cpu = 0; cpu < limit; ++cpu) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      if (pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0) usable.push_back(cpu);
    }
  });
  probe.join();
  return usable;
}

std::unique_ptr<zmq::context_t> MakeContext(const std::vector<int>& io_cpus,
                                            std::string_view who) {
  auto context = std::make_unique<zmq::context_t>(1);
  if (io_cpus.empty()) return context;
  std::vector<int> usable = UsableCpus();
  for (int cpu : io_cpus) {
    // libzmq applies the set when its threads start (the first socket) and aborts the
    // process if the kernel refuses all of it (it drops unusable CPUs silently), so
    // refuse each unusable CPU here, where it can be named.
    if (!std::binary_search(usable.begin(), usable.end(), cpu)) {
      throw Error(absl::StrCat(internal::Sv(who), ": io_cpus: CPU ", cpu,
                               " is not one this process may run on (",
                               FormatCpuList(usable), ")"));
    }
    if (zmq_ctx_set(context->handle(), ZMQ_THREAD_AFFINITY_CPU_ADD, cpu) != 0) {
      throw Error(absl::StrCat(internal::Sv(who), ": io_cpus: libzmq refused CPU ", cpu, ": ",
                               zmq_strerror(zmq_errno())));
    }
  }
  return context;
}

zmq::context_t& ChannelContext(zmq::context_t* given, const std::vector<int>& io_cpus,
                               std::string_view who, std::unique_ptr<zmq::context_t>* owned) {
  if (given == nullptr) {
    *owned = MakeContext(io_cpus, who);
    return **owned;
  }
  if (!io_cpus.empty()) {
    throw Error(absl::StrCat(internal::Sv(who), ": io_cpus places the threads of a context the ",
                             internal::Sv(who), " makes; with options.context given, set "
                             "ZMQ_THREAD_AFFINITY_CPU_ADD on that context instead"));
  }
  return *given;
}

}  // namespace zerocan
