"""Placement: which CPUs a channel's libzmq I/O thread may run on (``io_cpus``).

The same option as the C++ library's (include/zerocan/placement.h), and why: a large
frame between two processes on one host is copied by the kernel twice, into the socket
by the sender's I/O thread and out of it by the receiver's. On a small machine the
scheduler often runs both threads on one CPU, and the copies take turns (a 100 MB apply
over tcp loopback: ~21 ms on two CPUs, ~36 ms on one, flipping between the two from run
to run when unplaced). A client and an engine given disjoint ``io_cpus`` stay apart.
Only the I/O thread is placed; Python's own threads run where they may.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import zmq

from .errors import Error

CPU_SETSIZE = 1024  # glibc's, as the C++ side checks


def parse_cpu_list(text: str) -> list[int]:
    """``"3"``, ``"0,2"``, ``"0-3,8"`` -> sorted CPUs without duplicates; raises
    ``zerocan.Error`` naming the bad part, in the C++ library's words."""
    cpus: set[int] = set()

    def cpu(part: str) -> int:
        if not part.isdigit() or int(part) >= CPU_SETSIZE:
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


def make_context(io_cpus: Iterable[int], who: str) -> zmq.Context:
    """A new context whose I/O thread runs only on ``io_cpus``. A CPU this process may
    not run on is refused here (libzmq would abort the process when its thread starts)."""
    allowed = os.sched_getaffinity(0)
    ctx = zmq.Context()
    try:
        for c in io_cpus:
            if c not in allowed:
                raise Error(f"{who}: io_cpus: CPU {c} is not one this process may run on "
                            f"({format_cpu_list(allowed)})")
            ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, c)
    except BaseException:
        ctx.term()
        raise
    return ctx


def channel_context(context: Optional[zmq.Context], io_cpus: Optional[Iterable[int]],
                    who: str) -> tuple[zmq.Context, bool]:
    """The context a client or engine runs on, and whether it owns it: the caller's
    ``context``; else, with ``io_cpus``, a placed one of its own; else the process's
    shared ``zmq.Context.instance()``."""
    cpus = list(io_cpus) if io_cpus is not None else []
    if context is not None:
        if cpus:
            raise Error(f"{who}: io_cpus places the I/O thread of a context {who} makes; "
                        "with context given, set zmq.THREAD_AFFINITY_CPU_ADD on it instead")
        return context, False
    if cpus:
        return make_context(cpus, who), True
    return zmq.Context.instance(), False
