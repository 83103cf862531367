"""zerocan.Client: calls functions on a zerocan engine (C++ or Python), directly or
through a broker. Protocol: include/zerocan/engine.h.

A DEALER socket connects to an engine's bound ROUTER or a broker's frontend. The caller's
thread encodes each apply (so big arguments are wrapped as zero-copy frames at once and
their tracker exists when ``apply`` returns) and hands it to one I/O thread, which owns
the socket, sends, receives, matches replies to calls by call id and enforces deadlines.
Any number of calls may be in flight.

Arguments at or above the inline threshold (numpy arrays, bytes, memoryviews) are sent
with ``copy=False``: the socket holds a reference to the caller's buffer until libzmq
releases it; ``future.tracker`` (a ``zmq.MessageTracker``, or a ``CallTracker`` when
arrays of the caller's arena went in place) reports when. Do not modify such a buffer
before ``future.tracker.done``.

On one host the client passes large arguments in shared memory (``shared_memory``,
zerocan.shared): an array allocated with ``zerocan.shared.empty`` travels as a reference
with no copy, any other is copied once into the arena.

Results are decoded on the I/O thread: numpy arrays and memoryviews in them view the
received frames (writable; see ``wire._FrameArray``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import heapq
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import zmq

from . import _map, wire
from ._calls import PICKLED_FUNCTION, TimeoutArg, call_timeout, encode_call, outcome
from ._calls import configure as _configure
from ._calls import (DEFAULT_STREAM_CREDITS, broker_lost, deliver_to_stream, encode_control,
                     payload_frames, read_reply)
from ._stream import Stream
from ._watch import ConnectionWatch
from .curve import KeyPairLike
from .curve import configure_client as configure_curve_client
from .errors import DecodeError, Error, RemoteError, TimeoutError, TransportError
from .placement import IoCpus, channel_context
from .policy import Policy
from .shared import Arena, default_arena, this_host
from .signing import KeyLike, Signer, make_signer
from .wire import DecodeLimits, Registry

# PICKLED_FUNCTION, _configure and payload_frames are also the engine's (from here).


class CallTracker:
    """A call's tracker when arrays of the caller's own arena went in place (as C++'s
    ``ResultFuture::tracker()``): done when the frames are released (``frames``), the
    call is over (answered, or given up and its blocks no longer kept for a late reader)
    and nothing holds those arrays' blocks (``Arena.holds_on``: a receiver's view, or a
    result that hands one back in place). Has ``done`` and ``wait`` as
    ``zmq.MessageTracker`` does. Keeps no array alive."""

    def __init__(self, frames: Optional[zmq.MessageTracker], future: "CallFuture",
                 client: "Client", arena: Arena, in_place: list[Any]) -> None:
        self._frames = frames
        self._future = weakref.ref(future)
        self._client = weakref.ref(client)
        self._call_id = future.call_id if future.call_id else None
        self._arena = arena
        self._arrays = [weakref.ref(a) for a in in_place]

    @property
    def done(self) -> bool:
        if self._frames is not None and not self._frames.done:
            return False
        future = self._future()
        if future is not None and not future.done():
            return False
        client = self._client()
        if client is not None and client._keeps_blocks_of(self._call_id):
            return False  # given up: a late reader may still come
        for ref in self._arrays:
            array = ref()
            if array is not None and self._arena.holds_on(array) != 0:
                return False
        return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until done or ``timeout`` seconds pass; returns ``done``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True


class CallFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` of one call's result, plus the call's id and the
    tracker of its zero-copy argument frames."""

    call_id: int = 0
    tracker: Union[zmq.MessageTracker, "CallTracker", None] = None
    # (address, length) of each zero-copy frame handed to libzmq: the caller's own buffers.
    # (Addresses, not the frames: a frame object kept here would keep the message alive
    # and the tracker from completing.)
    sent_buffers: list[tuple[int, int]] = []
    # The arena blocks the call's shared-memory references name, kept until its reply.
    shared_blocks: Optional[list[Any]] = None
    # The function called (for error messages), and the arena the call had (None: it went
    # without shared memory, so it asked for no shared results).
    function: str = ""
    shared_arena: Optional[Arena] = None
    _client: Optional["weakref.ref[Client]"] = None

    def cancel(self) -> bool:
        """Cancels the call unless it is done: the future ends cancelled at once, and a
        cancel goes to the engine (or broker), which drops the call if queued and tells
        it if it runs (``zerocan.current_call().cancelled``); no reply is taken for it."""
        if not super().cancel():
            return False
        client = self._client() if self._client is not None else None
        if client is not None:
            client._send_control(self.call_id, None)
        return True


