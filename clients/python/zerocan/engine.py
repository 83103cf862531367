"""zerocan.Engine: serves Python functions to any zerocan client, C++ or Python.

Protocol (include/zerocan/engine.h): with ``bind=True`` the engine binds a ROUTER that
clients connect to directly; otherwise it connects a DEALER to a broker's backend and
talks to the broker too: a hello (peer id, role "engine", function names) at start, a
heartbeat every ``heartbeat`` seconds, a goodbye when it stops. Every apply is answered
with a result carrying ``callId`` = the apply's ``messageId``, sent back along the
request's routing frames.

Errors are reported as the C++ engine reports them: an exception becomes a remote error
whose type is the exception's name ("ValueError", "zerocan.ArgumentError",
"mypackage.MyError"), its message ``str(e)``, the function name, and ``where`` = the
engine id. An unknown function is "zerocan.UnknownFunction"; a message that does not
decode is answered (call id 0) with "zerocan.DecodeError".

``run()``'s thread owns the sockets (receives, decodes, sends replies and heartbeats);
functions run on ``threads`` worker threads, so a long call does not stop the heartbeats
a broker watches; ``threads=0`` runs them on the I/O thread (lowest latency: no hand-over
to a worker and back). The default (``threads=None``) is 1 worker when the engine is
connected to a broker and 0 when it only binds (no heartbeats to keep: a small call's
round trip is about 0.7 ms shorter on the reference machine).
Python's GIL serialises pure-Python functions anyway: run several engines for
parallelism.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import os
import queue
import socket as _socket
import threading
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import zmq

from . import signing, wire
from ._guard import ConnectionGuard
from ._calls import limit_connections
from .curve import AllowList, KeyPairLike
from .curve import configure_client as configure_curve_client
from .curve import configure_server as configure_curve_server
from .client import PICKLED_FUNCTION, _configure, payload_frames
from .errors import ArgumentError, DecodeError, Error, RemoteError, TransportError
from .pacing import bind_unpaced
from .placement import IoCpus, channel_context
from .policy import Policy
from .shared import Arena, default_capacity, this_host
from .signing import KeyLike, ReplayGuard, Signer, make_signer
from .wire import DecodeLimits, Message, Registry, Writer

# A raw function reads its call from the decoded message and writes its result itself:
# fn(call: Call, writer: Writer, result_builder) -> None.
RawFunction = Callable[["Call", Writer, Any], None]

_ids = itertools.count()


_MAX_CLIENTS_SHARING = 65536


def _routing_id(routing: list[Any]) -> bytes:
    """The caller's routing id (the first routing frame) as bytes."""
    r = routing[0]
    return bytes(r.buffer) if hasattr(r, "buffer") else bytes(r)


def _default_id() -> str:
    return f"{_socket.gethostname()}:{os.getpid()}:{next(_ids)}"


def error_type_name(e: BaseException) -> str:
    """The remote type of an exception: builtins bare, zerocan's as "zerocan.X", others
    as "module.Qualname"."""
    t = type(e)
    module = t.__module__
    if module == "builtins":
        return t.__qualname__
    if module.startswith("zerocan"):
        return f"zerocan.{t.__qualname__}"
    return f"{module}.{t.__qualname__}"


