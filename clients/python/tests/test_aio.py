"""zerocan.AsyncClient against Python and C++ engines: results, errors, timeouts, many
calls in one event loop, closing, signing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import zerocan
from conftest import free_tcp_endpoint


def run(coro):
    return asyncio.run(coro)


def test_1000_concurrent_awaits_in_one_loop(builtins_url):
    async def one(client, i):
        return await client.apply("add", i, 1)

    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=30) as client:
            results = await asyncio.gather(*(one(client, i) for i in range(1000)))
            assert results == [i + 1 for i in range(1000)]
            assert client.counters["sent"] == client.counters["received"] == 1000
    run(main())


def test_values_and_the_threaded_clients_errors(builtins_url):
    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=30) as c:
            assert await c.apply("echo", 1, "a") == [1, "a"]
            a = np.arange(1_000_000, dtype=np.float64)
            f = c.apply("echo", a)
            assert f.sent_buffers == [(a.ctypes.data, a.nbytes)]  # sent without a copy
            assert np.array_equal(await f, a)
            with pytest.raises(zerocan.RemoteError) as e:
                await c.apply("fail", "boom")
            assert (e.value.type, e.value.message, e.value.function) == \
                ("zerocan.Fail", "boom", "fail")
            with pytest.raises(zerocan.RemoteError) as e:
                await c.apply("no_such_function")
            assert e.value.type == "zerocan.UnknownFunction"
            with pytest.raises(zerocan.RemoteError) as e:
                await c.apply("add", "a", 1)
            assert e.value.type == "zerocan.ArgumentError"
    run(main())


def test_timeouts_in_seconds_and_late_replies_dropped(builtins_url):
    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=0.1) as c:
            with pytest.raises(zerocan.TimeoutError):
                await c.apply("sleep", 0.5)
            f = c.apply_with("sleep", (0.5,), timeout=None)  # no deadline
            with pytest.raises(zerocan.TimeoutError):
                await c.apply_with("sleep", (0.5,), timeout=0.05)
            assert await f == 0.5
            assert await c.apply_with("add", (1, 2), timeout=5) == 3  # after the sleeps
            assert c.counters["late"] >= 1
            # asyncio's own timeout cancels the call's future; the client goes on.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.apply_with("sleep", (0.3,), timeout=5), 0.05)
            assert await c.apply_with("add", (2, 2), timeout=5) == 4
    run(main())


def test_close_fails_pending_calls_and_refuses_new_ones():
    async def main():
        c = zerocan.AsyncClient(free_tcp_endpoint())  # nothing listens there
        f = c.apply("echo", 1)
        c.close()
        c.close()
        with pytest.raises(zerocan.TransportError):
            await f
        with pytest.raises(zerocan.TransportError):
            c.apply("echo", 1)
    run(main())


def test_owned_context_closes_cleanly(builtins_url):
    async def main():
        async with zerocan.AsyncClient(builtins_url, io_cpus=[0]) as c:
            assert await c.apply("add", 1, 1) == 2
            pending = c.apply("sleep", 1.0)
        with pytest.raises(zerocan.TransportError):
            await pending
    run(main())


def test_one_loop_per_client(builtins_url):
    c = zerocan.AsyncClient(builtins_url, timeout=30)
    with pytest.raises(zerocan.Error, match="running event loop"):
        c.apply("add", 1, 1)

    async def first():
        return await c.apply("add", 1, 1)

    assert run(first()) == 2
    with pytest.raises(zerocan.Error, match="event loop of its first call"):
        run(first())
    c.close()  # after its loop ended


def test_signed_calls():
    key = b"k" * 32
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True, key=key).start()

    async def main():
        async with zerocan.AsyncClient(engine.endpoint, key=key, timeout=30) as c:
            assert await c.apply("add", 20, 22) == 42
            assert await c.apply("nbytes", np.zeros(100_000)) == 800_000
        async with zerocan.AsyncClient(engine.endpoint, key=b"x" * 32, timeout=0.3) as c:
            with pytest.raises(zerocan.TimeoutError):  # the engine drops what it cannot check
                await c.apply("add", 1, 1)
    try:
        run(main())
    finally:
        engine.stop()
