"""Shared memory between processes of one user on one host (C++ ``zerocan::SharedArena``,
``include/zerocan/shared.h``).

An ``Arena`` is one anonymous memory file (memfd) of a fixed size, its size sealed, mapped
into this process. ``arena.empty(shape, dtype)`` (or ``zerocan.shared.empty``, from a
process-wide arena) returns a writable numpy array whose bytes live in it; the block goes
back to the arena when the array and every view of it are gone.

Another process of the same user on the same host reads a block in place, given the
arena's ``name`` and the block's ``(offset, length)`` (``arena.locate(array)``):
``Segments().resolve(name, offset, length)`` maps the arena read-only, once. The
descriptor travels over an abstract Unix socket named ``name`` (SCM_RIGHTS), only to a
peer of the same user; the reader refuses a file whose size is not sealed, and any range
outside it. C++ and Python arenas and readers are interchangeable.

A reader keeps the connection on which the descriptor came while it maps the arena, and
holds every block it reads through it (a lease, docs/FORMAT.md "Leases"): the owner does
not reuse a block while a reader holds it, and a reader's death (its connection closes)
drops its holds.

Nothing is left after a crash: the memory file has no path, and the kernel frees it once
no process maps it.
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import mmap
import os
import re
import secrets
import select
import socket
import struct
import threading
import time
import weakref
from typing import Any, Optional

import numpy as np

from .errors import DecodeError, Error

_ALIGNMENT = 64
_SO_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid

# Lease requests on an arena's connection: one byte (hold or release), then offset,
# length and block serial (SharedRef.block, 0: any) as little-endian 64-bit integers. A
# hold is answered with one byte.
_LEASE_REQUEST = struct.Struct("<cQQQ")
_HOLD, _RELEASE, _HELD, _NOT_HELD = b"H", b"R", b"Y", b"N"
_MAX_READERS = 1024             # readers beyond it map the arena but hold nothing
_MAX_HOLDS_PER_READER = 1 << 16


class _BlockHold:
    """A receiver's hold on a block: keeps it, and counts itself while it lives."""

    __slots__ = ("arena", "serial", "block")

    def __init__(self, arena: "Arena", serial: int, block: np.ndarray) -> None:
        self.arena, self.serial, self.block = arena, serial, block

    def __del__(self) -> None:
        self.arena._released_holds.append(self.serial)


class _ServerState:
    """What an arena's serving thread shares with the arena (which it must not keep
    alive: the arena is collected when its last block and handle are gone)."""

    def __init__(self, arena: "Arena") -> None:
        self.arena = weakref.ref(arena)
        self.refused = 0
        self.holds = 0
        self.stop = False


class _Reader:
    """A connected reader of an arena: its unfinished request and the blocks it holds."""

    __slots__ = ("conn", "pending", "held", "count")

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.pending = b""
        self.held: dict[tuple[int, int, int], list[Any]] = {}
        self.count = 0


def _peer_user(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                           struct.calcsize(_SO_PEERCRED_FORMAT))
    return struct.unpack(_SO_PEERCRED_FORMAT, cred)[1]


