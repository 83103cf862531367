"""Shared memory across crashes (acceptance).

Requirement: after kill -9 of the client, of the engine, and of the broker in the middle
of 256 MiB calls, and then of everything, nothing of ours is left in /dev/shm (or wherever
segments live) and the surviving processes' memory returns to within 10% of before.

Where segments live: an arena is a memory file with no path (memfd, docs/FORMAT.md
"Shared memory arenas"), so "left" means a process that still maps it or holds its
descriptor (found by its inode in /proc/*/maps and /proc/*/fd), its pages in the
system's shared memory (/proc/meminfo "Shmem:"), or its owner's abstract socket
(/proc/net/unix); /dev/shm must never get an entry.

The calls: a Python client process passes a 256 MiB uint8 array from its own arena to
`sum` through a C++ broker (tcp loopback) to a C++ engine, which reads it in place from
its mapping of the client's arena. Summing 2^28 bytes is a chain of dependent float adds
(about 0.25 s), so a process killed 80 ms after the client says it sent a call is killed
while that call runs.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import zerocan
from conftest import cpp_command_missing, free_tcp_endpoint, settle, zerocan_bin

ARG_MIB = 256
ARENA_MIB = 640  # the argument and room to spare; only the pages written cost memory
SMALL_MIB = 16  # a second client's argument: a quick check that the survivors still serve
MEMORY_TOLERANCE = 0.10  # the requirement's "within 10% of before"
# /proc/meminfo "Shmem:" is system-wide: tmpfs files and other programs on this host
# move it by a few MiB while the test runs, and 10% of a small baseline (about 10 MiB on
# an idle machine) is less than that noise. 16 MiB is 1/16 of one argument: an arena
# left behind by these calls (at least 256 MiB written) exceeds it many times over.
SHMEM_SLACK_KIB = 16 << 10
SETTLE_S = 10.0  # how long memory may take to come back: an engine unmaps an arena about
#                  1 s after its last use (checked at its next heartbeat, every 0.5 s)
CALL_STARTED_S = 0.08  # after "sent": the call is inside the engine (see the docstring)
# A client notices a lost connection at once when it closes, and within heartbeat x
# liveness (1 s x 3, the Client defaults) when it goes silent; the broker fails the calls
# of an engine whose connection closed at once.
LOST_WITHIN_S = 5.0

CLIENT = r"""
import json, sys, time
import numpy as np
import zerocan
from zerocan import shared

url, arg_mib, arena_mib, calls = sys.argv[1], *map(int, sys.argv[2:5])

def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

arena = shared.Arena(arena_mib << 20)
x = arena.empty(arg_mib << 20, np.uint8)
x[:] = 1
x[-1] = 3
expected = float(x.size + 2)
with zerocan.Client(url, timeout=20, shared_arena=arena) as client:
    assert client.call("add", 1, 1) == 2  # through a broker: an engine has joined
    until = time.monotonic() + 10
    while not client.shares_memory and time.monotonic() < until:
        time.sleep(0.01)
    say("ready", shares_memory=client.shares_memory)
    done, failed = 0, False
    while calls == 0 or done < calls:
        say("sent", call=done)
        try:
            result = client.call("sum", x)
        except zerocan.Error as e:
            failed = True
            say("error", cls=type(e).__name__, type=getattr(e, "type", ""), message=str(e))
            continue
        done += 1
        say("ok", call=done, right=result == expected,
            refs=client.counters["shared_refs_sent"],
            copied=client.counters["shared_bytes_copied"])
        if failed:
            # Served again after a failure: stop calling, so that the memory of every
            # process can be measured at rest; a line on stdin goes on, EOF ends.
            failed = False
            say("idle")
            if not sys.stdin.readline():
                break
