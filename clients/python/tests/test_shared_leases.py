"""Leases on arena blocks, the Python side (zerocan/shared.py; tests/shared_lease_test.cc
is the C++ side): a reader in another process holds the block of every view it resolved;
the owner does not reuse a held block; a reader that lets go, dies or breaks the protocol
drops its holds. Readers and arenas in Python and C++ (tests/tools/shared_peek.cc)."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import zerocan
from zerocan import shared
from conftest import zerocan_bin

MIB = 1 << 20
PEEK = zerocan_bin().parent / "tests" / "zerocan_shared_peek"
needs_peek = pytest.mark.skipif(not PEEK.is_file(), reason=f"not built: {PEEK}")
PACKAGE_ROOT = str(Path(shared.__file__).resolve().parents[1])  # clients/python

MAX_HOLDS_PER_READER = 1 << 16


def lease_request(op: bytes, offset: int, length: int) -> bytes:
    """A lease request: op, offset and length (little-endian), zero-padded to the size
    the library sends (a field it adds there is 0)."""
    return struct.pack("<cQQ", op, offset, length).ljust(shared._LEASE_REQUEST.size, b"\0")


def eventually(done: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Polls `done` until it holds or `seconds` pass (the arena's thread serves readers
    on its own). Collects garbage first: returned blocks come back through finalizers."""
    until = time.monotonic() + seconds
    while True:
        gc.collect()
        if done():
            return True
        if time.monotonic() > until:
            return False
        time.sleep(0.01)


def python_reader(script: str) -> subprocess.Popen:
    """A Python process running `script` (after `from zerocan import shared`), talking
    over stdin and stdout."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    return subprocess.Popen([sys.executable, "-c", "import gc, sys, time\n"
                             "import zerocan\nfrom zerocan import shared\n" + script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def tell(proc: subprocess.Popen, line: str) -> str:
    """Sends `line` to the reader and returns the line it answers."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def errors(proc: subprocess.Popen) -> str:
    """What a reader wrote to stderr (for a failed assertion): ends it first, so that
    reading does not wait on a reader that waits on us."""
    finish(proc, close=False)
    return proc.stderr.read() if proc.stderr is not None else ""


def finish(proc: subprocess.Popen, close: bool = True) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for f in (proc.stdin, proc.stdout, proc.stderr) if close else ():
        if f is not None and not f.closed:
            f.close()


class RawReader:
    """A reader speaking the lease protocol by hand: connected, descriptor received (and
    closed), then requests."""

    def __init__(self, arena: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2.0)
        self.sock.connect("\0" + arena)
        msg, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        for fd in fds:
            os.close(fd)
        assert msg == b"z" and len(fds) == 1

    def send(self, op: bytes, offset: int, length: int) -> None:
        self.sock.sendall(lease_request(op, offset, length))

    def answer(self) -> bytes:
        """b"Y", b"N", or b"" when the owner closed the connection."""
        try:
            return self.sock.recv(1)
        except ConnectionResetError:
            return b""

    def hold(self, offset: int, length: int) -> bytes:
        self.send(b"H", offset, length)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


# ---- a Python reader in another process ----------------------------------------------

