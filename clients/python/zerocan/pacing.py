"""Loopback listeners that take their connections off BBR's pacing (C++: pacing.h).

On a host whose TCP congestion control is BBR, each connection is paced at BBR's own
estimate of the path's bandwidth; between two processes on one host that estimate
settles low on about one connection in four (a 256 MB echo at 3.4-5.4 GB/s instead of
~6), for the connection's life. A connection's congestion control is fixed when it is
made, from its listener's when the listener chose one, so ``bind_unpaced`` sets "reno"
(never paced; any process may choose it) on the listener of a tcp:// bind to a loopback
address when the listener's control is a "bbr..." one. Other listeners, and connections
made with connect(), keep the host's choice.

Congestion control is the application's choice, never the library's: engines bind this
way only when told (``Engine(..., unpace_local_tcp=True)``; default False).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from typing import Iterator, Optional

import zmq

__all__ = ["SWITCHED", "NOT_PACED", "NOT_LOOPBACK", "NO_TCP_LISTENER", "REFUSED", "NOT_SEEN",
           "bind_unpaced", "congestion_control"]

# What bind_unpaced did (the names of the C++ Unpacing values).
SWITCHED = "switched to reno"
NOT_PACED = "not a pacing congestion control"
NOT_LOOPBACK = "not a loopback address"
NO_TCP_LISTENER = "not a tcp listener"
REFUSED = "reno refused"
NOT_SEEN = "listener not seen"  # bound, but libzmq did not report the listener: left as is

_calls = 0


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object over ``fd`` that leaves it open (no duplicate to leak: CPython
    keeps a dup()ed descriptor that turns out not to be a socket)."""
    s = socket.socket(fileno=fd)
    try:
        yield s
    finally:
        s.detach()


def congestion_control(fd: int) -> str:
    """The congestion control of TCP socket ``fd`` ("" if it is not one)."""
    try:
        with _borrowed(fd) as s:
            name: bytes = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except (OSError, AttributeError):  # not a socket / not TCP / not Linux
        return ""
    return name.split(b"\0", 1)[0].decode("ascii", "replace")


def _unpace_listener(fd: int) -> str:
    try:
        with _borrowed(fd) as s:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                return NO_TCP_LISTENER
            host = s.getsockname()[0]
            address = ipaddress.ip_address(host.split("%", 1)[0])
            mapped = getattr(address, "ipv4_mapped", None)
            if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
                return NOT_LOOPBACK
            name = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
            if not name.startswith(b"bbr"):
                return NOT_PACED
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
            except OSError:
                return REFUSED
    except (OSError, AttributeError, ValueError):
        return NOT_SEEN
    return SWITCHED


def bind_unpaced(context: zmq.Context, sock: zmq.Socket, url: str) -> str:
    """Binds ``sock`` to ``url`` (raises as ``sock.bind`` does); then, for a tcp:// listener
    on a loopback address running a "bbr..." congestion control, sets "reno" on it.
    Returns what it did (one of this module's constants)."""
    global _calls
    if not url.startswith("tcp://"):
        sock.bind(url)
        return NO_TCP_LISTENER
    _calls += 1
    # libzmq reports the listener (with its descriptor) to a monitor inside bind().
    endpoint = f"inproc://zerocan-py-bind-{id(sock)}-{os.getpid()}-{_calls}"
    try:
        sock.monitor(endpoint, zmq.EVENT_LISTENING)
    except zmq.ZMQError:
        sock.bind(url)  # no monitor to be had: bind as it is
        return NOT_SEEN
    monitor: Optional[zmq.Socket] = None
    try:  # from here the monitor must go whatever happens: its sends block
        try:
            monitor = context.socket(zmq.PAIR)
            monitor.linger = 0
            monitor.connect(endpoint)
        except zmq.ZMQError:
            monitor = None
        sock.bind(url)  # raises as bind does
        # Bound: nothing below may raise (a caller would take it for a failed bind).
        try:
            if monitor is not None and monitor.poll(200):
                frames = monitor.recv_multipart()
                event, value = struct.unpack("=HI", frames[0][:6])
                if event == zmq.EVENT_LISTENING:
                    return _unpace_listener(value)
        except (zmq.ZMQError, struct.error):
            pass
        return NOT_SEEN
    finally:
        sock.disable_monitor()
        if monitor is not None:
            monitor.close(0)
