"""Engine results in shared memory (Apply.sharedResults, docs/FORMAT.md "Shared memory
arenas").

A caller whose peer answered its hello from this host sets Apply.sharedResults; an engine
reached directly (or through a broker whose hello said it shares the engine's host) then
sends result payloads at or above the threshold as Payload.shared references into its own
arena: in place when the function returned an array of ``engine.shared_arena``, else
copied there once. The engine lends those blocks until the caller holds them (its
decoder's lease) or ``shared_result_wait`` seconds pass; the caller reads the result in
place, read-only.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import zerocan
from zerocan import shared, wire
from conftest import cpp_command_missing, free_tcp_endpoint, settle, wait_until, zerocan_bin

MIB = 1 << 20
N = 1 << 20  # float64 elements of a result: 8 MiB
NBYTES = N * 8
PACKAGE = str(Path(zerocan.__file__).resolve().parents[1])

# A Python engine in a process of its own: argv url, mode ("bind" or "connect"),
# shared_result_wait. Prints its endpoint, serves until stdin closes.
ENGINE = r"""
import sys
import numpy as np
import zerocan

url, mode, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
engine = zerocan.Engine(url, bind=(mode == "bind"), builtins=True, shared_result_wait=wait)
kept = []

@engine.register
def arange(n):
    return np.arange(n, dtype=np.float64)

@engine.register
def filled(n, value):
    a = engine.shared_arena.empty(n, np.float64)
    a[:] = value
    kept[:] = [a]  # poke() writes into it after the call
    return a

@engine.register
def poke(i, value):
    kept[0][i] = value
    return True

@engine.register
def forget():
    kept.clear()
    return True

@engine.register
def arena_state():
    a = engine.shared_arena
    return [a.used, a.holds, a.lent]  # lent: also ends the loans past their time

engine.start()
print(engine.endpoint if mode == "bind" else url, flush=True)
sys.stdin.read()
engine.stop()
"""

# A client in a process of its own: reads arange(n) from the engine at argv url and keeps
# it until killed.
CLIENT = r"""
import sys, time
import zerocan

url, n = sys.argv[1], int(sys.argv[2])
client = zerocan.Client(url, timeout=20)
until = time.monotonic() + 10
while not client.shares_memory and time.monotonic() < until:
    time.sleep(0.01)
r = client.call("arange", n)
ok = (client.shares_memory and not r.flags.writeable and zerocan.received_frame(r) is None
      and r[0] == 0 and r[-1] == n - 1)
print("holding" if ok else f"wrong {client.shares_memory} {r.flags.writeable}", flush=True)
sys.stdin.read()
"""


# ---- helpers ------------------------------------------------------------------------------



def _in_shared_memory(obj: Any) -> bool:
    """Whether a decoded array's base chain leads to zerocan.shared._HeldBytes."""
    for _ in range(64):
        if obj is None:
            return False
        if isinstance(obj, shared._HeldBytes):
            return True
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return False


def _assert_in_place(r: np.ndarray) -> None:
    assert not r.flags.writeable, "a result in shared memory is read-only"
    assert wire.received_frame(r) is None, "the result came in a frame"
    assert _in_shared_memory(r), "the result's base chain does not lead to _HeldBytes"


def _assert_in_frame(r: np.ndarray) -> None:
    assert wire.received_frame(r) is not None, "the result did not come in a frame"
    assert not _in_shared_memory(r)


class _Placed:
    """What one writer of the engine placed: its body, references, bytes copied into
    the arena, frames (recorded at ``finish``; the writer itself is not kept, nor the
    blocks it refers to)."""

    def __init__(self, w: wire.Writer) -> None:
        self.kind = w.msg.body.which()
        self.shared_refs = w.shared_refs
        self.shared_bytes_copied = w.shared_bytes_copied
        self.frames = len(w.frames)


