"""Benchmark: shared memory on one host from Python, side by side in one run.

    python clients/python/benchmarks/shared_bench.py [--quick] [--json] [--no-ray]

Every engine is a Python engine in a process of its own (``python -m zerocan engine
--builtins``), on this machine:

* nbytes(x), x a uint8 array of 64 KiB, 1 MiB, 64 MiB, 256 MiB and 1 GiB (``--quick``:
  up to 64 MiB), median per call:
  - arena: x from ``zerocan.shared.empty``, passed as a reference (no copy);
  - via broker: the same through a ``zerocan broker`` process (C++, ``$ZEROCAN_BIN``);
  - ordinary: a plain numpy array, copied once into the client's arena;
  - tcp, ipc: the same call with ``shared_memory=False``, frames through the kernel;
  - memcpy: ``np.copyto`` of the same bytes, the physical yardstick;
  - multiprocessing: x in a ``multiprocessing.shared_memory`` block handed to a worker
    process (its name over a pipe; the worker attaches once and answers x.nbytes).
* echo(x) of 100 MiB and 256 MiB (``--quick``: 16 MiB), the result being the argument:
  from the arena, from an ordinary array, over tcp, and Ray's (``ray.get`` of a remote
  task returning its numpy argument; Ray copies the argument into its object store and
  the result out of the worker) when Ray is importable.

Peak memory: each process's high-water mark (VmHWM). Ratios print beside the targets of
the shared-memory issue: arena 1 GiB / 64 KiB at most 2x (direct and via the broker);
at 256 MiB echo, tcp / ordinary at least 3x and tcp / arena at least 20x; at 100 MiB
echo, Ray / arena at least 20x and Ray / ordinary at least 1x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # the package beside this file, unless one is installed

import zerocan  # noqa: E402
from zerocan import shared  # noqa: E402

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def _free_tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _zerocan_bin() -> Optional[str]:
    tool = os.environ.get("ZEROCAN_BIN", str(HERE.parents[2] / "build" / "zerocan"))
    return tool if os.path.isfile(tool) else None


def _peak_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


def _median_ms(op: Callable[[], Any], reps: int) -> float:
    op()  # warm: connections, first touch of pages
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        op()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _python_engine(*where: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(zerocan.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "zerocan", "engine", *where, "--builtins"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ready(client: zerocan.Client, want_shared: bool) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.apply_with("add", (1, 2), timeout=1.0).result() == 3 and (
                    not want_shared or client.shares_memory):
                return
        except zerocan.TimeoutError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("shared_bench: an engine did not come up (or shares no memory)")
        time.sleep(0.05)


def _mp_worker(conn: Any) -> None:
    """Answers the nbytes of a multiprocessing.shared_memory block named by the parent."""
    attached: dict[str, shared_memory.SharedMemory] = {}
    while True:
        request = conn.recv()
        if request is None:
            break
        name, size = request
        block = attached.get(name)
        if block is None:
            block = attached[name] = shared_memory.SharedMemory(name=name)
        conn.send(np.ndarray((size,), np.uint8, block.buf).nbytes)
    for block in attached.values():
        block.close()


def _fmt(ms: float) -> str:
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.1f} ms"


def _size(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else \
        f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shared_bench.py")
    p.add_argument("--quick", action="store_true", help="sizes up to 64 MiB, fewer repetitions")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-ray", action="store_true", help="skip Ray")
    args = p.parse_args(argv)
    sizes = [64 * KIB, MIB, 64 * MIB] + ([] if args.quick else [256 * MIB, GIB])
    echo_sizes = [16 * MIB] if args.quick else [100 * MIB, 256 * MIB]

    tool = _zerocan_bin()
    tcp, ipc = _free_tcp(), f"ipc:///tmp/zerocan-shared-bench-{os.getpid()}"
    engines = [_python_engine("--bind", tcp), _python_engine("--bind", ipc)]
    front = _free_tcp()
    back = f"ipc:///tmp/zerocan-shared-bench-back-{os.getpid()}"
    broker = None
    if tool is not None:
        broker = subprocess.Popen([tool, "broker", "--frontend", front, "--backend", back],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        engines.append(_python_engine("--connect", back))
    arena = shared.Arena(2 * max(sizes) + 2 * max(echo_sizes) + 64 * MIB)
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    worker = ctx.Process(target=_mp_worker, args=(child_end,), daemon=True)
    worker.start()
    rows: list[dict[str, Any]] = []
    clients: list[zerocan.Client] = []
    try:
        direct = zerocan.Client(tcp, timeout=300, shared_arena=arena)
        over_tcp = zerocan.Client(tcp, timeout=300, shared_memory=False)
        over_ipc = zerocan.Client(ipc, timeout=300, shared_memory=False)
        clients = [direct, over_tcp, over_ipc]
        brokered = None
        if broker is not None:
            brokered = zerocan.Client(front, timeout=300, shared_arena=arena)
            clients.append(brokered)
        for c in clients:
            _ready(c, c is direct or c is brokered)

        table = []
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for size in sizes:
            reps = 3 if size >= 256 * MIB else 5 if size >= 64 * MIB else 50
            x = arena.empty(size, np.uint8)
            x[:] = 1
            plain = np.ones(size, np.uint8)
            target = np.zeros(size, np.uint8)
            block = shared_memory.SharedMemory(create=True, size=size)
            np.ndarray((size,), np.uint8, block.buf)[:] = 1

            def nbytes(client: zerocan.Client, value: np.ndarray) -> None:
                if client.call("nbytes", value) != size:
                    raise SystemExit("shared_bench: nbytes gave a wrong count")

            def mp() -> None:
                parent_end.send((block.name, size))
                if parent_end.recv() != size:
                    raise SystemExit("shared_bench: the worker gave a wrong count")

            copied = direct.counters["shared_bytes_copied"]
            row = {"size": size,
                   "arena": _median_ms(lambda: nbytes(direct, x), 50)}
            row["arena_copied_bytes"] = direct.counters["shared_bytes_copied"] - copied
            if brokered is not None:
                row["via broker"] = _median_ms(lambda: nbytes(brokered, x), 50)
            row["ordinary"] = _median_ms(lambda: nbytes(direct, plain), reps)
            row["tcp"] = _median_ms(lambda: nbytes(over_tcp, plain), reps)
            row["ipc"] = _median_ms(lambda: nbytes(over_ipc, plain), reps)
            row["memcpy"] = _median_ms(lambda: np.copyto(target, plain), reps)
            row["multiprocessing"] = _median_ms(mp, 50)
            block.close()
            block.unlink()
            del x, plain, target
            for key in ("arena", "via broker"):
                if key in row:
                    first.setdefault(key, row[key])
                    last[key] = row[key]
            rows.append({"section": "nbytes", **row})
            table.append(row)
            print(f"shared_bench: nbytes {_size(size)} done", file=sys.stderr)

        echo_rows = []
        ray_echo = _ray_echo() if not args.no_ray else None
        for size in echo_sizes:
            x = arena.empty(size, np.uint8)
            x[:] = 1
            plain = np.ones(size, np.uint8)

            def echo(client: zerocan.Client, value: np.ndarray) -> None:
                r = client.call("echo", value)
                if r.nbytes != size or r[-1] != 1:
                    raise SystemExit("shared_bench: echo gave something else back")

            row = {"size": size,
                   "arena": _median_ms(lambda: echo(direct, x), 20),
                   "ordinary": _median_ms(lambda: echo(direct, plain), 5),
                   "tcp": _median_ms(lambda: echo(over_tcp, plain), 5)}
            if ray_echo is not None:
                row["ray"] = _median_ms(lambda: ray_echo(plain), 5)
            del x, plain
            rows.append({"section": "echo", **row})
            echo_rows.append(row)
            print(f"shared_bench: echo {_size(size)} done", file=sys.stderr)

        peaks = {"this process": _peak_bytes(os.getpid()),
                 "engine (tcp)": _peak_bytes(engines[0].pid),
                 "engine (ipc)": _peak_bytes(engines[1].pid),
                 "multiprocessing worker": _peak_bytes(worker.pid or 0)}
        if broker is not None:
            peaks["engine (behind the broker)"] = _peak_bytes(engines[2].pid)
        ratios = {f"{key} {_size(sizes[-1])} / 64 KiB": last[key] / first[key] for key in first}
        for row in echo_rows:
            name = _size(row["size"])
            ratios[f"echo {name} tcp / arena"] = row["tcp"] / row["arena"]
            ratios[f"echo {name} tcp / ordinary"] = row["tcp"] / row["ordinary"]
            if "ray" in row:
                ratios[f"echo {name} ray / arena"] = row["ray"] / row["arena"]
                ratios[f"echo {name} ray / ordinary"] = row["ray"] / row["ordinary"]
        if args.json:
            print(json.dumps({"rows": rows, "ratios": ratios, "peak_bytes": peaks,
                              "ray": ray_echo is not None}, indent=1))
        else:
            _print(table, echo_rows, ratios, peaks, ray_echo is not None, args.no_ray)
    finally:
        for c in clients:
            c.close()
        parent_end.send(None)
        worker.join(10)
        for proc in engines + ([broker] if broker is not None else []):
            proc.terminate()
            proc.wait(30)
        _ray_shutdown()
    return 0


def _print(table: list[dict[str, Any]], echo_rows: list[dict[str, Any]],
           ratios: dict[str, float], peaks: dict[str, int], ray: bool, no_ray: bool) -> None:
    columns = ["arena", "via broker", "ordinary", "tcp", "ipc", "memcpy", "multiprocessing"]
    columns = [c for c in columns if c in table[0]]
    print("\n== shared (Python): nbytes(x) on a Python engine process on this host, "
          "median per call")
    print(f"{'size':>8}  " + "  ".join(f"{c:>15}" for c in columns) + "  tcp / arena")
    for row in table:
        print(f"{_size(row['size']):>8}  " + "  ".join(f"{_fmt(row[c]):>15}" for c in columns)
              + f"  {row['tcp'] / row['arena']:>10.1f}x"
              + ("" if row["arena_copied_bytes"] == 0 else "  (arena copied!)"))
    print("\n== shared (Python): echo(x), median per call")
    echo_columns = ["arena", "ordinary", "tcp"] + (["ray"] if ray else [])
    print(f"{'size':>8}  " + "  ".join(f"{c:>12}" for c in echo_columns))
    for row in echo_rows:
        print(f"{_size(row['size']):>8}  " + "  ".join(f"{_fmt(row[c]):>12}"
                                                     for c in echo_columns))
    if not ray:
        print("ray: " + ("skipped (--no-ray)" if no_ray else "not importable here"))
    print("\nratios:")
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    print("peak memory: " + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in peaks.items()))


_RAY_STARTED = False


def _ray_echo() -> Optional[Callable[[np.ndarray], None]]:
    """``ray.get(echo.remote(x))`` with a one-CPU local Ray, or None without Ray."""
    global _RAY_STARTED
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        return None
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    _RAY_STARTED = True

    @ray.remote
    def echo(x: np.ndarray) -> np.ndarray:
        return x

    def run(x: np.ndarray) -> None:
        r = ray.get(echo.remote(x))
        if r.nbytes != x.nbytes:
            raise SystemExit("shared_bench: Ray's echo gave something else back")

    return run


def _ray_shutdown() -> None:
    if _RAY_STARTED:
        import ray  # type: ignore[import-not-found]
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