"""


# ---- what a process holds -----------------------------------------------------------------

def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def _shmem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


def _shmem_back(baseline: int, now: int) -> bool:
    return now <= baseline + max(baseline * MEMORY_TOLERANCE, SHMEM_SLACK_KIB)


def _within(before: int, now: int) -> bool:
    return now <= before * (1 + MEMORY_TOLERANCE)


def _arena_inodes(pid: int) -> set[int]:
    """The inodes of the arenas `pid` maps (maps: address perms offset dev inode path)."""
    return {int(line.split()[4]) for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if "memfd:zerocan-arena" in line}


def _arena_holders(inodes: set[int]) -> set[int]:
    """The processes that map one of these arenas or hold a descriptor of it."""
    holders = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if _arena_inodes(pid) & inodes:
                holders.add(pid)
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = f"/proc/{pid}/fd/{fd}"
                if "zerocan-arena" in os.readlink(link) and os.stat(link).st_ino in inodes:
                    holders.add(pid)
                    break
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return holders


def _arena_sockets(owner: int) -> list[str]:
    """Abstract sockets still named after arenas of process `owner`."""
    return [line for line in Path("/proc/net/unix").read_text().splitlines()
            if f"@zerocan-arena-{owner}-" in line]


def _dev_shm_ours() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "zerocan" in name}


def _processes_naming(*args: str) -> list[int]:
    """Processes with one of `args` (our unique endpoints) among their arguments."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.encode() in argv for a in args):
            found.append(int(entry.name))
    return found


def _settle(read: Callable[[], Any], ok: Callable[[Any], bool]) -> Any:
    return settle(read, ok, seconds=SETTLE_S, interval=0.1)


# ---- the processes --------------------------------------------------------------------------

