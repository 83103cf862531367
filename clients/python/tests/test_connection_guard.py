"""The Python engine's connection guard (zerocan/_guard.py): its wire accounting adds up to
what the kernel received, and stalled peers past the budget are shut down while honest
calls go on."""

from __future__ import annotations

import socket
import struct
import termios
import time

import pytest
import zmq

import zerocan
from zerocan import curve
from zerocan._guard import wire_bytes
from zerocan._watch import tcp_counters

MIB = 1 << 20


def taken_from_kernel(fd: int) -> int:
    counters = tcp_counters(fd, termios.FIONREAD)
    assert counters is not None
    info, unread = counters
    return struct.unpack_from("Q", info, 128)[0] - unread


@pytest.mark.parametrize("use_curve", [False, True])
def test_wire_bytes_of_messages_add_up_to_what_the_kernel_received(use_curve):
    if use_curve and not curve.available():
        pytest.skip("libzmq built without CurveZMQ")
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        if use_curve:
            server = curve.generate_key_pair()
            curve.configure_server(router, server)
            curve.configure_client(dealer, server.public_key, curve.generate_key_pair())
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        wire, fd = 0, -1
        for _ in range(20):
            for size in (0, 1, 100, 222, 223, 255, 256, 300, 4096, 70000, MIB):
                dealer.send_multipart([b"", b"e" * size, b"p" * (size // 2)])
                parts = router.recv_multipart(copy=False)
                fd = parts[-1].get(zmq.SRCFD)
                wire += sum(wire_bytes(len(p), use_curve) for p in parts[1:])
        taken = taken_from_kernel(fd)
        # Only the greeting and the handshake commands are not messages.
        assert 0 <= taken - wire <= 1024, (taken, wire)
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def stalled_peer(port: int, sent: int) -> socket.socket:
    """A raw ZMTP 3.0 DEALER that sends `sent` bytes of a 32 MiB frame, then nothing."""
    s = handshaken_peer(port)
    s.sendall(bytes([0x02]) + struct.pack(">Q", 32 * MIB) + b"x" * sent)
    return s


def handshaken_peer(port: int) -> socket.socket:
    """A raw ZMTP 3.0 DEALER past its handshake (it never answers pings)."""
    s = socket.create_connection(("127.0.0.1", port))
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
    greeting += b"\x00" * 32
    body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(greeting + bytes([0x04, len(body)]) + body)
    got = b""
    while len(got) < 66 or len(got) < 66 + got[65]:  # the engine's greeting and READY
        chunk = s.recv(4096)
        assert chunk, "the engine closed the connection during the handshake"
        got += chunk
    return s


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


def test_an_engine_shuts_down_stalled_peers_past_its_budget_and_serves_others():
    engine = zerocan.Engine(idle_timeout=0, receive_budget=20 * MIB, threads=1)

    @engine.register
    def nbytes(a):
        return int(a.nbytes)

    url = engine.bind("tcp://127.0.0.1:*")
    engine.start()
    try:
        port = int(url.rsplit(":", 1)[1])
        peers = [stalled_peer(port, 6 * MIB) for _ in range(5)]
        time.sleep(0.3)
        closed = [closed_within(p, 0.5) for p in peers]
        # 5 x 6 MiB against 20 MiB: two go, three (18 MiB) stay.
        assert sum(closed) == 2
        assert engine._guard.closed_over_budget == 2
        # An honest client's 8 MiB arguments, call after call, over tcp (not in shared
        # memory): what it sends past the budget sheds a stalled peer, never itself.
        import numpy as np
        with zerocan.Client(url, timeout=5, shared_memory=False) as c:
            big = np.ones(MIB, dtype=np.float64)
            for _ in range(10):
                assert c.apply("nbytes", big).result() == 8 * MIB
        assert 2 <= engine._guard.closed_over_budget <= 5
        for p in peers:
            p.close()
    finally:
        engine.stop()


def test_an_upload_slower_than_the_idle_timeout_is_not_cut_but_a_stall_is():
    engine = zerocan.Engine(idle_timeout=0.6, threads=1, builtins=True)
    url = engine.bind("tcp://127.0.0.1:*")
    engine.start()
    try:
        peer = handshaken_peer(int(url.rsplit(":", 1)[1]))
        # 2 MiB at about 1.3 MiB/s: longer than the timeout, but bytes keep coming.
        peer.sendall(bytes([0x02]) + struct.pack(">Q", 2 * MIB))
        start = time.monotonic()
        for _ in range(32):
            peer.sendall(b"u" * (64 << 10))
            time.sleep(0.05)
        assert time.monotonic() - start > 1.5
        assert not closed_within(peer, 0.1)
        # The frame done, the peer stalls inside the next one: cut after the timeout.
        peer.sendall(bytes([0x02]) + struct.pack(">Q", 8 * MIB) + b"x" * MIB)
        stalled = time.monotonic()
        assert closed_within(peer, 3.0)
        assert time.monotonic() - stalled >= 0.5
        assert engine._guard.closed_idle == 1
        with zerocan.Client(url, timeout=5) as c:
            assert c.call("add", 2, 3) == 5
        assert engine.counters["connections_closed_idle"] == 1
        peer.close()
    finally:
        engine.stop()


def test_a_peer_still_taking_a_large_frame_is_not_idle_but_one_that_stops_is():
    from zerocan._calls import limit_connections
    from zerocan._guard import ConnectionGuard
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDBUF, 64 << 10)  # the frame cannot sit in the kernels
    limit_connections(router, 0.6, 5.0)
    guard = ConnectionGuard(0, 0.6, False)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    monitor = guard.watch(router)
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    peer.connect(("127.0.0.1", port))

    def serve(seconds: float) -> list:
        got = []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if monitor.poll(0):
                guard.read_events()
            guard.check(time.monotonic())
            while router.poll(0):
                parts = router.recv_multipart(copy=False)
                guard.delivered(parts)
                got.append(parts)
            time.sleep(0.005)
        return got

    try:
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
        body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        peer.sendall(greeting + b"\x00" * 32 + bytes([0x04, len(body)]) + body)
        got = b""
        while len(got) < 66 or len(got) < 66 + got[65]:
            got += peer.recv(4096)
        peer.sendall(bytes([1, 0]) + bytes([0, 5]) + b"hello")  # [delimiter] [hello]
        messages = serve(0.2)
        assert messages, "the router got nothing"
        router.send_multipart([messages[0][0], b"d" * (3 << 20)])
        # About 1 MiB/s: 3 s for the frame, five times the idle timeout; the peer sends
        # nothing meanwhile (the router's pings wait behind the frame).
        read, start = 0, time.monotonic()
        peer.settimeout(1.0)
        while read < (3 << 20):
            chunk = peer.recv(32 << 10)
            assert chunk, f"cut after {read} bytes"
            read += len(chunk)
            serve(0.03)
        assert time.monotonic() - start > 2.0
        assert guard.closed_idle == 0
        serve(1.5)  # then silent, no pong either
        assert guard.closed_idle == 1
    finally:
        peer.close()
        guard.close()
        router.close(0)
        ctx.term()
