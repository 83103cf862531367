"""Cancel and streams (docs/FORMAT.md "Cancel and streams") with a Python engine, directly
and through the C++ broker: queued and running calls cancelled, current_call().cancelled,
generators streamed in order, a 100 MB item received as a view of its frame, credits
holding a generator whose reader stops, and a cancelled stream closing its generator."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import zerocan
from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin

BIG = 100 * 1024 * 1024 // 8  # float64 elements of a 100 MB item
CREDITS = 16


class State:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped_at = 0.0
        self.produced = 0
        self.unwound = threading.Event()


def make_engine(url: str, bind: bool, state: State) -> zerocan.Engine:
    engine = zerocan.Engine(url, bind=bind, builtins=True, threads=1, heartbeat=0.05)

    @engine.register
    def spin():
        state.started.set()
        while not zerocan.current_call().cancelled:
            time.sleep(0.001)
        state.stopped_at = time.monotonic()
        return 1

    @engine.register
    def count(n):
        for i in range(n):
            yield i

    @engine.register
    def big():
        yield 1
        a = np.ones(BIG)
        a[4096] = 7.0
        yield a
        yield 3

    @engine.register
    def endless():
        try:
            i = 0
            while True:
                state.produced += 1
                yield i
                i += 1
        finally:
            state.unwound.set()

    @engine.register
    def broken():
        yield 1
        raise ValueError("no more")

    return engine


@pytest.fixture(params=["direct", "broker"])
def setup(request):
    state = State()
    if request.param == "direct":
        engine = make_engine("tcp://127.0.0.1:*", True, state).start()
        client = zerocan.Client(engine.endpoint, timeout=20)
        yield client, state, engine.endpoint
        client.close()
        engine.stop()
        return
    missing = cpp_command_missing("broker")
    if missing:
        pytest.skip(missing)
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    proc = subprocess.Popen([str(zerocan_bin()), "broker", "--frontend", front, "--backend",
                             back, "--heartbeat-ms", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = make_engine(back, False, state).start()
    client = zerocan.Client(front, timeout=20)
    try:
        assert client.apply("add", 1, 1).result(timeout=10) == 2  # the engine is known
        yield client, state, front
    finally:
        client.close()
        engine.stop()
        proc.terminate()
        proc.wait(10)


def test_queued_call_is_dropped_and_a_running_one_ends_at_once(setup):
    client, state, _ = setup
    slow = client.apply("sleep", 0.5)
    queued = client.apply("add", 1, 2)
    time.sleep(0.05)  # the sleep runs on the one worker, the add waits behind it
    t0 = time.monotonic()
    assert queued.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    queued_ms = (time.monotonic() - t0) * 1000
    assert queued.cancelled() and queued_ms < 100
    t0 = time.monotonic()
    assert slow.cancel()  # sleep never looks at its flag: its future still ends now
    assert slow.cancelled()
    running_ms = (time.monotonic() - t0) * 1000
    assert running_ms < 100
    assert not slow.cancel() or slow.cancelled()
    print(f"cancel: queued call ended in {queued_ms:.2f} ms, running one in {running_ms:.2f} ms")
    assert client.apply("add", 40, 2).result(timeout=5) == 42
    time.sleep(0.05)
    assert client.counters["late"] == 0  # nothing came for the cancelled calls


def test_running_cooperative_call_stops_and_the_engine_takes_the_next(setup):
    client, state, _ = setup
    fut = client.apply("spin")
    assert state.started.wait(5)
    t_cancel = time.monotonic()
    assert fut.cancel()
    assert fut.cancelled()
    t0 = time.monotonic()
    assert client.apply("add", 1, 1).result(timeout=5) == 2
    next_ms = (time.monotonic() - t0) * 1000
    stop_ms = (state.stopped_at - t_cancel) * 1000
    assert 0 < stop_ms < 100
    print(f"cancel: cooperative call stopped {stop_ms:.2f} ms after cancel; next call "
          f"{next_ms:.2f} ms")
    time.sleep(0.05)
    assert client.counters["late"] == 0


def test_generator_streams_in_order_with_a_large_item_as_a_view(setup):
    client, state, _ = setup
    assert list(client.stream("count", 10_000)) == list(range(10_000))
    items = client.stream("big")
    assert next(items) == 1
    arr = next(items)
    assert arr.shape == (BIG,) and arr[4096] == 7.0
    assert zerocan.received_frame(arr) is not None  # a view of the received frame
    assert next(items) == 3
    with pytest.raises(StopIteration):
        next(items)
    # A plain apply of a generator gets its items as a list.
    assert client.apply("count", 3).result(timeout=5) == [0, 1, 2]
    # An error ends the stream after the items before it.
    got = []
    with pytest.raises(zerocan.RemoteError, match="no more"):
        for x in client.stream("broken"):
            got.append(x)
    assert got == [1]


def test_slow_reader_holds_the_generator_at_the_credit_bound_and_cancel_closes_it(setup):
    client, state, _ = setup
    s = client.stream_with("endless", stream_credits=CREDITS)
    assert [next(s) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    held = state.produced
    assert held <= CREDITS
    assert [next(s) for _ in range(37)] == list(range(3, 40))
    time.sleep(0.1)
    after = state.produced
    assert after <= 40 + CREDITS
    print(f"stream: generator held at {held} items with {CREDITS} credits, {after} after 40 read")
    t0 = time.monotonic()
    assert s.cancel()
    assert state.unwound.wait(1)
    assert (time.monotonic() - t0) * 1000 < 100
    with pytest.raises(zerocan.CancelledError):
        next(s)
    assert client.apply("add", 2, 2).result(timeout=5) == 4


def test_async_stream_and_cancel(setup):
    _, state, url = setup

    async def main():
        async with zerocan.AsyncClient(url, timeout=20) as client:
            assert [x async for x in client.stream("count", 1000)] == list(range(1000))
            fut = client.apply("spin")
            await asyncio.get_running_loop().run_in_executor(None, state.started.wait, 5)
            assert fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
            assert await client.apply("add", 1, 2) == 3
            s = client.stream_with("endless", stream_credits=CREDITS)
            assert await s.__anext__() == 0
            await s.aclose()
            await asyncio.get_running_loop().run_in_executor(None, state.unwound.wait, 2)
            assert state.unwound.is_set()

    asyncio.run(main())


def test_cancelled_error_name_is_the_cpp_one():
    header = (Path(__file__).resolve().parents[3] / "include" / "zerocan" /
              "remote_error.h").read_text()
    assert re.search(r'kErrorCancelled\[\] = "([\w.]+)"', header).group(1) == \
        zerocan.CancelledError.TYPE


def test_a_stream_whose_connection_is_lost_ends_with_broker_lost():
    # The engine in its own process, killed while the client reads its endless stream.
    url = free_tcp_endpoint()
    code = ("import itertools, time, zerocan\n"
            f"e = zerocan.Engine({url!r}, bind=True)\n"
            "@e.register\n"
            "def ticks():\n"
            "    for i in itertools.count():\n"
            "        time.sleep(0.01)\n"
            "        yield i\n"
            "e.run()\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        with zerocan.Client(url, timeout=30, heartbeat=0.2) as c:
            items = iter(c.stream("ticks"))
            assert next(items) == 0
            proc.kill()
            killed = time.monotonic()
            with pytest.raises(zerocan.BrokerLost):
                for _ in items:
                    pass
            assert time.monotonic() - killed < 2.0
    finally:
        proc.kill()
        proc.wait()
