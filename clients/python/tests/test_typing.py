"""The package ships py.typed, so its annotations are a promise: mypy must accept them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zerocan"


def test_package_type_checks(tmp_path):
    # mypy is installed by scripts/setup.sh; its absence fails here rather than skipping.
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path),
                          str(PACKAGE)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
