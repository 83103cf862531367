"""Many hosts, simulated: a broker and two engines each in their own Linux network
namespace, joined to the broker's namespace by veth links; the client in this one.

    client (root ns) --veth-- broker (zc-b) --veth-- engine e1 (zc-e1)
                                            \\-veth-- engine e2 (zc-e2)

Cutting an engine's link (`ip link set ... down`) leaves its TCP connection open and
silent, as a dead host or a partition does; SIGSTOP freezes an engine process. Either
must be detected within the liveness window (heartbeat x liveness), and calls must fail
over or fail clearly, never hang. Needs root and `ip netns`; skips with the reason
otherwise.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Optional

import pytest

import zerocan
from conftest import cpp_command_missing, zerocan_bin

HEARTBEAT_MS = 200
LIVENESS = 3
WINDOW_S = HEARTBEAT_MS * LIVENESS / 1000.0


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def _ip(ns: Optional[str], *args: str) -> None:
    """`ip ARGS` in namespace `ns` (None: this one)."""
    _run("ip", *(["-n", ns] if ns else []), *args)


def _add_namespace(ns: str) -> None:
    _run("ip", "netns", "add", ns)
    _ip(ns, "link", "set", "lo", "up")


def _veth(near_ns: Optional[str], near: str, near_addr: str,
          far_ns: str, far: str, far_addr: str) -> None:
    """A veth pair: `near` (in near_ns; None: this one) <-> `far` (in far_ns), both up."""
    _ip(near_ns, "link", "add", near, "type", "veth", "peer", "name", far, "netns", far_ns)
    for ns, dev, addr in ((near_ns, near, near_addr), (far_ns, far, far_addr)):
        _ip(ns, "addr", "add", addr, "dev", dev)
        _ip(ns, "link", "set", dev, "up")


def _netns_unavailable() -> Optional[str]:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"zc-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "del", probe)
    except (subprocess.SubprocessError, OSError) as e:
        return f"cannot create a network namespace here: {e}"
    return None


class Hosts:
    """Three namespaces and the links between them; each engine has a /24 of its own."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.broker_ns = f"zcb{tag}"
        self.engine_ns = {name: f"zc{name}{tag}" for name in ("e1", "e2")}
        self.links: dict[str, str] = {}  # engine name -> its link's end in the broker ns
        self.procs: list[subprocess.Popen] = []
        self.client_link = f"zcc{tag}"
        _add_namespace(self.broker_ns)
        # The client's link: root <-> broker.
        _veth(None, self.client_link, "10.77.0.2/24", self.broker_ns, "zcb0", "10.77.0.1/24")
        for i, (name, ns) in enumerate(self.engine_ns.items(), start=1):
            _add_namespace(ns)
            end = f"zcb{i}"
            _veth(self.broker_ns, end, f"10.77.{i}.1/24", ns, "eth0", f"10.77.{i}.2/24")
            self.links[name] = end
        self.frontend = "tcp://10.77.0.1:5600"

    def backend_for(self, engine: str) -> str:
        i = list(self.engine_ns).index(engine) + 1
        return f"tcp://10.77.{i}.1:5601"

    def start_broker(self) -> subprocess.Popen:
        return self._spawn(self.broker_ns, "broker", "--frontend", "tcp://10.77.0.1:5600",
                           "--backend", "tcp://0.0.0.0:5601", "--heartbeat-ms",
                           str(HEARTBEAT_MS), "--liveness", str(LIVENESS))

    def start_engine(self, name: str) -> subprocess.Popen:
        return self._spawn(self.engine_ns[name], "engine", "--connect", self.backend_for(name),
                           "--builtins", "--id", name, "--threads", "1",
                           "--heartbeat-ms", str(HEARTBEAT_MS))

    def cut(self, engine: str) -> None:
        _run("ip", "-n", self.broker_ns, "link", "set", self.links[engine], "down")

    def _spawn(self, ns: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, str(zerocan_bin()), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        for p in self.procs:
            p.wait(10)
        subprocess.run(["ip", "link", "del", self.client_link], capture_output=True)
        for ns in [self.broker_ns, *self.engine_ns.values()]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def hosts() -> Iterator[Hosts]:
    why = _netns_unavailable() or cpp_command_missing("broker") or cpp_command_missing("engine")
    if why:
        pytest.skip(why)
    h = Hosts()
    try:
        yield h
    finally:
        h.close()


def _wait_engines(client: zerocan.Client, count: int, seconds: float = 20) -> None:
    """Until `count` engines (one worker thread each) answer `count` concurrent 0.3 s calls
    together: the broker then has them all."""
    deadline = time.monotonic() + seconds
    while True:
        assert time.monotonic() < deadline, f"{count} engines never answered together"
        started = time.monotonic()
        futures = [client.apply_with("sleep", (0.3,), timeout=3.0) for _ in range(count)]
        try:
            for f in futures:
                f.result()
        except zerocan.Error:
            time.sleep(0.1)
            continue
        if time.monotonic() - started < 0.3 * 1.8:
            return


def test_engines_join_and_leave_while_a_client_calls():
    with hosts() as h:
        h.start_broker()
        e1 = h.start_engine("e1")
        with zerocan.Client(h.frontend, timeout=10.0) as client:
            _wait_engines(client, 1)
            h.start_engine("e2")
            _wait_engines(client, 2)
            e1.send_signal(signal.SIGTERM)  # leaves
            failures = []
            for i in range(100):
                try:
                    assert client.apply("add", i, 1).result() == i + 1
                except zerocan.Error as e:
                    failures.append(repr(e))
                time.sleep(0.01)
            assert not failures, failures
            e1.wait(10)


@pytest.mark.parametrize("how", ["cut link", "SIGSTOP"])
def test_a_silent_engine_is_detected_and_its_calls_end_within_the_window(how):
    with hosts() as h:
        h.start_broker()
        e1 = h.start_engine("e1")
        h.start_engine("e2")
        with zerocan.Client(h.frontend, timeout=30.0) as client:
            _wait_engines(client, 2)
            # Calls of 0.5 s each, spread over both engines (one worker thread each).
            futures = [client.apply("sleep", 0.5) for _ in range(8)]
            time.sleep(0.1)
            silenced = time.monotonic()
            if how == "cut link":
                h.cut("e1")
            else:
                e1.send_signal(signal.SIGSTOP)
            # Every call ends (a result, or a clear EngineLost) within the liveness window
            # plus the work left for the other engine, never by the client's 30 s timeout.
            limit = WINDOW_S + 8 * 0.5 + 2.0
            ended_at = {}
            for f in futures:
                f.add_done_callback(lambda f: ended_at.setdefault(f, time.monotonic()))
            lost_at = []
            for f in futures:
                try:
                    f.result(timeout=limit)
                except zerocan.RemoteError as e:
                    assert e.type == "zerocan.EngineLost", e
                    assert "e1" in e.message and "running" in e.message, e
                    lost_at.append(ended_at[f] - silenced)
            assert time.monotonic() - silenced < limit
            # Detected within the window (a heartbeat's slack on top): the call that was
            # running on e1 fails then; the calls queued behind it ran on e2.
            assert len(lost_at) <= 1, f"{len(lost_at)} calls lost; queued calls must move"
            # Within the window, plus a heartbeat for the last one heard before the silence
            # and one for the broker's check interval (and a little scheduling slack).
            assert all(t < WINDOW_S + 2 * HEARTBEAT_MS / 1000 + 0.15 for t in lost_at), lost_at
            print(f"[figures] {how}: {len(lost_at)} of 8 calls lost (running on e1), after "
                  f"{', '.join(f'{t:.2f} s' for t in lost_at) or '-'} (window {WINDOW_S:g} s); "
                  f"all 8 ended {time.monotonic() - silenced:.2f} s after")
            # New calls go to the live engine, and answer at once.
            for _ in range(20):
                assert client.apply_with("add", (2, 3), timeout=2.0).result() == 5


class SlowLink:
    """One engine namespace behind a veth link limited to `mbit` each way (tc tbf)."""

    def __init__(self, mbit: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns, self.link = f"zcs{tag}", f"zcs{tag}"
        self.procs: list[subprocess.Popen] = []
        _add_namespace(self.ns)
        _veth(None, self.link, "10.78.0.2/24", self.ns, "eth0", "10.78.0.1/24")
        tbf = ("root", "tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "400ms")
        _run("tc", "qdisc", "add", "dev", self.link, *tbf)
        _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "add", "dev", "eth0", *tbf)
        self.url = "tcp://10.78.0.1:5602"

    def start_engine(self, *where: str) -> subprocess.Popen:
        where = where or ("--bind", self.url)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, str(zerocan_bin()), "engine",
                              *where, "--builtins"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def start_broker(self, frontend: str) -> subprocess.Popen:
        """A broker in this namespace's peer (the root one), its backend on the link."""
        p = subprocess.Popen([str(zerocan_bin()), "broker", "--frontend", frontend,
                              "--backend", "tcp://10.78.0.2:5603"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(10)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@contextmanager
def slow_link(mbit: int) -> Iterator[SlowLink]:
    why = (_netns_unavailable() or cpp_command_missing("engine") or
           (None if shutil.which("tc") else "the tc command (iproute2) is not installed"))
    if why:
        pytest.skip(why)
    link = SlowLink(mbit)
    try:
        yield link
    finally:
        link.close()


def test_a_reply_longer_than_the_liveness_window_is_not_taken_for_a_lost_connection(tmp_path):
    # 100 Mbit/s: a 48 MiB argument and its echo take about 4 s each way, beyond the
    # default window (heartbeat 1 s x liveness 3); the pong to a ping waits behind them.
    import numpy as np
    with slow_link(100) as link:
        engine = link.start_engine()
        a = np.arange(6 << 20, dtype=np.int64)  # 48 MiB
        with zerocan.Client(link.url, timeout=60) as client:
            assert client.call("add", 1, 2, timeout=20) == 3
            started = time.monotonic()
            echoed = client.call("echo", a)
            assert time.monotonic() - started > 4.0  # the link really was that slow
            assert np.array_equal(echoed, a)
            # Silence is still found: an engine stopped in the middle of an upload.
            future = client.apply("echo", a)
            time.sleep(1.0)
            engine.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            with pytest.raises(zerocan.BrokerLost):
                future.result(timeout=30)
            # The window, after the stopped engine's kernel buffers fill (it acknowledges
            # what fits: about a second here), plus a check interval.
            assert time.monotonic() - stopped < 3.0 + 3.0
            engine.send_signal(signal.SIGCONT)
        # The C++ client (zerocan call) too.
        args = tmp_path / "args.json"
        args.write_text("[[" + ",".join(["7"] * (6 << 20)) + "]]")
        out = subprocess.run([str(zerocan_bin()), "call", link.url, "echo", "--args-file",
                              str(args), "--timeout", "60"],
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        assert '"int64"' in out.stdout and "6291456" in out.stdout, out.stdout[:300]


def test_through_a_broker_a_result_longer_than_the_liveness_window_arrives():
    # The engine behind a 100 Mbit/s link: its 48 MiB result takes about 4 s to reach the
    # broker, while its heartbeats (and the broker's pongs) wait behind it.
    import numpy as np
    with slow_link(100) as link:
        frontend = f"tcp://127.0.0.1:{free_port()}"
        link.start_broker(frontend)
        link.start_engine("--connect", "tcp://10.78.0.2:5603")
        a = np.arange(6 << 20, dtype=np.int64)
        with zerocan.Client(frontend, timeout=60) as client:
            _wait_engines(client, 1)
            started = time.monotonic()
            assert np.array_equal(client.call("echo", a), a)
            assert time.monotonic() - started > 4.0
