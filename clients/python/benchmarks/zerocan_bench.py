"""Benchmark: zerocan's Python client side by side with ipyparallel (and, for ``map``,
dask.distributed), in one run.

    python clients/python/benchmarks/zerocan_bench.py [--quick] [--json] [--no-ipp]
        [--no-dask] [--map N] [--no-floor] [--ipp-malloc] [--no-placement]

(or ``build/bench/zerocan-bench --only python``). It lives beside the package, not in it:
an installed ``zerocan`` does not carry its benchmark. Run from the repository, it uses the
package next to it (``clients/python/zerocan``) unless another one is importable first.

Starts, on this machine and over tcp loopback, each in its own process:

* zerocan (Python engine): ``python -m zerocan engine --allow-pickle``. The client applies
  the same Python functions ipyparallel gets (``ident``, ``nbytes`` below), sent by value
  with cloudpickle on every call, as ipyparallel sends them; the engine decodes the
  arguments (arrays as views of the received frames) and calls the function.
* zerocan (C++ engine), when ``$ZEROCAN_BIN`` (default build/zerocan) implements
  ``zerocan engine``: its built-in ``echo`` and ``nbytes`` (``--builtins``; C++ cannot run
  the Python functions).
* pyzmq floor (array workloads only): a bare pyzmq ROUTER that answers the array's
  length or sends the received frame back, with the same sockets, memory settings and
  zero-copy frames as zerocan, and no envelope, no decoding, no function. What tcp
  loopback itself costs for 100 MB: the bound under any library.
* zerocan (C++, unplaced), array workloads only: the same C++ engine and client with
  their I/O threads left where the scheduler puts them. The rows above are placed
  (``io_cpus``, see ``Placement``): on a 2-CPU machine an unplaced client/engine pair
  runs a 100 MB transfer at either ~21 or ~36 ms from run to run, depending on whether
  the kernel put the two I/O threads on different CPUs. ``--no-placement`` leaves every
  system unplaced.
* ipyparallel: a local cluster (``ipp.Cluster(n=1)``: controller + one engine, its normal
  defaults) and a DirectView ``apply_sync(f, x)`` of the same functions on the same
  values. Requests and replies go through the controller (two tcp hops each way). For
  the map workload, its load-balanced view's ``map_sync``.
* dask (map workload only, when dask.distributed is installed): a ``LocalCluster`` of one
  worker process with one thread; ``client.gather(client.map(ident, range(N),
  pure=False))``.

The map workload: ``client.map(f, range(N))`` (at most 256 in flight), N = 10,000 by
default, against ipyparallel's and dask's maps of the same function.

Both clients live in this process, which applies zerocan's memory policy (a reused heap
for large buffers; ``ZEROCAN_REUSE_MEMORY=0`` turns it off), so the ipyparallel client
gets it too. The ipyparallel controller and engine run with glibc's defaults, as
ipyparallel runs anywhere; ``--ipp-malloc`` gives them the same settings (through
``GLIBC_TUNABLES``) as a control.

Workloads, interleaved (each round runs every system once, in turn, with a pause after
each call as long as the call took, at most 0.25 s, so work a system leaves behind, such as
freeing 100 MB, does not land in the next system's time):

* tiny:   1000 tiny tasks (echo of an int), all in flight, until all results are back;
* array:  apply(nbytes, a 100 MB float64 array): the array goes, an int comes back;
* echo:   apply(ident, the 100 MB array), the array coming back;
* ints:   apply(ident, the ints 0..999), also counting the request's bytes on the wire;
* dict10: apply(ident, a 10-field dict).

Times are medians over the rounds. Ratios are ipyparallel's time over zerocan's (above 1
means zerocan is faster): of the medians, and the median of the per-round ratios (paired:
both measured in the same round, so slow drift in the machine's load cancels). Targets
from the issue: array >= 5x, tiny >= 3x throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    import zerocan
except ImportError:  # run from the repository without the package installed
    sys.path.insert(0, str(HERE.parent))
    import zerocan
import zerocan.placement
import zerocan.policy
from zerocan import wire


def ident(x: Any) -> Any:
    """The echo function both sides apply (the C++ engine uses its built-in echo)."""
    return x


def nbytes(x: Any) -> int:
    """The apply function both sides apply (the C++ engine uses its built-in nbytes)."""
    return int(x.nbytes)


# glibc.malloc tunables equal to zerocan.policy.use_reusing_allocator() (for --ipp-malloc).
REUSING_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                    "glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=67108864")
SETTLE_MAX_S = 0.25

# sitecustomize for ipyparallel's controller and engine under --ipp-placement: every
# zmq.Context they make runs its I/O thread on $ZEROCAN_BENCH_IO_CPU.
IPP_PLACEMENT_SITE = """\
import os, sys
_argv = " ".join(getattr(sys, "orig_argv", sys.argv))
_role = "ENGINE" if "ipyparallel.engine" in _argv else \\
    "CONTROLLER" if "ipyparallel.controller" in _argv else None
