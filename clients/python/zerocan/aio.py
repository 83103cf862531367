"""zerocan.AsyncClient: the client for asyncio programs and notebooks, on pyzmq's asyncio
sockets (``zmq.asyncio``), with no thread of its own.

    async with zerocan.AsyncClient("tcp://127.0.0.1:5555") as client:
        y = await client.apply("add", 2, 3)
        results = [r async for r in client.map("add", range(10_000), range(10_000))]

Everything runs on the event loop of the client's first call (a client belongs to that
loop; ``await`` it from there, e.g. a Jupyter cell's top-level ``await``). ``apply``
encodes and sends at once, as ``Client.apply`` does, and returns an asyncio Future of the
result; one reader task receives the replies and resolves the futures by call id, and
per-call deadlines are loop timers. Encoding, signing and reply checks are
``Client``'s (``zerocan._calls``): the same bytes, errors and counters.

Replies reach their call through ``_deliver``, keyed by call id; a stream call
(``async for item in client.stream(...)``) registers its queue there in place of a
future.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, AsyncIterator, Callable, Iterable, Optional, Union, cast

import zmq
import zmq.asyncio

from . import _map, wire
from ._calls import (DEFAULT_STREAM_CREDITS, TimeoutArg, broker_lost, call_timeout, configure,
                     deliver_to_stream, encode_call, encode_control, outcome, read_reply)
from ._stream import AsyncStream
from ._watch import ConnectionWatch
from .curve import KeyPairLike
from .curve import configure_client as configure_curve_client
from .errors import Error, TimeoutError, TransportError
from .placement import IoCpus, channel_context
from .policy import Policy
from .signing import KeyLike, Signer, make_signer
from .wire import DecodeLimits, Registry


class AsyncCallFuture(asyncio.Future):  # type: ignore[type-arg]
    """An asyncio Future of one call's result, plus the call's id and the tracker of its
    zero-copy argument frames (as ``CallFuture``)."""

    call_id: int = 0
    tracker: Optional[zmq.MessageTracker] = None
    sent_buffers: list[tuple[int, int]] = []
    _timer: Optional[asyncio.TimerHandle] = None
    _client: Optional["AsyncClient"] = None

    def cancel(self, msg: Any = None) -> bool:
        """Cancels the call unless it is done, at the engine too (as
        ``CallFuture.cancel``)."""
        if not super().cancel(msg):
            return False
        client, self._client = self._client, None
        if client is not None:
            client._send_cancel(self.call_id)
        return True


class AsyncClient:
    """Connects to ``url`` (an engine's bound endpoint or a broker frontend); the options
    are ``Client``'s: ``timeout`` (default per-call deadline in float seconds, None =
    none), ``policy``, ``registry``, ``limits``, ``context`` (a plain ``zmq.Context``;
    default the shared instance), ``io_cpus``, ``key`` / ``key_file``, ``heartbeat`` and
    ``liveness`` (a lost connection fails the calls in flight with ``zerocan.BrokerLost``),
    ``curve_server_key`` / ``curve`` (CurveZMQ, zerocan.curve).

    Any number of calls may be in flight. ``close()`` (or leaving ``async with``) fails
    the calls still pending with ``TransportError``.
    """

    def __init__(self, url: str, *, timeout: Optional[float] = 60.0,
                 policy: Optional[Policy] = None, registry: Optional[Registry] = None,
                 limits: DecodeLimits = wire.DEFAULT_LIMITS,
                 context: Optional[zmq.Context] = None,
                 io_cpus: IoCpus = None,
                 key: Optional[KeyLike] = None, key_file: Optional[str] = None,
                 heartbeat: Optional[float] = 1.0, liveness: int = 3,
                 curve_server_key: Optional[str] = None,
                 curve: Optional[KeyPairLike] = None) -> None:
        self.url = url
        self.signer: Optional[Signer] = make_signer(key, key_file)
        self.timeout = timeout
        self.policy = policy if policy is not None else Policy.for_transport(url)
        self.registry = registry if registry is not None else Registry.default()
        self.limits = limits
        self._context, self._owns_context = channel_context(context, io_cpus, "client")
        self._session = wire.Session()
        self._pending: dict[int, AsyncCallFuture] = {}
        self._streams: dict[int, AsyncStream] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._closed = False
        self.counters = {"sent": 0, "received": 0, "late": 0, "rejected": 0}
        # The asyncio socket owns the libzmq socket (closing it closes that); _sync is a
        # shadow of it (never closes it) for receiving what is ready without a future
        # per message.
        self._socket = zmq.asyncio.Socket(self._context, zmq.DEALER)
        self._liveness_s = (heartbeat or 0.0) * max(liveness, 1)
        self._watch: Optional[ConnectionWatch] = None
        self._watcher: Optional[asyncio.Task[None]] = None
        try:
            configure(self._socket, limits)
            if curve_server_key is not None:
                configure_curve_client(self._socket, curve_server_key, curve)
            # Before connecting: the heartbeat options apply to the connection.
            self._watch = ConnectionWatch(self._socket, url, heartbeat, liveness)
            self._socket.connect(url)
        except BaseException:  # a bad URL: leave no socket or owned context running
            if self._watch is not None:
                self._watch.close()
            self._socket.close(linger=0)
            if self._owns_context:
                self._context.term()
            raise
        self._sync: zmq.Socket[Any] = zmq.Socket.shadow(self._socket.underlying)

    # ---- calls --------------------------------------------------------------------

    def apply(self, name: Union[str, Callable[..., Any]], *args: Any,
              **kwargs: Any) -> AsyncCallFuture:
        """Sends ``name(*args, **kwargs)`` now; ``await`` the returned future for the
        result, or the exception ``Client.apply``'s future would raise (RemoteError,
        TimeoutError, DecodeError, TransportError). Call it from the client's loop."""
        return self.apply_with(name, args, kwargs)

    def apply_with(self, name: Union[str, Callable[..., Any]], args: tuple[Any, ...] = (),
                   kwargs: Optional[dict[str, Any]] = None, *,
                   timeout: TimeoutArg = "default") -> AsyncCallFuture:
        """As ``apply``, with arguments as a tuple and dict and a per-call timeout."""
        if self._closed:
            raise TransportError("client closed")
        loop = self._bind_loop()
        t = call_timeout(self.timeout, timeout)
        call = encode_call(self._session.next_header(), name, args, kwargs, t, self.policy,
                           self.registry, self.signer)
        fut = AsyncCallFuture(loop=loop)
        fut._client = self
        fut.call_id = call.call_id
        fut.tracker = call.tracker
        fut.sent_buffers = call.sent_buffers
        self._pending[call.call_id] = fut
        if t is not None:
            fut._timer = loop.call_later(t, self._expire, call.call_id)
        # The socket's high-water mark is off, so this completes at once but for a socket
        # failure; pyzmq keeps sends in order if one ever has to wait.
        sent = cast("asyncio.Future[Any]",
                    self._socket.send_multipart(call.parts, copy=True))
        if sent.done():
            self._sent(call.call_id, sent)
        else:
            sent.add_done_callback(functools.partial(self._sent, call.call_id))
        return fut

    def map(self, function: Union[str, Callable[..., Any]], *iterables: Iterable[Any],
            ordered: bool = True, progress: bool = False,
            max_in_flight: int = _map.DEFAULT_MAX_IN_FLIGHT,
            timeout: Optional[float] = None,
            call_timeout: TimeoutArg = "default") -> AsyncIterator[Any]:
        """``Client.map`` for ``async for``: an async iterator of the results of
        ``function`` over ``zip(*iterables)`` (plain iterables), with the same arguments
        and semantics. ``[r async for r in client.map(...)]`` collects them. Leaving the
        loop early cancels the calls in flight once the iterator is closed (``aclose()``,
        or ``contextlib.aclosing``; otherwise when it is collected)."""
        _map.check_arguments(iterables, max_in_flight, progress)
        return _map.run_async(
            lambda f, args: self.apply_with(f, args, timeout=call_timeout), self._cancel,
            function, iterables, ordered, progress, max_in_flight, timeout)

    def _cancel(self, fut: AsyncCallFuture) -> None:
        """Gives up a call (``fut.cancel()``, which cancels it at the engine too)."""
        fut.cancel()

    def stream(self, name: Union[str, Callable[..., Any]], *args: Any,
               **kwargs: Any) -> AsyncStream:
        """``Client.stream`` for ``async for``: sends the stream call now; iterate the
        returned ``AsyncStream`` for the items. Call it from the client's loop."""
        return self.stream_with(name, args, kwargs)

    def stream_with(self, name: Union[str, Callable[..., Any]], args: tuple[Any, ...] = (),
                    kwargs: Optional[dict[str, Any]] = None, *,
                    timeout: TimeoutArg = "default",
                    stream_credits: int = DEFAULT_STREAM_CREDITS) -> AsyncStream:
        """As ``stream``, with arguments as a tuple and dict; ``timeout`` bounds the wait
        for each item."""
        if self._closed:
            raise TransportError("client closed")
        self._bind_loop()
        t = call_timeout(self.timeout, timeout)
        credits = max(1, int(stream_credits))
        call = encode_call(self._session.next_header(), name, args, kwargs, t, self.policy,
                           self.registry, self.signer, stream_credits=credits)
        s = AsyncStream(call.call_id, credits, self._send_credit, self._send_cancel, t)
        self._streams[call.call_id] = s
        self._send_parts(call.parts)
        return s

    def _send_credit(self, call_id: int, items: int) -> None:
        if call_id in self._streams:
            self._send_control(call_id, items)

    def _send_cancel(self, call_id: int) -> None:
        """Forgets the call (a later reply is dropped) and cancels it at the engine."""
        fut = self._pending.pop(call_id, None)
        if fut is not None and fut._timer is not None:
            fut._timer.cancel()
        if fut is not None or self._streams.pop(call_id, None) is not None:
            self._send_control(call_id, None)

    def _send_control(self, call_id: int, credit: Optional[int]) -> None:
        if self._closed:
            return
        self._send_parts(encode_control(self._session.next_header(), call_id, credit,
                                        self.signer))

    def _send_parts(self, parts: list[Any]) -> None:
        sent = cast("asyncio.Future[Any]", self._socket.send_multipart(parts, copy=True))
        if not sent.done():
            sent.add_done_callback(lambda f: f.cancelled() or f.exception())

    # ---- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Stops receiving and closes the socket; pending calls fail with
        TransportError. Idempotent; call it from the client's loop (or after it ended)."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(TransportError("client closed"))
        for task in (self._reader, self._watcher):
            if task is not None and not task.done():
                try:
                    task.cancel()
                except RuntimeError:  # its loop is closed already
                    pass
        if self._watch is not None:
            self._watch.close()
        try:
            self._socket.close(linger=0)
        except RuntimeError:  # its loop is closed: close without pyzmq's asyncio part
            zmq.Socket.close(self._socket, linger=0)
        if self._owns_context:
            self._context.term()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    # ---- the loop side ------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise Error("AsyncClient calls need a running event loop (await them from a "
                        "coroutine); zerocan.Client is the client for plain threads") \
                from None
        if self._loop is None:
            self._loop = loop
            self._reader = loop.create_task(self._read())
            self._watcher = loop.create_task(self._watch_connection())
        elif loop is not self._loop:
            raise Error("this AsyncClient belongs to the event loop of its first call; "
                        "make one client per loop")
        return loop

    async def _read(self) -> None:
        try:
            while True:
                parts = await self._socket.recv_multipart(copy=False)
                self._deliver(parts)
                # Take what else is ready without a future per message.
                for _ in range(1024):
                    try:
                        parts = self._sync.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._deliver(parts)
                # Drop our reference now: a large reply frame freed by the caller goes
                # back to the heap before the next one is received into it.
                del parts
        except zmq.ZMQError as e:
            if not self._closed:
                self._closed = True
                self._fail_all(TransportError(f"client I/O failed: {e}"))

    async def _watch_connection(self) -> None:
        """While calls are in flight: fails them with BrokerLost once the connection is
        lost (closed, or silent for heartbeat x liveness; see _watch.py)."""
        watch = self._watch
        if watch is None or watch.socket is None:
            return
        poller = zmq.asyncio.Poller()
        poller.register(watch.socket, zmq.POLLIN)
        interval_ms = int((watch.check_interval or 1.0) * 1000)
        while not self._closed:
            events = await poller.poll(interval_ms)
            if self._closed or watch.socket is None:
                return
            if not watch.lost(bool(events)):
                continue
            # Replies that arrived before the connection closed are delivered first.
            while True:
                try:
                    self._deliver(self._sync.recv_multipart(zmq.NOBLOCK, copy=False))
                except zmq.Again:
                    break
            self._fail_in_flight_lost()

    def _fail_in_flight_lost(self) -> None:
        streams, self._streams = self._streams, {}
        for call_id, stream in streams.items():
            stream._push("error", broker_lost(self.url, self._liveness_s, ""))
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if fut._timer is not None:
                fut._timer.cancel()
            if not fut.done():
                fut.set_exception(broker_lost(self.url, self._liveness_s,
                                              getattr(fut, "function", "")))

    def _deliver(self, parts: list[zmq.Frame]) -> None:
        reply = read_reply(parts, self.signer, self.limits, self.registry, self.counters)
        if reply is None:
            return
        call_id, msg = reply
        if deliver_to_stream(self._streams, call_id, msg):
            return
        fut = self._pending.pop(call_id, None)
        if fut is None:
            self.counters["late"] += 1
            return
        if fut._timer is not None:
            fut._timer.cancel()
        if fut.done():  # cancelled by the caller meanwhile
            return
        result, exc = outcome(msg)
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _sent(self, call_id: int, sent: "asyncio.Future[Any]") -> None:
        if sent.cancelled():  # the socket closed first; close() failed the call
            return
        e = sent.exception()
        if e is None:
            self.counters["sent"] += 1
            return
        fut = self._pending.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TransportError(f"send failed: {e}"))

    def _expire(self, call_id: int) -> None:
        fut = self._pending.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TimeoutError(f"call {call_id} to {self.url}: no reply "
                                           "within its timeout"))

    def _fail_all(self, exc: Exception) -> None:
        streams, self._streams = self._streams, {}
        for s in streams.values():
            try:
                s._push("error", exc)
            except RuntimeError:
                pass
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if fut._timer is not None:
                fut._timer.cancel()
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except RuntimeError:  # its loop is closed: nobody can await it now
                    pass