class _ClientProcess:
    """The CLIENT script in a process of its own; its JSON lines arrive on a queue."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self.seen: list[dict] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, event: str, timeout: float = 30.0) -> dict:
        """The next line of this kind; fails on an unexpected error line, EOF or time."""
        until = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event!r} from the client within {timeout} s; "
                                     f"last lines: {self.seen[-5:]}") from None
            if line is None:
                raise AssertionError(f"the client ended (rc {self.proc.wait(10)}) before "
                                     f"{event!r}; last lines: {self.seen[-5:]}")
            msg = json.loads(line)
            self.seen.append(msg)
            if msg["event"] == event:
                return msg
            assert msg["event"] != "error", f"unexpected error while waiting for {event!r}: {msg}"

    def first_call(self) -> dict:
        ready = self.expect("ready")
        assert ready["shares_memory"], "the client does not share memory with the broker"
        ok = self.expect("ok")
        # The argument went as a reference into the arena, not a byte copied.
        assert ok["right"] and ok["refs"] == 1 and ok["copied"] == 0, ok
        return ok

    def mid_call(self) -> None:
        """Returns while a call of this client runs in the engine."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                msg = json.loads(line)
                self.seen.append(msg)
                assert msg["event"] != "error", f"unexpected error: {msg}"
        self.expect("sent")  # a fresh one: the lines before it were all taken above
        time.sleep(CALL_STARTED_S)

    def resume(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()


class _Processes:
    """Brokers, engines and clients of one test, killed (-9) whatever happens."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []
        self.front, self.back = free_tcp_endpoint(), free_tcp_endpoint()

    def _cpp(self, name: str, args: list[str], ready: str) -> subprocess.Popen:
        log = self.logs / f"{name}-{len(self.started)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(zerocan_bin()), name, *args], stdout=out,
                                    stderr=subprocess.STDOUT)
        self.started.append(proc)
        # Ready when it says so (the broker bound its endpoints, the engine attached).
        until = time.monotonic() + 20
        while ready not in log.read_text():
            assert proc.poll() is None, f"{name} exited: {log.read_text()}"
            assert time.monotonic() < until, f"{name} not ready: {log.read_text()}"
            time.sleep(0.02)
        return proc

    def broker(self) -> subprocess.Popen:
        return self._cpp("broker", ["--frontend", self.front, "--backend", self.back],
                         "clients at")

    def engine(self) -> subprocess.Popen:
        proc = self._cpp("engine", ["--connect", self.back, "--builtins"], "attached to")
        time.sleep(0.3)  # its first heartbeats: idle from here on
        return proc

    def client(self, arg_mib: int = ARG_MIB, calls: int = 0) -> _ClientProcess:
        arena_mib = ARENA_MIB if arg_mib == ARG_MIB else 2 * arg_mib
        env = dict(os.environ)
        package = str(Path(zerocan.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(
            [package] + [p for p in [env.get("PYTHONPATH")] if p])
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, self.front, str(arg_mib), str(arena_mib),
             str(calls)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.started.append(proc)
        return _ClientProcess(proc)

    def kill(self, *procs: Any) -> None:
        """kill -9, then reaped: once wait() returns, the kernel has taken its mappings."""
        popens = [p.proc if isinstance(p, _ClientProcess) else p for p in procs]
        for p in popens:
            p.send_signal(signal.SIGKILL)
        for p in popens:
            p.wait(10)

    def close(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
        for p in self.started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module", autouse=True)
def _cpp_programs():
    for command in ("broker", "engine"):
        missing = cpp_command_missing(command)
        if missing:
            pytest.skip(missing)


@pytest.fixture
def procs(tmp_path):
    p = _Processes(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _assert_engine_lets_go(engine: subprocess.Popen, before: int, arena: set[int]) -> int:
    """The engine's memory is back within 10% of `before` and it maps no arena but at
    most its own (the one its results go into, Engine::shared_arena)."""
    after = _settle(lambda: _rss_kib(engine.pid), lambda v: _within(before, v))
    assert _within(before, after), \
        f"engine RSS {after} KiB, {after / before - 1:+.1%} of its idle {before} KiB"
    assert len(_arena_inodes(engine.pid)) <= 1
    assert engine.pid not in _arena_holders(arena)
    return after


# ---- the tests ------------------------------------------------------------------------------

def test_a_client_killed_mid_call_leaves_nothing_and_the_others_go_on(procs):
    baseline = _shmem_kib()
    broker, engine = procs.broker(), procs.engine()
    # "Before" for the broker and the engine: their RSS idle, before any call.
    broker_before, engine_before = _rss_kib(broker.pid), _rss_kib(engine.pid)
    client = procs.client()
    client.first_call()
    arena = _arena_inodes(client.pid)
    assert len(arena) == 1
    assert engine.pid in _arena_holders(arena)  # it reads the argument in place
    assert broker.pid not in _arena_holders(arena)  # the broker forwards the reference only
    client.mid_call()
    procs.kill(client)

    # The engine finishes the call (its answer goes nowhere), then lets go of the arena.
    engine_after = _assert_engine_lets_go(engine, engine_before, arena)
    broker_after = _rss_kib(broker.pid)
    assert _within(broker_before, broker_after), (broker_before, broker_after)
    # Nobody holds the arena: the kernel has its pages back.
    assert _settle(lambda: _arena_holders(arena), lambda h: not h) == set()
    shmem = _settle(_shmem_kib, lambda v: _shmem_back(baseline, v))
    assert _shmem_back(baseline, shmem), f"Shmem {shmem} KiB, baseline {baseline} KiB"
    assert not _arena_sockets(client.pid)
    print(f"engine RSS {engine_before} -> {engine_after} KiB, broker RSS {broker_before} -> "
          f"{broker_after} KiB, Shmem {baseline} -> {shmem} KiB")

    # The broker and the engine still serve a new client, in shared memory.
    another = procs.client(SMALL_MIB, calls=1)
    another.first_call()
    assert another.proc.wait(20) == 0


def test_an_engine_killed_mid_call_fails_the_call_and_a_new_engine_serves_the_next(procs):
    broker, engine = procs.broker(), procs.engine()
    broker_before = _rss_kib(broker.pid)  # idle, before any call
    client = procs.client()
    client.first_call()
    # "Before" for the client: after its first call. The pages of its argument, written
    # into its own arena, are its memory by design (and the arena keeps them for reuse).
    client_before = _rss_kib(client.pid)
    arena = _arena_inodes(client.pid)
    client.mid_call()
    killed_at = time.monotonic()
    procs.kill(engine)

    error = client.expect("error", timeout=LOST_WITHIN_S)  # an error, not a hang
    assert time.monotonic() - killed_at < LOST_WITHIN_S
    assert error["type"] in ("zerocan.EngineLost", "zerocan.BrokerLost"), error
    procs.engine()
    ok = client.expect("ok", timeout=SETTLE_S)  # waited in the broker for an engine
    assert ok["right"] and ok["copied"] == 0, ok
    client.expect("idle")

    # The new engine lets go of the arena soon after; the dead one took its mapping along.
    assert _settle(lambda: _arena_holders(arena), lambda h: h == {client.pid}) \
        == {client.pid}
    client_after = _settle(lambda: _rss_kib(client.pid), lambda v: _within(client_before, v))
    assert _within(client_before, client_after), (client_before, client_after)
    broker_after = _rss_kib(broker.pid)
    assert _within(broker_before, broker_after), (broker_before, broker_after)


def test_a_broker_killed_mid_call_fails_the_call_and_a_restarted_one_serves_the_next(procs):
    broker = procs.broker()
    engine = procs.engine()
    engine_before = _rss_kib(engine.pid)  # idle, before any call
    client = procs.client()
    client.first_call()
    client_before = _rss_kib(client.pid)  # after its first call, as above
    arena = _arena_inodes(client.pid)
    client.mid_call()
    killed_at = time.monotonic()
    procs.kill(broker)

    error = client.expect("error", timeout=LOST_WITHIN_S)
    assert time.monotonic() - killed_at < LOST_WITHIN_S
    assert error["type"] == "zerocan.BrokerLost" and error["cls"] == "BrokerLost", error
    procs.broker()  # the same endpoints: the client and the engine reconnect
    ok = client.expect("ok", timeout=SETTLE_S)
    assert ok["right"], ok
    client.expect("idle")

    _assert_engine_lets_go(engine, engine_before, arena)
    client_after = _settle(lambda: _rss_kib(client.pid), lambda v: _within(client_before, v))
    assert _within(client_before, client_after), (client_before, client_after)


# A broker that restarts learns from each engine's answer to its hello whether the engine
# maps arenas here (else it would copy every reference into frames itself, mapping the
# client's arena), and unmaps an arena it did map once the client is gone.
def test_a_client_killed_after_a_broker_restart_leaves_nothing_behind(procs):
    baseline = _shmem_kib()
    broker = procs.broker()
    engine = procs.engine()
    engine_before = _rss_kib(engine.pid)
    client = procs.client()
    client.first_call()
    arena = _arena_inodes(client.pid)
    client.mid_call()
    procs.kill(broker)
    client.expect("error", timeout=LOST_WITHIN_S)
    broker = procs.broker()
    broker_before = _rss_kib(broker.pid)  # the new broker idle, before it passed a call
    client.expect("ok", timeout=SETTLE_S)
    client.expect("idle")
    client.resume()
    client.mid_call()
    procs.kill(client)

    holders = _settle(lambda: _arena_holders(arena), lambda h: not h)
    assert not holders, f"the dead client's arena is still held by {holders} (broker " \
        f"{broker.pid}, engine {engine.pid})"
    broker_after = _settle(lambda: _rss_kib(broker.pid), lambda v: _within(broker_before, v))
    assert _within(broker_before, broker_after), (broker_before, broker_after)
    _assert_engine_lets_go(engine, engine_before, arena)
    shmem = _settle(_shmem_kib, lambda v: _shmem_back(baseline, v))
    assert _shmem_back(baseline, shmem), f"Shmem {shmem} KiB, baseline {baseline} KiB"


def test_everything_killed_mid_call_leaves_nothing(procs):
    baseline = _shmem_kib()
    dev_shm_before = _dev_shm_ours()  # the library makes none; this names what is new
    broker, engine = procs.broker(), procs.engine()
    client = procs.client()
    client.first_call()
    arena = _arena_inodes(client.pid)
    assert _shmem_kib() >= baseline + (ARG_MIB << 10) * 9 // 10  # the argument's pages
    client.mid_call()
    procs.kill(client, engine, broker)

    assert [p.poll() for p in (client.proc, engine, broker)] == [-signal.SIGKILL] * 3
    assert _processes_naming(procs.front, procs.back) == []
    assert _arena_holders(arena) == set()
    assert not _arena_sockets(client.pid)
    shmem = _settle(_shmem_kib, lambda v: _shmem_back(baseline, v))
    assert _shmem_back(baseline, shmem), f"Shmem {shmem} KiB, baseline {baseline} KiB"
    assert _dev_shm_ours() - dev_shm_before == set()
    print(f"Shmem {baseline} -> {shmem} KiB")
