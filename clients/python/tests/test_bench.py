"""The benchmark runs end to end (small sizes, without ipyparallel) and reports every
system it started, with the pyzmq floor only where it applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
BENCH = PACKAGE_ROOT / "benchmarks" / "zerocan_bench.py"


def test_the_package_does_not_carry_the_benchmark():
    assert not (PACKAGE_ROOT / "zerocan" / "bench.py").exists()
    assert BENCH.is_file()


def test_bench_quick_without_ipyparallel():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--no-ipp", "--no-dask",
                          "--map", "500", "--array-mb", "1", "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    seconds = doc["seconds"]
    assert set(seconds) == {"1000 tiny tasks", "apply 1 MB array", "echo 1 MB array",
                            "apply ints 0..999", "apply 10-field dict", "map 500 tiny calls"}
    cpus = sorted(os.sched_getaffinity(0))
    placed = len(cpus) >= 2
    assert doc["placement"] == ({"client_cpu": cpus[0], "engine_cpu": cpus[-1]}
                                if placed else None)
    for workload, per in seconds.items():
        assert "zerocan (Python engine)" in per
        assert ("pyzmq floor" in per) == ("MB array" in workload)
        assert "dask" not in per
        # The unplaced control runs beside the placed C++ engine, on the array workloads.
        if "zerocan (C++ engine)" in per and placed:
            assert ("zerocan (C++, unplaced)" in per) == ("MB array" in workload)
        assert all(t > 0 for t in per.values())
    assert doc["envelope_bytes_ints"] <= 2752
    assert doc["paired_ratio"] == {}  # no ipyparallel, no ratios


def test_shared_bench_quick_reads_arena_arguments_in_place():
    from conftest import cpp_command_missing
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, str(PACKAGE_ROOT / "benchmarks" / "shared_bench.py"),
                          "--quick", "--no-ray", "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    nbytes = [r for r in doc["rows"] if r["section"] == "nbytes"]
    assert [r["size"] for r in nbytes] == [1 << 16, 1 << 20, 64 << 20]
    assert all(r["arena_copied_bytes"] == 0 for r in nbytes)  # references, no copy
    brokered = cpp_command_missing("broker") is None
    for r in nbytes:
        assert ("via broker" in r) == brokered
        assert all(r[k] > 0 for k in ("arena", "ordinary", "tcp", "ipc", "memcpy",
                                      "multiprocessing"))
    echo = [r for r in doc["rows"] if r["section"] == "echo"]
    assert [r["size"] for r in echo] == [16 << 20] and "ray" not in echo[0]
    assert "echo 16 MiB tcp / arena" in doc["ratios"] and doc["ray"] is False
    assert doc["peak_bytes"]["engine (tcp)"] > 0
