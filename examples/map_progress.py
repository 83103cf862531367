"""A map with a progress bar, against a broker and two engines on this machine.

    python examples/map_progress.py [N]        # N calls, default 20,000

Written as notebook cells: in Jupyter, paste the cells and use `zerocan.AsyncClient` with
`async for` (shown at the end) or the threaded client as here; tqdm draws its notebook bar
there and a text bar in a terminal. Needs the `zerocan` program (build/zerocan, or
$ZEROCAN_BIN) for the broker and the Python package (clients/python) for the engines.
"""

# %% Start a broker and two engines (each its own process).
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import zerocan

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
ROOT = Path(__file__).resolve().parent.parent
ZEROCAN = os.environ.get("ZEROCAN_BIN", str(ROOT / "build" / "zerocan"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


frontend = f"tcp://127.0.0.1:{free_port()}"
backend = f"tcp://127.0.0.1:{free_port()}"
processes = [subprocess.Popen([ZEROCAN, "broker", "--frontend", frontend, "--backend", backend])]
# One Python engine and one C++ engine: the same built-ins, either answers a call.
processes.append(subprocess.Popen([sys.executable, "-m", "zerocan", "engine",
                                   "--connect", backend, "--builtins"]))
processes.append(subprocess.Popen([ZEROCAN, "engine", "--connect", backend, "--builtins"]))

# %% Map over N items with a progress bar; results come back in order.
try:
    with zerocan.Client(frontend, timeout=30.0) as client:
        deadline = time.monotonic() + 30
        while True:  # until an engine has registered with the broker
            try:
                client.apply_with("add", (0, 0), timeout=1.0).result()
                break
            except zerocan.TimeoutError:
                if time.monotonic() > deadline:
                    raise
        started = time.perf_counter()
        results = list(client.map("add", range(N), range(N), progress=True))
        elapsed = time.perf_counter() - started
        assert results == [2 * i for i in range(N)]
        print(f"{N:,} calls in {elapsed:.2f} s ({N / elapsed:,.0f} calls/s), "
              f"results in order", flush=True)

    # %% The same from asyncio (a Jupyter cell can `await` at the top level).
    import asyncio

    async def main() -> int:
        async with zerocan.AsyncClient(frontend) as client:
            total = 0
            async for r in client.map("add", range(1000), range(1000), ordered=False):
                total += r
            return total

    assert asyncio.run(main()) == 2 * sum(range(1000))
    print("asyncio map: ok")
finally:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(10)