def test_a_python_reader_in_another_process_holds_its_block_until_it_lets_go():
    arena = shared.Arena(MIB)
    size = 256 << 10
    x = arena.allocate(size)
    x[:] = ord("a")
    offset, length = arena.locate(x)
    # A second block the reader holds throughout: its connection stays open, so that only
    # its releases (not a closed connection) let go of the first block.
    keeper = arena.allocate(4096)
    reader = python_reader(f"""
import numpy as np
segments = shared.Segments()
keeper = segments.resolve({arena.name!r}, *{arena.locate(keeper)!r}, "args[1]")
m = segments.resolve({arena.name!r}, {offset}, {length}, "result")
print("held", bytes(m).count(b"a"), flush=True)
sys.stdin.readline()
print("still", bytes(m).count(b"a"), flush=True)   # the owner wrote meanwhile, elsewhere
sys.stdin.readline()
part = np.frombuffer(m, dtype=np.uint8)[1000:2000]  # a view derived from it keeps the hold
del m
gc.collect()
# Answered after whatever this reader sent before it (one connection, in order).
probe = segments.resolve({arena.name!r}, {offset}, 64, "result")
print("part", int(part.sum()), flush=True)
sys.stdin.readline()
del part, probe
gc.collect()
print("dropped", flush=True)
sys.stdin.readline()
try:                                               # the block went back: nothing to hold
    segments.resolve({arena.name!r}, {offset}, {length}, "result")
    print("held again", flush=True)
except zerocan.DecodeError as e:
    print("refused", "in no block of the arena that is in use" in str(e), flush=True)
""")
    try:
        assert reader.stdout.readline().strip() == f"held {size}", errors(reader)
        assert arena.holds == 2  # counted before the reader had its answer
        del x, keeper  # the owner is done with the blocks; the reader is not
        gc.collect()
        assert arena.used == size + 4096
        other = arena.allocate(size)
        assert other is not None and arena.locate(other)[0] != offset
        other[:] = ord("b")
        assert tell(reader, "check") == f"still {size}"
        assert tell(reader, "derive") == f"part {1000 * ord('a')}"
        assert arena.holds == 3  # the keeper's, the derived view's and the probe's
        assert arena.used == 2 * size + 4096
        assert tell(reader, "drop") == "dropped"
        assert eventually(lambda: arena.holds == 1 and arena.used == size + 4096), \
            (arena.holds, arena.used)
        assert tell(reader, "again") == "refused True"
        assert reader.wait(10) == 0, errors(reader)
        assert eventually(lambda: arena.holds == 0 and arena.used == size), \
            (arena.holds, arena.used)  # the keeper went with the reader
        del other
        gc.collect()
        assert arena.used == 0
    finally:
        finish(reader)


def test_a_python_reader_killed_drops_its_holds():
    arena = shared.Arena(MIB)
    x = arena.allocate(64 << 10)
    offset, length = arena.locate(x)
    reader = python_reader(f"""
segments = shared.Segments()
views = [segments.resolve({arena.name!r}, {offset}, {length}, f"args[{{i}}]") for i in range(2)]
print("held", len(views), flush=True)
time.sleep(600)
""")
    try:
        assert reader.stdout.readline().strip() == "held 2", errors(reader)
        assert arena.holds == 2
        del x
        gc.collect()
        assert arena.used == 64 << 10
        reader.send_signal(signal.SIGKILL)
        assert reader.wait(10) == -signal.SIGKILL
        assert eventually(lambda: arena.holds == 0 and arena.used == 0), \
            (arena.holds, arena.used)
    finally:
        finish(reader)


# ---- C++ readers of a Python arena, and a Python reader of a C++ arena ----------------

