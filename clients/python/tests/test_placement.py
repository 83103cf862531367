"""io_cpus: CPU lists, and clients and engines whose libzmq I/O thread runs only where
it was put (read back from /proc), in Python and in the C++ engine program."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import zerocan
from zerocan.placement import format_cpu_list, parse_cpu_list, usable_cpus
from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin

ALLOWED = usable_cpus()


def test_cpu_lists_parse_and_format():
    assert parse_cpu_list("3") == [3]
    assert parse_cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_cpu_list("5,1,1,2-3") == [1, 2, 3, 5]
    assert format_cpu_list([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    # As C++'s parser: ASCII digits only, no signs, spaces or empty parts.
    for text, why in [("1,x", '"x" is not a CPU number'), ("1,,2", '"" is not a CPU number'),
                      ("3-1", 'range "3-1" runs backwards'),
                      ("100000", '"100000" is not a CPU number (0..1023)'),
                      ("\u00b2", '"\u00b2" is not a CPU number'),
                      ("\u0663", '"\u0663" is not a CPU number'),
                      ("1" * 5000, "is not a CPU number"), (" 1", '" 1" is not'),
                      ("+1", '"+1" is not'), ("1,2,", '"" is not')]:
        with pytest.raises(zerocan.Error, match=__import__("re").escape(why)):
            parse_cpu_list(text)


def io_threads(pid: int | str = "self") -> dict[str, str]:
    """libzmq I/O threads ("ZMQbg/IO/<n>") of a process: thread id -> Cpus_allowed_list."""
    out = {}
    task = Path(f"/proc/{pid}/task")
    for t in task.iterdir():
        try:
            if not (t / "comm").read_text().startswith("ZMQbg/IO/"):
                continue
            for line in (t / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out[t.name] = line.split(":", 1)[1].strip()
        except OSError:
            pass
    return out


def new_io_threads(before: dict[str, str], expected: str, pid: int | str = "self"
                   ) -> dict[str, str]:
    """I/O threads not in ``before`` (thread id -> CPU list); waits (5 s) for exactly one,
    placed as ``expected`` (libzmq's thread names and places itself once running)."""
    seen: dict[str, str] = {}
    for _ in range(500):
        seen = {t: c for t, c in io_threads(pid).items() if t not in before}
        if list(seen.values()) == [expected]:
            break
        time.sleep(0.01)
    return seen


def new_io_thread_cpus(before: dict[str, str], expected: str, pid: int | str = "self"
                       ) -> list[str]:
    return list(new_io_threads(before, expected, pid).values())


def wait_gone(tids: set[str]) -> set[str]:
    """Waits (5 s) until none of these threads of this process is left; returns those left."""
    for _ in range(500):
        left = tids & set(io_threads())
        if not left:
            break
        time.sleep(0.01)
    return left


def test_client_and_engine_io_threads_run_only_on_their_cpus():
    engine_cpu, client_cpu = ALLOWED[-1], ALLOWED[0]
    before = io_threads()
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True, io_cpus=[engine_cpu])
    engine_threads = new_io_threads(before, str(engine_cpu))
    assert list(engine_threads.values()) == [str(engine_cpu)]
    engine.start()
    before = io_threads()
    client = zerocan.Client(engine.endpoint, io_cpus=[client_cpu], timeout=20,
                            shared_memory=False)  # the 4 MiB cross the I/O threads
    client_threads = new_io_threads(before, str(client_cpu))
    assert list(client_threads.values()) == [str(client_cpu)]
    try:
        x = np.arange(1 << 19, dtype=np.float64)  # 4 MiB, a frame of its own
        assert client.apply("nbytes", x).result() == x.nbytes
        assert np.array_equal(client.apply("echo", x).result(), x)
    finally:
        client.close()
        engine.stop()
    # Each owned its context and ended it: their I/O threads are gone.
    assert wait_gone(set(engine_threads) | set(client_threads)) == set()