class _Control:
    """An outbox entry that is not a call: a cancel (``credit`` None) or a credit."""

    __slots__ = ("call_id", "credit")

    def __init__(self, call_id: int, credit: Optional[int]) -> None:
        self.call_id = call_id
        self.credit = credit


class Client:
    """Connects to ``url`` (an engine's bound endpoint or a broker frontend).

    ``timeout``: default per-call deadline in seconds (None = wait forever). A call
    without a reply by then fails with ``zerocan.TimeoutError``; a late reply is dropped.

    ``key`` (bytes or str) or ``key_file`` (a path, read as ``zerocan call --key-file``
    reads it: JSON with a "key" string, or the raw key): sign every call (scheme 3,
    docs/SECURITY.md) and accept only replies signed with that key. A reply that fails
    the check is counted in ``counters["rejected"]`` and ignored, as the C++ client does,
    so its call ends with ``TimeoutError``. Without a key nothing is signed or checked.

    ``curve_server_key`` (the server's Z85 public key, or its key file) and ``curve``
    (this client's own key pair or key file; default a fresh pair): encrypt with CurveZMQ
    (``zerocan.curve``; a server with an allow-list admits listed keys only).

    ``io_cpus``: the CPUs the client's libzmq threads may run on (CPU numbers or a list
    such as ``"0,2-3"``; ``zerocan.placement``), in a context of its own; default: the
    shared ``zmq.Context.instance()``, anywhere.

    ``shared_memory`` (default True): ask the peer where it runs (a hello); when an engine
    or a broker answers from this host (same kernel, network namespace and user),
    payloads at or above the threshold travel as references into ``shared_arena``
    (default ``zerocan.shared.default_arena()``): arrays from ``zerocan.shared.empty``
    with no copy, others copied in once (``counters["shared_bytes_copied"]``), frames
    when it is full. A block stays allocated until its call's reply (a call given up:
    until its late reply, at most 60 s). False: frames only, no hello.

    ``retries``: through a broker, how many more engines may run a call whose engine was
    lost while running it (0: it fails with ``zerocan.EngineLost``); only for functions
    safe to run twice. ``heartbeat`` (seconds, None = off) and ``liveness``: ZMTP
    heartbeats on the connection. A lost connection (closed, or silent for heartbeat x
    liveness: on tcp, no byte from the peer and none of ours acknowledged, so a large
    frame on a slow link is not silence) fails every call in flight at once with
    ``zerocan.BrokerLost``; the socket
    reconnects on its own, so later calls reach a restarted broker.
    """

    def __init__(self, url: str, *, timeout: Optional[float] = 60.0,
                 policy: Optional[Policy] = None, registry: Optional[Registry] = None,
                 limits: DecodeLimits = wire.DEFAULT_LIMITS,
                 context: Optional[zmq.Context] = None,
                 io_cpus: IoCpus = None,
                 key: Optional[KeyLike] = None, key_file: Optional[str] = None,
                 retries: int = 0, heartbeat: Optional[float] = 1.0,
                 liveness: int = 3, curve_server_key: Optional[str] = None,
                 curve: Optional[KeyPairLike] = None, shared_memory: bool = True,
                 shared_arena: Optional[Arena] = None) -> None:
        self.url = url
        self.shared_memory = shared_memory and not url.startswith("inproc://")
        self._shared_arena_option = shared_arena
        # Set by the I/O thread once the peer's hello says it shares this host; read by
        # callers' threads when they encode (one reference: atomic under the GIL).
        self._shared_arena: Optional[Arena] = None
        # Blocks of calls given up (timeout, cancel, lost connection) that the engine may
        # still be reading: call id -> (monotonic release time, blocks). The I/O thread's.
        self._held_blocks: dict[int, tuple[float, list[Any]]] = {}
        if self.shared_memory and limits.shared_refs == "refuse":
            limits = dataclasses.replace(limits, shared_refs="map")
        self.retries = retries
        self._liveness_s = (heartbeat or 0) * liveness
        self.signer: Optional[Signer] = make_signer(key, key_file)
        self.timeout = timeout
        self.policy = policy if policy is not None else Policy.for_transport(url)
        self.registry = registry if registry is not None else Registry.default()
        self.limits = limits
        self._context, self._owns_context = channel_context(context, io_cpus, "client")
        self._session = wire.Session()
        self._lock = threading.Lock()
        self._outbox: collections.deque[tuple[list[Any], CallFuture, Optional[float]]] = \
            collections.deque()
        self._pending: dict[int, CallFuture] = {}
        self._streams: dict[int, Stream] = {}  # the I/O thread's: stream calls running
        self._deadlines: list[tuple[float, int]] = []
        self._closed = False
        self.counters = {"sent": 0, "received": 0, "late": 0, "rejected": 0,
                         "shared_refs_sent": 0, "shared_bytes_copied": 0}
        self._socket = self._context.socket(zmq.DEALER)
        try:
            _configure(self._socket, limits)
            if curve_server_key is not None:
                configure_curve_client(self._socket, curve_server_key, curve)
            # With unbounded queues a send only waits when the DEALER has no pipe at all
            # (after a failed handshake: a Curve key refused or missing): fail the call
            # then instead of blocking the I/O thread.
            self._socket.setsockopt(zmq.SNDTIMEO, 0)
            self._watch = ConnectionWatch(self._socket, url, heartbeat, liveness)
            self._socket.connect(url)
        except BaseException:  # a bad URL: leave no socket or owned context running
            if getattr(self, "_watch", None) is not None:
                self._watch.close()
            self._socket.close(linger=0)
            if self._owns_context:
                self._context.term()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._thread = threading.Thread(target=self._io_loop, name=f"zerocan-client {url}",
                                        daemon=True)
        self._thread.start()

    # ---- calls --------------------------------------------------------------------

    def apply(self, name: Union[str, Callable[..., Any]], *args: Any,
              **kwargs: Any) -> CallFuture:
        """Calls ``name(*args, **kwargs)`` on the engine; returns a Future of the result.

        ``name`` may be a Python callable: it is sent by value (cloudpickle) and runs
        only on engines that opted in (``Engine(..., allow_pickle=True)``).
        """
        return self.apply_with(name, args, kwargs)

    def apply_with(self, name: Union[str, Callable[..., Any]], args: tuple[Any, ...] = (),
                   kwargs: Optional[dict[str, Any]] = None, *,
                   timeout: TimeoutArg = "default") -> CallFuture:
        """As ``apply``, with arguments as a tuple and dict and a per-call timeout."""
        if self._closed:
            raise TransportError("client closed")
        t = call_timeout(self.timeout, timeout)
        with self._lock:
            header = self._session.next_header()
        arena = self._shared_arena  # the call's: sharedResults is set when there is one
        call = encode_call(header, name, args, kwargs, t, self.policy, self.registry,
                           self.signer, self.retries, shared_arena=arena)
        fut = CallFuture()
        fut.function = name if isinstance(name, str) else PICKLED_FUNCTION
        fut.shared_arena = arena
        fut.shared_blocks = call.shared_blocks
        fut._client = weakref.ref(self)
        fut.call_id = call.call_id
        fut.tracker = call.tracker
        if call.shared_in_place and arena is not None:
            fut.tracker = CallTracker(call.tracker, fut, self, arena, call.shared_in_place)
        fut.sent_buffers = call.sent_buffers
        parts = call.parts
        deadline = None if t is None else time.monotonic() + t
        with self._lock:
            if self._closed:
                raise TransportError("client closed")
            if call.shared_refs:
                self.counters["shared_refs_sent"] += call.shared_refs
                self.counters["shared_bytes_copied"] += call.shared_bytes_copied
            self._outbox.append((parts, fut, deadline))
            if not self._wake_pending:  # one wake-up byte per batch of calls
                self._wake_pending = True
                os.write(self._wake_w, b"x")
        return fut

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """apply(...).result(): the result, or raises RemoteError / TimeoutError."""
        return self.apply(name, *args, **kwargs).result()

    def map(self, function: Union[str, Callable[..., Any]], *iterables: Iterable[Any],
            ordered: bool = True, progress: bool = False,
            max_in_flight: int = _map.DEFAULT_MAX_IN_FLIGHT,
            timeout: Optional[float] = None,
            call_timeout: TimeoutArg = "default") -> Iterator[Any]:
        """Calls ``function`` once per item of ``zip(*iterables)`` (one argument per
        iterable, as the builtin ``map``); an iterator of the results, in the items' order
        (``ordered=True``) or as they complete.

        Items are read lazily, from the first ``next()`` on: at most ``max_in_flight``
        calls are sent and not yet returned. The first call that fails raises its error
        (``RemoteError``, ``TimeoutError``, ...) with ``.index`` and ``.arguments`` of its
        item set (and a note naming them); nothing more is sent and the calls still in
        flight are cancelled, as they are when the iterator is closed early.
        ``timeout``: seconds from the first ``next()`` after which a result not yet there
        raises ``zerocan.TimeoutError`` (as ``Executor.map``; None = none); each call
        also has ``call_timeout`` (as ``apply_with``'s ``timeout``). ``progress=True``
        shows a ``tqdm.auto`` bar (tqdm is optional: ``pip install tqdm``).
        """
        _map.check_arguments(iterables, max_in_flight, progress)
        return _map.run_threaded(
            lambda f, args: self.apply_with(f, args, timeout=call_timeout), self._cancel,
            function, iterables, ordered, progress, max_in_flight, timeout)

    @property
    def shares_memory(self) -> bool:
        """Whether calls now pass large arguments in shared memory (``shared_memory``)."""
        return self._shared_arena is not None

    def _cancel(self, fut: CallFuture) -> None:
        """Gives up a call (``fut.cancel()``): a call not yet sent is never sent, one
        sent is cancelled at its engine."""
        fut.cancel()

    def stream(self, name: Union[str, Callable[..., Any]], *args: Any,
               **kwargs: Any) -> Stream:
        """Calls a streaming function (an engine generator, or a C++ function taking a
        ``StreamWriter&``); iterate over the result for its items, in order, each as soon
        as it was produced: ``for item in client.stream("f", x): ...``. The engine runs
        at most ``stream_credits`` items ahead of the reader. ``cancel()`` / ``close()``
        stop it."""
        return self.stream_with(name, args, kwargs)

    def stream_with(self, name: Union[str, Callable[..., Any]], args: tuple[Any, ...] = (),
                    kwargs: Optional[dict[str, Any]] = None, *,
                    timeout: TimeoutArg = "default",
                    stream_credits: int = DEFAULT_STREAM_CREDITS) -> Stream:
        """As ``stream``, with arguments as a tuple and dict; ``timeout`` bounds the wait
        for each item (seconds; None = none)."""
        if self._closed:
            raise TransportError("client closed")
        t = call_timeout(self.timeout, timeout)
        credits = max(1, int(stream_credits))
        with self._lock:
            header = self._session.next_header()
        call = encode_call(header, name, args, kwargs, t, self.policy, self.registry,
                           self.signer, stream_credits=credits)
        s = Stream(call.call_id, credits, self._send_credit, self._cancel_stream, t)
        with self._lock:
            if self._closed:
                raise TransportError("client closed")
            self._outbox.append((call.parts, s, None))  # type: ignore[arg-type]
            self._wake()
        return s

    def _send_credit(self, call_id: int, items: int) -> None:
        self._send_control(call_id, items)

    def _cancel_stream(self, call_id: int) -> None:
        self._send_control(call_id, None)

    def _send_control(self, call_id: int, credit: Optional[int]) -> None:
        """Queues a cancel (``credit`` None) or a credit for the I/O thread."""
        with self._lock:
            if self._closed:
                return
            self._outbox.append((None, _Control(call_id, credit), None))  # type: ignore[arg-type]
            self._wake()

    def _wake(self) -> None:  # self._lock held
        if not self._wake_pending:
            self._wake_pending = True
            os.write(self._wake_w, b"x")

    # ---- lifetime -----------------------------------------------------------------

    def close(self, wait: bool = True) -> None:
        """Stops the I/O thread (which closes the socket); pending calls fail with
        TransportError. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_w, b"q")
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        # Never join here: at interpreter exit the I/O thread may already be frozen.
        try:
            self.close(wait=False)
        except Exception:
            pass

    # ---- I/O thread ---------------------------------------------------------------

    def _io_loop(self) -> None:
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._watch.socket, zmq.POLLIN)
        try:
            if self.shared_memory:
                self._send_hello()
            while True:
                timeout_ms = self._next_timeout_ms()
                if self._pending and self._watch.check_interval is not None:
                    # Calls in flight: look at the connection's silence now and then.
                    check_ms = int(self._watch.check_interval * 1000) + 1
                    timeout_ms = check_ms if timeout_ms is None else min(timeout_ms, check_ms)
                events = dict(poller.poll(timeout_ms))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                if self._closed:
                    break
                if self._watch.lost(self._watch.socket in events):
                    # Replies that arrived before the connection closed are still queued
                    # on the socket: take them first, so only calls with no answer fail.
                    while self._receive_ready(sock):
                        pass
                    self._fail_pending_lost()
                self._send_outbox()
                if sock in events:
                    self._receive_ready(sock)
                self._expire()
        except Exception as e:  # pragma: no cover - socket failure
            self._fail_all(TransportError(f"client I/O failed: {e}"))
        finally:
            self._fail_all(TransportError("client closed"))
            self._watch.close()
            sock.close(linger=0)
            if self._owns_context:
                self._context.term()
            with self._lock:
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _receive_ready(self, sock: zmq.Socket, batch: int = 1024) -> bool:
        """Handles up to `batch` replies already received, without waiting; True when the
        batch was full (more may be ready)."""
        for _ in range(batch):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            self._on_reply(parts)
            # Drop our reference now: a large reply frame freed by the caller goes back
            # to the heap before the next one is received into it.
            del parts
        return True

    def _send_outbox(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    self._wake_pending = False
                    return
                parts, fut, deadline = self._outbox.popleft()
            if isinstance(fut, (_Control, Stream)):
                self._send_stream_or_control(parts, fut)
                continue
            if fut.cancelled():
                continue
            self._pending[fut.call_id] = fut
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, fut.call_id))
            try:
                self._socket.send_multipart(parts, copy=True)
                self.counters["sent"] += 1
            except zmq.Again:
                self._pending.pop(fut.call_id, None)
                _resolve(fut, exc=TransportError(
                    "send failed: no connected peer could take the message now (nothing "
                    "connected yet, or a failed handshake)"))
            except zmq.ZMQError as e:
                self._pending.pop(fut.call_id, None)
                _resolve(fut, exc=TransportError(f"send failed: {e}"))

    def _send_stream_or_control(self, parts: Any, entry: Union[_Control, Stream]) -> None:
        """The I/O thread's part of ``stream`` (send the call) and of cancels and credits
        (send them for calls still running here; a cancelled call's reply is dropped)."""
        if isinstance(entry, Stream):
            if entry.finished:
                return  # cancelled before it left
            self._streams[entry.call_id] = entry
        else:
            if entry.credit is None:
                cancelled = self._pending.pop(entry.call_id, None)
                self._hold_blocks(entry.call_id, cancelled)
                known = cancelled is not None
                known = self._streams.pop(entry.call_id, None) is not None or known
            else:
                known = entry.call_id in self._streams
            if not known:
                return  # done, or never sent
            with self._lock:
                header = self._session.next_header()
            parts = encode_control(header, entry.call_id, entry.credit, self.signer)
        try:
            self._socket.send_multipart(parts, copy=True)
        except zmq.ZMQError as e:
            if isinstance(entry, Stream):
                self._streams.pop(entry.call_id, None)
                entry._push("error", TransportError(f"send failed: {e}"))

    def _on_reply(self, parts: list[zmq.Frame]) -> None:
        reply = read_reply(parts, self.signer, self.limits, self.registry, self.counters,
                           hellos=self.shared_memory)
        if reply is None:
            return
        call_id, msg = reply
        if msg.kind == "hello":
            self._accept_hello(msg)
            return
        if deliver_to_stream(self._streams, call_id, msg):
            return
        fut = self._pending.pop(call_id, None)
        if fut is None:
            self.counters["late"] += 1
            self._held_blocks.pop(call_id, None)  # the engine is done with them now
            return
        blocks = fut.shared_blocks
        if blocks:
            # The engine may hand an argument back in place: the result keeps its blocks.
            msg.keep_with_shared = blocks
        fut.shared_blocks = None  # answered: the engine reads them no more
        result, exc = outcome(msg)
        if exc is None and msg.shared_origins:
            stray = self._stray_reference(msg.shared_origins, blocks or [],
                                          getattr(fut, "shared_arena", None))
            if stray is not None:
                result, exc = None, DecodeError(f"{getattr(fut, 'function', '')}: {stray}",
                                                "malformed")
        if (isinstance(exc, RemoteError) and exc.type == "zerocan.DecodeError"
                and ("shared memory" in exc.message or "shared-memory" in exc.message)):
            # The peer could not map our arena (another host after a reconnect, a policy
            # of its own): later calls send frames.
            self._shared_arena = None
        _resolve(fut, result=result, exc=exc)

    # ---- shared memory ------------------------------------------------------------

    def _send_hello(self) -> None:
        """Asks the peer where it runs (answered by engines and brokers that share
        memory; anyone else stays silent and calls send frames)."""
        with self._lock:
            header = self._session.next_header()
        w = wire.Writer()
        w.set_header(header)
        w.hello("client", "client", (), this_host())
        parts: list[Any] = [b"", w.finish().envelope]
        if self.signer is not None:
            parts.append(self.signer.signature(parts[1:]))
        try:
            self._socket.send_multipart(parts, copy=True)
        except zmq.ZMQError:
            pass  # no peer yet: calls send frames

    def _accept_hello(self, msg: wire.Message) -> None:
        host = msg.hello_host()
        me = this_host()
        if host is None or me is None or tuple(host) != me or self._shared_arena is not None:
            return
        try:
            self._shared_arena = self._shared_arena_option or default_arena()
        except Error:
            pass  # no arena (no memfd, no memory): calls keep sending frames

    @staticmethod
    def _stray_reference(origins: list[Any], blocks: list[Any],
                         arena: Optional[Arena]) -> Optional[str]:
        """A result may refer to the call's arena (``arena``, None when the call went
        without shared memory) only where the call's own references did; to another
        arena (the engine's results, held through a lease) only when the call asked for
        shared results, which it did when it had an arena (docs/FORMAT.md, "Payloads in
        shared memory"): the reason when it does not."""
        spans = [arena.locate(b) for b in blocks] if arena is not None else []
        for name, offset, _, length, _, _ in origins:
            if arena is not None and name != arena.name:
                continue  # the engine's block, which the decoder holds
            if arena is None or not any(
                    s is not None and s[0] <= offset and offset + length <= s[0] + s[1]
                    for s in spans):
                return (f"the result refers to shared memory the call did not pass "
                        f"(arena \"{name}\", {length} bytes at offset {offset})")
        return None

    def _keeps_blocks_of(self, call_id: Optional[int]) -> bool:
        """Whether the blocks of given-up call ``call_id`` wait for a late reader."""
        return call_id in self._held_blocks

    # A call given up may still be running on its engine, reading its arguments in place:
    # their blocks wait for the late reply, at most this long (a cancelled call gets none).
    _HOLD_GIVEN_UP_BLOCKS_S = 60.0

    def _hold_blocks(self, call_id: int, fut: Any) -> None:
        blocks = getattr(fut, "shared_blocks", None)
        if blocks:
            self._held_blocks[call_id] = (time.monotonic() + self._HOLD_GIVEN_UP_BLOCKS_S,
                                          blocks)
            fut.shared_blocks = None

    def _next_timeout_ms(self) -> Optional[int]:
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        wake = [until for until, _ in self._held_blocks.values()]  # blocks to let go
        if self._deadlines:
            wake.append(self._deadlines[0][0])
        if not wake:
            return None
        return max(0, int((min(wake) - time.monotonic()) * 1000) + 1)

    def _expire(self) -> None:
        now = time.monotonic()
        if self._held_blocks:
            for call_id in [c for c, (until, _) in self._held_blocks.items() if until <= now]:
                del self._held_blocks[call_id]
        while self._deadlines and self._deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self._deadlines)
            fut = self._pending.pop(call_id, None)
            if fut is not None:
                self._hold_blocks(call_id, fut)
                _resolve(fut, exc=TimeoutError(f"call {call_id} to {self.url}: no reply "
                                               "within its timeout"))

    def _fail_pending_lost(self) -> None:
        for call_id, fut in list(self._pending.items()):
            self._hold_blocks(call_id, fut)
            _resolve(fut, exc=broker_lost(self.url, self._liveness_s,
                                          getattr(fut, "function", "")))
        self._pending.clear()
        for s in self._streams.values():  # a stream's items stop: it ends with the error
            s._push("error", broker_lost(self.url, self._liveness_s, ""))
        self._streams.clear()

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            queued = [fut for _, fut, _ in self._outbox]
            self._outbox.clear()
        for fut in queued + list(self._pending.values()):
            if isinstance(fut, Stream):
                fut._push("error", exc)
            elif isinstance(fut, CallFuture):
                _resolve(fut, exc=exc)
        self._pending.clear()
        for s in self._streams.values():
            s._push("error", exc)
        self._streams.clear()


def _resolve(fut: concurrent.futures.Future, result: Any = None,
             exc: Optional[BaseException] = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the caller meanwhile