class Arena:
    """A sealed memory file of ``capacity`` bytes (rounded up to the page size), served
    to same-user peers under the abstract socket ``name``."""

    def __init__(self, capacity: int, *, _local_name: Optional[str] = None) -> None:
        """``_local_name`` (tests: the golden vectors' fixed name): an arena under that name
        that only this process reads; no peer is served."""
        if capacity <= 0:
            raise Error(f"shared arena: capacity {capacity}")
        page = mmap.PAGESIZE
        self.capacity = (capacity + page - 1) // page * page
        self._fd = os.memfd_create("zerocan-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self._fd, self.capacity)
            # Readers rely on the size: no byte they mapped can vanish (SIGBUS).
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self._fd, self.capacity, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self._fd)
            raise Error(f"shared arena of {self.capacity} bytes: {e}") from e
        self._lock = threading.Lock()
        # Blocks given back by finalizers, which may run inside _take on this thread (a
        # garbage collection): queued without the lock, returned under it.
        self._returned: collections.deque[tuple[int, int]] = collections.deque()
        self._free_offsets = [0]            # sorted starts of free runs
        self._free = {0: self.capacity}     # start -> length, coalesced
        self._used = 0
        # The blocks handed out: sorted starts, and start -> (size, the block array).
        self._live_offsets: list[int] = []
        self._live: dict[int, tuple[int, int, weakref.ref[np.ndarray]]] = {}
        self._next_serial = 1
        # Blocks lent (``lend``), by id of the block array: (until, the array) each.
        self._lent: dict[int, list[tuple[float, np.ndarray]]] = {}
        # Receivers' holds by block serial; holds let go of are queued without the lock
        # (a finalizer may run anywhere) and counted off under it.
        self._hold_counts: dict[int, int] = {}
        self._released_holds: collections.deque[int] = collections.deque()
        self._state = _ServerState(self)
        # Peers get a descriptor opened read-only on the same file: they cannot map it
        # writable. 128 random bits in the name: it is also a capability.
        self._read_only_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
        self.name = _local_name or f"zerocan-arena-{os.getpid()}-{secrets.token_hex(16)}"
        self._pid = os.getpid()
        _LOCAL_ARENAS[self.name] = self
        if _local_name is not None:
            weakref.finalize(self, Arena._close_files, (self._fd, self._read_only_fd))
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind("\0" + self.name)
            listener.listen(64)
            wake_r, wake_w = os.pipe()
        except OSError as e:
            listener.close()
            self._map.close()
            os.close(self._fd)
            os.close(self._read_only_fd)
            raise Error(f"shared arena: cannot listen on @{self.name}: {e}") from e
        # The server holds no reference to the arena, so that the arena can be collected:
        # then (the blocks' finalizers hold it until the last array over them is gone)
        # the server stops and the descriptor closes.
        thread = threading.Thread(target=Arena._serve, name="zerocan-arena", daemon=True,
                                  args=(listener, self._read_only_fd, wake_r, self._state))
        thread.start()
        weakref.finalize(self, Arena._close, (self._fd, self._read_only_fd), listener, wake_r,
                         wake_w, thread, self._state)

    @property
    def peers_refused(self) -> int:
        """Peers refused the arena's descriptor (another user)."""
        return self._state.refused

    @property
    def holds(self) -> int:
        """Holds of connected readers now (each a reader's view of a block)."""
        return self._state.holds

    @staticmethod
    def _close_files(fds: tuple[int, int]) -> None:
        for f in fds:
            os.close(f)

    @staticmethod
    def _close(fds: tuple[int, int], listener: socket.socket, wake_r: int, wake_w: int,
               thread: threading.Thread, state: _ServerState) -> None:
        state.stop = True
        os.write(wake_w, b"x")
        if thread is not threading.current_thread():
            thread.join()
            listener.close()
            for f in (*fds, wake_r, wake_w):
                os.close(f)
            return
        # Collected on the serving thread (a reader's release let go of the last block):
        # the thread ends after this release and closes the descriptors itself.
        state.closing = (listener, (*fds, wake_r, wake_w))  # type: ignore[attr-defined]

    @staticmethod
    def _serve(listener: socket.socket, fd: int, wake_r: int, state: _ServerState) -> None:
        me = os.geteuid()  # SO_PEERCRED reports effective ids
        poller = select.poll()  # not select(): descriptors may be past 1024
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        readers: dict[int, _Reader] = {}

        def drop(reader: _Reader) -> None:
            poller.unregister(reader.conn.fileno())
            del readers[reader.conn.fileno()]
            state.holds -= reader.count
            reader.conn.close()
            reader.held.clear()

        def handle(reader: _Reader, request: bytes) -> bool:
            op, offset, length, serial = _LEASE_REQUEST.unpack(request)
            key = (offset, length, serial)
            if op == _HOLD:
                arena = state.arena()
                block = None
                if arena is not None and reader.count < _MAX_HOLDS_PER_READER:
                    block = arena._hold(offset, length, serial)
                del arena
                if block is not None:
                    reader.held.setdefault(key, []).append(block)
                    reader.count += 1
                    state.holds += 1
                try:  # the reader waits for this byte: its socket buffer has room
                    return reader.conn.send(_HELD if block is not None else _NOT_HELD) == 1
                except OSError:  # full (answers left unread) or closed: drop it
                    return False
            if op == _RELEASE:
                blocks = reader.held.get(key)
                if not blocks:
                    return False  # never held: a broken reader
                blocks.pop()
                if not blocks:
                    del reader.held[key]
                reader.count -= 1
                state.holds -= 1
                return True
            return False

        try:
            while not state.stop:
                for ready, _ in poller.poll():
                    if ready == wake_r or state.stop:
                        return
                    if ready != listener.fileno():
                        reader = readers.get(ready)
                        if reader is None:
                            continue
                        try:
                            data = reader.conn.recv(4096)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        ok = bool(data)
                        data = reader.pending + data
                        size = _LEASE_REQUEST.size
                        while ok and len(data) >= size and not state.stop:
                            ok = handle(reader, data[:size])
                            data = data[size:]
                        reader.pending = data
                        if not ok and not state.stop:
                            drop(reader)
                        continue
                    try:
                        conn, _ = listener.accept()
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            time.sleep(0.01)  # out of descriptors: wait rather than spin
                        continue
                    if _peer_user(conn) != me:
                        state.refused += 1
                        conn.close()
                        continue
                    try:
                        socket.send_fds(conn, [b"z"], [fd])
                    except OSError:
                        conn.close()
                        continue
                    if len(readers) >= _MAX_READERS:
                        conn.close()  # mapped, but its holds fail (no connection)
                        continue
                    # Never blocks the thread that serves every reader (as C++'s server).
                    conn.setblocking(False)
                    readers[conn.fileno()] = _Reader(conn)
                    poller.register(conn.fileno(), select.POLLIN)
        finally:
            for reader in list(readers.values()):
                reader.conn.close()
            closing = getattr(state, "closing", None)
            if closing is not None:
                closing[0].close()
                for f in closing[1]:
                    os.close(f)

    # ---- blocks -----------------------------------------------------------------------

    def _take(self, size: int) -> Optional[int]:
        with self._lock:
            self._expire_loans()
            self._return_given()
            for i, start in enumerate(self._free_offsets):
                length = self._free[start]
                if length < size:
                    continue
                del self._free[start]
                del self._free_offsets[i]
                if length > size:
                    self._free[start + size] = length - size
                    bisect.insort(self._free_offsets, start + size)
                self._used += size
                return start
        return None

    def _live_block(self, offset: int, length: int) -> Optional[tuple[int, Any]]:
        """(serial, weak reference) of the live block holding all of [offset, offset +
        length), or None. Under the lock."""
        self._return_given()
        i = bisect.bisect_right(self._live_offsets, offset) - 1
        if i < 0:
            return None
        start = self._live_offsets[i]
        size, serial, ref = self._live[start]
        into = offset - start
        if into > size or length > size - into:
            return None
        return serial, ref

    def _hold(self, offset: int, length: int, serial: int = 0) -> Optional["_BlockHold"]:
        """A hold on the live block that holds all of [offset, offset + length) and has
        serial number ``serial`` (0: any): keeping it keeps the block from returning to
        the arena. None when there is no such block. A loan of it (``lend``) ends: the
        holder keeps it now."""
        with self._lock:
            found = self._live_block(offset, length)
            if found is None or (serial and serial != found[0]):
                return None
            block = found[1]()
            if block is None:
                return None
            loans = self._lent.get(id(block))
            if loans:
                loans.pop()
                if not loans:
                    del self._lent[id(block)]
            self._count_released_holds()
            self._hold_counts[found[0]] = self._hold_counts.get(found[0], 0) + 1
            return _BlockHold(self, found[0], block)

    def _count_released_holds(self) -> None:
        """Under the lock: counts off the holds let go of."""
        while self._released_holds:
            serial = self._released_holds.popleft()
            left = self._hold_counts[serial] - 1
            if left:
                self._hold_counts[serial] = left
            else:
                del self._hold_counts[serial]

    def holds_on(self, array: Any) -> int:
        """Receivers' holds now on the block ``array`` lies in (views decoded by peers,
        or by this process); 0 when it lies in no block in use. A sender may write a block
        it passed in place once the call is answered and this is 0."""
        where = self.locate(array)
        if where is None:
            return 0
        with self._lock:
            self._count_released_holds()
            found = self._live_block(*where)
            return 0 if found is None else self._hold_counts.get(found[0], 0)

    def block_serial(self, offset: int, length: int) -> int:
        """The serial number of the live block holding [offset, offset + length) (its
        SharedRef.block), or 0 when none does."""
        with self._lock:
            found = self._live_block(offset, length)
            return 0 if found is None else found[0]

    def lend(self, blocks: list[Any], seconds: float) -> None:
        """Keeps ``blocks`` (arrays whose bytes lie in this arena) until a reader in
        another process holds each of them, or ``seconds`` pass: for blocks sent to a
        peer that has not read them yet (an engine's results)."""
        until = time.monotonic() + seconds
        with self._lock:
            self._expire_loans()
            for b in blocks:
                where = self.locate(b)
                found = None if where is None else self._live_block(*where)
                block = None if found is None else found[1]()
                if block is not None:
                    self._lent.setdefault(id(block), []).append((until, block))

    @property
    def lent(self) -> int:
        """Blocks lent and neither held nor expired yet."""
        with self._lock:
            self._expire_loans()
            return sum(len(v) for v in self._lent.values())

    def _expire_loans(self) -> None:
        """Under the lock: ends the loans past their time (the blocks return when
        nothing else holds them, through their finalizers, which take no lock)."""
        now = time.monotonic()
        for key in [k for k, v in self._lent.items() if any(loan[0] <= now for loan in v)]:
            loans = [loan for loan in self._lent[key] if loan[0] > now]
            if loans:
                self._lent[key] = loans
            else:
                del self._lent[key]

    def _give(self, start: int, size: int) -> None:
        """A block's finalizer: any thread, any time, without the lock."""
        self._returned.append((start, size))

    def _return_given(self) -> None:
        """Under the lock: puts the blocks given back into the free runs, coalesced."""
        while self._returned:
            start, size = self._returned.popleft()
            self._used -= size
            del self._live[start]
            del self._live_offsets[bisect.bisect_left(self._live_offsets, start)]
            i = bisect.bisect_left(self._free_offsets, start)
            if i < len(self._free_offsets) and self._free_offsets[i] == start + size:
                size += self._free.pop(start + size)
                del self._free_offsets[i]
            if i > 0:
                prev = self._free_offsets[i - 1]
                if prev + self._free[prev] == start:
                    self._free[prev] += size
                    continue
            self._free[start] = size
            self._free_offsets.insert(i, start)

    @property
    def used(self) -> int:
        """Bytes in blocks handed out and not yet given back."""
        with self._lock:
            self._return_given()
            return self._used

    def allocate(self, nbytes: int) -> Optional[np.ndarray]:
        """A writable uint8 array of ``nbytes`` bytes in the arena, 64-byte aligned, or
        None when no free run is that large. Its block returns when it and every view of
        it are gone."""
        if nbytes < 0:
            raise ValueError(f"shared arena: a block of {nbytes} bytes")
        size = (max(nbytes, 1) + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT
        start = self._take(size)
        if start is None:
            return None
        block = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=start)
        # The finalizer holds the arena: blocks may outlive the caller's handle on it.
        weakref.finalize(block, Arena._give, self, start, size)
        with self._lock:
            self._live[start] = (size, self._next_serial, weakref.ref(block))
            self._next_serial += 1
            bisect.insort(self._live_offsets, start)
        return block

    def empty(self, shape: Any, dtype: Any = np.float64) -> Optional[np.ndarray]:
        """A writable, uninitialised array in the arena (C order), or None when full."""
        dt = np.dtype(dtype)
        dims = [int(d) for d in np.atleast_1d(shape)]
        if any(d < 0 for d in dims):
            raise ValueError(f"shared arena: negative dimension in shape {shape}")
        count = int(np.prod(dims, dtype=np.int64))
        block = self.allocate(count * dt.itemsize)
        if block is None:
            return None
        return block.view(dt).reshape(shape)

    def locate(self, array: Any) -> Optional[tuple[int, int]]:
        """(offset, length) of a contiguous array's bytes, when they all lie in this
        arena."""
        view = memoryview(array)
        if not view.contiguous:
            return None
        base = np.frombuffer(self._map, dtype=np.uint8).ctypes.data
        address = np.asarray(view).ctypes.data if view.nbytes else base
        offset = address - base
        if offset < 0 or offset + view.nbytes > self.capacity:
            return None
        return offset, view.nbytes