def test_cpus_outside_the_mask_and_io_cpus_with_a_context_are_refused():
    outside = ALLOWED[-1] + 1
    with pytest.raises(zerocan.Error, match=f"client: io_cpus: CPU {outside} is not one this "
                                            f"process may run on \\({format_cpu_list(ALLOWED)}\\)"):
        zerocan.Client("tcp://127.0.0.1:1", io_cpus=[outside])
    with pytest.raises(zerocan.Error, match="with context given, set zmq.THREAD_AFFINITY_CPU_ADD"):
        zerocan.Engine("tcp://127.0.0.1:*", bind=True, context=zmq.Context.instance(),
                       io_cpus=[ALLOWED[0]])
    with pytest.raises(zerocan.Error, match="io_cpus: expected CPU numbers"):
        zerocan.Client("tcp://127.0.0.1:1", io_cpus=[0.5])


def test_io_cpus_as_a_cpu_list_string_or_numpy_integers():
    cpu = ALLOWED[-1]
    for io_cpus in (str(cpu), np.array([cpu])):
        before = io_threads()
        client = zerocan.Client("tcp://127.0.0.1:1", io_cpus=io_cpus)
        try:
            assert new_io_thread_cpus(before, str(cpu)) == [str(cpu)]
        finally:
            client.close()


def test_a_thread_pinned_to_one_cpu_can_place_a_channel_on_another():
    if len(ALLOWED) < 2:
        pytest.skip("one usable CPU: nothing else to place on")
    seen: list = []

    def caller() -> None:
        os.sched_setaffinity(0, {ALLOWED[0]})  # this thread only
        try:
            seen.append(usable_cpus())
            before = io_threads()
            client = zerocan.Client("tcp://127.0.0.1:1", io_cpus=[ALLOWED[-1]])
            seen.append(new_io_thread_cpus(before, str(ALLOWED[-1])))
            client.close()
        except Exception as e:  # reported below, on the test's thread
            seen.append(e)

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert seen == [ALLOWED, [str(ALLOWED[-1])]]


def test_failed_or_never_served_channels_end_their_own_context():
    cpu = str(ALLOWED[-1])
    made: set[str] = set()
    for _ in range(3):
        before = io_threads()
        with pytest.raises(zmq.ZMQError):
            zerocan.Engine("tcp://no-such-host.invalid:x", bind=True, io_cpus=cpu)
        with pytest.raises(zmq.ZMQError):
            zerocan.Client("nosuchtransport://x", io_cpus=cpu)
        made |= {t for t in io_threads() if t not in before}
    before = io_threads()
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True, io_cpus=cpu)
    made |= set(new_io_threads(before, cpu))
    engine.stop()  # never started
    assert made  # the placed contexts did start threads...
    assert wait_gone(made) == set()  # ...and every one has ended


@pytest.mark.parametrize("program", ["python", "cpp"])
def test_engine_programs_place_their_io_thread(program):
    if program == "cpp" and (why := cpp_command_missing("engine")):
        pytest.skip(why)
    cpu = ALLOWED[-1]
    url = free_tcp_endpoint()
    command = ([sys.executable, "-m", "zerocan", "engine"] if program == "python"
               else [str(zerocan_bin()), "engine"])
    p = subprocess.Popen([*command, "--bind", url, "--builtins", "--io-cpus", str(cpu)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with zerocan.Client(url, timeout=20) as c:
            assert c.apply("add", 2, 3).result() == 5
        threads = list(io_threads(p.pid).values())
        if program == "cpp":
            assert threads == [str(cpu)]
        else:  # pyzmq may start an unplaced context of its own for zero-copy bookkeeping
            assert str(cpu) in threads
    finally:
        p.terminate()
        p.wait(10)
    bad = subprocess.run([*command, "--bind", url, "--io-cpus", "2-x"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2
    assert 'CPU list "2-x": "x" is not a CPU number' in bad.stderr
