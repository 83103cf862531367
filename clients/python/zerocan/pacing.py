"""Loopback listeners that take their connections off BBR's pacing (C++: pacing.h).

On a host whose TCP congestion control is BBR, each connection is paced at BBR's own
estimate of the path's bandwidth; between two processes on one host that estimate
settles low on about one connection in four (a 256 MB echo at 3.4-5.4 GB/s instead of
~6), for the connection's life. A connection's congestion control is fixed when it is
made, from its listener's when the listener chose one, so ``bind_unpaced`` sets "reno"
(never paced; any process may choose it) on the listener of a tcp:// bind to a loopback
address when the listener's control is a "bbr..." one. Other listeners, and connections
made with connect(), keep the host's choice.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

import zmq

__all__ = ["SWITCHED", "NOT_PACED", "NOT_LOOPBACK", "NO_TCP_LISTENER", "REFUSED",
           "bind_unpaced", "congestion_control"]

# What bind_unpaced did (the names of the C++ Unpacing values).
SWITCHED = "switched to reno"
NOT_PACED = "not a pacing congestion control"
NOT_LOOPBACK = "not a loopback address"
NO_TCP_LISTENER = "not a tcp listener"
REFUSED = "reno refused"

_calls = 0


def congestion_control(fd: int) -> str:
    """The congestion control of TCP socket ``fd`` ("" if it is not one)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            name: bytes = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except OSError:
        return ""
    return name.split(b"\0", 1)[0].decode("ascii", "replace")


def _unpace_listener(fd: int) -> str:
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return NO_TCP_LISTENER
    with s:
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
    sock.monitor(endpoint, zmq.EVENT_LISTENING)
    monitor = context.socket(zmq.PAIR)
    monitor.linger = 0
    result = NO_TCP_LISTENER
    try:
        monitor.connect(endpoint)
        sock.bind(url)
        if monitor.poll(200):
            frames = monitor.recv_multipart()
            event, value = struct.unpack("=HI", frames[0][:6])
            if event == zmq.EVENT_LISTENING:
                result = _unpace_listener(value)
    finally:
        sock.disable_monitor()
        monitor.close(0)
    return result