_default: Optional[Arena] = None
_default_lock = threading.Lock()


def default_capacity() -> int:
    """``ZEROCAN_ARENA_BYTES`` (bytes), or 1 GiB when it is not set."""
    return int(os.environ.get("ZEROCAN_ARENA_BYTES", str(1 << 30)))


def default_arena() -> Arena:
    """This process's arena, created on first use: ``ZEROCAN_ARENA_BYTES`` bytes (default
    1 GiB; pages are committed only as they are written)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Arena(default_capacity())
        return _default


def empty(shape: Any, dtype: Any = np.float64) -> np.ndarray:
    """A writable, uninitialised numpy array in this process's shared arena. Raises
    zerocan.Error when the arena has no room (``ZEROCAN_ARENA_BYTES`` sets its size)."""
    array = default_arena().empty(shape, dtype)
    if array is None:
        raise Error(f"shared arena full: no room for an array of shape {shape} and dtype "
                    f"{np.dtype(dtype)} ({default_arena().capacity} bytes, "
                    f"{default_arena().used} in use)")
    return array


_ARENA_NAME = re.compile(r"zerocan-arena-[0-9]{1,10}-[0-9a-f]{32}")

# This process's own arenas, by name: a reference into one (a result handing a caller's
# argument back) is read from the arena's own mapping, without a second one.
_LOCAL_ARENAS: weakref.WeakValueDictionary[str, Arena] = weakref.WeakValueDictionary()


_NO_BLOCK = "are in no block of the arena that is in use (returned, or never handed out)"


class _Mapping:
    """A peer's arena mapped here, with the connection its leases go on."""

    def __init__(self, mapped: mmap.mmap, conn: socket.socket) -> None:
        self.map = mapped
        self.conn = conn
        self.pid = os.getpid()  # a child after fork() inherits the mapping, not the leases
        # Reentrant: a lease's finalizer may run (garbage collection) on a thread that is
        # between a hold's request and its answer; a release needs no answer.
        self.lock = threading.RLock()
        # Holds sent whose answer was not read in time: their answers come first, in
        # order, and a late _HELD is released at once (nobody reads that view).
        self.owed: collections.deque[tuple[int, int, int]] = collections.deque()
        self.broken = False  # a request went out in part: the stream is lost

    def _send(self, op: bytes, offset: int, length: int, block: int) -> bool:
        """Under the lock: one request, whole; False when it did not go."""
        if self.broken:
            return False
        request = _LEASE_REQUEST.pack(op, offset, length, block)
        try:
            sent = self.conn.send(request)
        except OSError:
            return False
        if sent != len(request):
            self.broken = True
            return False
        return True

    def hold(self, offset: int, length: int, block: int) -> bytes:
        """The owner's answer to holding [offset, offset + length) of block ``block``:
        _HELD, _NOT_HELD, or b"" when none came in time (gone, stalled, or serving too
        many readers). A later answer is matched to its own request at the next hold, so
        the stream stays in step."""
        with self.lock:
            if self.pid != os.getpid() or not self._send(_HOLD, offset, length, block):
                return b""
            self.owed.append((offset, length, block))
            while self.owed:
                try:
                    answer = self.conn.recv(1)
                except OSError:
                    return b""  # ours stays owed
                if not answer:
                    return b""  # closed
                key = self.owed.popleft()
                if not self.owed:
                    return answer  # the answer to this request
                if answer == _HELD:
                    self._send(_RELEASE, *key)  # a late hold nobody uses
            return b""

    def release(self, offset: int, length: int, block: int) -> None:
        with self.lock:
            # Not from a child after fork(): the parent's views still hold the block.
            # Nothing to do when it fails: the owner is gone, and its holds with it.
            if self.pid == os.getpid():
                self._send(_RELEASE, offset, length, block)


