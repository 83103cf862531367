"""io_cpus: CPU lists, and clients and engines whose libzmq I/O thread runs only where
it was put (read back from /proc), in Python and in the C++ engine program."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import zerocan
from zerocan.placement import format_cpu_list, parse_cpu_list
from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin

ALLOWED = sorted(os.sched_getaffinity(0))


def test_cpu_lists_parse_and_format():
    assert parse_cpu_list("3") == [3]
    assert parse_cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_cpu_list("5,1,1,2-3") == [1, 2, 3, 5]
    assert format_cpu_list([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    for text, why in [("1,x", '"x" is not a CPU number'), ("1,,2", '"" is not a CPU number'),
                      ("3-1", 'range "3-1" runs backwards'),
                      ("100000", '"100000" is not a CPU number (0..1023)')]:
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


def new_io_thread_cpus(before: dict[str, str], expected: str, pid: int | str = "self"
                       ) -> list[str]:
    """CPU lists of I/O threads not in ``before``; waits (5 s) for exactly one, placed as
    ``expected`` (libzmq's thread names and places itself once running)."""
    seen: list[str] = []
    for _ in range(500):
        seen = [c for t, c in io_threads(pid).items() if t not in before]
        if seen == [expected]:
            break
        time.sleep(0.01)
    return seen


def test_client_and_engine_io_threads_run_only_on_their_cpus():
    engine_cpu, client_cpu = ALLOWED[-1], ALLOWED[0]
    before = io_threads()
    engine = zerocan.Engine("tcp://127.0.0.1:*", bind=True, io_cpus=[engine_cpu])
    assert new_io_thread_cpus(before, str(engine_cpu)) == [str(engine_cpu)]
    engine.start()
    before = io_threads()
    client = zerocan.Client(engine.endpoint, io_cpus=[client_cpu], timeout=20)
    assert new_io_thread_cpus(before, str(client_cpu)) == [str(client_cpu)]
    try:
        x = np.arange(1 << 19, dtype=np.float64)  # 4 MiB, a frame of its own
        assert client.apply("nbytes", x).result() == x.nbytes
        assert np.array_equal(client.apply("echo", x).result(), x)
    finally:
        client.close()
        engine.stop()
    # Each owned its context and ended it: their placed I/O threads are gone. (With one
    # allowed CPU every I/O thread's list is that CPU, so there is nothing to tell apart.)
    if len(ALLOWED) > 1:
        placed = {str(engine_cpu), str(client_cpu)}
        for _ in range(500):
            if not placed & set(io_threads().values()):
                break
            time.sleep(0.01)
        assert not placed & set(io_threads().values())


def test_cpus_outside_the_mask_and_io_cpus_with_a_context_are_refused():
    outside = ALLOWED[-1] + 1
    with pytest.raises(zerocan.Error, match=f"client: io_cpus: CPU {outside} is not one this "
                                            f"process may run on \\({format_cpu_list(ALLOWED)}\\)"):
        zerocan.Client("tcp://127.0.0.1:1", io_cpus=[outside])
    with pytest.raises(zerocan.Error, match="with context given, set zmq.THREAD_AFFINITY_CPU_ADD"):
        zerocan.Engine("tcp://127.0.0.1:*", bind=True, context=zmq.Context.instance(),
                       io_cpus=[ALLOWED[0]])


@pytest.mark.parametrize("program", ["python", "cpp"])
def test_engine_programs_place_their_io_thread(program):
    if program == "cpp" and (why := cpp_command_missing("engine")):
        pytest.skip(why)
    cpu = ALLOWED[-1]
    url = free_tcp_endpoint()
    command = ([sys.executable, "-m", "zerocan", "engine"] if program == "python"
               else [str(zerocan_bin()), "engine"])
    p = subprocess.Popen([*command, "--bind", url, "--io-cpus", str(cpu)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with zerocan.Client(url, timeout=20) as c:
            assert c.apply("add", 2, 3).result() == 5
        assert list(io_threads(p.pid).values()) == [str(cpu)]
    finally:
        p.terminate()
        p.wait(10)
    bad = subprocess.run([*command, "--bind", url, "--io-cpus", "2-x"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2
    assert 'CPU list "2-x": "x" is not a CPU number' in bad.stderr
