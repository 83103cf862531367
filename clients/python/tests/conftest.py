"""Shared fixtures: the repository, the C++ `zerocan` program, free endpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
# Test the package next to these tests, not whatever copy an editable install elsewhere
# points at (a path entry is searched before setuptools' editable finder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The tests expect the built-in threshold policy, in this process and in the C++ programs
# they start: a `zerocan tune --write` on this machine must not move payloads between
# envelope and frames under them (tests that exercise the config set their own).
_NO_USER_CONFIG = Path(__file__).resolve().parent / ".no-user-config"
os.environ["XDG_CONFIG_HOME"] = str(_NO_USER_CONFIG)
os.environ.pop("ZEROCAN_INLINE_THRESHOLD", None)


def wait_until(done: Callable[[], Any], seconds: float = 10.0, what: str = "") -> Any:
    """Polls done() until it returns something true (returned) or fails after `seconds`."""
    until = time.monotonic() + seconds
    while True:
        value = done()
        if value:
            return value
        assert time.monotonic() < until, f"timed out waiting for {what or done}"
        time.sleep(0.01)


def settle(read: Callable[[], Any], ok: Callable[[Any], bool], seconds: float = 10.0,
           interval: float = 0.02) -> Any:
    """Reads until ok(value) or the deadline; the last value read (the caller asserts)."""
    until = time.monotonic() + seconds
    while True:
        value = read()
        if ok(value) or time.monotonic() >= until:
            return value
        time.sleep(interval)


def zerocan_bin() -> Path:
    return Path(os.environ.get("ZEROCAN_BIN", str(REPO / "build" / "zerocan")))


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpp_command_missing(command: str) -> Optional[str]:
    """Why the C++ subcommand cannot be used (None when it can)."""
    tool = zerocan_bin()
    if not tool.is_file():
        return f"C++ program not built: {tool} (set ZEROCAN_BIN or build the project)"
    try:
        out = subprocess.run([str(tool), command, "--help"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{tool} {command} --help failed: {e}"
    text = out.stdout + out.stderr
    if out.returncode == 3 or "not implemented yet" in text:
        return f"`zerocan {command}` is not implemented yet in {tool}"
    return None


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module", params=["py", "cpp"])
def builtins_url(request):
    """The endpoint of an engine serving the test built-ins on tcp loopback: a Python
    engine in this process, or the C++ `zerocan engine --builtins` (skipped, saying why,
    when the program is not built)."""
    if request.param == "py":
        import zerocan
        engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True,
                                id="py-engine").start()
        yield engine.endpoint
        engine.stop()
        return
    missing = cpp_command_missing("engine")
    if missing:
        pytest.skip(missing)
    url = free_tcp_endpoint()
    proc = subprocess.Popen([str(zerocan_bin()), "engine", "--bind", url, "--builtins",
                             "--id", "cpp-engine"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield url  # calls sent before it binds wait in the client's queue
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