class _Lease:
    """A reader's hold on a block of a peer's arena: released when collected."""

    __slots__ = ("mapping", "offset", "length", "block")

    def __init__(self, mapping: _Mapping, offset: int, length: int, block: int) -> None:
        self.mapping, self.offset, self.length, self.block = mapping, offset, length, block

    def __del__(self) -> None:
        self.mapping.release(self.offset, self.length, self.block)


class _HeldBytes:
    """Exposes shared-memory bytes (read-only) to numpy while keeping ``hold`` (a lease,
    or the block of an own arena) with them: every view derived from the memoryview that
    ``Segments.resolve`` returns leads back here (``array.base``)."""

    __slots__ = ("hold", "__array_interface__")

    def __init__(self, address: int, length: int, hold: Any) -> None:
        self.hold = hold
        self.__array_interface__ = {"version": 3, "shape": (length,), "typestr": "|u1",
                                    "data": (address, True)}


def _held_view(source: memoryview, hold: Any) -> memoryview:
    address = np.frombuffer(source, dtype=np.uint8).ctypes.data
    holder = _HeldBytes(address, source.nbytes, (source, hold))
    return np.asarray(holder).data


class Segments:
    """Peers' arenas mapped read-only into this process, by name. An arena stays mapped
    while a view of it lives, and is mapped again when needed after that: an arena whose
    process is gone is not held here. Every view holds its block in the owner's arena
    (a lease) until it and every view derived from it are gone."""

    def __init__(self) -> None:
        self._maps: weakref.WeakValueDictionary[str, _Mapping] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def _map(self, name: str, path: str) -> _Mapping:
        def fail(why: str) -> DecodeError:
            return DecodeError(f"{path}: shared memory @{name}: {why}", "malformed")
        # Only arenas' names: a reference from the network can make this process connect to
        # no other abstract socket.
        if not _ARENA_NAME.fullmatch(name):
            raise fail("not an arena name")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.setblocking(False)  # a full backlog answers at once instead of waiting
            try:
                s.connect("\0" + name)
            except OSError as e:
                raise fail(f"no arena there on this host ({e.strerror})") from None
            s.settimeout(1.0)  # an arena's server answers at once
            if _peer_user(s) != os.geteuid():
                raise fail("served by another user")
            try:
                _, fds, _, _ = socket.recv_fds(s, 1, 1)
            except OSError:
                fds = []
            if len(fds) != 1:
                raise fail("no descriptor came")
            fd = fds[0]
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                size = os.fstat(fd).st_size
                if not seals & fcntl.F_SEAL_SHRINK or size <= 0:
                    raise fail("not a sealed memory file")
                mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            except OSError as e:
                raise fail(f"cannot map it ({e})") from None
            finally:
                os.close(fd)
        except BaseException:
            s.close()
            raise
        return _Mapping(mapped, s)

    def resolve(self, name: str, offset: int, length: int, path: str = "payload",
                block: int = 0) -> memoryview:
        """Bytes [offset, offset + length) of the arena served as ``name``, read-only, in
        place, holding the block they lie in (serial number ``block``, 0: any) until the
        view (and every view of it) is gone. Raises zerocan.DecodeError naming ``path``
        when the arena cannot be reached or mapped, the range is not inside it, or its
        owner has no such block in use there."""
        def outside(size: int) -> DecodeError:
            return DecodeError(f"{path}: shared memory @{name}: {length} bytes at offset "
                               f"{offset} are outside the arena ({size} bytes)", "malformed")

        def not_held(why: str) -> DecodeError:
            return DecodeError(f"{path}: shared memory @{name}: {length} bytes at offset "
                               f"{offset} {why}", "malformed")
        local = _LOCAL_ARENAS.get(name)
        if local is not None and local._pid == os.getpid():  # not a fork's inherited one
            if offset < 0 or length < 0 or offset > local.capacity or \
                    length > local.capacity - offset:
                raise outside(local.capacity)
            view = memoryview(local._map)[offset:offset + length].toreadonly()
            if length == 0:
                return view
            held = local._hold(offset, length, block)
            if held is None:
                raise not_held(_NO_BLOCK)
            return _held_view(view, held)
        with self._lock:
            m = self._maps.get(name)
            if m is not None and m.pid != os.getpid():
                m = None  # the parent's (fork): map it anew
        if m is None:
            m = self._map(name, path)
            with self._lock:
                other = self._maps.get(name)
                if other is not None and other.pid == os.getpid():
                    m = other  # another thread's, mapped first
                else:
                    self._maps[name] = m
        size = len(m.map)
        if offset < 0 or length < 0 or offset > size or length > size - offset:
            raise outside(size)
        view = memoryview(m.map)[offset:offset + length]
        if length == 0:
            return view
        answer = m.hold(offset, length, block)
        if answer != _HELD:
            raise not_held(_NO_BLOCK if answer == _NOT_HELD
                           else "could not be leased: the arena's owner did not answer (gone?)")
        return _held_view(view, _Lease(m, offset, length, block))

    def mapped(self) -> int:
        """Arenas mapped now (a view of them lives)."""
        with self._lock:
            return len(self._maps)


_PROCESS_SEGMENTS: Optional[Segments] = None
_PROCESS_SEGMENTS_LOCK = threading.Lock()


def process_segments() -> Segments:
    """The process's mappings of peers' arenas, shared by every decoder."""
    global _PROCESS_SEGMENTS
    with _PROCESS_SEGMENTS_LOCK:
        if _PROCESS_SEGMENTS is None:
            _PROCESS_SEGMENTS = Segments()
        return _PROCESS_SEGMENTS


def this_host() -> Optional[tuple[str, int, int]]:
    """Where this process runs, as a hello's ``host`` says it: (boot id, inode of its
    network namespace, effective uid); None where /proc cannot tell (then it shares memory
    with nobody). Two peers share memory when all three agree."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    return (boot_id, netns, os.geteuid()) if boot_id else None
