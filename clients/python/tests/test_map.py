"""Client.map and AsyncClient.map against Python and C++ engines: results, order, the
bound on calls in flight, the first failure, cancelling, the progress bar."""

from __future__ import annotations

import asyncio
import itertools
import sys

import pytest

import zerocan

N = 10_000
WINDOW = 256


class Counting:
    """Wraps a client's apply_with: counts the calls sent and the most ever sent and not
    finished at once (checked when a call is sent: done() rather than a done-callback,
    which may run after map has already taken the result), and keeps their futures."""

    def __init__(self, client, monkeypatch):
        self.apply_with = client.apply_with
        self.sent = 0
        self.most = 0
        self.open = set()
        self.futures = []
        monkeypatch.setattr(client, "apply_with", self)

    def __call__(self, *args, **kwargs):
        fut = self.apply_with(*args, **kwargs)
        self.sent += 1
        self.futures.append(fut)
        self.open.add(fut)
        if len(self.open) > self.most:  # only then can the most grow: count exactly
            self.open = {f for f in self.open if not f.done()}
            self.most = max(self.most, len(self.open))
        return fut


@pytest.fixture
def client(builtins_url):
    with zerocan.Client(builtins_url, timeout=30) as c:
        yield c


def test_map_10000_ordered_with_256_in_flight(client, monkeypatch):
    count = Counting(client, monkeypatch)
    assert list(client.map("add", range(N), itertools.repeat(1), max_in_flight=WINDOW)) == \
        [i + 1 for i in range(N)]
    assert count.sent == N
    assert 1 < count.most <= WINDOW


def test_map_as_completed_yields_every_result(client, monkeypatch):
    count = Counting(client, monkeypatch)
    results = list(client.map("add", range(N), range(N), ordered=False, max_in_flight=WINDOW))
    assert sorted(results) == [2 * i for i in range(N)]
    assert count.sent == N and count.most <= WINDOW


@pytest.mark.parametrize("ordered", [True, False])
def test_map_raises_the_first_failure_and_sends_no_more(client, monkeypatch, ordered):
    count = Counting(client, monkeypatch)
    xs = (("x" if i == 5000 else i) for i in range(N))  # "x" fails in the engine's add
    seen = []
    with pytest.raises(zerocan.RemoteError) as e:
        for r in client.map("add", xs, itertools.repeat(1), ordered=ordered):
            seen.append(r)
    assert e.value.type == "zerocan.ArgumentError"
    assert e.value.function == "add"
    assert e.value.index == 5000 and e.value.arguments == ("x", 1)
    if sys.version_info >= (3, 11):
        assert "map item 5000: add('x', 1)" in e.value.__notes__
    if ordered:
        assert seen == [i + 1 for i in range(5000)]
    assert 5000 < count.sent <= 5001 + WINDOW
    # Calls still in flight were given up: cancelled here, or already finished.
    assert all(f.done() for f in count.futures)


def test_map_python_function_error_names_its_item():
    engine = zerocan.Engine("tcp://127.0.0.1:*", bind=True)

    @engine.register
    def checked(i):
        if i == 5000:
            raise ValueError(f"bad item {i}")
        return i * i

    engine.start()
    try:
        with zerocan.Client(engine.endpoint, timeout=30) as c:
            with pytest.raises(zerocan.RemoteError) as e:
                list(c.map("checked", range(N)))
            assert (e.value.type, e.value.message, e.value.index, e.value.arguments) == \
                ("ValueError", "bad item 5000", 5000, (5000,))
            assert list(c.map("checked", range(10))) == [i * i for i in range(10)]
    finally:
        engine.stop()


def test_map_is_lazy_zips_and_cancels_when_closed_early(client, monkeypatch):
    count = Counting(client, monkeypatch)
    assert list(client.map("add", [1, 2, 3], [10, 20])) == [11, 22]  # zip: shortest
    it = client.map("add", itertools.count(), itertools.repeat(0), max_in_flight=8)
    assert count.sent == 2  # nothing sent before the first next()
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert count.sent <= 2 + 3 + 8
    assert all(f.done() for f in count.futures)
    assert client.apply("add", 1, 1).result() == 2


def test_map_timeout(client):
    with pytest.raises(zerocan.TimeoutError) as e:
        list(client.map("sleep", [0.0, 2.0, 0.0], timeout=0.3))
    assert e.value.index == 1 and e.value.arguments == (2.0,)
    with pytest.raises(zerocan.TimeoutError):  # each call's own deadline
        list(client.map("sleep", [2.0], call_timeout=0.1))


def test_map_progress_bar(client, capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install tqdm)")
    assert list(client.map("add", range(N), range(N), progress=True))[-1] == 2 * (N - 1)
    err = capsys.readouterr().err
    assert f"{N}/{N}" in err, err


def test_map_progress_needs_tqdm(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto fails
    sent = client.counters["sent"]
    with pytest.raises(ImportError, match="needs tqdm"):
        client.map("add", range(3), range(3), progress=True)
    assert client.counters["sent"] == sent


def test_map_refuses_bad_arguments(client):
    with pytest.raises(TypeError):
        client.map("add")
    with pytest.raises(ValueError):
        client.map("add", range(3), max_in_flight=0)


# ---- AsyncClient.map ---------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def test_async_map_10000_ordered_with_256_in_flight(builtins_url, monkeypatch):
    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=30) as c:
            count = Counting(c, monkeypatch)
            out = [r async for r in c.map("add", range(N), itertools.repeat(1))]
            assert out == [i + 1 for i in range(N)]
            assert count.sent == N and 1 < count.most <= WINDOW
            count = Counting(c, monkeypatch)
            out = [r async for r in c.map("add", range(N), range(N), ordered=False,
                                          max_in_flight=100)]
            assert sorted(out) == [2 * i for i in range(N)]
            assert count.sent == N and count.most <= 100
    run(main())


@pytest.mark.parametrize("ordered", [True, False])
def test_async_map_raises_the_first_failure(builtins_url, monkeypatch, ordered):
    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=30) as c:
            count = Counting(c, monkeypatch)
            xs = (("x" if i == 5000 else i) for i in range(N))
            with pytest.raises(zerocan.RemoteError) as e:
                async for _ in c.map("add", xs, itertools.repeat(1), ordered=ordered):
                    pass
            assert e.value.type == "zerocan.ArgumentError"
            assert e.value.index == 5000 and e.value.arguments == ("x", 1)
            assert 5000 < count.sent <= 5001 + WINDOW
            assert all(f.done() for f in count.futures)
            assert await c.apply("add", 1, 1) == 2
    run(main())


def test_async_map_timeout_and_progress(builtins_url, capsys):
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install tqdm)")

    async def main():
        async with zerocan.AsyncClient(builtins_url, timeout=30) as c:
            with pytest.raises(zerocan.TimeoutError) as e:
                async for _ in c.map("sleep", [0.0, 2.0], timeout=0.3):
                    pass
            assert e.value.index == 1
            out = [r async for r in c.map("add", range(1000), range(1000), progress=True)]
            assert out == [2 * i for i in range(1000)]
    run(main())
    assert "1000/1000" in capsys.readouterr().err
