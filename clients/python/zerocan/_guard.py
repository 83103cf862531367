"""What an engine's clients may make it hold, and for how long (the C++ ConnectionGuard,
src/transport/connection_guard.h), judged from the kernel's counters of each tcp
connection a bound socket accepted:

- idle: a connection that showed no life for ``idle_timeout`` seconds is closed: no
  byte came from the peer, and it took none of a frame of ours still being sent (live
  peers answer the ZMTP pings limit_connections sets; an upload still arriving, or a
  download still being taken, however slowly, is never idle);
- budget: bytes received (TCP_INFO) less those still in the kernel's queue is what
  libzmq took; less the wire bytes of the messages read from the connection, it is what
  libzmq still holds. Past the budget, connections are closed, those that sent less than
  256 KiB/s since the last look first, then the largest, until the rest fit.

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
# tcpi_bytes_acked at byte 120 and tcpi_bytes_received at 128.
_LAST_DATA_RECV_OFFSET = 52
_BYTES_ACKED_OFFSET = 120
_BYTES_RECEIVED_OFFSET = 128
# Below this rate since the last look, a connection holding bytes counts as stalled.
_SENDING_BYTES_PER_SECOND = 256 * 1024
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
    __slots__ = ("generation", "delivered", "taken", "tcp", "looked", "acked", "alive_at")

    def __init__(self, generation: int, now: float) -> None:
        self.generation = generation  # tells a reused descriptor number from this one
        self.delivered = _HANDSHAKE_ALLOWANCE
        self.taken = 0
        self.tcp = True
        self.looked = now
        self.acked = 0        # of our bytes, by the peer, at the last look
        self.alive_at = now   # when the peer last took more of a frame of ours


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
        self._generations = 0

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        """Monitors the connections `sock` accepts from now on (call after each bind);
        returns the monitor socket, to poll."""
        endpoint = f"inproc://zerocan-connections-{os.getpid()}-{id(self)}-{len(self._monitors)}-" \
                   f"{time.monotonic_ns()}"
        sock.monitor(endpoint, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        monitor = sock.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        # libzmq's I/O thread sends events with a blocking send: a bounded queue nobody
        # reads for a while (a long call, a stop) would stall every connection.
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.connect(endpoint)
        for i, (s, old) in enumerate(self._monitors):
            if s is sock:  # watched again after another bind: the old one hears nothing
                old.close(linger=0)
                self._monitors[i] = (sock, monitor)
                return monitor
        self._monitors.append((sock, monitor))
        return monitor

    def monitors(self) -> list[zmq.Socket]:
        return [m for _, m in self._monitors]

    def read_events(self, now: Optional[float] = None) -> None:
        t = time.monotonic() if now is None else now
        for _, monitor in self._monitors:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except (zmq.Again, zmq.ZMQError):
                    break
                fd = int(event["value"])
                if event["event"] == zmq.EVENT_ACCEPTED:
                    # A descriptor number is reused once libzmq closed it: a new connection.
                    self._generations += 1
                    self._connections[fd] = _Connection(self._generations, t)
                    if self.max_bytes > 0 or self.idle_timeout > 0:
                        self.next_check = min(self.next_check, t + _INTERVAL)
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self._connections.pop(fd, None)

    def delivered(self, parts: list[Any]) -> None:
        """A message read from a watched ROUTER: `parts` as recv_multipart(copy=False)
        gave them (the first, the routing id, was added by the socket)."""
        if not self._monitors or len(parts) < 2:
            return
        try:
            fd = parts[-1].get(zmq.SRCFD)
        except (zmq.ZMQError, AttributeError):
            return
        c = self._connections.get(fd)
        if c is None and fd >= 0:
            self.read_events()  # read before its connection's event was
            c = self._connections.get(fd)
        if c is not None:
            c.delivered += sum(wire_bytes(len(p), self.curve) for p in parts[1:])

    def _idle(self, fd: int, c: _Connection, info: bytes, now: float) -> float:
        """Seconds the connection showed no life: no byte from the peer, and none of a
        frame of ours taken (our pings wait behind it) since the previous look."""
        quiet = int.from_bytes(info[_LAST_DATA_RECV_OFFSET:_LAST_DATA_RECV_OFFSET + 4],
                               "little") / 1000
        acked = int.from_bytes(info[_BYTES_ACKED_OFFSET:_BYTES_ACKED_OFFSET + 8], "little")
        if acked != c.acked:
            sending = tcp_counters(fd, termios.TIOCOUTQ)
            if sending is not None and sending[1] > 0:
                c.alive_at = c.looked
            c.acked = acked
        return min(quiet, now - c.alive_at)

    def check(self, now: float) -> None:
        """Looks at every connection when due, closing the idle ones and what is over
        the budget."""
        if (self.max_bytes <= 0 and self.idle_timeout <= 0) or now < self.next_check:
            return
        self.read_events(now)
        holders: list[tuple[bool, int, int, int]] = []  # (sending, held, fd, generation)
        doomed: list[tuple[int, int]] = []  # (fd, generation)
        total = 0
        for fd, c in self._connections.items():
            if not c.tcp:
                continue
            counters = tcp_counters(fd, termios.FIONREAD)  # SIOCINQ
            if counters is None or len(counters[0]) < _BYTES_RECEIVED_OFFSET + 8:
                c.tcp = False  # ipc, or closed (its event follows)
                continue
            info, unread = counters
            if 0 < self.idle_timeout < self._idle(fd, c, info, now):
                doomed.append((fd, c.generation))  # stalled inside a frame, or gone
                self.closed_idle += 1  # counted first: a peer may see the close at once
                c.looked = now
                continue
            received = int.from_bytes(info[_BYTES_RECEIVED_OFFSET:_BYTES_RECEIVED_OFFSET + 8],
                                      "little")
            taken = received - min(received, unread)
            moved = taken != c.taken
            sending = taken - c.taken >= _SENDING_BYTES_PER_SECOND * max(now - c.looked, 1e-3)
            c.taken, c.looked = taken, now
            # What was read from a connection came off it: a count above that is credit
            # for messages of an earlier connection with the same descriptor number.
            c.delivered = min(c.delivered, taken + _HANDSHAKE_ALLOWANCE)
            held = max(0, taken - c.delivered)
            if not moved and held <= _COMMAND_SLACK:
                c.delivered = max(c.delivered, taken)  # pings and pongs, not a frame
                held = 0
            if held:
                holders.append((sending, held, fd, c.generation))
                total += held
        if 0 < self.max_bytes < total:
            holders.sort(key=lambda h: (h[0], -h[1]))  # stalled first, then the largest
            for _, held, fd, generation in holders:
                if total <= self.max_bytes:
                    break
                self.closed_over_budget += 1
                doomed.append((fd, generation))
                total -= held
        if doomed:
            # Events once more: a connection closed meanwhile, its number taken by a new
            # one, must not be shut down in its place.
            self.read_events(now)
            for fd, generation in doomed:
                still = self._connections.get(fd)
                if still is not None and still.generation == generation:
                    self._close(fd)
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
