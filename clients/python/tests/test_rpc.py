"""Python client <-> Python engine over real sockets."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
import zmq

import zerocan
from conftest import free_tcp_endpoint


@pytest.fixture(params=["tcp", "ipc", "inproc"])
def engine_and_client(request, tmp_path):
    url = {"tcp": "tcp://127.0.0.1:*", "ipc": f"ipc://{tmp_path}/e.sock",
           "inproc": f"inproc://zerocan-test-{id(request)}"}[request.param]
    engine = zerocan.Engine(url, builtins=True, bind=True, id="py-engine")

    @engine.register
    def scale(x, k=2.0):
        return x * k

    @engine.register("kw")
    def keywords(*args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    @engine.register
    def boom():
        raise ValueError("bad value")

    engine.start()
    client = zerocan.Client(engine.endpoint, timeout=20)
    yield engine, client
    client.close()
    engine.stop()


ARGS = [None, True, 7, -7, 2**64 - 1, 2.5, "text", b"bytes", bytearray(b"ba"),
        memoryview(b"mv"), [1, "x", None], (1, 2), {"a": 1, "b": [2.5]},
        np.arange(12, dtype=np.int16).reshape(3, 4), np.ones((100, 100), order="F"),
        np.zeros(3, dtype=np.complex64), np.array(True), np.arange(10_000, dtype=">f8"),
        np.arange(300_000, dtype=np.int64)[::3]]


def same(a, b):
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype.newbyteorder("=") and \
            np.array_equal(a, b)
    if isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(a) == bytes(b)
    return a == b and type(a) is type(b)


def test_echo_every_argument_type(engine_and_client):
    _, client = engine_and_client
    futures = [client.apply("echo", a) for a in ARGS]
    for a, f in zip(ARGS, futures):
        assert same(f.result(), a), a


def test_echo_keeps_list_tuple_and_ndarray(engine_and_client):
    _, client = engine_and_client
    got = client.apply("echo", {"a": [1, 2, 3], "t": (1, 2.5), "arr": np.arange(3)}).result()
    assert type(got) is dict and list(got) == ["a", "t", "arr"]
    assert type(got["a"]) is list and got["a"] == [1, 2, 3]
    assert type(got["t"]) is tuple and got["t"] == (1, 2.5)
    assert type(got["arr"]) is np.ndarray and np.array_equal(got["arr"], np.arange(3))


def test_registered_functions_receive_lists_and_tuples(engine_and_client):
    _, client = engine_and_client
    got = client.apply("kw", [1, 2], (3, 4.5), x=[True, False], y=()).result()
    assert got == {"args": [[1, 2], (3, 4.5)], "kwargs": {"x": [True, False], "y": ()}}
    assert type(got["args"][1]) is tuple and type(got["kwargs"]["x"]) is list


def test_builtins(engine_and_client):
    _, c = engine_and_client
    assert c.apply("echo").result() is None
    assert c.apply("echo", 1, "a").result() == [1, "a"]
    assert c.apply("add", 2, 3).result() == 5
    assert c.apply("add", 2**63, 1).result() == 2**63 + 1
    assert c.apply("add", 1.5, 2).result() == 3.5
    assert c.apply("sum", np.arange(10, dtype=np.int32)).result() == 45.0
    assert c.apply("sum", [1, 2.5, True]).result() == 4.5
    assert c.apply("nbytes", np.zeros(1000), b"abc", [b"x" * 5000]).result() == 8000 + 3 + 5000
    assert c.apply("sleep", 0.01).result() == 0.01


def test_remote_errors_carry_type_message_function_where(engine_and_client):
    _, c = engine_and_client
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("fail", "boom").result()
    assert (e.value.type, e.value.message, e.value.function, e.value.where) == \
        ("zerocan.Fail", "boom", "fail", "py-engine")
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("boom").result()
    assert (e.value.type, e.value.message, e.value.function) == ("ValueError", "bad value", "boom")
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("missing").result()
    assert e.value.type == "zerocan.UnknownFunction" and "missing" in e.value.message
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("add", "a", 1).result()
    assert e.value.type == "zerocan.ArgumentError"
    assert e.value.message == 'add: argument 0: expected a number, got text "a"'
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply("scale").result()
    assert e.value.type == "TypeError"


def test_user_functions_kwargs_in_order(engine_and_client):
    _, c = engine_and_client
    x = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(c.apply("scale", x, k=3).result(), x * 3)
    r = c.apply("kw", 1, z=1, a=2, m=3).result()
    assert r == {"args": [1], "kwargs": {"z": 1, "a": 2, "m": 3}}
    assert list(r["kwargs"]) == ["z", "a", "m"]


def test_many_calls_in_flight(engine_and_client):
    _, c = engine_and_client
    futures = [c.apply("add", i, 1) for i in range(2000)]
    assert [f.result() for f in futures] == [i + 1 for i in range(2000)]
    done, _ = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 2000


def test_big_array_goes_and_comes_back_without_copies(engine_and_client):
    _, shared_client = engine_and_client
    # Frames: shared memory (on by default between processes) copies an ordinary array
    # into the arena once; test_shared.py covers that path.
    c = zerocan.Client(shared_client.url, timeout=20, shared_memory=False)
    try:
        _echo_without_copies(c)
    finally:
        c.close()


def _echo_without_copies(c):
    a = np.random.default_rng(0).random(2_000_000)
    f = c.apply("echo", a)
    assert f.sent_buffers == [(a.ctypes.data, a.nbytes)]  # the array itself went to libzmq
    r = f.result()
    assert np.array_equal(r, a) and r.flags.writeable
    assert np.shares_memory(r, np.frombuffer(zerocan.received_frame(r).buffer, np.uint8))
    if c.url.startswith("inproc"):
        # In process, libzmq hands the very buffer over: the result views the sender's
        # array (the frame is released only when the result is dropped).
        assert np.shares_memory(r, a)
        return
    else:
        assert not np.shares_memory(r, a)
        r[0] = -1.0  # a writable view of the received frame
        assert a[0] != -1.0
    deadline = time.monotonic() + 5
    while not f.tracker.done and time.monotonic() < deadline:
        time.sleep(0.001)
    assert f.tracker.done  # libzmq released the sender's buffer


def test_timeout_and_late_reply_dropped(engine_and_client):
    _, c = engine_and_client
    f = c.apply_with("sleep", (0.5,), timeout=0.05)
    with pytest.raises(zerocan.TimeoutError):
        f.result()
    assert isinstance(f.exception(), concurrent.futures.TimeoutError)
    assert c.apply("add", 1, 1).result(timeout=5) == 2  # the client still works
    time.sleep(0.6)
    assert c.apply("add", 1, 2).result(timeout=5) == 3
    assert c.counters["late"] >= 1


def test_pickled_functions_need_opt_in(engine_and_client):
    pytest.importorskip("cloudpickle")
    engine, c = engine_and_client
    with pytest.raises(zerocan.RemoteError) as e:
        c.apply(lambda x: x + 1, 1).result()
    assert e.value.type == "zerocan.PickleRefused"
    engine.allow_pickle = True
    assert c.apply(lambda x, y=0: x * 10 + y, 4, y=2).result() == 42


def test_close_fails_pending_calls():
    url = free_tcp_endpoint()
    c = zerocan.Client(url)  # nothing listens there
    f = c.apply("echo", 1)
    c.close()
    with pytest.raises(zerocan.TransportError):
        f.result(timeout=5)
    with pytest.raises(zerocan.TransportError):
        c.apply("echo", 1)


def test_undecodable_request_gets_a_decode_error_reply():
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True).start()
    try:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.connect(engine.endpoint)
        s.send_multipart([b"", b"\x00" * 7])
        assert s.poll(5000)
        parts = s.recv_multipart(copy=False)
        msg = zerocan.decode(parts[1:])
        assert msg.call_id == 0 and not msg.ok
        assert msg.error()[0] == "zerocan.DecodeError"
        s.close(0)
    finally:
        engine.stop()


def test_engine_through_a_dealer_says_hello_heartbeat_goodbye():
    ctx = zmq.Context.instance()
    backend = ctx.socket(zmq.ROUTER)
    port = backend.bind_to_random_port("tcp://127.0.0.1")
    engine = zerocan.Engine(f"tcp://127.0.0.1:{port}", builtins=True, id="e1", heartbeat=0.05).start()
    try:
        kinds = []
        while len(kinds) < 3:
            assert backend.poll(5000)
            parts = backend.recv_multipart(copy=False)
            assert parts[1].bytes == b""
            msg = zerocan.decode(parts[2:])
            kinds.append(msg.kind)
        assert kinds[0] == "hello" and kinds[1] == "heartbeat"
        peer, role, functions = zerocan.decode(parts[2:]).hello() if kinds[-1] == "hello" else \
            ("e1", "engine", [])
        # A call routed like the broker does: [engine id][client id][""][apply].
        out = zerocan.encode_apply("add", [1, 2], header=zerocan.Header(5, 9, 5))
        backend.send_multipart([parts[0].bytes, b"client-1", b"", out.envelope])
        # First a `started` for the call (with its routing frames), then the result.
        routed = []
        while len(routed) < 2:
            assert backend.poll(5000)
            reply = backend.recv_multipart(copy=False)
            if reply[1].bytes == b"client-1":
                routed.append(zerocan.decode(reply[3:]))
        assert routed[0].kind == "started" and routed[0].call_id == 5
        msg = routed[1]
        assert msg.call_id == 5 and msg.result() == 3 and msg.engine_id == "e1"
    finally:
        engine.stop()
    while backend.poll(2000):
        last = backend.recv_multipart(copy=False)
        if last[1].bytes == b"" and zerocan.decode(last[2:]).kind == "goodbye":
            break
    else:
        raise AssertionError("no goodbye")
    backend.close(0)
