// Pacing: why zerocan's loopback listeners take connections off BBR.
//
// Linux hosts increasingly default to BBR (net.ipv4.tcp_congestion_control), which paces
// each connection at its own running estimate of the path's bandwidth. Between two
// processes on one host there is no path to estimate (no queue, no loss), and the
// estimate comes from bursty, application-limited traffic: a 256 MB frame, then a pause
// for the reply. It settles wherever the first bursts put it and caps the connection
// there for good. On the 2-vCPU machines we measure on, a 256 MB echo over tcp loopback
// ran at ~6 GB/s on most connections and at 3.4-5.4 GB/s on about one in four (`ss -ti`
// showed pacing_rate 37 Gbps on a slow one, ~100 Gbps on the others); with the host on
// cubic or reno, 20 runs out of 20 ran at ~6 GB/s.
//
// What a program can change: a connection's congestion control is fixed when the
// connection is made, from its listener's (when set with TCP_CONGESTION) or the host's
// default. Switching a BBR connection to reno afterwards does not help: the kernel goes
// on pacing a socket BBR has run on, at reno's cwnd/rtt rate, which left some connections
// slower still (4.2 GB/s). BindUnpaced sets "reno" (not paced unless something asks for
// it: an fq qdisc on lo, SO_MAX_PACING_RATE; every process may choose it) on the
// listening socket of a tcp:// bind to a loopback address (127.0.0.0/8, ::1), when its
// congestion control is a "bbr..." one: every connection it accepts is born unpaced.
// Connections zerocan makes (connect) keep the host's choice, as do listeners on other
// addresses, whose peers may be remote and where pacing is what BBR is for.
//
// This is the application's choice, never the library's: congestion control is a
// process decision, and BindUnpaced replaces any socket monitor the caller had. Engines
// and brokers bind this way only with `EngineOptions::unpace_local_tcp = true` /
// `BrokerOptions::unpace_local_tcp = true` (default false: a plain bind, the socket and
// its monitor untouched); a program that opts in should say so in its --help.
#pragma once

#include <string>
#include <string_view>

#include <zmq.hpp>

namespace zerocan {

// What BindUnpaced did with the listener.
enum class Unpacing {
  kSwitched,      // a loopback tcp:// listener, moved from bbr... to reno
  kNotPaced,      // a loopback tcp:// listener on a congestion control that does not pace
  kNotLoopback,   // a tcp:// listener on another address: left as it is
  kNoTcpListener, // not a tcp:// bind (ipc://, inproc://...)
  kRefused,       // the kernel refused reno
  kNotSeen,       // bound, but libzmq did not report the listener (no monitor to be had,
                  // or interrupted): left as it is
};

std::string_view UnpacingName(Unpacing u);

// The congestion control of TCP socket `fd` ("" if it has none: not a TCP socket).
std::string CongestionControl(int fd);

// Binds `socket` to `url` as socket.bind(url) does (throws zmq::error_t alike, and
// nothing else once bound), then, for a tcp:// listener on a loopback address whose
// congestion control is "bbr...", sets "reno" on it, so that the connections it accepts
// are never paced. The listener's descriptor comes from a libzmq socket monitor that
// lives only for this call: a socket has at most one, so a monitor the caller had on
// `socket` is replaced and then gone. Call it on the thread that owns `socket`. A
// connection accepted in the microseconds between the bind and the switch keeps the
// host's default (with a fixed port and peers already retrying, a real window; closing
// it means making the listener yourself, reno before listen(), and ZMQ_USE_FD). A
// route's own congestion control (`ip route ... congctl`) overrides the listener's.
Unpacing BindUnpaced(zmq::context_t& context, zmq::socket_t& socket, const std::string& url);

}  // namespace zerocan
