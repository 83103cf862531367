// Placement: which CPUs a channel's libzmq I/O thread may run on.
//
// Why it is an option: a large frame between two processes on one host is copied twice
// by the kernel, into the socket by the sender's I/O thread and out of it by the
// receiver's. On a small machine the scheduler often wakes both threads on the same
// CPU, and the copies then take turns: on the 2-vCPU machines we measure on, a 100 MB
// apply over tcp loopback takes ~21 ms with the two I/O threads on different CPUs and
// ~36 ms on one, and an unplaced pair flips between the two from run to run. Giving the
// client and the engine disjoint `io_cpus` (EngineOptions, ClientOptions, BrokerOptions;
// `--io-cpus` on the command line; `io_cpus=` in Python) keeps them apart. Only the
// threads of the channel's own context are placed (its I/O thread, and the reaper that
// closes its sockets): worker threads and the caller's threads run where they may.
//
// Empty = anywhere (libzmq's default). Each CPU must be one a thread of this process can
// run on (online and within its cpuset: UsableCpus(), which may be wider than the
// calling thread's own mask), checked when the channel is made, since libzmq aborts the
// process when it cannot place its threads. A placed channel owns its context, so it
// shares no inproc:// endpoints with channels on other contexts. A channel given a
// context (`context` option) cannot be placed by zerocan: set
// ZMQ_THREAD_AFFINITY_CPU_ADD on that context before its first socket.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

namespace zerocan {

// Parses a CPU list as taskset and cgroups write it: "3", "0,2", "0-3,8". Throws
// zerocan::Error naming the bad part; the result is sorted, without duplicates.
std::vector<int> ParseCpuList(std::string_view text);

// Formats a CPU list back ("0-3,8").
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs a thread of this process can be placed on: online and within its cpuset,
// found by placing a short-lived thread on each in turn (the calling thread's own mask,
// narrowed by taskset or sched_setaffinity, does not bound the others'). Sorted.
std::vector<int> UsableCpus();

// A context with one I/O thread that runs only on `io_cpus` (empty = anywhere). Throws
// zerocan::Error if a CPU is not in UsableCpus(), naming it and the usable set; `who`
// starts the message ("engine: io_cpus: CPU 5 is not ...").
std::unique_ptr<zmq::context_t> MakeContext(const std::vector<int>& io_cpus,
                                            std::string_view who);

// The context a channel (engine, client, broker) runs on: `given` when the caller
// passed one (then `io_cpus` must be empty: throws zerocan::Error otherwise), else a
// new one from MakeContext, owned by `*owned`.
zmq::context_t& ChannelContext(zmq::context_t* given, const std::vector<int>& io_cpus,
                               std::string_view who, std::unique_ptr<zmq::context_t>* owned);

}  // namespace zerocan