def cpp_holder(name: str, offset: int, length: int) -> subprocess.Popen:
    return subprocess.Popen([str(PEEK), "hold", name, str(offset), str(length)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@needs_peek
def test_cpp_readers_hold_a_python_block_until_they_let_go_or_die():
    arena = shared.Arena(MIB)
    x = arena.allocate(4096)
    x[:] = 2
    offset, length = arena.locate(x)
    killed, polite = cpp_holder(arena.name, offset, length), cpp_holder(arena.name, offset, 100)
    try:
        assert killed.stdout.readline().strip() == "held 8192", errors(killed)
        assert polite.stdout.readline().strip() == "held 200", errors(polite)
        assert arena.holds == 2
        assert arena.holds_on(x) == 2 and arena.holds_on(x[100:200]) == 2  # one block
        y = arena.allocate(4096)
        assert arena.holds_on(y) == 0 and arena.holds_on(np.zeros(8)) == 0
        del x
        gc.collect()
        assert arena.used == 4096 + 4096  # x, held by the readers, and y
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(10) == -signal.SIGKILL
        assert eventually(lambda: arena.holds == 1), arena.holds
        assert arena.used == 4096 + 4096  # the other reader still holds it (and y)
        polite.stdin.close()  # lets go of its view, then exits
        assert polite.wait(10) == 0, errors(polite)
        assert eventually(lambda: arena.holds == 0 and arena.used == 4096), \
            (arena.holds, arena.used)
        # The block went back: a C++ reader is refused it (a DecodeError, exit status 1).
        out = subprocess.run([str(PEEK), "hold", arena.name, str(offset), str(length)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=20)
        assert out.returncode == 1 and out.stdout == ""
        assert "args[0]: shared memory @" in out.stderr
        assert "in no block of the arena that is in use" in out.stderr
        assert arena.holds == 0
    finally:
        finish(killed)
        finish(polite)


@needs_peek
def test_a_python_reader_of_a_cpp_arena_sees_its_block_and_no_other_range():
    block = 100000
    server = subprocess.Popen([str(PEEK), "serve", str(block), "7"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name, offset_text, length_text = server.stdout.readline().split()
        offset, length = int(offset_text), int(length_text)
        assert length == block
        segments = shared.Segments()
        m = segments.resolve(name, offset, length, "result")
        a = np.frombuffer(m, dtype=np.uint8)
        assert a.size == block and int(a.sum()) == 7 * block and not a.flags.writeable
        # The arena's size, from the error on a range past it.
        with pytest.raises(zerocan.DecodeError) as e:
            segments.resolve(name, 0, 1 << 40, "result")
        capacity = int(re.search(r"outside the arena \((\d+) bytes\)", str(e.value))[1])
        after = (offset + length + 63) // 64 * 64  # where a next block would start
        assert after + 64 <= capacity  # inside the arena, in no block
        with pytest.raises(zerocan.DecodeError) as e:
            segments.resolve(name, after, 64, "args[2]")
        assert "args[2]: shared memory @" in str(e.value)
        assert "in no block of the arena that is in use" in str(e.value)
        assert e.value.code == "malformed"
        # Inside the block is fine, and the first view still reads.
        assert bytes(segments.resolve(name, offset + 10, 5, "result")) == b"\7" * 5
        assert int(a[-1]) == 7
        del a, m
    finally:
        server.stdin.close()
        assert server.wait(10) == 0
        server.stdout.close()


# ---- the protocol, spoken by hand -------------------------------------------------------

def test_only_live_blocks_can_be_held_and_released_holds_let_the_block_go():
    arena = shared.Arena(MIB)
    block, neighbour = arena.allocate(4096), arena.allocate(4096)
    offset, length = arena.locate(block)
    assert arena.locate(neighbour)[0] == offset + length
    reader = RawReader(arena.name)
    try:
        assert reader.hold(offset, length) == b"Y"
        assert reader.hold(offset + 100, 10) == b"Y"  # inside the block
        assert reader.hold(offset, length + 1) == b"N"  # past its end
        assert reader.hold(offset + length - 8, 16) == b"N"  # across two live blocks
        assert reader.hold(offset + 8 * 4096, 16) == b"N"  # free space
        assert reader.hold(2**64 - 1, 2) == b"N"
        assert arena.holds == 2
        # A request split across two writes is put together.
        hold = lease_request(b"H", offset + 64, 64)
        reader.sock.sendall(hold[:5])
        time.sleep(0.05)
        reader.sock.sendall(hold[5:])
        assert reader.answer() == b"Y"
        assert arena.holds == 3
        reader.send(b"R", offset + 100, 10)
        reader.send(b"R", offset + 64, 64)
        assert eventually(lambda: arena.holds == 1), arena.holds
        del block
        gc.collect()
        assert arena.used == 2 * 4096  # held by the reader
        reader.send(b"R", offset, length)
        assert eventually(lambda: arena.holds == 0 and arena.used == 4096), \
            (arena.holds, arena.used)
        assert reader.hold(offset, length) == b"N"  # gone back: free space now
        assert reader.hold(offset + length, 64) == b"Y"  # the neighbour still lives
    finally:
        reader.close()
    assert eventually(lambda: arena.holds == 0), arena.holds  # closed: its hold dropped


def test_each_reader_is_bounded_in_its_holds():
    arena = shared.Arena(MIB)
    block = arena.allocate(4096)
    offset, _ = arena.locate(block)
    reader, other = RawReader(arena.name), RawReader(arena.name)
    try:
        held = refused = 0
        sent = 0
        while sent <= MAX_HOLDS_PER_READER:
            # A few requests at a time: a reader waits for its answers.
            batch = min(32, MAX_HOLDS_PER_READER + 1 - sent)
            reader.sock.sendall(lease_request(b"H", offset, 64) * batch)
            for _ in range(batch):
                answer = reader.answer()
                held += answer == b"Y"
                refused += answer == b"N"
            sent += batch
        assert (held, refused) == (MAX_HOLDS_PER_READER, 1)
        assert arena.holds == MAX_HOLDS_PER_READER
        assert other.hold(offset, 64) == b"Y"  # the bound is per reader
        reader.send(b"R", offset, 64)  # one let go: room for one more
        assert reader.hold(offset, 64) == b"Y"
        assert reader.hold(offset, 64) == b"N"
        assert arena.holds == MAX_HOLDS_PER_READER + 1
    finally:
        reader.close()
    assert eventually(lambda: arena.holds == 1), arena.holds
    other.close()
    assert eventually(lambda: arena.holds == 0), arena.holds


def test_a_reader_that_breaks_the_protocol_is_dropped_with_its_holds():
    arena = shared.Arena(MIB)
    block = arena.allocate(4096)
    offset, length = arena.locate(block)
    broken, good = RawReader(arena.name), RawReader(arena.name)
    thief = garbage = None
    try:
        assert broken.hold(offset, length) == b"Y"
        assert good.hold(offset, length) == b"Y"
        assert arena.holds == 2
        # A release of something it never held: the owner closes the connection.
        broken.send(b"R", offset + 64, 64)
        assert broken.answer() == b""
        assert eventually(lambda: arena.holds == 1), arena.holds
        # Nor may a reader release another reader's hold.
        thief = RawReader(arena.name)
        thief.send(b"R", offset, length)
        assert thief.answer() == b""
        # An unknown request: the same. The good reader keeps its hold throughout.
        garbage = RawReader(arena.name)
        garbage.send(b"X", 0, 0)
        assert garbage.answer() == b""
        assert good.hold(offset, 8) == b"Y"
        assert arena.holds == 2
        del block
        gc.collect()
        assert arena.used == 4096  # held by `good`
        good.send(b"R", offset, 8)
        good.send(b"R", offset, length)
        assert eventually(lambda: arena.holds == 0 and arena.used == 0), \
            (arena.holds, arena.used)
    finally:
        for r in (broken, good, thief, garbage):
            if r is not None:
                r.close()


@pytest.fixture(params=["py", "cpp"])
def flooded_arena(request):
    """(arena name, offset and length of a live block, the Python arena or None): a
    Python arena, or a C++ one (`zerocan_shared_peek serve`) to compare with."""
    if request.param == "py":
        arena = shared.Arena(MIB)
        block = arena.allocate(4096)
        yield (arena.name, *arena.locate(block), arena)
        return
    if not PEEK.is_file():
        pytest.skip(f"not built: {PEEK}")
    server = subprocess.Popen([str(PEEK), "serve", "4096", "1"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name, offset, length = server.stdout.readline().split()
        yield name, int(offset), int(length), None
    finally:
        server.stdin.close()
        server.wait(10)
        server.stdout.close()


def test_a_reader_that_leaves_its_answers_unread_is_dropped_and_others_are_served(
        flooded_arena):
    name, offset, length, arena = flooded_arena
    flood, good = RawReader(name), RawReader(name)
    try:
        assert good.hold(offset, length) == b"Y"
        # Holds sent without reading an answer: more answers than its socket takes.
        flood.sock.settimeout(1.0)
        try:
            for _ in range(64):
                flood.sock.sendall(lease_request(b"H", offset, 64) * 256)
        except OSError:
            pass  # dropped meanwhile (or the owner stopped reading)
        assert good.hold(offset, 8) == b"Y"  # the owner still serves the others
        answers = b""
        while True:  # the answers sent before the owner gave up on it, then the end
            try:
                chunk = flood.sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answers += chunk
        assert 0 < len(answers) < 64 * 256 and set(answers) == {ord("Y")}
        if arena is not None:
            assert eventually(lambda: arena.holds == 2), arena.holds  # its holds dropped
    finally:
        flood.close()  # unblocks an owner stuck sending to it
        good.close()
    if arena is not None:
        assert eventually(lambda: arena.holds == 0), arena.holds


def test_an_arena_its_owner_let_go_of_lives_while_a_reader_holds_a_block():
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    arena = shared.Arena(MIB)
    block = arena.allocate(4096)
    name, (offset, length) = arena.name, arena.locate(block)
    kept = weakref.ref(arena)

    def holds() -> int:
        a = kept()  # a strong reference only while this runs
        return -1 if a is None else a.holds

    reader = RawReader(name)
    try:
        assert reader.hold(offset, length) == b"Y"
        del arena, block  # the owner is done with both; the reader's hold keeps them
        gc.collect()
        assert holds() == 1
        second = RawReader(name)  # still served
        assert second.hold(offset, 8) == b"Y"
        assert holds() == 2
        second.close()  # drops its hold
        assert eventually(lambda: holds() == 1), holds()
        third = RawReader(name)
        assert third.hold(offset, length) == b"Y"  # the block is still live
        third.send(b"R", offset, length)
        assert eventually(lambda: holds() == 1), holds()
        third.close()
        reader.send(b"R", offset, length)  # the last hold: the block, then the arena go
        assert reader.answer() == b""  # its server closed the connection as it stopped
        assert eventually(lambda: kept() is None)

        def gone() -> bool:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect("\0" + name)
                except ConnectionRefusedError:
                    return True
            return False
        assert eventually(gone)  # nobody listens under its name any more
    finally:
        reader.close()
    # Its memory file, listener and wake-up pipe are closed too.
    assert eventually(lambda: len(os.listdir("/proc/self/fd")) == fds_before)


def test_views_this_process_decodes_of_its_own_arena_count_as_holds():
    arena = shared.Arena(MIB)
    x = arena.allocate(4096)
    offset, length = arena.locate(x)
    block = arena.block_serial(offset, length)
    assert block != 0
    view = shared.Segments().resolve(arena.name, offset, length, "result", block)
    assert arena.holds_on(x) == 1 and arena.holds == 0  # no peer: a hold of its own
    del view
    assert eventually(lambda: arena.holds_on(x) == 0)
    with pytest.raises(zerocan.DecodeError, match="in no block"):
        shared.Segments().resolve(arena.name, offset, length, "result", block + 1)


def test_reencoding_an_apply_keeps_its_shared_results_flag():
    from zerocan import wire
    w = wire.Writer()
    w.set_header(zerocan.Header(5, 6, 7))
    w.apply("f", (1,), {})
    w.set_shared_results()
    out = w.finish()
    decoded = wire.decode(wire.loopback(out))
    assert decoded.shared_results
    assert wire.reencode(decoded).envelope == out.envelope


def test_a_child_after_fork_neither_uses_nor_releases_its_parents_leases():
    owner = python_reader("""
arena = shared.Arena(1 << 20)
x = arena.allocate(4096)
x[:] = 7
offset, length = arena.locate(x)
print(arena.name, offset, length, arena.block_serial(offset, length), flush=True)
for line in sys.stdin:
    if line.strip() == "drop":
        del x  # the owner lets go: only readers keep the block now
    gc.collect()
    print(arena.holds, arena.used, flush=True)
""")
    try:
        name, offset, length, block = owner.stdout.readline().split()
        offset, length, block = int(offset), int(length), int(block)
        segments = shared.Segments()
        view = segments.resolve(name, offset, length, "args[0]", block)
        assert tell(owner, "drop") == "1 4096", errors(owner)
        pid = os.fork()
        if pid == 0:  # the child drops the view it inherited, and maps anew
            try:
                del view
                gc.collect()
                again = segments.resolve(name, offset, length, "args[0]", block)
                ok = bytes(again[:1]) == b"\x07"
                del again
                gc.collect()
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        # The child's own hold came and went on its own connection; the parent's stays.
        assert eventually(lambda: tell(owner, "state") == "1 4096"), tell(owner, "state")
        assert bytes(view[:1]) == b"\x07"
        del view
        assert eventually(lambda: tell(owner, "state") == "0 0")
    finally:
        finish(owner)
