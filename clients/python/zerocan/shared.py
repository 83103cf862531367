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

Nothing is left after a crash: the memory file has no path, and the kernel frees it once
no process maps it.
"""

from __future__ import annotations

import bisect
import collections
import fcntl
import mmap
import os
import re
import secrets
import select
import socket
import struct
import threading
import weakref
from typing import Any, Optional

import numpy as np

from .errors import DecodeError, Error

_ALIGNMENT = 64
_SO_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid


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
        self._refused = [0]  # shared with the server thread
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
                                  args=(listener, self._read_only_fd, wake_r, self._refused))
        thread.start()
        weakref.finalize(self, Arena._close, (self._fd, self._read_only_fd), listener, wake_r,
                         wake_w, thread)

    @property
    def peers_refused(self) -> int:
        """Peers refused the arena's descriptor (another user)."""
        return self._refused[0]

    @staticmethod
    def _close_files(fds: tuple[int, int]) -> None:
        for f in fds:
            os.close(f)

    @staticmethod
    def _close(fds: tuple[int, int], listener: socket.socket, wake_r: int, wake_w: int,
               thread: threading.Thread) -> None:
        os.write(wake_w, b"x")
        if thread is not threading.current_thread():
            thread.join()
        listener.close()
        for f in (*fds, wake_r, wake_w):
            os.close(f)

    @staticmethod
    def _serve(listener: socket.socket, fd: int, wake_r: int, refused: list[int]) -> None:
        me = os.geteuid()  # SO_PEERCRED reports effective ids
        poller = select.poll()  # not select(): descriptors may be past 1024
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if wake_r in ready:
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                if _peer_user(conn) != me:
                    refused[0] += 1
                    continue
                try:
                    socket.send_fds(conn, [b"z"], [fd])
                except OSError:
                    pass

    # ---- blocks -----------------------------------------------------------------------

    def _take(self, size: int) -> Optional[int]:
        with self._lock:
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

    def _give(self, start: int, size: int) -> None:
        """A block's finalizer: any thread, any time, without the lock."""
        self._returned.append((start, size))

    def _return_given(self) -> None:
        """Under the lock: puts the blocks given back into the free runs, coalesced."""
        while self._returned:
            start, size = self._returned.popleft()
            self._used -= size
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


def default_arena() -> Arena:
    """This process's arena, created on first use: ``ZEROCAN_ARENA_BYTES`` bytes (default
    1 GiB; pages are committed only as they are written)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Arena(int(os.environ.get("ZEROCAN_ARENA_BYTES", str(1 << 30))))
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


class Segments:
    """Peers' arenas mapped read-only into this process, by name. An arena stays mapped
    while a view of it lives, and is mapped again when needed after that: an arena whose
    process is gone is not held here."""

    def __init__(self) -> None:
        self._maps: weakref.WeakValueDictionary[str, mmap.mmap] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def _map(self, name: str, path: str) -> mmap.mmap:
        def fail(why: str) -> DecodeError:
            return DecodeError(f"{path}: shared memory @{name}: {why}", "malformed")
        # Only arenas' names: a reference from the network can make this process connect to
        # no other abstract socket.
        if not _ARENA_NAME.fullmatch(name):
            raise fail("not an arena name")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
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
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except OSError as e:
            raise fail(f"cannot map it ({e})") from None
        finally:
            os.close(fd)

    def resolve(self, name: str, offset: int, length: int, path: str = "payload") -> memoryview:
        """Bytes [offset, offset + length) of the arena served as ``name``, read-only, in
        place. Raises zerocan.DecodeError naming ``path`` when the arena cannot be reached
        or mapped, or the range is not inside it."""
        local = _LOCAL_ARENAS.get(name)
        if local is not None and local._pid == os.getpid():  # not a fork's inherited one
            if offset < 0 or length < 0 or offset > local.capacity or \
                    length > local.capacity - offset:
                raise DecodeError(f"{path}: shared memory @{name}: {length} bytes at offset "
                                  f"{offset} are outside the arena ({local.capacity} bytes)",
                                  "malformed")
            return memoryview(local._map)[offset:offset + length].toreadonly()
        with self._lock:
            m = self._maps.get(name)
        if m is None:
            m = self._map(name, path)
            with self._lock:
                m = self._maps.setdefault(name, m)  # another thread's, if it mapped first
        if offset < 0 or length < 0 or offset > len(m) or length > len(m) - offset:
            raise DecodeError(f"{path}: shared memory @{name}: {length} bytes at offset "
                              f"{offset} are outside the arena ({len(m)} bytes)", "malformed")
        return memoryview(m)[offset:offset + length]

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
