"""Placement: which CPUs a channel's libzmq I/O thread may run on (``io_cpus``).

The same option as the C++ library's (include/zerocan/placement.h), and why: a large
frame between two processes on one host is copied by the kernel twice, into the socket
by the sender's I/O thread and out of it by the receiver's. On a small machine the
scheduler often runs both threads on one CPU, and the copies take turns (a 100 MB apply
over tcp loopback: ~21 ms on two CPUs, ~36 ms on one, flipping between the two from run
to run when unplaced). A client and an engine given disjoint ``io_cpus`` stay apart.
Only the threads of the channel's own context are placed (its I/O thread and the reaper
that closes its sockets); Python's own threads run where they may. A placed client or
engine owns its context, so it shares no ``inproc://`` endpoints with others.
"""

from __future__ import annotations

import operator
import os
import re
import threading
from typing import Iterable, Optional, Union

import zmq

from .errors import Error

CPU_SETSIZE = 1024  # glibc's, as the C++ side checks


def parse_cpu_list(text: str) -> list[int]:
    """``"3"``, ``"0,2"``, ``"0-3,8"`` -> sorted CPUs without duplicates; raises
    ``zerocan.Error`` naming the bad part, in the C++ library's words."""
    cpus: set[int] = set()

    def cpu(part: str) -> int:
        # ASCII digits only, as C++'s std::from_chars (str.isdigit takes "²" and "٣").
        if not re.fullmatch(r"[0-9]{1,9}", part) or int(part) >= CPU_SETSIZE:
            raise Error(f'CPU list "{text}": "{part}" is not a CPU number '
                        f"(0..{CPU_SETSIZE - 1})")
        return int(part)

    for item in text.split(","):
        first, dash, last = item.partition("-")
        if not dash:
            cpus.add(cpu(item))
            continue
        lo, hi = cpu(first), cpu(last)
        if hi < lo:
            raise Error(f'CPU list "{text}": range "{item}" runs backwards')
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> ``"0-3,8"``."""
    out: list[str] = []
    s = sorted(set(cpus))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if j == i else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def usable_cpus() -> list[int]:
    """The CPUs a thread of this process can be placed on: online and within its cpuset,
    found by placing a short-lived thread on each in turn (the calling thread's own mask,
    narrowed by taskset or sched_setaffinity, does not bound the others'). Sorted."""
    usable: list[int] = []

    def probe() -> None:
        for c in range(min(os.sysconf("SC_NPROCESSORS_CONF"), CPU_SETSIZE)):
            try:
                os.sched_setaffinity(0, {c})  # 0: this (probe) thread
                usable.append(c)
            except OSError:
                pass

    t = threading.Thread(target=probe, name="zerocan-cpu-probe")
    t.start()
    t.join()
    return usable


IoCpus = Union[str, Iterable[int], None]


def _cpu_list(io_cpus: IoCpus, who: str) -> list[int]:
    """``io_cpus`` as a list of ints: a CPU-list string is parsed, anything else must
    be integers (numpy's too)."""
    if io_cpus is None:
        return []
    if isinstance(io_cpus, str):
        return parse_cpu_list(io_cpus)
    try:
        return [operator.index(c) for c in io_cpus]
    except TypeError:
        raise Error(f"{who}: io_cpus: expected CPU numbers or a CPU list such as \"0,2-3\", "
                    f"got {io_cpus!r}") from None


def make_context(io_cpus: IoCpus, who: str) -> zmq.Context:
    """A new context whose threads run only on ``io_cpus``. A CPU no thread of this
    process may run on is refused here: libzmq would abort the process when its thread
    starts if none of them were usable, and drop the unusable ones silently otherwise."""
    cpus = _cpu_list(io_cpus, who)
    usable = usable_cpus()
    for c in cpus:
        if c not in usable:
            raise Error(f"{who}: io_cpus: CPU {c} is not one this process may run on "
                        f"({format_cpu_list(usable)})")
    ctx = zmq.Context()
    for c in cpus:
        ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, c)
    return ctx


def channel_context(context: Optional[zmq.Context], io_cpus: IoCpus,
                    who: str) -> tuple[zmq.Context, bool]:
    """The context a client or engine runs on, and whether it owns it: the caller's
    ``context``; else, with ``io_cpus``, a placed one of its own; else the process's
    shared ``zmq.Context.instance()``."""
    cpus = _cpu_list(io_cpus, who)
    if context is not None:
        if cpus:
            raise Error(f"{who}: io_cpus places the threads of a context the {who} makes; "
                        "with context given, set zmq.THREAD_AFFINITY_CPU_ADD on it instead")
        return context, False
    if cpus:
        return make_context(cpus, who), True
    return zmq.Context.instance(), False
