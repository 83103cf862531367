"""The client side of stream calls (``client.stream``), shared by the threaded client
(``Stream``, a plain iterator) and the asyncio client (``AsyncStream``, an async one).

The I/O side pushes ("item", value), then one ("end", None) or ("error", exception);
the reader takes them in order and, every half window of items read, asks its client to
grant that many credits back, so at most ``window`` items wait unread (docs/FORMAT.md
"Cancel and streams").
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any, Callable, Optional

from .errors import CancelledError, TimeoutError


class _Reader:
    def __init__(self, call_id: int, window: int, grant: Callable[[int, int], None],
                 cancel: Callable[[int], None], timeout: Optional[float]) -> None:
        self.call_id = call_id
        self._window = window
        self._grant = grant
        self._cancel_call = cancel
        self._timeout = timeout
        self._unacknowledged = 0
        self.finished = False  # ended, failed or cancelled: nothing more is taken

    def _take(self, entry: tuple[str, Any]) -> Any:
        kind, value = entry
        if kind == "item":
            self._unacknowledged += 1
            if self._unacknowledged >= max(1, self._window // 2):
                n, self._unacknowledged = self._unacknowledged, 0
                self._grant(self.call_id, n)
            return value
        self.finished = True
        if kind == "error":
            raise value
        raise StopIteration

    def cancel(self) -> bool:
        """Stops the stream: the engine closes the generator (its ``finally`` runs) or
        the C++ writer throws; nothing more is taken. True when it was still running."""
        if self.finished:
            return False
        self.finished = True
        self._cancelled = True
        self._cancel_call(self.call_id)
        return True

    _cancelled = False

    def _after_end(self) -> Any:
        if self._cancelled:
            raise CancelledError(f"stream call {self.call_id} was cancelled")
        raise StopIteration


class Stream(_Reader):
    """The items of a stream call, in order: ``for item in client.stream("f", x)``. Ends
    when the engine's generator (or C++ stream function) ends; raises its error
    (``RemoteError``), ``TimeoutError`` when no item came within the call's timeout (the
    stream is then cancelled), ``CancelledError`` after ``cancel()``. Closing it early
    (``close()``, leaving ``with``, or dropping it) cancels it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()

    def _push(self, kind: str, value: Any) -> None:  # from the client's I/O thread
        self._queue.put((kind, value))

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        if self.finished:
            return self._after_end()
        try:
            entry = self._queue.get(timeout=self._timeout)
        except queue.Empty:
            self.cancel()
            self._cancelled = False
            raise TimeoutError(f"stream call {self.call_id}: no item within its timeout") \
                from None
        if self.finished:  # cancelled meanwhile by another thread
            return self._after_end()
        return self._take(entry)

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.cancel()
        except Exception:
            pass


class AsyncStream(_Reader):
    """``Stream`` for ``async for item in client.stream(...)`` (an ``AsyncClient``'s)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: "asyncio.Queue[tuple[str, Any]]" = asyncio.Queue()

    def _push(self, kind: str, value: Any) -> None:  # on the client's loop
        self._queue.put_nowait((kind, value))

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Any:
        if self.finished:
            return self._after_async_end()
        try:
            entry = await asyncio.wait_for(self._queue.get(), self._timeout)
        except asyncio.TimeoutError:
            self.cancel()
            self._cancelled = False
            raise TimeoutError(f"stream call {self.call_id}: no item within its timeout") \
                from None
        if self.finished:
            return self._after_async_end()
        try:
            return self._take(entry)
        except StopIteration:
            raise StopAsyncIteration from None

    def _after_async_end(self) -> Any:
        try:
            return self._after_end()
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()
