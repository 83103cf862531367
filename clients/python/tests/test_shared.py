"""zerocan.shared: arenas of sealed memory files that other processes of the same user
read in place, Python and C++ alike (tests/tools/shared_peek.cc is the C++ side)."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import zerocan
from zerocan import shared
from conftest import wait_until, zerocan_bin

MIB = 1 << 20
PEEK = zerocan_bin().parent / "tests" / "zerocan_shared_peek"
needs_peek = pytest.mark.skipif(not PEEK.is_file(), reason=f"not built: {PEEK}")


def test_blocks_are_aligned_returned_and_coalesced():
    arena = shared.Arena(MIB)
    a, b, c = (arena.allocate(100 << 10) for _ in range(3))
    for x in (a, b, c):
        assert x.ctypes.data % 64 == 0 and x.flags.writeable
    assert arena.used == 3 * (100 << 10)
    assert [arena.locate(x)[0] for x in (a, b, c)] == [0, 100 << 10, 200 << 10]
    assert arena.locate(np.zeros(4)) is None
    assert arena.allocate(800 << 10) is None  # 700 KiB free
    view = a[10:]  # a view keeps the block
    del a
    gc.collect()
    assert arena.used == 3 * (100 << 10)
    del view, b
    gc.collect()
    d = arena.allocate(200 << 10)  # the two runs joined
    assert arena.locate(d) == (0, 200 << 10)
    del c, d, x  # x: the loop above left it on c
    gc.collect()
    assert arena.used == 0
    x = arena.empty((256, 512), np.float64)  # all of it again, in one run
    assert x.shape == (256, 512) and arena.locate(x) == (0, MIB)
    for bad in ((-1,), (4, -2)):
        with pytest.raises(ValueError, match="negative dimension"):
            arena.empty(bad)
    with pytest.raises(ValueError):
        arena.allocate(-1)


def test_empty_in_the_process_arena_and_a_full_arena_says_so():
    x = shared.empty((3, 4), np.int32)
    x[:] = 7
    assert x.dtype == np.int32 and int(x.sum()) == 84
    assert shared.default_arena().locate(x) is not None
    with pytest.raises(zerocan.Error, match="shared arena full"):
        shared.empty(shared.default_arena().capacity + 1, np.uint8)


def test_another_process_reads_a_block_in_place():
    arena = shared.Arena(4 * MIB)
    x = arena.empty(3 * MIB, np.uint8)
    x[:] = ord("a")
    offset, length = arena.locate(x)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys
sys.path.insert(0, {str(Path(shared.__file__).parents[1])!r})
from zerocan import shared
m = shared.Segments().resolve({arena.name!r}, {offset}, {length}, "args[0]")
print(len(m), chr(m[0]), flush=True)
sys.stdin.readline()          # the parent writes a byte meanwhile
print(chr(m[12345]), flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().split() == [str(3 * MIB), "a"]
    x[12345] = ord("b")  # after the reader mapped: the same memory, not a copy
    reader.stdin.write("go\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "b"
    assert reader.wait(10) == 0
    assert arena.peers_refused == 0


@needs_peek
def test_cpp_reads_a_python_arena_and_python_reads_a_cpp_one():
    arena = shared.Arena(MIB)
    x = arena.empty(1000, np.uint8)
    x[:] = 3
    out = subprocess.run([str(PEEK), "read", arena.name, *map(str, arena.locate(x))],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000", "3000", "3"]
    server = subprocess.Popen([str(PEEK), "serve", str(2 * MIB), "9"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name, offset, length = server.stdout.readline().split()
        m = shared.Segments().resolve(name, int(offset), int(length), "result")
        a = np.frombuffer(m, dtype=np.uint8)
        assert a.size == 2 * MIB and int(a.sum()) == 9 * 2 * MIB
        assert not a.flags.writeable  # a reader's view is read-only
    finally:
        server.stdin.close()
        server.wait(10)


def test_locations_outside_an_arena_are_decode_errors_naming_the_field():
    arena = shared.Arena(1 << 16)
    segments = shared.Segments()
    with pytest.raises(zerocan.DecodeError, match="in no block of the arena that is in use"):
        segments.resolve(arena.name, 0, 1 << 16)  # nothing handed out there
    whole = arena.allocate(1 << 16)
    assert len(segments.resolve(arena.name, 0, 1 << 16)) == 1 << 16
    for name, offset, length, why in [
            (arena.name, 1 << 16, 1, "outside the arena (65536 bytes)"),
            (arena.name, 100, 1 << 16, "outside the arena"),
            (arena.name, 2**64 - 1, 2, "outside the arena"),
            ("zerocan-arena-1-" + "0" * 32, 0, 1, "no arena there on this host"),
            ("zerocan-arena-no-such-one", 0, 1, "not an arena name"),
            ("", 0, 1, "not an arena name"),
            ("x" * 200, 0, 1, "not an arena name"),
            ("/etc/passwd", 0, 1, "not an arena name")]:
        with pytest.raises(zerocan.DecodeError) as e:
            segments.resolve(name, offset, length, "args[1].tensor.data")
        assert "args[1].tensor.data: shared memory @" in str(e.value) and why in str(e.value)
        assert e.value.code == "malformed"
    del whole


def test_a_memory_file_whose_size_is_not_sealed_is_refused():
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 16)
    name = f"zerocan-arena-{os.getpid()}-{'ab' * 16}"  # an arena's name, unsealed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            socket.send_fds(conn, [b"z"], [fd])

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(zerocan.DecodeError, match="not a sealed memory file"):
            shared.Segments().resolve(name, 0, 16, "result")
    finally:
        t.join()
        listener.close()
        os.close(fd)
    # A real arena's file is sealed against shrinking and growing.
    arena = shared.Arena(1 << 16)
    seals = fcntl.fcntl(arena._fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run a child as another user")
def test_another_user_is_refused_the_arena():
    arena = shared.Arena(1 << 16)
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.setgid(65534)
            os.setuid(65534)
            shared.Segments().resolve(arena.name, 0, 16)
        except zerocan.DecodeError as e:
            ok = "another user" in str(e) or "no descriptor came" in str(e)
        except BaseException:
            pass
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for _ in range(200):
        if arena.peers_refused:
            break
        threading.Event().wait(0.01)
    assert arena.peers_refused == 1


def arena_mappings() -> int:
    return Path("/proc/self/maps").read_text().count("memfd:zerocan-arena")


def test_nothing_is_left_once_the_processes_are_gone():
    gc.collect()  # arenas of earlier tests
    before = arena_mappings()
    owner = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(shared.__file__).parents[1])!r})
import numpy as np
from zerocan import shared
arena = shared.Arena(64 << 20)
x = arena.empty(64 << 20, np.uint8)
x[:] = ord("k")
print(arena.name, flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    name = owner.stdout.readline().strip()
    segments = shared.Segments()
    m = segments.resolve(name, 0, 64 << 20)
    owner.send_signal(signal.SIGKILL)  # the arena's process crashes
    owner.wait(10)
    assert m[(64 << 20) - 1] == ord("k")  # what this process mapped stays readable
    assert arena_mappings() == before + 1
    m.release()
    del m
    gc.collect()
    assert segments.mapped() == 0  # the reader keeps none of its own
    assert arena_mappings() == before  # let go: no mapping left, the kernel has it back
    assert not [p for p in os.listdir("/dev/shm") if "zerocan" in p]


# ---- a Python engine reading references (Payload.shared) ---------------------------------

def _shared_apply(function: str, arena_name: str, offset: int, length: int) -> bytes:
    """An envelope: function(uint8 tensor of `length` bytes at `offset` in the arena)."""
    from zerocan import _schema
    env = _schema.load().Envelope.new_message()
    env.version = 1
    env.messageId = env.sessionId = env.sequence = 7
    apply = env.body.init("apply")
    apply.function = function
    tensor = apply.init("args", 1)[0].init("tensor")
    tensor.dtype = "uint8"
    tensor.init("shape", 1)[0] = length
    ref = tensor.init("data").init("shared")
    ref.arena, ref.offset, ref.length = arena_name, offset, length
    return env.to_bytes()


def _ask(sock, frames, timeout_ms=5000):
    sock.send_multipart([b"", *frames])
    assert sock.poll(timeout_ms), "no reply"
    return zerocan.decode(sock.recv_multipart()[1:])


def _engine_and_dealer(**options):
    """A Python engine with the built-ins, bound on tcp, and a raw DEALER connected to it."""
    import zmq
    from conftest import free_tcp_endpoint
    engine = zerocan.Engine(free_tcp_endpoint(), builtins=True, bind=True, **options).start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(engine.endpoint)
    return engine, sock


def test_a_python_engine_answers_a_hello_and_reads_references_in_place():
    engine, sock = _engine_and_dealer()
    try:
        w = zerocan.wire.Writer()
        w.set_header(zerocan.Header(1, 9, 1))
        w.hello("client", "client", (), shared.this_host())
        hello = _ask(sock, [w.finish().envelope])
        assert hello.kind == "hello" and hello.hello()[1] == "engine"
        assert tuple(hello.envelope.body.hello.host.to_dict().values()) == shared.this_host()

        arena = shared.Arena(4 * MIB)
        block = arena.allocate(MIB)
        block[:] = 1
        offset, length = arena.locate(block)
        reply = _ask(sock, [_shared_apply("sum", arena.name, offset, length)])
        assert reply.result() == float(MIB)
        reply = _ask(sock, [_shared_apply("nbytes", arena.name, offset, length)])
        assert reply.result() == MIB
        # Out of the arena: the engine answers a DecodeError naming the field.
        type_, message, _, _ = _ask(sock, [_shared_apply("sum", arena.name, 4 * MIB - 8,
                                                          16)]).error()
        assert type_ == "zerocan.DecodeError"
        assert "args[0].tensor.data.shared" in message and "outside the arena" in message
    finally:
        sock.close()
        engine.stop()


def test_without_shared_memory_a_python_engine_ignores_hellos_and_refuses_references():
    engine, sock = _engine_and_dealer(shared_memory=False)
    try:
        w = zerocan.wire.Writer()
        w.set_header(zerocan.Header(1, 9, 1))
        w.hello("client", "client", (), shared.this_host())
        sock.send_multipart([b"", w.finish().envelope])
        assert sock.poll(300) == 0  # no answer: the client sends frames
        arena = shared.Arena(1 * MIB)
        block = arena.allocate(4096)
        offset, length = arena.locate(block)
        type_, message, _, _ = _ask(sock, [_shared_apply("sum", arena.name, offset,
                                                          length)]).error()
        assert type_ == "zerocan.DecodeError" and "does not accept" in message
    finally:
        sock.close()
        engine.stop()


# ---- the Python client passing arguments in shared memory -------------------------------

def _client_calls_in_place(url, via_broker=False):
    arena = shared.Arena(64 * MIB)
    with zerocan.Client(url, timeout=20, shared_arena=arena) as client:
        if via_broker:
            assert client.call("add", 1, 1) == 2  # the engine has joined the broker
        wait_until(lambda: client.shares_memory)
        x = arena.empty(4 * MIB, np.uint8)
        x[:] = 1
        x[-1] = 3
        assert client.call("sum", x) == 4 * MIB + 2
        assert client.counters["shared_refs_sent"] == 1
        assert client.counters["shared_bytes_copied"] == 0  # read where it lies
        # An ordinary array: copied into the arena once, and given back with the reply.
        y = np.full(MIB // 8, 0.5)
        assert client.call("sum", y) == 0.5 * y.size
        assert client.counters["shared_bytes_copied"] == y.nbytes
        # Only x: the copy went back once the engine let go of the call (its view held it).
        wait_until(lambda: arena.used == x.nbytes)
        # Small arguments stay inline.
        assert client.call("add", 2, 3) == 5
        assert client.counters["shared_refs_sent"] == 2


def test_a_client_passes_arena_arrays_in_place_and_copies_others_once(builtins_url):
    _client_calls_in_place(builtins_url)


def test_a_client_passes_references_through_a_broker_to_an_engine_on_this_host():
    from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin
    missing = cpp_command_missing("broker")
    if missing:
        pytest.skip(missing)
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    broker = subprocess.Popen([str(zerocan_bin()), "broker", "--frontend", front, "--backend",
                               back, "--heartbeat-ms", "50"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = zerocan.Engine(back, builtins=True).start()
    try:
        _client_calls_in_place(front, via_broker=True)
    finally:
        engine.stop()
        broker.terminate()
        broker.wait(10)


def test_without_shared_memory_a_client_sends_frames():
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True).start()
    try:
        with zerocan.Client(engine.endpoint, timeout=20, shared_memory=False) as client:
            x = shared.empty(MIB, np.uint8)
            x[:] = 2
            assert client.call("sum", x) == 2 * MIB
            assert not client.shares_memory
            assert client.counters["shared_refs_sent"] == 0
    finally:
        engine.stop()


def test_a_timed_out_call_keeps_its_block_until_the_late_reply():
    import time
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True)

    @engine.register("slow_nbytes")
    def slow_nbytes(x):
        time.sleep(0.4)
        return x.nbytes

    engine.start()
    arena = shared.Arena(16 * MIB)
    try:
        with zerocan.Client(engine.endpoint, timeout=20, shared_arena=arena) as client:
            wait_until(lambda: client.shares_memory)
            # The engine still reads the argument in place after the client gave up.
            y = np.ones(MIB // 8)
            with pytest.raises(zerocan.TimeoutError):
                client.apply_with("slow_nbytes", (y,), timeout=0.05).result()
            assert arena.used == y.nbytes  # not reused under the running call
            time.sleep(0.6)
            assert client.call("add", 1, 2) == 3  # the late reply has come meanwhile
            wait_until(lambda: client.counters["late"] == 1)
            wait_until(lambda: arena.used == 0)
    finally:
        engine.stop()


def test_an_echo_hands_an_arena_argument_back_in_place_and_the_result_keeps_it(builtins_url):
    arena = shared.Arena(64 * MIB)
    with zerocan.Client(builtins_url, timeout=20, shared_arena=arena) as client:
        wait_until(lambda: client.shares_memory)
        x = arena.empty(8 * MIB, np.uint8)
        x[:] = 5
        r = client.call("echo", x)
        assert np.array_equal(r, x) and not r.flags.writeable
        x[123] = 6  # the same pages: the result reads the caller's block
        assert r[123] == 6
        assert client.counters["shared_bytes_copied"] == 0
        # An ordinary array: copied into the arena once, handed back in place, and its
        # block kept while the result (or any view of it) lives.
        used = arena.used
        y = np.arange(MIB, dtype=np.float64)
        ry = client.call("echo", y)
        assert np.array_equal(ry, y)
        assert client.counters["shared_bytes_copied"] == y.nbytes
        assert arena.used == used + y.nbytes
        tail = ry[-10:]
        del ry
        gc.collect()
        assert arena.used == used + y.nbytes  # the view holds it
        assert tail[-1] == MIB - 1
        del tail
        gc.collect()
        wait_until(lambda: arena.used == used)


@pytest.mark.parametrize("program", ["engine", "broker"])
def test_the_programs_turn_shared_memory_off_with_a_flag(program):
    import time
    from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin
    missing = cpp_command_missing(program)
    if missing:
        pytest.skip(missing)
    url, back = free_tcp_endpoint(), free_tcp_endpoint()
    args = (["engine", "--bind", url, "--builtins"] if program == "engine" else
            ["broker", "--frontend", url, "--backend", back])
    proc = subprocess.Popen([str(zerocan_bin()), *args, "--no-shared-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = zerocan.Engine(back, builtins=True).start() if program == "broker" else None
    try:
        with zerocan.Client(url, timeout=20) as client:
            x = shared.empty(MIB, np.uint8)
            x[:] = 1
            assert client.call("sum", x) == MIB  # the hello had its chance meanwhile
            time.sleep(0.2)
            assert not client.shares_memory
            assert client.counters["shared_refs_sent"] == 0
    finally:
        if engine is not None:
            engine.stop()
        proc.terminate()
        proc.wait(10)


def test_a_calls_tracker_waits_until_nothing_holds_its_arrays(builtins_url):
    from zerocan.client import CallTracker
    arena = shared.Arena(16 * MIB)
    with zerocan.Client(builtins_url, timeout=20, shared_arena=arena) as client:
        assert client.call("add", 1, 1) == 2
        wait_until(lambda: client.shares_memory)
        x = arena.empty(MIB, np.uint8)
        x[:] = 3
        f = client.apply("echo", x)
        r = f.result(20)
        assert isinstance(f.tracker, CallTracker)
        assert not f.tracker.done  # the result reads x's block in place
        assert not f.tracker.wait(0.05)
        assert arena.holds_on(x) >= 1
        tracker = f.tracker
        del r, f  # the future keeps its result too
        gc.collect()
        assert tracker.wait(5)
        assert tracker.done and arena.holds_on(x) == 0
        # An ordinary array goes as a copy made for the call: nobody writes that, so the
        # tracker is the frames' alone.
        g = client.apply("sum", np.ones(MIB // 8))
        assert g.result(20) == MIB // 8
        assert not isinstance(g.tracker, CallTracker)
