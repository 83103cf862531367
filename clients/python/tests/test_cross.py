"""C++ <-> Python through the C++ broker: a Python client calls a C++ engine, and the C++
client (`zerocan call`) calls a Python engine, for every argument type.

Needs the C++ program ($ZEROCAN_BIN, default build/zerocan) with `engine`, `broker` and
`call` implemented; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

import zerocan
from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin

MISSING = next((r for r in (cpp_command_missing(c) for c in ("engine", "broker", "call")) if r),
               None)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def wait_ready(client, seconds=20.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert client.apply_with("echo", ("ready",), timeout=0.5).result() == "ready"
            return
        except zerocan.TimeoutError:
            if time.monotonic() > deadline:
                raise


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, *args):
        p = subprocess.Popen([str(zerocan_bin()), *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def brokers():
    """Broker A with a C++ engine, broker B with a Python engine; their frontends."""
    procs = Procs()
    cpp_front, cpp_back = free_tcp_endpoint(), free_tcp_endpoint()
    py_front, py_back = free_tcp_endpoint(), free_tcp_endpoint()
    procs.start("broker", "--frontend", cpp_front, "--backend", cpp_back)
    procs.start("engine", "--connect", cpp_back, "--id", "cpp-engine", "--builtins")
    procs.start("broker", "--frontend", py_front, "--backend", py_back)
    py_engine = zerocan.Engine(py_back, builtins=True, id="py-engine", heartbeat=0.1).start()
    clients = []
    try:
        # The third client sends large arrays as frames through the broker, as a client on
        # another host would (the others pass them in shared memory on this host).
        for url, shared in ((cpp_front, True), (py_front, True), (cpp_front, False)):
            c = zerocan.Client(url, timeout=30, shared_memory=shared)
            clients.append(c)
            wait_ready(c)
        yield {"cpp": cpp_front, "py": py_front, "cpp_client": clients[0],
               "py_client": clients[1], "cpp_frames_client": clients[2]}
    finally:
        for c in clients:
            c.close()
        py_engine.stop()
        procs.stop()


ARGS = [None, True, False, 0, -7, 2**63 - 1, 2**64 - 1, 2.5, -0.0, "", "héllo", b"", b"bytes",
        bytearray(b"x" * 5000), memoryview(b"mv"), [1, "x", None, [2.5]], (1, 2),
        {"a": 1, "b": [2.5, "c"], "z": {"n": None}}, list(range(1000)), [0.5, 1.5],
        [True, False]] + [(np.arange(7) % 2).astype(d) for d in
                          ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                           "uint64", "float16", "float32", "float64", "complex64", "complex128")] + [
        np.arange(24.0).reshape(2, 3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(100_000, dtype=np.int32), np.zeros((0, 3)), np.array(3.5),
        np.arange(10_000, dtype=">f8"), np.arange(1_000_000, dtype=np.float64)[::3]]


def same(a, b):
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype.newbyteorder("=") and \
            a.shape == b.shape and \
            np.array_equal(a, b)
    if isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(a) == bytes(b)
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(b, dict):
        return type(a) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("client", ["cpp_client", "cpp_frames_client"])
@pytest.mark.parametrize("i", range(len(ARGS)))
def test_python_client_cpp_engine_echo_every_type(brokers, i, client):
    value = ARGS[i]
    assert same(brokers[client].apply("echo", value).result(), value), value


@pytest.mark.parametrize("side", ["cpp", "py"])
def test_echo_keeps_list_tuple_and_ndarray(brokers, side):
    # The C++ engine reads the homogeneous list as a typed array and forwards the
    # sequenceType marker untouched; the Python engine does the same.
    got = brokers[f"{side}_client"].apply(
        "echo", {"a": [1, 2, 3], "t": (1, 2.5), "arr": np.arange(3)}).result()
    assert type(got) is dict and list(got) == ["a", "t", "arr"]
    assert type(got["a"]) is list and got["a"] == [1, 2, 3]
    assert type(got["t"]) is tuple and got["t"] == (1, 2.5)
    assert type(got["arr"]) is np.ndarray and np.array_equal(got["arr"], np.arange(3))


SEQUENCES = [[(1, 2), (3, 4)], [], (), [[]], ((),), [0.5, 1.5], [True, False],
             [1, "x", None, 2.5], (np.arange(3), np.zeros((2, 2))), (1,),
             ([1, 2], (3, 4), [5.0]), {"k": ([True], ("s",))}, list(range(100_000))]


@pytest.mark.parametrize("side", ["cpp", "py"])
def test_echo_keeps_nested_sequence_types(brokers, side):
    c = brokers[f"{side}_client"]
    for value in SEQUENCES:
        assert same(c.apply("echo", value).result(), value), value
    # Several arguments: the list the engine builds holds them with their types.
    assert same(c.apply("echo", [1, 2], (3,), np.arange(2)).result(),
                [[1, 2], (3,), np.arange(2)])


@pytest.mark.parametrize("side", ["cpp", "py"])
def test_builtins_agree_between_engines(brokers, side):
    c = brokers[f"{side}_client"]
    assert c.apply("add", 2, 3).result() == 5
    assert c.apply("add", 2**63, 5).result() == 2**63 + 5
    assert c.apply("add", 1.5, 2).result() == 3.5
    assert c.apply("sum", np.arange(100, dtype=np.int16)).result() == 4950.0
    assert c.apply("sum", [1, 2.5, True]).result() == 4.5
    assert c.apply("nbytes", np.zeros(1000), b"abc", [b"x" * 5000], list(range(1000))).result() \
        == 8000 + 3 + 5000 + 2000
    assert c.apply("echo", 1, "a").result() == [1, "a"]
    assert c.apply("sleep", 0.01).result() == 0.01
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("fail", "boom").result()
    assert (e.value.type, e.value.message, e.value.function, e.value.where) == \
        ("zerocan.Fail", "boom", "fail", f"{side}-engine")
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("no_such_function").result()
    assert e.value.type == "zerocan.UnknownFunction"
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("add", "a", 1).result()
    assert (e.value.type, e.value.message) == \
        ("zerocan.ArgumentError", 'add: argument 0: expected a number, got text "a"')


CALLS = [["echo", "null"], ["echo", "true"], ["echo", "5"], ["echo", "-5"],
         ["echo", "18446744073709551615"], ["echo", "2.5"], ["echo", '"text"'],
         ["echo", "plain words"], ["echo", "[1, 2, 3]"], ["echo", "[1.5, 2.5]"],
         ["echo", '[1, "a", null, [true]]'], ["echo", '{"a": 1, "b": [1.5], "c": {"d": null}}'],
         ["echo", '{"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3, 4]}'],
         ["echo", '{"dtype": "uint64", "shape": [3], "data": [0, 1, 18446744073709551615]}'],
         ["echo", "1", '"two"', "[3]"], ["echo"], ["add", "2", "3"], ["add", "1.5", "2"],
         ["sum", "[1, 2, 3.5]"], ["sum", '{"dtype": "int8", "shape": [4], "data": [1, 2, 3, -4]}'],
         ["nbytes", "[1, 2, 3]", '{"dtype": "float64", "shape": [600], "data": [0]}'],
         ["echo", "[" + ", ".join(str(i) for i in range(300)) + "]", "--full"]]


def run_call(url, args):
    out = subprocess.run([str(zerocan_bin()), "call", url, *args, "--timeout", "20"],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("args", CALLS, ids=lambda a: " ".join(a)[:40])
def test_cpp_client_python_engine_matches_cpp_engine(brokers, args):
    if args[0] == "nbytes" and "600" in args[-1]:
        # a JSON tensor needs its data: build one with 600 elements
        args = [args[0], args[1], json.dumps({"dtype": "float64", "shape": [600],
                                               "data": list(range(600))})]
    py = run_call(brokers["py"], args)
    cpp = run_call(brokers["cpp"], args)
    assert py[0] == 0, py[2]
    assert py == cpp


def test_cpp_client_python_engine_errors(brokers):
    code, out, err = run_call(brokers["py"], ["fail", '"boom"'])
    assert code == 1 and "zerocan.Fail" in err and "boom" in err and "py-engine" in err
    code, out, err = run_call(brokers["py"], ["missing"])
    assert code == 1 and "zerocan.UnknownFunction" in err


def test_100mb_array_through_cpp_engine_is_zero_copy_both_ways(brokers):
    # Frames: shared memory (on by default on one host) would copy the array into the
    # arena once; test_shared.py covers that path.
    with zerocan.Client(brokers["cpp_client"].url, timeout=60, shared_memory=False) as c:
        _echo_100mb_without_copies(c)


def _echo_100mb_without_copies(c):
    a = np.random.default_rng(0).random(100 * (1 << 20) // 8)
    f = c.apply("echo", a)
    # Sent without a copy: the frame handed to libzmq is the array's own memory, and
    # libzmq holds it until the send is done.
    assert f.sent_buffers == [(a.ctypes.data, a.nbytes)]
    r = f.result(timeout=60)
    # Came back as a view of the received frame, not a copy.
    frame = zerocan.received_frame(r)
    assert frame is not None
    assert np.shares_memory(r, np.frombuffer(frame.buffer, np.uint8))
    assert r.flags.writeable and np.array_equal(r, a)
    deadline = time.monotonic() + 10
    while not f.tracker.done and time.monotonic() < deadline:
        time.sleep(0.005)
    assert f.tracker.done  # libzmq released the sender's buffer


def test_python_engine_keeps_heartbeating_during_a_long_call(brokers):
    # The broker counts an engine dead after 3 silent heartbeat intervals (1.5 s by
    # default); a 2.5 s call must not make it so.
    c = brokers["py_client"]
    f = c.apply("sleep", 2.5)
    assert f.result(timeout=20) == 2.5  # not zerocan.EngineLost
