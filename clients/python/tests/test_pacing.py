"""zerocan.pacing: loopback listeners whose accepted connections are never paced, read
back from the kernel (the congestion control of each accepted connection)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import zmq

import zerocan
from zerocan import pacing


def host_default() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()


def expected_accepted() -> str:
    return "reno" if host_default().startswith("bbr") else host_default()


def accepted_on(port: int) -> list[str]:
    """Congestion controls of this process's connected TCP sockets on local ``port``."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        cc = pacing.congestion_control(fd)
        if not cc:
            continue
        try:
            s = socket.socket(fileno=fd)  # borrowed: detached below, never closed here
        except OSError:
            continue
        try:
            if s.getsockname()[1] != port:
                continue
            s.getpeername()
        except OSError:
            continue
        finally:
            s.detach()
        out.append(cc)
    return out


def await_accepted(port: int, n: int) -> list[str]:
    import time
    got: list[str] = []
    for _ in range(500):
        got = accepted_on(port)
        if len(got) >= n:
            break
        time.sleep(0.01)
    return got


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_a_loopback_listener_accepts_only_unpaced_connections() -> None:
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        what = pacing.bind_unpaced(ctx, router, "tcp://127.0.0.1:*")
        assert what == (pacing.SWITCHED if host_default().startswith("bbr") else pacing.NOT_PACED)
        port = port_of(router.getsockopt_string(zmq.LAST_ENDPOINT))
        peer = socket.create_connection(("127.0.0.1", port))
        got = await_accepted(port, 1)
        assert got and all(cc == expected_accepted() for cc in got), got
        # The connecting side keeps the host's choice.
        assert pacing.congestion_control(peer.fileno()) == host_default()
        peer.close()
    finally:
        ctx.destroy(linger=0)  # closes what a failed assertion left open


def test_other_addresses_and_transports_are_left_alone(tmp_path: Path) -> None:
    ctx = zmq.Context()
    try:
        any_ = ctx.socket(zmq.ROUTER)
        any_.linger = 0
        assert pacing.bind_unpaced(ctx, any_, "tcp://0.0.0.0:*") == pacing.NOT_LOOPBACK
        port = port_of(any_.getsockopt_string(zmq.LAST_ENDPOINT))
        peer = socket.create_connection(("127.0.0.1", port))
        got = await_accepted(port, 1)
        assert got and all(cc == host_default() for cc in got), got
        peer.close()
        other = ctx.socket(zmq.ROUTER)
        other.linger = 0
        ipc = f"ipc://{tmp_path}/pacing.ipc"
        assert pacing.bind_unpaced(ctx, other, ipc) == pacing.NO_TCP_LISTENER
        assert pacing.bind_unpaced(ctx, other, "inproc://zerocan-py-pacing") == \
            pacing.NO_TCP_LISTENER
        # A failed bind raises as bind does, and leaves no monitor behind: with one still
        # there (and no reader), libzmq would block this plain bind for ever.
        taken = f"tcp://127.0.0.1:{port}"
        with pytest.raises(zmq.ZMQError):
            pacing.bind_unpaced(ctx, other, taken)
        other.bind("tcp://127.0.0.1:*")
        assert other.getsockopt_string(zmq.LAST_ENDPOINT) != taken
    finally:
        ctx.destroy(linger=0)  # closes what a failed assertion left open


@pytest.mark.parametrize("unpace", [True, False])
def test_the_python_engine_binds_unpaced_unless_told(unpace: bool) -> None:
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True, unpace_local_tcp=unpace)
    engine.start()
    try:
        client = zerocan.Client(engine.endpoint)
        try:
            assert client.apply("add", 1, 2).result() == 3
            got = await_accepted(port_of(engine.endpoint), 1)
            want = expected_accepted() if unpace else host_default()
            assert got and all(cc == want for cc in got), got
        finally:
            client.close()
    finally:
        engine.stop()


def test_a_default_python_engine_leaves_the_host_alone() -> None:
    # No built-ins unless asked, and its loopback listener and accepted connections on
    # the host's congestion control (reno only where the host default paces).
    assert zerocan.Engine().functions() == []
    assert "add" in zerocan.Engine(builtins=True).functions()
    engine = zerocan.Engine("tcp://127.0.0.1:*", bind=True)
    engine.register("add")(lambda a, b: a + b)
    engine.start()
    try:
        client = zerocan.Client(engine.endpoint)
        try:
            assert client.apply("add", 1, 2).result() == 3
            got = await_accepted(port_of(engine.endpoint), 1)
            assert got and all(cc == host_default() for cc in got), got
        finally:
            client.close()
    finally:
        engine.stop()