@pytest.fixture
def writers(monkeypatch):
    """What the engines of this process placed in each message they wrote."""
    made: list[_Placed] = []

    class Recording(wire.Writer):
        def finish(self) -> Any:
            made.append(_Placed(self))
            return super().finish()

    import zerocan.engine as engine_module
    monkeypatch.setattr(engine_module, "Writer", Recording)
    return made


def _result_writer(writers: list[_Placed]) -> _Placed:
    """The last message written that was a result (not a hello)."""
    for w in reversed(writers):
        if w.kind == "result":
            return w
    raise AssertionError("no result written")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE] + [p for p in [env.get("PYTHONPATH")] if p])
    env["ZEROCAN_ARENA_BYTES"] = str(256 * MIB)
    return env


class _Process:
    """A Python script in a process of its own; its stdout lines arrive on a queue."""

    def __init__(self, tmp_path: Path, name: str, script: str, *args: str) -> None:
        path = tmp_path / f"{name}.py"
        path.write_text(script)
        self.proc = subprocess.Popen([sys.executable, str(path), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=_env())
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def line(self, timeout: float = 20.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.proc.args} within {timeout} s") from None
        assert line is not None, f"{self.proc.args} ended (rc {self.proc.wait(10)})"
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the engine stops, the client ends
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def processes(tmp_path):
    started: list[_Process] = []

    def start(name: str, script: str, *args: str) -> _Process:
        p = _Process(tmp_path, f"{name}-{len(started)}", script, *args)
        started.append(p)
        return p
    try:
        yield start
    finally:
        for p in started:
            p.close()


def _engine_process(start, url: str = "tcp://127.0.0.1:*", mode: str = "bind",
                    wait: float = 60.0) -> tuple[_Process, str]:
    p = start("engine", ENGINE, url, mode, str(wait))
    return p, p.line()


def _shares(client: zerocan.Client) -> zerocan.Client:
    wait_until(lambda: client.shares_memory, what="the peer's hello")
    return client


def _apply_with_shared_results(call_id: int, function: str, *args: Any) -> list[Any]:
    """A raw apply with Apply.sharedResults set, as a client whose peer shares its host."""
    w = wire.Writer()
    w.set_header(zerocan.Header(call_id, 4242, call_id))
    w.apply(function, args, {})
    w.set_shared_results()
    out = w.finish()
    return [b"", out.envelope, *out.frames]


def _receive(sock: zmq.Socket, timeout_ms: int = 10000) -> list[zmq.Frame]:
    assert sock.poll(timeout_ms), "no reply"
    parts = sock.recv_multipart(copy=False)
    assert parts[0].buffer.nbytes == 0
    return parts[1:]


MAP = wire.DecodeLimits(shared_refs="map")


def _tensor_payload(frames: list[Any]) -> tuple[Any, ...]:
    """How a result tensor's data travels, read from its envelope without decoding it:
    ("frame",) or ("shared", arena, offset, length, block)."""
    msg = wire.Message(frames, (), MAP)
    assert msg.kind == "result" and msg.ok, msg.error() if msg.kind == "result" else msg.kind
    data = msg.envelope.body.result.ok.tensor.data
    which = data.which()
    if which != "shared":
        return (which,)
    ref = data.shared
    return (which, ref.arena, ref.offset, ref.length, ref.block)


def _dealer(url: str) -> zmq.Socket:
    """A raw caller that says hello from this host first, as a client does (an engine
    places results in its arena only for direct callers whose hello said they run on its
    host); an engine that does not share memory does not answer."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    w = wire.Writer()
    w.set_header(zerocan.Header(99999, 4243, 1))
    w.hello("client", "client", (), shared.this_host())
    sock.send_multipart([b"", w.finish().envelope])
    if sock.poll(1000):
        sock.recv_multipart()  # the engine's hello
    return sock


@pytest.fixture
def local_engine():
    """A Python engine in this process, bound on tcp loopback, with its own arena."""
    started: list[zerocan.Engine] = []

    def start(**options: Any) -> zerocan.Engine:
        engine = zerocan.Engine("tcp://127.0.0.1:*", bind=True, builtins=True, **options)

        @engine.register
        def arange(n):
            return np.arange(n, dtype=np.float64)

        @engine.register
        def halves(n):
            # The second half of an arena block, and an ordinary array: two references.
            a = engine.shared_arena.empty(2 * n, np.float64)
            a[:] = np.arange(2 * n)
            engine.returned_at = engine.shared_arena.locate(a)
            return [a[n:], np.full(n, 0.5)]

        @engine.register
        def filled(n, value):
            a = engine.shared_arena.empty(n, np.float64)
            a[:] = value
            # Where it lies, not the array: a reference to it would keep its block.
            engine.returned_at = engine.shared_arena.locate(a)
            return a

        started.append(engine.start())
        return engine
    try:
        yield start
    finally:
        for e in started:
            e.stop()


# ---- an engine in this process ----------------------------------------------------------

def test_an_ordinary_result_is_copied_once_into_the_engine_arena_and_read_in_place(
        local_engine, writers):
    engine = local_engine()
    arena = engine.shared_arena
    with _shares(zerocan.Client(engine.endpoint, timeout=20)) as client:
        used = arena.used
        r = client.call("arange", N)
        assert r.dtype == np.float64 and r.shape == (N,)
        assert np.array_equal(r, np.arange(N, dtype=np.float64))
        _assert_in_place(r)
        # The bytes lie in the engine's arena (this process maps it: the same address).
        assert arena.locate(r) == (used, NBYTES)
        w = _result_writer(writers)
        assert w.shared_refs == 1 and w.shared_bytes_copied == NBYTES and w.frames == 0
        assert arena.used == used + NBYTES  # the block lives with the result
        assert arena.lent == 0  # the client holds it now: no loan left
        view = r[-10:]
        del r
        gc.collect()
        assert arena.used == used + NBYTES  # a view keeps the block
        assert view[-1] == N - 1
        del view
        gc.collect()
        wait_until(lambda: arena.used == used, what="the block back in the engine's arena")
        # Small results stay inline.
        assert client.call("add", 2, 3) == 5
        small = client.call("arange", 10)
        assert list(small) == list(range(10)) and not _in_shared_memory(small)
        assert wire.received_frame(small) is None and _result_writer(writers).shared_refs == 0
        assert arena.used == used


def test_an_array_of_the_engine_arena_goes_in_place_without_a_copy(local_engine, writers):
    engine = local_engine()
    arena = engine.shared_arena
    with _shares(zerocan.Client(engine.endpoint, timeout=20)) as client:
        used = arena.used
        r = client.call("filled", N, 2.5)
        _assert_in_place(r)
        assert r.shape == (N,) and np.all(r == 2.5)
        w = _result_writer(writers)
        assert w.shared_refs == 1 and w.shared_bytes_copied == 0, \
            (w.shared_refs, w.shared_bytes_copied)
        assert arena.used == used + NBYTES  # one block: the function's own array
        # The result reads the very bytes the function returned (this process maps the
        # engine's arena: the same address).
        assert arena.locate(r) == engine.returned_at == (used, NBYTES)
        assert arena.lent == 0
        gc.collect()
        assert arena.used == used + NBYTES  # the result holds it (the function's array
        #                                     is gone)
        del r
        gc.collect()
        wait_until(lambda: arena.used == used, what="the block back in the engine's arena")


def test_part_of_a_block_and_several_arrays_in_one_result(local_engine, writers):
    engine = local_engine()
    arena = engine.shared_arena
    with _shares(zerocan.Client(engine.endpoint, timeout=20)) as client:
        used = arena.used
        upper, half = client.call("halves", N)
        _assert_in_place(upper)
        _assert_in_place(half)
        assert np.array_equal(upper, np.arange(N, 2 * N, dtype=np.float64))
        assert np.all(half == 0.5)
        w = _result_writer(writers)
        assert w.shared_refs == 2 and w.shared_bytes_copied == NBYTES  # the ordinary one
        offset, length = engine.returned_at
        assert arena.locate(upper) == (offset + NBYTES, NBYTES)  # in place, in its block
        assert arena.used == used + 3 * NBYTES and arena.lent == 0
        del upper  # the whole block of the first goes back, the copy stays
        gc.collect()
        wait_until(lambda: arena.used == used + NBYTES, what="the first block back")
        assert half[-1] == 0.5
        del half
        gc.collect()
        wait_until(lambda: arena.used == used, what="the second block back")


def test_without_shared_memory_results_come_as_frames(local_engine, writers):
    engine = local_engine()
    arena = engine.shared_arena
    with zerocan.Client(engine.endpoint, timeout=20, shared_memory=False) as client:
        for function, args in (("arange", (N,)), ("filled", (N, 1.5))):
            r = client.call(function, *args)
            _assert_in_frame(r)
            assert r.flags.writeable  # a received frame is the receiver's
            assert r[-1] == (N - 1 if function == "arange" else 1.5)
            w = _result_writer(writers)
            assert w.shared_refs == 0 and w.shared_bytes_copied == 0 and w.frames == 1
            assert not client.shares_memory
            if function == "arange":
                assert arena.used == 0  # nothing placed in the engine's arena
            del r
            gc.collect()


def test_an_engine_without_shared_memory_ignores_the_flag(local_engine):
    engine = local_engine(shared_memory=False)
    sock = _dealer(engine.endpoint)
    try:
        sock.send_multipart(_apply_with_shared_results(1, "arange", N))
        frames = _receive(sock)
        assert _tensor_payload(frames)[0] == "frame"
        r = wire.Message(frames, (), MAP).result()
        _assert_in_frame(r)
        assert r[-1] == N - 1
        # A client that shares memory gets no answer to its hello: frames too.
        with zerocan.Client(engine.endpoint, timeout=20) as client:
            r = client.call("arange", N)
            _assert_in_frame(r)
            assert not client.shares_memory
    finally:
        sock.close()


def test_a_result_read_after_its_loan_expired_is_refused_not_misread(local_engine):
    engine = local_engine(shared_result_wait=0.2)
    arena = engine.shared_arena
    sock = _dealer(engine.endpoint)  # direct to the engine: it trusts the flag
    try:
        # Read in time: the decoder holds the block, the loan ends.
        engine.shared_result_wait = 60.0
        sock.send_multipart(_apply_with_shared_results(1, "arange", N))
        frames = _receive(sock)
        assert _tensor_payload(frames)[0] == "shared"
        assert arena.lent == 1  # lent, not yet held
        r = wire.Message(frames, (), MAP).result()
        _assert_in_place(r)
        assert r[-1] == N - 1 and arena.lent == 0
        del r, frames
        gc.collect()
        wait_until(lambda: arena.used == 0, what="the block back")

        # Read late: the loan ends after shared_result_wait, the block goes back and is
        # reused by the next result. The late reference is refused, never misread.
        engine.shared_result_wait = 0.2
        sock.send_multipart(_apply_with_shared_results(2, "arange", N))
        late = _receive(sock)
        late_ref = _tensor_payload(late)
        assert late_ref[0] == "shared"
        assert arena.lent == 1
        wait_until(lambda: arena.lent == 0, seconds=5, what="the loan to expire")
        wait_until(lambda: arena.used == 0, what="the expired block back")
        sock.send_multipart(_apply_with_shared_results(3, "filled", N, 9.0))
        fresh = _receive(sock)
        fresh_ref = _tensor_payload(fresh)
        # The same bytes of the arena (arena, offset, length), another block.
        assert fresh_ref[:4] == late_ref[:4] and fresh_ref[4] != late_ref[4], \
            (fresh_ref, late_ref)
        value = wire.Message(fresh, (), MAP).result()
        assert np.all(value == 9.0)
        with pytest.raises(zerocan.DecodeError, match="in no block of the arena that is in use"):
            wire.Message(late, (), MAP).result()
        del value
        gc.collect()
        # Not even with the block gone altogether.
        wait_until(lambda: arena.used == 0, what="the block back")
        with pytest.raises(zerocan.DecodeError, match="in no block of the arena that is in use"):
            wire.Message(late, (), MAP).result()
    finally:
        sock.close()


def test_a_result_in_the_callers_own_arena_that_the_call_did_not_pass_is_refused(
        local_engine):
    # An engine whose result arena is the caller's own (both in this process): its results
    # refer to blocks of the caller's arena that no argument of the call referred to.
    own = shared.Arena(64 * MIB)
    engine = local_engine(shared_arena=own)
    with _shares(zerocan.Client(engine.endpoint, timeout=20, shared_arena=own)) as client:
        for function, args in (("arange", (N,)), ("filled", (N, 1.0))):
            with pytest.raises(zerocan.DecodeError, match="did not pass"):
                client.call(function, *args)
        # An argument handed back in place is still accepted.
        x = own.empty(MIB, np.uint8)
        x[:] = 4
        r = client.call("echo", x)
        assert np.array_equal(r, x) and r.ctypes.data == x.ctypes.data


# ---- an engine in another process ---------------------------------------------------------

def test_a_result_holds_the_engine_block_until_the_client_drops_it_or_dies(processes):
    _, url = _engine_process(processes)  # shared_result_wait 60 s: holds decide
    with _shares(zerocan.Client(url, timeout=20)) as client:
        used, holds, lent = client.call("arena_state")
        assert holds == 0 and lent == 0
        r = client.call("arange", N)
        _assert_in_place(r)
        assert np.array_equal(r, np.arange(N, dtype=np.float64))
        # The engine's block, held by this process's lease, no loan left.
        assert client.call("arena_state") == [used + NBYTES, 1, 0]
        view = r[::2]
        del r
        gc.collect()
        assert client.call("arena_state") == [used + NBYTES, 1, 0]  # the view holds it
        assert view[-1] == N - 2

        # An array of the engine's arena: in place (no second copy), the same pages as
        # the engine's. Two results held at once, each by its own lease.
        r = client.call("filled", N, 3.0)
        _assert_in_place(r)
        assert np.all(r == 3.0)
        assert client.call("arena_state") == [used + 2 * NBYTES, 2, 0]
        assert client.call("poke", 7, -2.0) is True
        assert r[7] == -2.0  # written by the engine after the call: shared pages
        assert client.call("forget") is True  # the engine drops its own reference
        # Letting go of one result releases its block only (the arena stays mapped).
        del view
        gc.collect()
        state = settle(lambda: client.call("arena_state"),
                        lambda s: s == [used + NBYTES, 1, 0])
        assert state == [used + NBYTES, 1, 0], "the released block was not let go"
        assert r[7] == -2.0 and r[8] == 3.0
        del r
        gc.collect()
        state = settle(lambda: client.call("arena_state"), lambda s: s == [used, 0, 0])
        assert state == [used, 0, 0], "the engine's blocks were not let go"

        # A client killed (-9) while it holds a result: its holds go with it.
        other = processes("client", CLIENT, url, str(N))
        assert other.line() == "holding"
        state = client.call("arena_state")
        assert state == [used + NBYTES, 1, 0], state
        other.proc.send_signal(signal.SIGKILL)
        assert other.proc.wait(10) == -signal.SIGKILL
        state = settle(lambda: client.call("arena_state"), lambda s: s == [used, 0, 0])
        assert state == [used, 0, 0], "the dead client's hold was not dropped"


def test_a_late_reader_in_another_process_is_refused_after_the_loan(processes):
    _, url = _engine_process(processes, wait=0.2)
    sock = _dealer(url)
    try:
        with zerocan.Client(url, timeout=20, shared_memory=False) as state:
            used, holds, lent = state.call("arena_state")
            sock.send_multipart(_apply_with_shared_results(1, "arange", N))
            late = _receive(sock)
            assert _tensor_payload(late)[0] == "shared"
            # arena_state ends the loans past their time: wait for the block to go back.
            after = settle(lambda: state.call("arena_state"), lambda s: s == [used, 0, 0],
                            seconds=5)
            assert after == [used, 0, 0], after
            with pytest.raises(zerocan.DecodeError,
                               match="in no block of the arena that is in use"):
                wire.Message(late, (), MAP).result()
            # A result read in time is held across processes.
            sock.send_multipart(_apply_with_shared_results(2, "arange", N))
            r = wire.Message(_receive(sock), (), MAP).result()
            _assert_in_place(r)
            assert r[-1] == N - 1
            assert state.call("arena_state") == [used + NBYTES, 1, 0]
            del r
            gc.collect()
            assert settle(lambda: state.call("arena_state"),
                           lambda s: s == [used, 0, 0]) == [used, 0, 0]
    finally:
        sock.close()


# ---- through a C++ broker -----------------------------------------------------------------

def _broker(*flags: str) -> tuple[subprocess.Popen, str, str]:
    missing = cpp_command_missing("broker")
    if missing:
        pytest.skip(missing)
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    proc = subprocess.Popen([str(zerocan_bin()), "broker", "--frontend", front, "--backend",
                             back, "--heartbeat-ms", "50", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, front, back


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_through_a_broker_on_this_host_results_come_in_place(processes):
    broker, front, back = _broker()
    try:
        _engine_process(processes, back, "connect")
        with zerocan.Client(front, timeout=20) as client:
            assert client.call("add", 1, 1) == 2  # the engine has joined the broker
            _shares(client)
            used, _, _ = client.call("arena_state")
            r = client.call("arange", N)
            _assert_in_place(r)
            assert np.array_equal(r, np.arange(N, dtype=np.float64))
            assert client.call("arena_state") == [used + NBYTES, 1, 0]
            del r
            gc.collect()
            assert settle(lambda: client.call("arena_state"),
                           lambda s: s == [used, 0, 0]) == [used, 0, 0]
            r = client.call("filled", N, 6.0)
            _assert_in_place(r)
            assert np.all(r == 6.0)
            assert client.call("poke", 0, 1.0) is True and r[0] == 1.0  # the engine's pages
    finally:
        _stop(broker)


def test_through_a_broker_without_shared_memory_results_come_as_frames():
    broker, front, back = _broker("--no-shared-memory")
    engine = zerocan.Engine(back, builtins=True)

    @engine.register
    def arange(n):
        return np.arange(n, dtype=np.float64)

    engine.start()
    sock = _dealer(front)
    try:
        with zerocan.Client(front, timeout=20) as client:
            assert client.call("add", 1, 1) == 2  # the engine has joined the broker
            r = client.call("arange", N)
            _assert_in_frame(r)
            assert r[-1] == N - 1 and not client.shares_memory
            # Even a caller that asks for shared results (the flag set by hand): the
            # broker never told the engine where it runs, so the engine sends frames.
            sock.send_multipart(_apply_with_shared_results(1, "arange", N))
            frames = _receive(sock)
            assert _tensor_payload(frames)[0] == "frame"
            r = wire.Message(frames, (), MAP).result()
            _assert_in_frame(r)
            assert r[-1] == N - 1
            assert not engine._brokers_sharing
            assert engine.shared_arena.used == 0
    finally:
        sock.close()
        engine.stop()
        _stop(broker)


def test_a_direct_caller_that_said_no_hello_gets_frames_whatever_its_flag(local_engine):
    engine = local_engine()
    sock = zmq.Context.instance().socket(zmq.DEALER)  # no hello: nothing says where it runs
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(engine.endpoint)
    try:
        sock.send_multipart(_apply_with_shared_results(1, "arange", N))
        frames = _receive(sock)
        assert _tensor_payload(frames)[0] == "frame"
        assert engine.shared_arena.used == 0
    finally:
        sock.close()