_cpu = os.environ.get("ZEROCAN_BENCH_IO_CPU_" + _role) if _role else None
if _cpu is not None:
    import zmq
    _init = zmq.Context.__init__
    def _placed(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.set(zmq.THREAD_AFFINITY_CPU_ADD, int(_cpu))
    zmq.Context.__init__ = _placed
"""


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


def _process_faults(pids: list[int]) -> int:
    """Minor page faults of these processes so far (0 where /proc is not there)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                total += int(f.read().rsplit(")", 1)[1].split()[7])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _io_thread_cpus(pid: int) -> list[str]:
    """Cpus_allowed_list of each libzmq I/O thread ("ZMQbg/IO/<n>") of a process."""
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            if (task / "comm").read_text().startswith("ZMQbg/IO/"):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        out.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    """The child processes of a process (from /proc; [] where that is not there)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _wait_ready(client: zerocan.Client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.apply_with("echo", (1,), timeout=1.0).result()
            return
        except zerocan.TimeoutError:
            if time.monotonic() > deadline:
                raise


def _functions() -> tuple[Callable[[Any], Any], Callable[[Any], int]]:
    """``ident`` and ``nbytes`` as the module ``zerocan_bench``'s (not ``__main__``'s when
    run as a script), so both sides pickle them as they would a library function (the
    engines find the module through PYTHONPATH, see ``_export_path``)."""
    import zerocan_bench
    return zerocan_bench.ident, zerocan_bench.nbytes


def _export_path() -> None:
    """Lets the processes this benchmark starts (engines, the floor, ipyparallel) import
    this module and the package it measures, as this process does."""
    package = Path(zerocan.__file__).resolve().parents[1]
    entries = [str(HERE), str(package), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))


class Placement:
    """Where the bench puts libzmq I/O threads (``io_cpus``, zerocan.placement): every
    zerocan client's on the first CPU this process may use, every zerocan engine's on the
    last, so a 100 MB frame's two kernel copies (out of the client, into the engine) run
    side by side instead of taking turns on one CPU. The floor gets the same placement;
    ipyparallel keeps its defaults (``--ipp-placement`` places it too, as a control)."""

    def __init__(self, client_cpu: int, engine_cpu: int) -> None:
        self.client_cpu = client_cpu
        self.engine_cpu = engine_cpu

    @staticmethod
    def for_this_machine() -> Optional["Placement"]:
        cpus = zerocan.placement.usable_cpus()
        return Placement(cpus[0], cpus[-1]) if len(cpus) >= 2 else None


class Zerocan:
    """A zerocan engine process and a client. ``python_functions``: apply ``ident`` and
    ``nbytes`` by value (the Python engine); else the built-ins ``echo``/``nbytes``."""

    def __init__(self, name: str, command: list[str], url: str,
                 python_functions: bool, placement: Optional["Placement"] = None,
                 workloads: Optional[tuple[str, ...]] = None,
                 own_context: bool = False) -> None:
        """``placement``: the engine's and the client's I/O threads placed; else, with
        ``own_context``, the client on an unplaced context of its own (not sharing
        ``zmq.Context.instance()``'s I/O thread with ipyparallel's client)."""
        import zmq
        self.name = name
        if workloads is not None:
            self.workloads = workloads
        if placement is not None:
            command = [*command, "--io-cpus", str(placement.engine_cpu)]
        self._context = zmq.Context() if own_context and placement is None else None
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.pids = [self.proc.pid]
        try:
            # Over tcp, as ipyparallel, dask and the pyzmq floor: on one host large
            # arrays would otherwise go in shared memory (benchmarks/shared_bench.py).
            self.client = zerocan.Client(
                url, timeout=120, context=self._context, shared_memory=False,
                io_cpus=[placement.client_cpu] if placement else None)
            f_ident, f_nbytes = _functions()
            self.echo_fn: Any = f_ident if python_functions else "echo"
            self.nbytes_fn: Any = f_nbytes if python_functions else "nbytes"
            _wait_ready(self.client)
        except BaseException:
            self.close()
            raise

    def tiny(self, n: int) -> None:
        futures = [self.client.apply(self.echo_fn, i) for i in range(n)]
        for f in futures:
            f.result()

    def echo(self, value: Any) -> Any:
        return self.client.apply(self.echo_fn, value).result()

    def nbytes(self, value: Any) -> int:
        return int(self.client.apply(self.nbytes_fn, value).result())

    def map(self, n: int) -> None:
        results = list(self.client.map(self.echo_fn, range(n)))
        assert results[-1] == n - 1

    def close(self) -> None:
        client: Optional[zerocan.Client] = getattr(self, "client", None)  # None: failed start
        if client is not None:
            client.close()
        if self._context is not None:
            self._context.term()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def floor_server(url: str, io_cpu: Optional[int]) -> None:
    """``zerocan_bench.py --floor-server URL [--floor-io-cpu N]``: the pyzmq floor's
    other end. A message [b"nbytes", x] is answered with len(x) as text, [b"echo", x]
    with x itself (the received frame, sent back without a copy)."""
    import zmq
    zerocan.policy.apply_memory_policy()
    ctx = zmq.Context()
    if io_cpu is not None:
        ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, io_cpu)
    sock = ctx.socket(zmq.ROUTER)
    sock.copy_threshold = 0
    sock.bind(url)
    while True:
        parts = sock.recv_multipart(copy=False)
        op = parts[1].bytes
        if op == b"nbytes":
            sock.send_multipart([parts[0], str(parts[2].buffer.nbytes).encode()])
        elif op == b"echo":
            sock.send_multipart([parts[0], parts[2]], copy=False)
        else:
            sock.send_multipart([parts[0], b"?"])
        del parts


class PyzmqFloor:
    name = "pyzmq floor"
    workloads = ("array", "echo")

    def __init__(self, placement: Optional["Placement"]) -> None:
        import zmq
        url = f"tcp://127.0.0.1:{_free_port()}"
        server_cpu = [] if placement is None else ["--floor-io-cpu", str(placement.engine_cpu)]
        self.proc = subprocess.Popen([sys.executable, str(HERE / "zerocan_bench.py"),
                                      "--floor-server", url, *server_cpu],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pids = [self.proc.pid]
        self.ctx = zmq.Context()
        if placement is not None:  # the same placement as zerocan's: the bound under it
            self.ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, placement.client_cpu)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.copy_threshold = 0
        self.sock.connect(url)
        self.sock.send_multipart([b"nbytes", b"x"])
        if not self.sock.poll(30_000):
            raise RuntimeError("pyzmq floor server did not start")
        self.sock.recv()

    def nbytes(self, value: Any) -> int:
        self.sock.send_multipart([b"nbytes", value], copy=False)
        return int(self.sock.recv())

    def echo(self, value: Any) -> Any:
        self.sock.send_multipart([b"echo", value], copy=False)
        frame = self.sock.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=value.dtype).reshape(value.shape)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class IPyParallel:
    name = "ipyparallel"

    def __init__(self, tuned_malloc: bool = False,
                 placement: Optional[Placement] = None) -> None:
        import ipyparallel as ipp  # type: ignore[import-untyped]
        import tempfile
        import zmq
        # Inherited by the controller and engine processes only. PYTHONPATH: the engine
        # imports this module to unpickle ``ident`` and ``nbytes`` (see _export_path).
        env = {"GLIBC_TUNABLES": REUSING_TUNABLES if tuned_malloc else None,
               "PYTHONPATH": os.environ.get("PYTHONPATH"),
               "ZEROCAN_BENCH_IO_CPU_CONTROLLER": None,
               "ZEROCAN_BENCH_IO_CPU_ENGINE": None}
        self._site: Optional[tempfile.TemporaryDirectory[str]] = None
        self._context: Optional[zmq.Context] = None
        self.cluster: Any = None
        if placement is not None:
            # A control: ipyparallel's I/O threads placed along its path, each hop's two
            # ends on different CPUs as zerocan's are: its client on the client CPU, its
            # controller (and the scheduler processes it forks, which forward the calls)
            # on the engine CPU, its engine on the client CPU again. The client gets a
            # placed context of its own; the controller and engine get every zmq.Context
            # they make placed, through a sitecustomize module (which hides any other
            # sitecustomize for those processes).
            self._context = zmq.Context()
            self._context.set(zmq.THREAD_AFFINITY_CPU_ADD, placement.client_cpu)
            self._site = tempfile.TemporaryDirectory(prefix="zerocan-bench-ipp-")
            Path(self._site.name, "sitecustomize.py").write_text(IPP_PLACEMENT_SITE)
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [self._site.name, os.environ.get("PYTHONPATH")]))
            env["ZEROCAN_BENCH_IO_CPU_CONTROLLER"] = str(placement.engine_cpu)
            env["ZEROCAN_BENCH_IO_CPU_ENGINE"] = str(placement.client_cpu)
        saved = {k: os.environ.get(k) for k in env}
        for k, v in env.items():
            if v is not None:
                os.environ[k] = v
        try:
            self.cluster = ipp.Cluster(n=1, log_level=40)
            if self._context is None:
                self.rc = self.cluster.start_and_connect_sync()
            else:
                self.cluster.start_cluster_sync()
                self.rc = self.cluster.connect_client_sync(context=self._context)
            self.rc.wait_for_engines(1, timeout=120)
        except BaseException:
            self._cleanup()
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.view = self.rc[0]
        # Its controller (with the scheduler processes it forks) and engine processes
        # (the engine's pid asked of the engine).
        controller = self.cluster.controller.pid
        self.controller_pids = [controller, *_children(controller)]
        self.engine_pid = self.view.apply_sync(os.getpid)
        self.pids = [*self.controller_pids, self.engine_pid]
        self.placed = placement is not None
        # Where their libzmq I/O threads may run, read back (shows the control took).
        self.io_thread_cpus = {
            "controller": sorted({c for pid in self.controller_pids
                                  for c in _io_thread_cpus(pid)}),
            "engine": sorted(set(_io_thread_cpus(self.engine_pid)))}
        self.ident, self.nbytes_fn = _functions()

    def tiny(self, n: int) -> None:
        results = [self.view.apply_async(self.ident, i) for i in range(n)]
        for r in results:
            r.get()

    def map(self, n: int) -> None:
        results = self.rc.load_balanced_view().map_sync(self.ident, range(n))
        assert results[-1] == n - 1

    def echo(self, value: Any) -> Any:
        return self.view.apply_sync(self.ident, value)

    def nbytes(self, value: Any) -> int:
        return self.view.apply_sync(self.nbytes_fn, value)

    def close(self) -> None:
        self.rc.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.cluster is not None:
            try:
                self.cluster.stop_cluster_sync()
            except Exception:  # pragma: no cover - best effort on a failed start
                pass
        if self._site is not None:
            self._site.cleanup()
        if self._context is not None:
            self._context.destroy(linger=0)


class Dask:
    """dask.distributed on this host: a LocalCluster of one worker process with one
    thread (as the zerocan engines here), its scheduler in this process's event loop."""

    name = "dask"
    workloads = ("map",)

    def __init__(self) -> None:
        from dask.distributed import Client, LocalCluster  # type: ignore[import-untyped]
        self.cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.ident, _ = _functions()
        self.pids = [pid for pid in (getattr(w, "pid", None) for w in self.cluster.workers.values())
                     if pid is not None]

    def map(self, n: int) -> None:
        # pure=False: every call runs, as zerocan's and ipyparallel's do (no result cache).
        results = self.client.gather(self.client.map(self.ident, range(n), pure=False))
        assert results[-1] == n - 1

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


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
    p = argparse.ArgumentParser(prog="zerocan_bench.py")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-ipp", action="store_true", help="skip ipyparallel")
    p.add_argument("--no-floor", action="store_true", help="skip the bare pyzmq floor")
    p.add_argument("--no-dask", action="store_true", help="skip dask.distributed (map only)")
    p.add_argument("--map", type=int, default=10_000, metavar="N",
                   help="items of the map workload (default 10000; 0 skips it)")
    p.add_argument("--ipp-malloc", action="store_true",
                   help="control: run ipyparallel's controller and engine with zerocan's "
                        "malloc settings (GLIBC_TUNABLES)")
    p.add_argument("--array-mb", type=int, default=100, help="array size (default 100)")
    p.add_argument("--no-placement", action="store_true",
                   help="leave every I/O thread unplaced (no io_cpus)")
    p.add_argument("--ipp-placement", action="store_true",
                   help="control: place ipyparallel's I/O threads as zerocan's (client's on "
                        "the first CPU, controller's and engine's on the last)")
    p.add_argument("--floor-server", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--floor-io-cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _export_path()
    if args.floor_server:
        floor_server(args.floor_server, args.floor_io_cpu)
        return 0
    # The programs' memory policy (the engines we start apply it too); ipyparallel's
    # client shares this process and so gets the same setting. Before any zmq context
    # starts its threads: the arena setting applies to threads created afterwards.
    reusing = zerocan.policy.apply_memory_policy()
    rounds = {"tiny": 2, "array": 3, "small": 20, "map": 1} if args.quick else \
        {"tiny": 5, "array": 15, "small": 140, "map": 3}
    array_mb = args.array_mb

    placement = None if args.no_placement else Placement.for_this_machine()
    systems: list[Any] = []
    ipp: Optional[IPyParallel] = None
    try:  # a system that fails to start stops the ones already started
        port = _free_port()
        systems.append(Zerocan("zerocan (Python engine)",
                               [sys.executable, "-m", "zerocan", "engine", "--allow-pickle", "--builtins",
                                "--bind", f"tcp://127.0.0.1:{port}"],
                               f"tcp://127.0.0.1:{port}", python_functions=True,
                               placement=placement))
        cpp = _cpp_engine_bin()
        if cpp is not None:
            port = _free_port()
            systems.append(Zerocan("zerocan (C++ engine)",
                                   [cpp, "engine", "--builtins", "--bind",
                                    f"tcp://127.0.0.1:{port}"],
                                   f"tcp://127.0.0.1:{port}", python_functions=False,
                                   placement=placement))
            if placement is not None:
                # The same engine with every I/O thread left where the scheduler puts it: what
                # placement buys, in the same run.
                port = _free_port()
                systems.append(Zerocan("zerocan (C++, unplaced)",
                                       [cpp, "engine", "--builtins", "--bind",
                                        f"tcp://127.0.0.1:{port}"],
                                       f"tcp://127.0.0.1:{port}", python_functions=False,
                                       workloads=("array", "echo"), own_context=True))
        if not args.no_floor:
            systems.append(PyzmqFloor(placement))
        if args.map and not args.no_dask:
            try:
                systems.append(Dask())
            except ImportError:
                print("dask.distributed is not installed: the map workload runs without it",
                      file=sys.stderr)
        if not args.no_ipp:
            ipp = IPyParallel(tuned_malloc=args.ipp_malloc,
                              placement=placement if args.ipp_placement else None)
            systems.append(ipp)
    except BaseException:
        for s in systems:
            s.close()
        raise

    big = np.random.default_rng(0).random(array_mb * (1 << 20) // 8)
    ints = list(range(1000))
    record = {f"field{i}": (i if i % 3 == 0 else f"value {i}" if i % 3 == 1 else i * 0.5)
              for i in range(10)}
    # (name, kind, call, rounds)
    workloads: list[tuple[str, str, Callable[[Any], Any], int]] = [
        ("1000 tiny tasks", "tiny", lambda s: s.tiny(1000), rounds["tiny"]),
        (f"apply {array_mb} MB array", "array", lambda s: s.nbytes(big), rounds["array"]),
        (f"echo {array_mb} MB array", "echo", lambda s: s.echo(big), rounds["array"]),
        ("apply ints 0..999", "ints", lambda s: s.echo(ints), rounds["small"]),
        ("apply 10-field dict", "dict10", lambda s: s.echo(record), rounds["small"]),
    ]
    if args.map:
        workloads.append((f"map {args.map:,} tiny calls", "map", lambda s: s.map(args.map),
                          rounds["map"]))
    times: dict[str, dict[str, list[float]]] = {}
    # Page faults in this process (both clients) per call: fresh memory touched.
    faults: dict[str, dict[str, list[int]]] = {}
    server_faults: dict[str, dict[str, list[int]]] = {}  # the other end's processes
    try:
        for s in systems:  # warm-up, and a correctness check of every system
            if not hasattr(s, "nbytes"):
                s.map(100)
                continue
            if hasattr(s, "tiny"):
                assert np.array_equal(s.echo(big[:1000]), big[:1000])
                assert list(s.echo(ints)) == ints and s.echo(record) == record
            assert s.nbytes(big) == big.nbytes
            assert np.array_equal(s.echo(big), big)
        for name, kind, fn, n in workloads:
            # Interleaved: each round runs on every system in turn, so drift in the
            # machine's load hits all of them alike.
            runs = [s for s in systems if kind in getattr(s, "workloads", (kind,))]
            times[name] = {s.name: [] for s in runs}
            faults[name] = {s.name: [] for s in runs}
            server_faults[name] = {s.name: [] for s in runs}
            # Untimed warm-up rounds first: until every process's heap holds the buffers
            # the workload needs (four systems' 100 MB echoes in one client process take a
            # few rounds), the first calls after another system's pay fresh pages.
            warm = 1 if kind in ("tiny", "map") else len(runs)
            for r in range(-warm, n):
                k = r % len(runs)  # rotated, so no system always follows the same one
                for s in runs[k:] + runs[:k]:
                    e0 = _process_faults(s.pids)
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    t0 = time.perf_counter()
                    fn(s)
                    dt = time.perf_counter() - t0
                    if r >= 0:
                        times[name][s.name].append(dt)
                        faults[name][s.name].append(
                            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                        server_faults[name][s.name].append(_process_faults(s.pids) - e0)
                    time.sleep(min(SETTLE_MAX_S, dt))
    finally:
        for s in systems:
            s.close()

    results = {w: {k: statistics.median(v) for k, v in per.items()} for w, per in times.items()}
    best = {w: {k: min(v) for k, v in per.items()} for w, per in times.items()}
    names = [s.name for s in systems]
    ref = "ipyparallel" if not args.no_ipp else None
    zerocans = [n for n in names if n.startswith("zerocan")]
    paired: dict[str, dict[str, float]] = {}
    if ref:
        for w, per in times.items():
            paired[w] = {n: statistics.median(a / b for a, b in zip(per[ref], per[n]))
                         for n in zerocans if n in per}
    wire_bytes = {"zerocan": zerocan_request_bytes(ints), "ipyparallel": ipp_request_bytes(ints)}
    envelope = len(wire.encode_apply("echo", [ints]).envelope)
    targets = {"1000 tiny tasks": 3.0, f"apply {array_mb} MB array": 5.0,
               f"map {args.map:,} tiny calls": 10.0}
    if args.json:
        print(json.dumps({"machine": platform.node(), "python": platform.python_version(),
                          "reuse_memory": reusing, "ipp_malloc": args.ipp_malloc,
                          "ipp_placement": bool(args.ipp_placement and placement),
                          "ipp_io_thread_cpus": ipp.io_thread_cpus if ipp else None,
                          "placement": None if placement is None else
                          {"client_cpu": placement.client_cpu,
                           "engine_cpu": placement.engine_cpu},
                          "seconds": results, "best_seconds": best,
                          "paired_ratio": paired, "all_seconds": times,
                          "client_page_faults": faults, "engine_page_faults": server_faults,
                          "request_bytes_ints": wire_bytes,
                          "envelope_bytes_ints": envelope}, indent=2))
        return 0
    short = {n: (n.split("(")[1].rstrip(")") if "(" in n else n) for n in names}
    short["ipyparallel"] = "ipyparallel" + (" (tuned malloc)" if args.ipp_malloc else "") + \
        (" (placed)" if args.ipp_placement and placement else "")
    print(f"zerocan Python benchmark on {platform.node()} ({platform.machine()}, "
          f"{os.cpu_count()} CPUs), Python {platform.python_version()}, numpy {np.__version__}, "
          f"tcp loopback, memory policy {'on' if reusing else 'off'}; median times")
    print("  Python engine: the bench's Python functions sent by value (as ipyparallel "
          "sends them); C++ engine: its built-in echo/nbytes; pyzmq floor: bare frames, "
          "no envelope")
    print("  ratio ipp/x: ipyparallel's median time over zerocan's; (paired): median of "
          "the per-round ratios")
    if placement is not None:
        ipp_where = "anywhere"
        if ipp is not None and ipp.placed:
            where = ipp.io_thread_cpus
            ipp_where = ("placed along its path (--ipp-placement): client's I/O thread on CPU "
                         f"{placement.client_cpu}, controller's on "
                         f"{'/'.join(where['controller']) or '?'}, engine's on "
                         f"{'/'.join(where['engine']) or '?'} (read back)")
        print(f"  placement: zerocan clients' libzmq I/O threads on CPU {placement.client_cpu}, "
              f"engines' on CPU {placement.engine_cpu} (io_cpus; the floor too); "
              f"'C++, unplaced': anywhere; ipyparallel: {ipp_where}")
    else:
        print("  placement: none (every I/O thread anywhere)")
    print("  apply = the argument goes to the engine, a small result comes back (nbytes); "
          "echo = it comes back too")
    header = f"{'workload':<24}" + "".join(f"{short[n][:15]:>16}" for n in names)
    if ref:
        header += "".join(f"{'ipp / ' + short[n]:>29}" for n in zerocans) + f"{'target':>9}"
    print(header)
    for name, med in results.items():
        row = f"{name:<24}" + "".join(f"{med[n] * 1e3:>13.2f} ms" if n in med else f"{'-':>16}"
                                      for n in names)
        if ref:
            row += "".join(f"{med[ref] / med[n]:>14.1f}x (paired {paired[name][n]:4.1f}x)"
                           if n in med else f"{'-':>29}" for n in zerocans)
            t = targets.get(name)
            row += f"{'>= %gx' % t if t else '':>9}"
        print(row)
    print("page faults per call (median): in this process (the clients) / in the other "
          "end's processes (ipyparallel: controller + engine)")
    for name in (f"apply {array_mb} MB array", f"echo {array_mb} MB array"):
        fault_med = {n: (statistics.median(faults[name][n]),
                         statistics.median(server_faults[name][n])) for n in faults[name]}
        print(f"{'  ' + name:<24}" + "".join(
            f"{fault_med[n][0]:>8,.0f} /{fault_med[n][1]:>7,.0f}" if n in fault_med
            else f"{'-':>16}" for n in names))
    mapped = results.get(f"map {args.map:,} tiny calls", {})
    for other in ("ipyparallel", "dask"):
        if other in mapped:
            print(f"map {args.map:,} tiny calls, {other} / zerocan: " + ", ".join(
                f"{short[n]} {mapped[other] / mapped[n]:.1f}x" for n in zerocans if n in mapped)
                + " (target >= 10x)")
    tiny = results["1000 tiny tasks"]
    print("throughput, 1000 tiny tasks: " + ", ".join(
        f"{n}: {1000 / tiny[n]:,.0f} calls/s" for n in tiny))
    print(f"request bytes for the ints 0..999: zerocan {wire_bytes['zerocan']} "
          f"(envelope {envelope}; pickle's figure 2,752), ipyparallel "
          f"{wire_bytes['ipyparallel']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
