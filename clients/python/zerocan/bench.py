"""Benchmark: zerocan's Python client side by side with ipyparallel, in one run.

    python -m zerocan.bench [--quick] [--json] [--no-ipp]

Starts, on this machine and over tcp loopback: a Python zerocan engine (a subprocess),
the C++ engine too when ``$ZEROCAN_BIN`` (default build/zerocan) implements
``zerocan engine``, and a local ipyparallel cluster with one engine. Then, interleaved:

* tiny:   1000 tiny tasks (echo of an int), all in flight, until all results are back;
* array:  apply(echo, a 100 MB float64 array), the array coming back;
* ints:   apply(echo, the ints 0..999), also counting the request's bytes on the wire;
* dict10: apply(echo, a 10-field dict).

Times are the median of several repetitions; ratios are ipyparallel's time over
zerocan's (above 1 means zerocan is faster). Targets from the issue: array >= 5x,
tiny >= 3x throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import zerocan
import zerocan.policy
from zerocan import wire


def ident(x: Any) -> Any:
    """ipyparallel's echo (zerocan engines use their built-in echo)."""
    return x


def nbytes(x: Any) -> int:
    """ipyparallel's nbytes (zerocan engines use their built-in nbytes)."""
    return int(x.nbytes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpp_engine_bin() -> Optional[str]:
    default = Path(__file__).resolve().parents[3] / "build" / "zerocan"
    tool = os.environ.get("ZEROCAN_BIN", str(default))
    if not os.path.isfile(tool):
        return None
    out = subprocess.run([tool, "engine", "--help"], capture_output=True, text=True)
    if out.returncode == 3 or "not implemented yet" in out.stdout + out.stderr:
        return None
    return tool


def _wait_ready(client: zerocan.Client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.apply_with("echo", (1,), timeout=1.0).result()
            return
        except zerocan.TimeoutError:
            if time.monotonic() > deadline:
                raise


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Zerocan:
    def __init__(self, name: str, command: list[str], url: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client = zerocan.Client(url, timeout=120)
        _wait_ready(self.client)

    def tiny(self, n: int) -> None:
        futures = [self.client.apply("echo", i) for i in range(n)]
        for f in futures:
            f.result()

    def echo(self, value: Any) -> Any:
        return self.client.apply("echo", value).result()

    def nbytes(self, value: Any) -> int:
        return self.client.apply("nbytes", value).result()

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class IPyParallel:
    name = "ipyparallel"

    def __init__(self) -> None:
        import ipyparallel as ipp  # type: ignore[import-untyped]
        self.cluster = ipp.Cluster(n=1, log_level=40)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(1, timeout=120)
        self.view = self.rc[0]

    def tiny(self, n: int) -> None:
        results = [self.view.apply_async(ident, i) for i in range(n)]
        for r in results:
            r.get()

    def echo(self, value: Any) -> Any:
        return self.view.apply_sync(ident, value)

    def nbytes(self, value: Any) -> int:
        return self.view.apply_sync(nbytes, value)

    def close(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()


def ipp_request_bytes(value: Any) -> Optional[int]:
    try:
        from ipyparallel.serialize import pack_apply_message  # type: ignore[import-untyped]
    except ImportError:
        return None
    bufs = pack_apply_message(ident, (value,), {})
    return sum(memoryview(b).nbytes for b in bufs)


def zerocan_request_bytes(value: Any) -> int:
    out = wire.encode_apply("echo", [value])
    return len(out.envelope) + sum(memoryview(f).nbytes for f in out.frames)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zerocan.bench")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-ipp", action="store_true", help="skip ipyparallel")
    args = p.parse_args(argv)
    # The programs' memory policy (the engines we start apply it too); ipyparallel's
    # client shares this process and so gets the same setting.
    zerocan.policy.apply_memory_policy()
    repeat = 3 if args.quick else 7
    array_mb = 100

    systems: list[Any] = []
    port = _free_port()
    systems.append(Zerocan("zerocan (Python engine)",
                           [sys.executable, "-m", "zerocan", "engine", "--bind",
                            f"tcp://127.0.0.1:{port}"], f"tcp://127.0.0.1:{port}"))
    cpp = _cpp_engine_bin()
    if cpp is not None:
        port = _free_port()
        systems.append(Zerocan("zerocan (C++ engine)",
                               [cpp, "engine", "--bind", f"tcp://127.0.0.1:{port}"],
                               f"tcp://127.0.0.1:{port}"))
    if not args.no_ipp:
        systems.append(IPyParallel())

    big = np.random.default_rng(0).random(array_mb * (1 << 20) // 8)
    ints = list(range(1000))
    record = {f"field{i}": (i if i % 3 == 0 else f"value {i}" if i % 3 == 1 else i * 0.5)
              for i in range(10)}
    workloads: list[tuple[str, Callable[[Any], Any], int]] = [
        ("1000 tiny tasks", lambda s: s.tiny(1000), max(1, repeat // 2)),
        (f"apply {array_mb} MB array", lambda s: s.nbytes(big), repeat),
        (f"echo {array_mb} MB array", lambda s: s.echo(big), repeat),
        ("apply ints 0..999", lambda s: s.echo(ints), repeat * 20),
        ("apply 10-field dict", lambda s: s.echo(record), repeat * 20),
    ]
    results: dict[str, dict[str, float]] = {}
    best: dict[str, dict[str, float]] = {}
    try:
        for s in systems:  # warm-up, and a correctness check of every system
            assert np.array_equal(s.echo(big[:1000]), big[:1000])
            assert s.nbytes(big) == big.nbytes
            assert list(s.echo(ints)) == ints and s.echo(record) == record
        for name, fn, n in workloads:
            # Interleaved: each repetition runs on every system in turn, so drift in the
            # machine's load hits all of them alike; the median per system is reported.
            times: dict[str, list[float]] = {s.name: [] for s in systems}
            for _ in range(n):
                for s in systems:
                    times[s.name].append(_median_time(lambda: fn(s), 1))
            results[name] = {k: statistics.median(v) for k, v in times.items()}
            best[name] = {k: min(v) for k, v in times.items()}
    finally:
        for s in systems:
            s.close()

    wire_bytes = {"zerocan": zerocan_request_bytes(ints), "ipyparallel": ipp_request_bytes(ints)}
    envelope = len(wire.encode_apply("echo", [ints]).envelope)
    targets = {"1000 tiny tasks": 3.0, f"apply {array_mb} MB array": 5.0}
    if args.json:
        print(json.dumps({"machine": platform.node(), "python": platform.python_version(),
                          "seconds": results, "best_seconds": best,
                          "request_bytes_ints": wire_bytes,
                          "envelope_bytes_ints": envelope}, indent=2))
        return 0
    names = [s.name for s in systems]
    ref = names[-1] if not args.no_ipp else None
    short = {n: (n.split("(")[1].rstrip(")") if "(" in n else n) for n in names}
    print(f"zerocan Python benchmark on {platform.node()} ({platform.machine()}, "
          f"{os.cpu_count()} CPUs), Python {platform.python_version()}, numpy {np.__version__}, "
          "tcp loopback; median times")
    print("  ratios: ipyparallel's median time over zerocan's (and of the best runs)")
    print("  apply = the argument goes to the engine, a small result comes back (nbytes); "
          "echo = it comes back too")
    header = f"{'workload':<24}" + "".join(f"{short[n]:>16}" for n in names)
    if ref:
        header += "".join(f"{'ipp / ' + short[n]:>25}" for n in names[:-1]) + f"{'target':>9}"
    print(header)
    for name, per in results.items():
        row = f"{name:<24}" + "".join(f"{per[n] * 1e3:>13.2f} ms" for n in names)
        if ref:
            row += "".join(f"{per[ref] / per[n]:>12.1f}x (best {best[name][ref] / best[name][n]:4.1f}x)"
                           for n in names[:-1])
            t = targets.get(name)
            row += f"{'>= %gx' % t if t else '':>9}"
        print(row)
    tiny = results["1000 tiny tasks"]
    print("throughput, 1000 tiny tasks: " + ", ".join(
        f"{n}: {1000 / tiny[n]:,.0f} calls/s" for n in names))
    print(f"request bytes for the ints 0..999: zerocan {wire_bytes['zerocan']} "
          f"(envelope {envelope}; pickle's figure 2,752), ipyparallel "
          f"{wire_bytes['ipyparallel']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
