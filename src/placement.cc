#include "zerocan/placement.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <string>

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

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

std::unique_ptr<zmq::context_t> MakeContext(const std::vector<int>& io_cpus,
                                            std::string_view who) {
  auto context = std::make_unique<zmq::context_t>(1);
  if (io_cpus.empty()) return context;
  std::vector<int> allowed = AllowedCpus();
  for (int cpu : io_cpus) {
    // libzmq applies the set when its I/O thread starts (the first socket) and aborts
    // the process if the kernel refuses it, so refuse here, where it can be reported.
    if (!std::binary_search(allowed.begin(), allowed.end(), cpu)) {
      throw Error(absl::StrCat(internal::Sv(who), ": io_cpus: CPU ", cpu,
                               " is not one this process may run on (",
                               FormatCpuList(allowed), ")"));
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
    throw Error(absl::StrCat(internal::Sv(who), ": io_cpus places the I/O thread of a context ",
                             internal::Sv(who), " makes; with options.context given, set "
                             "ZMQ_THREAD_AFFINITY_CPU_ADD on that context instead"));
  }
  return *given;
}

}  // namespace zerocan
