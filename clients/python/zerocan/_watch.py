"""Watches a client's connection (the C++ client's ConnectionWatch, src/connection_watch.h).

A process that died closes its connection: libzmq's socket monitor reports the
disconnect at once. What closes nothing (a stopped process, a cut link) is caught by
ZMTP heartbeats, a ping every ``heartbeat`` seconds. libzmq's own verdict on them counts
only complete frames, so a large reply arriving over a slow link for longer than the
window would be taken for silence (and a long upload holds our pings back); on tcp the
verdict is therefore the kernel's: the connection is lost when for ``heartbeat *
liveness`` no byte came from the peer and it acknowledged none of ours (TCP_INFO), and the
watch drops it and connects again. Only a loss after
a completed handshake counts: a connection that never got through keeps its calls to
their deadlines.
"""

from __future__ import annotations

import fcntl
import os
import socket as _socket
import struct
import termios
import time
from typing import Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

# struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s (last_data_recv is the
# 12th), then u64s from byte 104 (bytes_acked is the third).
_LAST_DATA_RECV_OFFSET = 8 + 11 * 4
_BYTES_ACKED_OFFSET = 120


def tcp_counters(fd: int, queue_ioctl: int) -> Optional[tuple[bytes, int]]:
    """(struct tcp_info, the queue size that `queue_ioctl` reads: TIOCOUTQ or FIONREAD)
    of libzmq's tcp descriptor `fd`, read through a duplicate so the original is never
    touched; None where it is not one (or gone)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        with _socket.socket(fileno=dup) as s:
            info = s.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, 136)
            queued = struct.unpack("i", fcntl.ioctl(s.fileno(), queue_ioctl, b"\0\0\0\0"))[0]
    except OSError:
        return None
    return info, queued


def _tcp_progress(fd: int) -> Optional[tuple[int, int, int]]:
    """(ms since the peer last sent data, bytes of ours it acknowledged, bytes of ours
    still queued) for libzmq's descriptor `fd`."""
    counters = tcp_counters(fd, termios.TIOCOUTQ)
    if counters is None or len(counters[0]) < _BYTES_ACKED_OFFSET + 8:
        return None
    info, queued = counters
    return (struct.unpack_from("I", info, _LAST_DATA_RECV_OFFSET)[0],
            struct.unpack_from("Q", info, _BYTES_ACKED_OFFSET)[0], queued)


class ConnectionWatch:
    def __init__(self, socket: zmq.Socket, url: str, heartbeat: Optional[float],
                 liveness: int) -> None:
        self._tcp = url.startswith("tcp://")
        self._url = url
        self._window_ms = 0
        #: How often lost() must be called while calls are in flight (seconds).
        self.check_interval: Optional[float] = None
        if heartbeat:
            ivl = max(1, int(heartbeat * 1000))
            window = ivl * max(1, liveness)
            self._window_ms = window
            self.check_interval = ivl / 1000.0
            socket.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            # On tcp the kernel's view decides (above); libzmq's timeout is a far backstop.
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, (1 << 30) if self._tcp else window)
            socket.setsockopt(zmq.HEARTBEAT_TTL, min(window, 6553500))
        self._watched = socket
        self.socket: Optional[zmq.Socket] = socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._established = False
        self._connecting_fd = -1
        self._fd = -1
        self._next_check = 0.0
        self._bytes_acked = 0
        self._last_progress = 0.0
        self._last_look = 0.0

    def lost(self, events_ready: bool = True) -> bool:
        """Reads the pending events (when the monitor socket was readable) and, at most
        once per check interval, the connection's silence; True when an established
        connection was lost."""
        lost = False
        while events_ready and self.socket is not None:
            try:
                event = recv_monitor_message(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                break
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_CONNECTED:
                self._connecting_fd = value
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._established = True
                self._fd = self._connecting_fd
                self._bytes_acked = 0
                self._last_progress = self._last_look = time.monotonic()
            elif kind == zmq.EVENT_DISCONNECTED and self._established and (
                    self._fd < 0 or value == self._fd):
                self._established = False
                self._fd = -1
                lost = True
        if not lost and self._silent_too_long():
            # Drop the silent connection and dial again (no DISCONNECTED follows).
            self._established = False
            self._fd = -1
            try:
                self._watched.disconnect(self._url)
                self._watched.connect(self._url)
            except zmq.ZMQError:
                pass
            lost = True
        return lost

    def _silent_too_long(self) -> bool:
        if not (self._tcp and self._established and self._fd >= 0 and self._window_ms):
            return False
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + (self.check_interval or 0.0)
        progress = _tcp_progress(self._fd)
        if progress is None:
            return False
        since_data, acked, queued = progress
        # Alive: the peer sent a byte (a pong, a reply) or took more of a frame of ours
        # still being sent (an upload; our pings wait behind it). A stopped process or a
        # cut link does neither; its kernel acknowledging a ping does not count.
        # The acknowledgement came some time after the previous look: alive then, at least.
        if acked != self._bytes_acked and queued > 0:
            self._last_progress = self._last_look
        self._bytes_acked = acked
        self._last_look = now
        return (since_data > self._window_ms and
                (now - self._last_progress) * 1000 > self._window_ms)

    def close(self) -> None:
        if self.socket is not None:
            try:
                self._watched.disable_monitor()
            except zmq.ZMQError:
                pass
            self.socket.close(linger=0)
            self.socket = None
