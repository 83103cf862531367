"""What an engine's clients may make it hold, and for how long (the C++ ConnectionGuard,
src/transport/connection_guard.h), judged from the kernel's counters of each tcp
connection a bound socket accepted:

- idle: a connection from which no byte arrived for ``idle_timeout`` seconds is closed
  (live peers answer the ZMTP pings limit_connections sets; an upload still arriving,
  however slowly, is never idle);
- budget: bytes received (TCP_INFO) less those still in the kernel's queue is what
  libzmq took; less the wire bytes of the messages read from the connection, it is what
  libzmq still holds. Past the budget, connections are closed, those that sent nothing
  since the last look first, then the largest, until the rest fit.

Closing is a shutdown on a duplicate of libzmq's descriptor: libzmq sees the peer leave
and frees what it held. Checked every 50 ms (10 ms past half the budget). Used by the
engine's I/O thread only.
"""

from __future__ import annotations

import os
import socket as _socket
import termios
import time
from typing import Any, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

from ._watch import tcp_counters

# struct tcp_info (linux/tcp.h): u32 tcpi_last_data_recv (ms) at byte 52, u64
# tcpi_bytes_received at byte 128.
_LAST_DATA_RECV_OFFSET = 52
_BYTES_RECEIVED_OFFSET = 128
# The greeting and handshake commands before the first message (a few hundred bytes;
# CurveZMQ's under 1 KiB) are credited up front; afterwards a quiet connection holding
# no more than the slack (ZMTP pings and pongs) is taken to hold nothing.
_HANDSHAKE_ALLOWANCE = 4096
_COMMAND_SLACK = 256
_INTERVAL = 0.05
_INTERVAL_NEAR_BUDGET = 0.01


def wire_bytes(size: int, curve: bool) -> int:
    """Bytes a frame of `size` bytes takes on the wire: ZMTP 3's flags byte and a 1-byte
    size up to 255 (else 8 bytes); CurveZMQ boxes it in a MESSAGE command (name 8, nonce
    8, MAC 16, flags 1)."""
    if curve:
        size += 8 + 8 + 16 + 1
    return size + (9 if size > 255 else 2)


class _Connection:
    __slots__ = ("delivered", "taken", "tcp")

    def __init__(self) -> None:
        self.delivered = _HANDSHAKE_ALLOWANCE
        self.taken = 0
        self.tcp = True


class ConnectionGuard:
    def __init__(self, max_bytes: int, idle_timeout: float, curve: bool) -> None:
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.curve = curve
        self.held_bytes = 0
        self.closed_over_budget = 0
        self.closed_idle = 0
        self.next_check = float("inf")
        self._monitors: list[tuple[zmq.Socket, zmq.Socket]] = []  # (socket, monitor)
        self._connections: dict[int, _Connection] = {}

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        """Monitors the connections `sock` accepts from now on (call after each bind);
        returns the monitor socket, to poll."""
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        for i, (s, old) in enumerate(self._monitors):
            if s is sock:  # watched again after another bind
                old.close(linger=0)
                self._monitors[i] = (sock, monitor)
                return monitor
        self._monitors.append((sock, monitor))
        return monitor

    def monitors(self) -> list[zmq.Socket]:
        return [m for _, m in self._monitors]

    def read_events(self, now: Optional[float] = None) -> None:
        for _, monitor in self._monitors:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except (zmq.Again, zmq.ZMQError):
                    break
                fd = int(event["value"])
                if event["event"] == zmq.EVENT_ACCEPTED:
                    # A descriptor number is reused once libzmq closed it: a new connection.
                    self._connections[fd] = _Connection()
                    if self.max_bytes > 0 or self.idle_timeout > 0:
                        t = time.monotonic() if now is None else now
                        self.next_check = min(self.next_check, t + _INTERVAL)
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self._connections.pop(fd, None)

    def delivered(self, parts: list[Any]) -> None:
        """A message read from a watched ROUTER: `parts` as recv_multipart(copy=False)
        gave them (the first, the routing id, was added by the socket)."""
        if not self._connections or len(parts) < 2:
            return
        try:
            fd = parts[-1].get(zmq.SRCFD)
        except (zmq.ZMQError, AttributeError):
            return
        c = self._connections.get(fd)
        if c is not None:
            c.delivered += sum(wire_bytes(len(p), self.curve) for p in parts[1:])

    def check(self, now: float) -> None:
        """Looks at every connection when due, closing the idle ones and what is over
        the budget."""
        if (self.max_bytes <= 0 and self.idle_timeout <= 0) or now < self.next_check:
            return
        self.read_events(now)  # so that no descriptor closed below was reused
        holders: list[tuple[bool, int, int]] = []  # (sending, held, fd)
        idle: list[int] = []
        total = 0
        for fd, c in self._connections.items():
            if not c.tcp:
                continue
            counters = tcp_counters(fd, termios.FIONREAD)  # SIOCINQ
            if counters is None or len(counters[0]) < _BYTES_RECEIVED_OFFSET + 8:
                c.tcp = False  # ipc, or closed (its event follows)
                continue
            info, unread = counters
            quiet_ms = int.from_bytes(info[_LAST_DATA_RECV_OFFSET:_LAST_DATA_RECV_OFFSET + 4],
                                      "little")
            if 0 < self.idle_timeout < quiet_ms / 1000:
                idle.append(fd)  # not even a pong: stalled inside a frame, or gone
                continue
            received = int.from_bytes(info[_BYTES_RECEIVED_OFFSET:_BYTES_RECEIVED_OFFSET + 8],
                                      "little")
            taken = received - min(received, unread)
            sending = taken != c.taken
            c.taken = taken
            held = max(0, taken - c.delivered)
            if not sending and held <= _COMMAND_SLACK:
                c.delivered = max(c.delivered, taken)  # pings and pongs, not a frame
                held = 0
            if held:
                holders.append((sending, held, fd))
                total += held
        for fd in idle:
            self.closed_idle += 1  # counted first: a peer may see the close at once
            self._close(fd)
        if 0 < self.max_bytes < total:
            holders.sort(key=lambda h: (h[0], -h[1]))  # stalled first, then the largest
            for _, held, fd in holders:
                if total <= self.max_bytes:
                    break
                self.closed_over_budget += 1
                self._close(fd)
                total -= held
        self.held_bytes = total
        if not self._connections:
            interval = 1.0
        elif self.max_bytes <= 0:
            interval = min(max(self.idle_timeout / 10, _INTERVAL), 1.0)
        elif total > self.max_bytes // 2:
            interval = _INTERVAL_NEAR_BUDGET
        else:
            interval = _INTERVAL
        self.next_check = now + interval

    def _close(self, fd: int) -> None:
        # libzmq owns the descriptor: shut the connection down through a duplicate and
        # let libzmq close it once it saw the peer leave.
        try:
            with _socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self._connections.pop(fd, None)

    def close(self) -> None:
        for sock, monitor in self._monitors:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)
        self._monitors = []