class CallContext:
    """The call a function runs for (``zerocan.current_call()``): its id, its function's
    name, and ``cancelled``, which turns True once the client cancels the call. A
    function may poll it and stop early; the client's future has ended already, and the
    engine sends no result for a cancelled call."""

    def __init__(self, call_id: int = 0, function: str = "") -> None:
        self.call_id = call_id
        self.function = function
        self._cancelled = threading.Event()
        self._cond = threading.Condition()
        self._credits = 0  # stream calls: items that may still be sent
        self._stopping = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Waits until the call is cancelled or ``timeout`` seconds passed; True when
        cancelled (a cancellable sleep)."""
        return self._cancelled.wait(timeout)

    def _cancel(self) -> None:
        self._cancelled.set()
        with self._cond:
            self._cond.notify_all()

    def _grant(self, items: int) -> None:
        with self._cond:
            self._credits += items
            self._cond.notify_all()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


_current = threading.local()
_NO_CALL = CallContext()


def current_call() -> CallContext:
    """The call the calling engine function runs for (outside one: a context that is
    never cancelled)."""
    return getattr(_current, "call", None) or _NO_CALL


class Call:
    """What a raw function sees of its call (valid during the call only)."""

    def __init__(self, message: Message, engine_id: str) -> None:
        self.message = message
        self.engine_id = engine_id
        a = message.envelope.body.apply
        self.function: str = a.function
        self.args_readers = a.args
        self.kwargs_readers = a.kwargs

    @property
    def arg_count(self) -> int:
        return len(self.args_readers)

    def arg(self, i: int) -> Any:
        """Argument i decoded to a Python value."""
        return self.message.value(self.args_readers[i], wire._Path(None, "args", i), 1)


class Engine:
    """Serves registered functions at ``url`` (see the module docstring).

    ``builtins``: register the test built-ins echo, add, sum, nbytes, sleep and fail.
    Off by default (as in C++): they are for tests and demos, not for a network.

    ``allow_pickle``: run functions sent by value with cloudpickle (``client.apply(fn)``).
    Off by default: unpickling runs arbitrary code.

    ``key`` (bytes or str) or ``key_file`` (a path, read as ``zerocan engine --key-file``
    reads it): sign every message sent (replies, hellos, heartbeats, goodbyes) and accept
    only messages signed with that key, then pass them through a replay guard
    (``replay``: a ``ReplayGuard``; default: the C++ defaults). A message that fails
    either check is dropped and counted in ``counters["refused"]`` (and ``"errors"``, as
    the C++ engine counts it), never answered (docs/SECURITY.md). Without a key nothing
    is signed or checked.

    ``io_cpus``: the CPUs the engine's libzmq threads may run on (CPU numbers or a list
    such as ``"0,2-3"``; ``zerocan.placement``), in a context of its own, ended when the
    engine stops; default: the shared ``zmq.Context.instance()``, anywhere.

    ``idle_timeout``, ``handshake_timeout`` (seconds) and ``receive_budget`` (bytes, all
    connections of bound sockets together; default 1.5 GiB): what clients that stall may
    hold, as zerocan::ConnectionLimits (docs/SECURITY.md); 0 turns each off.

    ``unpace_local_tcp``: opt-in (default False): a tcp:// bind to a loopback address
    sets "reno" on its listener when the host runs BBR, so accepted connections are never
    paced (``zerocan.pacing``). Congestion control is the application's choice; by
    default the engine binds plainly and leaves it to the host.
    """

    def __init__(self, url: Optional[str] = None, bind: bool = False, *,
                 id: Optional[str] = None, builtins: bool = False, allow_pickle: bool = False,
                 heartbeat: float = 0.5, threads: Optional[int] = None,
                 policy: Optional[Policy] = None,
                 registry: Optional[Registry] = None,
                 limits: DecodeLimits = wire.DEFAULT_LIMITS,
                 context: Optional[zmq.Context] = None,
                 io_cpus: IoCpus = None,
                 key: Optional[KeyLike] = None, key_file: Optional[str] = None,
                 replay: Optional[ReplayGuard] = None,
                 unpace_local_tcp: bool = False, drain_timeout: float = 30.0,
                 idle_timeout: float = 30.0, handshake_timeout: float = 5.0,
                 receive_budget: int = 3 << 29,
                 max_queued_calls: int = 10000, max_queued_bytes: int = 1 << 30,
                 curve: Optional[KeyPairLike] = None, curve_server_key: Optional[str] = None,
                 curve_allowed_clients: Sequence[str] = (),
                 shared_memory: bool = True, shared_arena: Optional[Arena] = None,
                 shared_result_wait: float = 60.0) -> None:
        self.id = id or _default_id()
        # Shared memory with clients on this host (zerocan.shared): answer a client's hello
        # with where this engine runs, and read the arguments such a client sends as
        # references into its arena, in place (read-only arrays, each holding its block
        # while it lives). For a caller that reads shared results (Apply.sharedResults)
        # and shares this host, result arrays at or above the threshold go as references
        # into ``shared_arena``: in place when the function returned an array of it
        # (``engine.shared_arena.empty(...)``), else copied there once. Its blocks are lent
        # to the caller until it holds them, or for ``shared_result_wait`` seconds. Off:
        # hellos go unanswered, so clients send frames (EngineOptions::shared_memory).
        self.shared_memory = shared_memory
        self._shared_arena = shared_arena
        self._shared_arena_lock = threading.Lock()
        self.shared_result_wait = shared_result_wait
        # Broker connections whose broker said in its hello that it shares this host, and
        # direct callers (routing ids) whose hello said they run here (bounded: others
        # get frames).
        self._brokers_sharing: set[int] = set()
        self._clients_sharing: set[bytes] = set()
        if shared_memory and limits.shared_refs == "refuse":
            limits = dataclasses.replace(limits, shared_refs="map")
        # stop() drains: no new calls (a broker is told; a direct caller gets
        # zerocan.EngineStopping), each held call answered as it finishes, for at most
        # drain_timeout seconds; calls still queued then get zerocan.EngineStopping.
        self.drain_timeout = drain_timeout
        # For bind(): clients that stall inside a frame or a handshake are disconnected
        # (zerocan::ConnectionLimits, docs/SECURITY.md).
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        # Bytes that clients' messages may hold before they are read, all connections
        # together (1.5 GiB; zerocan::ConnectionLimits::receive_budget_bytes); 0 = none.
        self.receive_budget = receive_budget
        # Calls waiting for a worker thread: past either bound, a call is answered
        # zerocan.Busy at once (it did not run); 0 = no limit (EngineOptions::max_queued_*).
        self.max_queued_calls = max_queued_calls
        self.max_queued_bytes = max_queued_bytes
        self._queued = [0, 0]  # calls, bytes in _jobs (under _reply_lock)
        # CurveZMQ (zerocan.curve), as the C++ EngineOptions: `curve` is this engine's key
        # pair (bound sockets are Curve servers; connected ones use it as their own pair),
        # `curve_server_key` the broker backend's public key (connected sockets are Curve
        # clients), `curve_allowed_clients` the only client keys its bound sockets admit.
        if curve_allowed_clients and curve is None:
            raise Error("curve_allowed_clients needs curve (a key pair)")
        self.curve = curve
        self.curve_server_key = curve_server_key
        self._curve_allowed = list(curve_allowed_clients)
        self._allow_list: Optional[AllowList] = None
        self._draining = False
        self._running = 0  # calls a worker is running (under _reply_lock)
        self.unpace_local_tcp = unpace_local_tcp
        self.signer: Optional[Signer] = make_signer(key, key_file)
        self.replay: Optional[ReplayGuard] = (replay if replay is not None else ReplayGuard()) \
            if self.signer is not None else None
        self.policy = policy if policy is not None else (
            Policy.for_transport(url) if url else Policy.default())
        self.registry = registry if registry is not None else Registry.default()
        self.limits = limits
        self.heartbeat = heartbeat
        self.allow_pickle = allow_pickle
        self.threads = threads
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._replies: collections.deque[tuple[zmq.Socket, list[Any], wire.Outgoing]] = \
            collections.deque()
        self._reply_lock = threading.Lock()
        self._wake_pending = False
        self._fds_closed = False
        # As zerocan::EngineCounters, plus "refused" (unsigned or replayed messages).
        self.counters = {"calls": 0, "errors": 0, "dropped": 0, "refused": 0,
                         "connections_closed_idle": 0, "connections_closed_over_budget": 0}
        self._functions: dict[str, tuple[Callable[..., Any], bool]] = {}
        # Cancel and streams: running calls by (routing, call id), and calls cancelled
        # before they ran (the last 4096), so that a worker drops them.
        self._live: dict[tuple[Any, int], CallContext] = {}
        self._cancelled_early: collections.OrderedDict[tuple[Any, int], None] = \
            collections.OrderedDict()
        self._live_lock = threading.Lock()
        self._io_thread: Optional[threading.Thread] = None
        self._session = wire.Session()
        self._context, self._owns_context = channel_context(context, io_cpus, "engine")
        self._sockets: list[tuple[zmq.Socket, bool]] = []  # (socket, is_dealer)
        # What clients of bound sockets may hold, and for how long.
        self._guard = ConnectionGuard(receive_budget, idle_timeout, curve is not None)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stop_r, self._stop_w = os.pipe()  # stop requests and worker replies wake run()
        os.set_blocking(self._stop_r, False)
        self.endpoint: Optional[str] = None
        self._serving = False
        if builtins:
            add_builtins(self)
        if url is not None:
            try:
                if bind:
                    self.bind(url)
                else:
                    self.connect(url)
            except BaseException:  # a bad URL or a port in use: leave nothing running
                self._shutdown(goodbye=False)
                raise

    # ---- functions ----------------------------------------------------------------

    def register(self, name: Union[str, Callable[..., Any], None] = None,
                 fn: Optional[Callable[..., Any]] = None, *, raw: bool = False) -> Any:
        """Registers ``fn`` under ``name``. Also a decorator: ``@engine.register``,
        ``@engine.register("name")``. Replaces an earlier function of that name."""
        if callable(name) and fn is None:  # @engine.register
            f = name
            self._functions[f.__name__] = (f, raw)
            return f
        if fn is None:
            def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
                self._functions[str(name) if name else f.__name__] = (f, raw)
                return f
            return decorate
        self._functions[str(name)] = (fn, raw)
        return fn

    def functions(self) -> list[str]:
        return sorted(self._functions)

    # ---- sockets ------------------------------------------------------------------

    def bind(self, url: str) -> str:
        s = self._context.socket(zmq.ROUTER)
        self._sockets.append((s, False))  # closed by _shutdown even if bind fails
        _configure(s, self.limits)
        limit_connections(s, self.idle_timeout, self.handshake_timeout)
        if self.curve is not None:
            if self._curve_allowed and self._allow_list is None:
                self._allow_list = AllowList(self._context, self._curve_allowed)
            configure_curve_server(s, self.curve)
        if self.unpace_local_tcp:
            bind_unpaced(self._context, s, url)
        else:
            s.bind(url)
        self._guard.watch(s)  # after the bind: it may replace the socket's monitor
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def connect(self, url: str) -> None:
        s = self._context.socket(zmq.DEALER)
        self._sockets.append((s, True))  # closed by _shutdown even if connect fails
        _configure(s, self.limits)
        if self.curve_server_key is not None:
            configure_curve_client(s, self.curve_server_key, self.curve)
        s.connect(url)

    # ---- serving ------------------------------------------------------------------

    def run(self) -> None:
        """Serves until interrupted (Ctrl-C) or ``stop()``; then says goodbye to the
        broker and closes the sockets."""
        self._serving = True
        try:
            self._serve()
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown(goodbye=True)

    def start(self) -> "Engine":
        """Runs ``run()`` on a background thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self.run, name=f"zerocan-engine {self.id}",
                                        daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Asks ``run()`` to return after the call being run; does not wait (safe from a
        signal handler)."""
        self._stop.set()
        if self._fds_closed:
            return
        try:
            os.write(self._stop_w, b"q")
        except OSError:
            pass

    def stop(self) -> None:
        """Stops serving (after the call being run) and waits for the serving thread. An
        engine that never served closes its sockets (and its own context) here."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        elif not self._serving and not self._fds_closed:
            self._shutdown(goodbye=False)

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        poller = zmq.Poller()
        for s, _ in self._sockets:
            poller.register(s, zmq.POLLIN)
        monitors = self._guard.monitors()
        for m in monitors:
            poller.register(m, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        self._io_thread = threading.current_thread()
        if self.threads is None:  # a worker only where a broker watches heartbeats
            self.threads = 1 if any(is_dealer for _, is_dealer in self._sockets) else 0
        workers = [threading.Thread(target=self._work, name=f"zerocan-engine-worker {i}",
                                    daemon=True) for i in range(self.threads)]
        for t in workers:
            t.start()
        host = this_host() if self.shared_memory else None
        self._send_control(lambda w: w.hello(self.id, "engine", self.functions(), host))
        next_beat = time.monotonic() + self.heartbeat
        drain_until = float("inf")
        try:
            while True:
                if self._stop.is_set() and not self._draining:
                    # Drain: take no new calls, keep heartbeating, answer as calls finish.
                    self._draining = True
                    drain_until = time.monotonic() + self.drain_timeout
                    self._send_control(lambda w: w.draining())
                if self._draining:
                    with self._reply_lock:
                        idle = self._running == 0 and not self._replies
                    if idle and self._jobs.empty():
                        break
                    if time.monotonic() >= drain_until:
                        self._fail_queued()
                        break
                wake_at = min(next_beat, drain_until, self._guard.next_check)
                wait_ms = max(0, int((wake_at - time.monotonic()) * 1000))
                events = dict(poller.poll(wait_ms))
                if self._stop_r in events:
                    try:
                        os.read(self._stop_r, 4096)
                    except BlockingIOError:
                        pass
                if any(m in events for m in monitors):
                    self._guard.read_events()
                self._guard.check(time.monotonic())
                self.counters["connections_closed_idle"] = self._guard.closed_idle
                self.counters["connections_closed_over_budget"] = self._guard.closed_over_budget
                self._send_replies()
                for s, is_dealer in self._sockets:
                    if s in events:
                        for _ in range(64):  # drain, but keep heartbeats on time
                            try:
                                parts = s.recv_multipart(zmq.NOBLOCK, copy=False)
                            except zmq.Again:
                                break
                            if not is_dealer:
                                self._guard.delivered(parts)
                            self._handle(s, parts)
                            del parts  # the job holds the frames as long as needed
                            if time.monotonic() >= next_beat:
                                break
                if time.monotonic() >= next_beat:
                    self._send_control(lambda w: w.heartbeat(self.id, time.time_ns()))
                    next_beat = time.monotonic() + self.heartbeat
        finally:
            # Finish the calls already taken, send their replies, then stop the workers.
            # Streams waiting for credit end: nobody will grant more now.
            with self._live_lock:
                for ctx in self._live.values():
                    ctx._stop()
            for _ in workers:
                self._jobs.put(None)
            for t in workers:
                t.join()
            self._send_replies()

    def _work(self) -> None:
        """A worker thread: runs calls so the I/O thread keeps receiving and sending
        heartbeats while a function runs (a broker would otherwise count the engine dead)."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sock, routing, msg, nbytes = job
            with self._reply_lock:
                self._running += 1
                self._queued[0] -= 1
                self._queued[1] -= nbytes
            self._acknowledge(sock, routing, msg, direct=False)
            try:
                out = self.process(msg, sock)
            finally:
                with self._reply_lock:
                    self._running -= 1
            # Drop the request's frames before waiting for the next job, so a large
            # received frame is freed (and its memory reused) before the next arrives.
            job = msg = None
            if out is not None:  # None: cancelled, or a stream answered by its own thread
                self._queue_reply(sock, routing, out)
            del out  # the reply is the I/O thread's now

    def _acknowledge(self, sock: zmq.Socket, routing: list[Any], msg: Message,
                     direct: bool) -> None:
        """Tells a broker (a DEALER socket) that the call is starting, with the call's
        routing frames, so that a call lost with this engine before it started goes to
        another engine (docs/FORMAT.md "Failures and retries")."""
        if not any(s is sock and is_dealer for s, is_dealer in self._sockets):
            return
        w = Writer(self.policy, self.registry)
        w.set_header(self._session.next_header())
        w.started(msg.message_id)
        out = w.finish()
        if direct:
            self._reply(sock, routing, out)
            return
        with self._reply_lock:
            self._replies.append((sock, routing, out))
            if not self._wake_pending and not self._fds_closed:
                self._wake_pending = True
                os.write(self._stop_w, b"r")

    def _fail_queued(self) -> None:
        """The drain's grace period passed: calls not started get EngineStopping."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            sock, routing, msg, nbytes = job
            with self._reply_lock:
                self._queued[0] -= 1
                self._queued[1] -= nbytes
            self.counters["errors"] += 1
            self._reply(sock, routing, self._error(
                msg.message_id, "zerocan.EngineStopping",
                f"engine {self.id} stopped before this call started (drain grace period of "
                f"{self.drain_timeout:g} s passed)", msg.function))

    def _queue_reply(self, sock: zmq.Socket, routing: list[Any], out: wire.Outgoing) -> None:
        """Hands a reply (or a stream item) from any thread to the I/O thread."""
        with self._reply_lock:
            if self._fds_closed:
                return
            self._replies.append((sock, routing, out))
            if not self._wake_pending:
                self._wake_pending = True
                os.write(self._stop_w, b"r")

    def _send_replies(self) -> None:
        while True:
            with self._reply_lock:
                if not self._replies:
                    self._wake_pending = False
                    return
                sock, routing, out = self._replies.popleft()
            self._reply(sock, routing, out)

    def _shutdown(self, goodbye: bool) -> None:
        if goodbye:
            try:
                self._send_control(lambda w: w.goodbye())
            except zmq.ZMQError:
                pass
        self._guard.close()  # its monitors go before the sockets they watch
        self._brokers_sharing.clear()
        self._clients_sharing.clear()
        for s, _ in self._sockets:
            s.close(linger=100 if goodbye else 0)
        self._sockets = []
        if self._allow_list is not None:
            self._allow_list.stop()
            self._allow_list = None
        if self._owns_context:
            self._context.term()  # waits for the goodbye's linger
            self._owns_context = False
        with self._reply_lock:
            for fd in (self._stop_r, self._stop_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wake_pending = True  # nothing may write to the closed pipe any more
            self._fds_closed = True

    def _send_control(self, build: Callable[[Writer], None]) -> None:
        for s, is_dealer in self._sockets:
            if not is_dealer:
                continue
            w = Writer(self.policy, self.registry)
            w.set_header(self._session.next_header())
            build(w)
            out = w.finish()
            parts = [b"", out.envelope]
            if self.signer is not None:
                parts.append(self.signer.signature(parts[1:]))
            s.send_multipart(parts)

    def _handle(self, sock: zmq.Socket, parts: list[zmq.Frame]) -> None:
        delimiter = next((i for i, p in enumerate(parts) if p.buffer.nbytes == 0), None)
        if delimiter is None or delimiter > self.limits.max_routing_frames:
            self.counters["dropped"] += 1
            return
        routing = parts[:delimiter]
        frames = parts[delimiter + 1:]
        if self.signer is not None:
            # Before a byte of the envelope is parsed: unsigned or forged messages are
            # dropped and counted, never answered (a reply would tell a forger what failed).
            if len(frames) > self.limits.max_frames + 1 or \
                    self.signer.check(frames) != signing.OK:
                self._refuse()
                return
            frames = frames[:-1]
        try:
            msg = Message(frames, routing, self.limits, self.registry)
        except DecodeError as e:
            # From a key holder when signed: a buggy peer, not an attacker; answered.
            self.counters["errors"] += 1
            self._reply(sock, routing, self._error(0, "zerocan.DecodeError", str(e), ""))
            return
        if self.replay is not None and self.replay.admit(msg.session_id, msg.sequence,
                                                         msg.sent_at_ns) is not None:
            self._refuse()  # replayed, too old, from the future, or a table full
            return
        if msg.kind in ("cancel", "credit"):
            self._control(msg)
            return
        if msg.kind == "hello":
            # A client asks where this engine runs, to pass arguments in shared memory; or
            # a broker that started after this engine's hello asks again (on the broker
            # connection, without routing frames: the broker itself).
            to_broker = any(s is sock and d for s, d in self._sockets)
            if not to_broker and routing and self.shared_memory:
                host = msg.hello_host()
                if host is not None and tuple(host) == this_host() and \
                        len(self._clients_sharing) < _MAX_CLIENTS_SHARING:
                    self._clients_sharing.add(_routing_id(routing))
            if to_broker and not routing and self.shared_memory:
                # The broker's: where it runs. A caller of this host behind it may read
                # results from this engine's arena only when the broker shares it too.
                host = msg.hello_host()
                if host is not None and tuple(host) == this_host():
                    self._brokers_sharing.add(id(sock))
                else:
                    self._brokers_sharing.discard(id(sock))
            if (not routing) if to_broker else self.shared_memory:
                self._reply(sock, routing, self._hello_reply())
            return
        if msg.kind != "apply":
            return  # not a call
        if self._draining:
            self.counters["errors"] += 1
            self._reply(sock, routing, self._error(
                msg.message_id, "zerocan.EngineStopping",
                f"engine {self.id} is stopping and takes no new calls; this call did not "
                "start", msg.function))
            return
        if self.threads:
            nbytes = sum(f.buffer.nbytes for f in frames)
            with self._reply_lock:
                calls, queued_bytes = self._queued
                full = (0 < self.max_queued_calls < calls + 1) or \
                    (calls > 0 and 0 < self.max_queued_bytes < queued_bytes + nbytes)
                if not full:
                    self._queued[0] += 1
                    self._queued[1] += nbytes
            if full:
                self.counters["errors"] += 1
                self._reply(sock, routing, self._error(
                    msg.message_id, "zerocan.Busy",
                    f"engine {self.id} is busy: {calls} calls wait for a worker (limits "
                    f"{self.max_queued_calls} calls, {self.max_queued_bytes} bytes); this call "
                    "did not start", msg.function))
                return
            self.counters["calls"] += 1
            self._jobs.put((sock, routing, msg, nbytes))
        else:
            self.counters["calls"] += 1
            self._acknowledge(sock, routing, msg, direct=True)
            out = self.process(msg, sock)
            if out is not None:
                self._send_replies()  # a stream's items first
                self._reply(sock, routing, out)

    # ---- cancel and streams ----------------------------------------------------------

    @staticmethod
    def _live_key(routing: list[Any], call_id: int) -> tuple[Any, int]:
        return (tuple(bytes(r.buffer) if hasattr(r, "buffer") else bytes(r) for r in routing),
                call_id)

    def _control(self, msg: Message) -> None:
        """A cancel (the call stops being run, or never runs) or a credit (a stream may
        send more items), from the client that made the call."""
        key = self._live_key(msg.routing, msg.target_call_id)
        with self._live_lock:
            ctx = self._live.get(key)
            if ctx is None and msg.kind == "cancel":
                self._cancelled_early[key] = None
                while len(self._cancelled_early) > 4096:
                    self._cancelled_early.popitem(last=False)
        if ctx is None:
            return
        if msg.kind == "cancel":
            ctx._cancel()
        else:
            ctx._grant(msg.credit_items)

    def _start_call(self, msg: Message) -> Optional[tuple[tuple[Any, int], CallContext]]:
        key = self._live_key(msg.routing, msg.message_id)
        with self._live_lock:
            if self._cancelled_early.pop(key, 0) is None:
                return None  # cancelled while queued
            ctx = CallContext(msg.message_id, msg.function)
            self._live[key] = ctx
        return key, ctx

    def _end_call(self, key: tuple[Any, int]) -> None:
        with self._live_lock:
            self._live.pop(key, None)

    def _stream(self, gen: Any, msg: Message, ctx: CallContext, sock: Optional[zmq.Socket],
                key: tuple[Any, int]) -> Optional[wire.Outgoing]:
        """Sends each item of generator ``gen`` as its own result as soon as it is made,
        at most the granted credits ahead of the client; returns the stream's end (None
        when cancelled: the generator is closed, so its ``finally`` runs)."""
        call_id = msg.message_id
        function = msg.function
        if sock is None:  # process(msg) without its socket: nowhere to send items
            gen.close()
            return self._error(call_id, "zerocan.TransportError",
                               f"{function}: a stream call needs the engine's socket",
                               function, stream_end=True)
        ctx._credits = msg.stream_credits
        prev = getattr(_current, "call", None)
        _current.call = ctx
        try:
            while True:
                with ctx._cond:
                    while ctx._credits <= 0 and not ctx.cancelled and not ctx._stopping:
                        ctx._cond.wait()
                    stopping = ctx._stopping
                if ctx.cancelled:
                    gen.close()
                    return None
                if stopping:
                    gen.close()
                    raise TransportError("the engine is stopping")
                try:
                    item = next(gen)
                except StopIteration:
                    break
                if ctx.cancelled:
                    gen.close()
                    return None
                w = Writer(self.policy, self.registry)
                w.set_header(self._session.next_header())
                try:
                    w.result(call_id, self.id, item)
                except BaseException:
                    gen.close()
                    raise
                w.set_stream_part("item")
                ctx._credits -= 1
                item = None
                self._queue_reply(sock, list(msg.routing), w.finish())
            w = Writer(self.policy, self.registry)
            w.set_header(self._session.next_header())
            w.result(call_id, self.id, None)
            w.set_stream_part("end")
            return w.finish()
        except RemoteError as e:
            err = (e.type, e.message, e.function or function)
        except Exception as e:
            err = (error_type_name(e), str(e), function)
        finally:
            _current.call = prev
            self._end_call(key)
        if ctx.cancelled:
            return None
        self.counters["errors"] += 1
        return self._error(call_id, err[0], err[1], err[2], stream_end=True)

    def _stream_thread(self, gen: Any, msg: Message, ctx: CallContext, sock: zmq.Socket,
                       key: tuple[Any, int]) -> None:
        """A stream run off the I/O thread (an engine without workers): the I/O thread
        must stay free to receive credits and cancels."""
        def run() -> None:
            out = self._stream(gen, msg, ctx, sock, key)
            if out is not None:
                self._queue_reply(sock, list(msg.routing), out)
        threading.Thread(target=run, name=f"zerocan-stream {msg.message_id}", daemon=True).start()

    def _refuse(self) -> None:
        self.counters["refused"] += 1
        self.counters["errors"] += 1

    def process(self, msg: Message, sock: Optional[zmq.Socket] = None) -> Optional[wire.Outgoing]:
        """Runs the call in ``msg`` and returns the encoded reply: None when the call was
        cancelled (no reply), or when it is a stream whose items and end ``sock`` gets
        from a thread of its own."""
        call_id = msg.message_id
        function = msg.function
        started = self._start_call(msg)
        if started is None:
            return None  # cancelled while queued: never run, never answered
        key, ctx = started
        handed_off = False
        prev = getattr(_current, "call", None)
        _current.call = ctx
        try:
            out = self._process(msg, ctx, sock, key)
            handed_off = out is _HANDED_OFF
            if handed_off or ctx.cancelled:
                return None
            return out
        finally:
            _current.call = prev
            if not handed_off:
                self._end_call(key)

    def _process(self, msg: Message, ctx: CallContext, sock: Optional[zmq.Socket],
                 key: tuple[Any, int]) -> Any:
        call_id = msg.message_id
        function = msg.function
        stream = msg.stream_credits > 0
        entry = self._functions.get(function)
        if function == PICKLED_FUNCTION and entry is None:
            entry = (self._run_pickled, False)
        if entry is None:
            self.counters["errors"] += 1
            have = ", ".join(self.functions())
            return self._error(call_id, "zerocan.UnknownFunction",
                               f'no function "{function}" on this engine (have: {have})',
                               function)
        fn, raw = entry
        try:
            # A result that is (part of) an argument from the caller's arena goes back as
            # a reference to it (the caller keeps its blocks until the reply, and with it);
            # any other large payload, for a caller that reads results in place, goes as
            # a block of this engine's arena, lent to the caller until it holds it.
            arena = None
            if self._shared_results(msg, sock, msg.routing, stream):
                try:
                    arena = self.shared_arena
                except Error:
                    pass  # no arena (no memfd, no memory): frames, as for any caller
            w = Writer(self.policy, self.registry, arena,
                       shared_returns=() if stream else msg.shared_origins)
            w.set_header(self._session.next_header())
            if raw and stream:
                raise ArgumentError(f"{function}: does not stream its result (call it "
                                    "with apply)")
            if raw:
                r = w.msg.body.init("result")
                r.callId = call_id
                r.engineId = self.id
                fn(Call(msg, self.id), w, r.init("ok"))
            else:
                try:
                    _, args, kwargs = msg.apply()
                except DecodeError as e:
                    raise _DecodeFailure(str(e)) from None
                value = fn(*args, **kwargs)
                if inspect.isgenerator(value):
                    if not stream:  # a plain apply of a generator: its items as a list
                        value = list(value)
                    elif threading.current_thread() is self._io_thread and sock is not None:
                        self._stream_thread(value, msg, ctx, sock, key)
                        return _HANDED_OFF
                    else:
                        return self._stream(value, msg, ctx, sock, key)
                elif stream:
                    raise ArgumentError(f"{function}: does not stream its result (call it "
                                        "with apply)")
                w.result(call_id, self.id, value)
            out = w.finish()
            if arena is not None and w.shared_blocks:
                arena.lend(w.shared_blocks, self.shared_result_wait)
            return out
        except RemoteError as e:
            err = (e.type, e.message, e.function or function)
        except _DecodeFailure as e:
            err = ("zerocan.DecodeError", str(e), function)
        except Exception as e:
            err = (error_type_name(e), str(e), function)
        self.counters["errors"] += 1
        return self._error(call_id, err[0], err[1], err[2], stream_end=stream)

    @property
    def shared_arena(self) -> Arena:
        """The arena results go into for callers that read shared results (the one
        given, or the engine's own, created at first use with ZEROCAN_ARENA_BYTES bytes).
        A function that returns an array of it (``engine.shared_arena.empty(shape,
        dtype)``) sends it without a copy."""
        with self._shared_arena_lock:
            if self._shared_arena is None:
                self._shared_arena = Arena(default_capacity())
            return self._shared_arena

    def _shared_results(self, msg: Message, sock: Optional[zmq.Socket], routing: list[Any],
                        stream: bool) -> bool:
        """Whether the caller reads results from this engine's arena: it asked to, and it
        is on this host: a direct caller whose hello said so, or one behind a broker whose
        hello said it shares this engine's host (the caller asked only because it shares
        its broker's host)."""
        if stream or sock is None or not self.shared_memory or not msg.shared_results:
            return False
        if any(s is sock and d for s, d in self._sockets):
            return id(sock) in self._brokers_sharing
        return bool(routing) and _routing_id(routing) in self._clients_sharing

    def _run_pickled(self, blob: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.allow_pickle:
            raise RemoteError("zerocan.PickleRefused",
                              "this engine does not run functions sent by value (start it "
                              "with allow_pickle=True)", PICKLED_FUNCTION, self.id)
        import cloudpickle  # type: ignore[import-untyped]
        return cloudpickle.loads(bytes(blob))(*args, **kwargs)

    def _hello_reply(self) -> wire.Outgoing:
        w = Writer(self.policy, self.registry)
        w.set_header(self._session.next_header())
        w.hello(self.id, "engine", self.functions(),
                this_host() if self.shared_memory else None)
        return w.finish()

    def _error(self, call_id: int, type_: str, message: str, function: str,
               stream_end: bool = False) -> wire.Outgoing:
        w = Writer(self.policy, self.registry)
        w.set_header(self._session.next_header())
        w.error(call_id, self.id, type_, message, function, self.id)
        if stream_end:
            w.set_stream_part("end")
        return w.finish()

    def _reply(self, sock: zmq.Socket, routing: list[Any], out: wire.Outgoing) -> None:
        frames, _ = payload_frames(out)
        signature = self.signer.signature([out.envelope, *frames]) \
            if self.signer is not None else None
        try:
            for r in routing:
                sock.send(r, zmq.SNDMORE, copy=False)
            sock.send(b"", zmq.SNDMORE)
            if frames:
                sock.send(out.envelope, zmq.SNDMORE)
                sock.send_multipart(frames, zmq.SNDMORE if signature else 0, copy=False)
            else:
                sock.send(out.envelope, zmq.SNDMORE if signature else 0)
            if signature is not None:
                sock.send(signature)
        except zmq.ZMQError:
            self.counters["dropped"] += 1  # the peer went away


class _DecodeFailure(Exception):
    pass


_HANDED_OFF = object()  # process(): a stream now run by a thread of its own


# ---- built-in functions (the same set, and the same messages, as src/builtins.cc) ------

def describe(v: Any) -> str:
    """Value::Describe: "text \\"abc\\"", "int 5", "list[3]", "tensor 3x4 float64"."""
    which = v.which()
    if which == "text":
        return f'text "{v.text[:32]}"'
    if which == "int":
        return f"int {v.int}"
    if which == "uint":
        return f"uint {v.uint}"
    if which == "bytes":
        p = v.bytes
        return f"bytes[{_payload_length(p)}]"
    if which == "list":
        return f"list[{len(v.list)}]"
    if which == "map":
        return f"map[{len(v.map)}]"
    if which == "tensor":
        t = v.tensor
        return f"tensor {'x'.join(str(d) for d in t.shape)} {wire.DTYPE_NAMES[t.dtype.raw]}"
    if which == "extension":
        return f"extension {v.extension.typeName}"
    return "float64" if which == "float" else which


def _is_int(v: Any) -> bool:
    return v.which() in ("int", "uint")


def _is_number(v: Any) -> bool:
    return v.which() in ("int", "uint", "float", "bool")


def _as_double(v: Any) -> float:
    w = v.which()
    return float(v.int if w == "int" else v.uint if w == "uint" else v.float)


def _arg_count(function: str, want: int, got: int) -> None:
    if got != want:
        raise ArgumentError(f"{function}: expected {want} argument{'' if want == 1 else 's'}, "
                            f"got {got}")


def _echo(call: Call, w: Writer, out: Any) -> None:
    n = call.arg_count
    if n == 0:
        out.null = None
    elif n == 1:
        w.copy(out, call.args_readers[0], call.message)
    else:
        lst = out.init("list", n)
        for i in range(n):
            w.copy(lst[i], call.args_readers[i], call.message, 1)


def _add(call: Call, w: Writer, out: Any) -> None:
    _arg_count("add", 2, call.arg_count)
    a, b = call.args_readers[0], call.args_readers[1]
    for i, v in enumerate((a, b)):
        if not _is_number(v) or v.which() == "bool":
            raise ArgumentError(f"add: argument {i}: expected a number, got {describe(v)}")
    if _is_int(a) and _is_int(b):
        x = a.int if a.which() == "int" else a.uint
        y = b.int if b.which() == "int" else b.uint
        if x >= 0 and y >= 0:
            r = x + y
            if r < (1 << 63):
                out.int = r
                return
            if r < (1 << 64):
                out.uint = r
                return
        elif x < (1 << 63) and y < (1 << 63):
            r = x + y
            if -(1 << 63) <= r < (1 << 63):
                out.int = r
                return
    out.float = _as_double(a) + _as_double(b)


def _sum(call: Call, w: Writer, out: Any) -> None:
    _arg_count("sum", 1, call.arg_count)
    v = call.args_readers[0]
    which = v.which()
    if which == "tensor":
        arr = call.arg(0)
        if arr.dtype.kind == "c":
            raise ArgumentError("sum: argument 0: expected a real numeric tensor, got "
                                f"{describe(v)}")
        flat = arr.ravel(order="K")  # memory order, as C++ adds
        if flat.size == 0:
            out.float = 0.0
        elif flat.size <= (1 << 20):
            # Left to right in float64, as the C++ engine adds: same bits for the same data.
            out.float = float(np.cumsum(flat, dtype=np.float64)[-1])
        else:
            out.float = float(np.sum(flat, dtype=np.float64))
        return
    if which == "list":
        s = 0.0
        for i, e in enumerate(v.list):
            if not _is_number(e):
                raise ArgumentError(f"sum: argument 0: element {i}: expected a number, got "
                                    f"{describe(e)}")
            s += (1.0 if e.bool else 0.0) if e.which() == "bool" else _as_double(e)
        out.float = s
        return
    if _is_number(v) and which != "bool":
        out.float = _as_double(v)
        return
    raise ArgumentError("sum: argument 0: expected a numeric tensor or a list of numbers, "
                        f"got {describe(v)}")


def payload_bytes(v: Any) -> int:
    """Payload bytes (bytes and tensor data, as on the wire) in a value reader."""
    which = v.which()
    if which == "bytes":
        p = v.bytes
    elif which == "tensor":
        p = v.tensor.data
    elif which == "list":
        return sum(payload_bytes(x) for x in v.list)
    elif which == "map":
        return sum(payload_bytes(e.key) + payload_bytes(e.value) for e in v.map)
    elif which == "extension":
        return payload_bytes(v.extension.state)
    else:
        return 0
    return _payload_length(p)


def _payload_length(p: Any) -> int:
    which = p.which()
    return len(p.inline) if which == "inline" else \
        p.shared.length if which == "shared" else p.frame.length


def _nbytes(call: Call, w: Writer, out: Any) -> None:
    out.uint = sum(payload_bytes(a) for a in call.args_readers)


def _sleep(call: Call, w: Writer, out: Any) -> None:
    _arg_count("sleep", 1, call.arg_count)
    v = call.args_readers[0]
    if not _is_number(v) or v.which() == "bool":
        raise ArgumentError(f"sleep: argument 0 (seconds): expected a number, got {describe(v)}")
    s = _as_double(v)
    if not (0 <= s <= 86400):
        raise ArgumentError(f"sleep: argument 0 (seconds): {s:g} is not between 0 and 86400")
    time.sleep(s)
    w.copy(out, v, call.message)


def _fail(call: Call, w: Writer, out: Any) -> None:
    message = "fail() called"
    if call.arg_count >= 1:
        v = call.args_readers[0]
        message = v.text if v.which() == "text" else describe(v)
    raise RemoteError("zerocan.Fail", message, "fail", call.engine_id)


def add_builtins(engine: Engine) -> None:
    """echo, add, sum, nbytes, sleep and fail, as every zerocan engine offers them."""
    for name, fn in (("echo", _echo), ("add", _add), ("sum", _sum), ("nbytes", _nbytes),
                     ("sleep", _sleep), ("fail", _fail)):
        engine.register(name, fn, raw=True)


