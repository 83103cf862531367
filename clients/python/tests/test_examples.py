"""examples/map_progress.py runs as written: a broker, a Python and a C++ engine, a map
with a progress bar (tqdm's text on stderr) and an asyncio map."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cpp_command_missing, zerocan_bin

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "map_progress.py"


def test_map_progress_example_runs():
    why = cpp_command_missing("broker") or cpp_command_missing("engine")
    if why:
        pytest.skip(why)
    pytest.importorskip("tqdm")
    out = subprocess.run([sys.executable, str(EXAMPLE), "3000"], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "ZEROCAN_BIN": str(zerocan_bin())})
    assert out.returncode == 0, out.stderr
    assert "3,000 calls in" in out.stdout and "results in order" in out.stdout
    assert "asyncio map: ok" in out.stdout
    assert "3000/3000" in out.stderr  # the progress bar reached the end
