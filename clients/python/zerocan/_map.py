"""``map`` for both clients: one call per item of ``zip(*iterables)``, a bounded window of
calls in flight, results in order or as completed, the first failure raised with the
item that caused it. ``Window`` keeps the books; ``run_threaded`` (for ``Client``) and
``run_async`` (for ``AsyncClient``) differ only in how they wait.

The window holds the calls sent and not yet handed to the caller, at most
``max_in_flight``: a slot frees when its result is taken, so results waiting behind a
slow earlier item (``ordered=True``) are bounded too. Items are read from the iterables
only as slots free. After a failure nothing more is sent and the calls still in the
window are cancelled through ``cancel`` (today ``Future.cancel()``, a local cancel; a
wire-level cancel plugs in there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import reprlib
import time
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional

from .errors import TimeoutError

DEFAULT_MAX_IN_FLIGHT = 256

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def check_arguments(iterables: tuple[Iterable[Any], ...], max_in_flight: int,
                    progress: bool) -> None:
    """Raises at the ``map`` call, before anything is sent, for what cannot work."""
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    if max_in_flight < 1:
        raise ValueError(f"map(): max_in_flight must be at least 1, not {max_in_flight}")
    if progress:
        _tqdm_class()


def _tqdm_class() -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError("map(progress=True) needs tqdm: pip install tqdm "
                          "(or zerocan[progress])") from e
    return tqdm


def _total(iterables: tuple[Iterable[Any], ...]) -> Optional[int]:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:  # some iterable has no length
        return None


def annotate(exc: BaseException, index: int, function: Any, args: tuple[Any, ...]) -> None:
    """Names the failed item on its exception: ``index``, ``arguments`` attributes and,
    from Python 3.11, a note shown with the traceback."""
    setattr(exc, "index", index)
    setattr(exc, "arguments", args)
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        name = function if isinstance(function, str) else getattr(function, "__name__", "?")
        add_note(f"map item {index}: {name}{_short.repr(args)}")


class Window:
    """The books of one map: what is in flight, what is next, whether it failed."""

    def __init__(self, submit: Callable[[Any, tuple[Any, ...]], Any],
                 cancel: Callable[[Any], None], function: Any,
                 iterables: tuple[Iterable[Any], ...], ordered: bool, progress: bool,
                 max_in_flight: int, timeout: Optional[float],
                 completed: Optional[Callable[[int], None]]) -> None:
        self.submit = submit
        self.cancel = cancel
        self.function = function
        self.items = enumerate(zip(*iterables))
        self.ordered = ordered
        self.max_in_flight = max_in_flight
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.completed = completed  # told each finished index (as-completed order)
        self.calls: dict[int, tuple[tuple[Any, ...], Any]] = {}  # index -> (args, future)
        self.next_index = 0  # ordered: the index to hand out next
        self.exhausted = False
        self.failed = False  # set from the future's callback: stop sending
        self.bar = _tqdm_class()(total=_total(iterables)) if progress else None

    def fill(self) -> None:
        while len(self.calls) < self.max_in_flight and not self.failed and \
                not self.exhausted:
            item = next(self.items, None)
            if item is None:
                self.exhausted = True
                return
            index, args = item
            fut = self.submit(self.function, args)
            self.calls[index] = (args, fut)
            fut.add_done_callback(lambda f, i=index: self._done(i, f))

    def _done(self, index: int, fut: Any) -> None:
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self.failed = True
        if self.completed is not None:
            self.completed(index)

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def timed_out(self, index: Optional[int]) -> TimeoutError:
        which = "the next item" if index is None else f"item {index}"
        e = TimeoutError(f"map: no result for {which} within {self.timeout} s of the start")
        if index is not None:
            args = self.calls.get(index, ((), None))[0]
            annotate(e, index, self.function, args)
        return e

    def take(self, index: int) -> Any:
        """The result of a finished call (its slot refilled), or raises its failure."""
        args, fut = self.calls.pop(index)
        if self.ordered:
            self.next_index += 1
        exc = fut.exception()
        if exc is not None:
            self.failed = True
            annotate(exc, index, self.function, args)
            raise exc
        self.fill()
        if self.bar is not None:
            self.bar.update(1)
        return fut.result()

    def close(self) -> None:
        self.failed = True  # a fill from a late callback sends nothing more
        calls, self.calls = self.calls, {}
        for _, fut in calls.values():
            self.cancel(fut)
        if self.bar is not None:
            self.bar.close()


Submit = Callable[[Any, tuple[Any, ...]], Any]


def run_threaded(submit: Submit, cancel: Callable[[Any], None], function: Any,
                 iterables: tuple[Iterable[Any], ...], ordered: bool, progress: bool,
                 max_in_flight: int, timeout: Optional[float]) -> Iterator[Any]:
    """The map of ``Client``: waits on concurrent.futures.Futures."""
    done: Optional[queue.SimpleQueue[int]] = None if ordered else queue.SimpleQueue()
    w = Window(submit, cancel, function, iterables, ordered, progress, max_in_flight,
               timeout, None if done is None else done.put)
    try:
        w.fill()
        while w.calls:
            if done is None:
                index = w.next_index
                try:
                    w.calls[index][1].exception(timeout=w.remaining())  # waits, no raise
                except concurrent.futures.TimeoutError:
                    raise w.timed_out(index) from None
            else:
                try:
                    index = done.get(timeout=w.remaining())
                except queue.Empty:
                    raise w.timed_out(None) from None
                if index not in w.calls:
                    continue
            yield w.take(index)
    finally:
        w.close()


async def run_async(submit: Submit, cancel: Callable[[Any], None], function: Any,
                    iterables: tuple[Iterable[Any], ...], ordered: bool, progress: bool,
                    max_in_flight: int, timeout: Optional[float]) -> AsyncIterator[Any]:
    """The map of ``AsyncClient``: waits on asyncio Futures of one event loop."""
    done: Optional[asyncio.Queue[int]] = None if ordered else asyncio.Queue()
    w = Window(submit, cancel, function, iterables, ordered, progress, max_in_flight,
               timeout, None if done is None else done.put_nowait)
    try:
        w.fill()
        while w.calls:
            if done is None:
                index = w.next_index
                fut = w.calls[index][1]
                if not fut.done():
                    await asyncio.wait((fut,), timeout=w.remaining())
                    if not fut.done():
                        raise w.timed_out(index)
            else:
                if not done.empty():
                    index = done.get_nowait()
                else:
                    try:
                        index = await asyncio.wait_for(done.get(), w.remaining())
                    except asyncio.TimeoutError:
                        raise w.timed_out(None) from None
                if index not in w.calls:
                    continue
            yield w.take(index)
    finally:
        w.close()
