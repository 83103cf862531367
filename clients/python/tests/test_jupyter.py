"""AsyncClient in a running Jupyter kernel: a real IPython kernel (jupyter_client +
ipykernel) runs cells with top-level ``await`` against an engine in this process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import zerocan

jupyter_client = pytest.importorskip(
    "jupyter_client", reason="jupyter_client is not installed (pip install jupyter_client)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install ipykernel)")

PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def run_cell(kc, code):
    """Runs ``code``; returns (status, stdout text, error text)."""
    out, err = [], []

    def hook(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            (out if content["name"] == "stdout" else err).append(content["text"])
        elif kind == "error":
            err.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(code, timeout=60, output_hook=hook)
    return reply["content"]["status"], "".join(out), "".join(err)


def test_top_level_await_in_a_kernel():
    engine = zerocan.Engine("tcp://127.0.0.1:*", builtins=True, bind=True).start()
    env = dict(os.environ)
    # The kernel imports the package next to these tests, as this process does.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_DIR, env.get("PYTHONPATH")) if p)
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        status, out, err = run_cell(kc, f"""
import zerocan
client = zerocan.AsyncClient({engine.endpoint!r}, timeout=30)
r = await client.apply("add", 2, 3)
many = [r async for r in client.map("add", range(1000), range(1000), ordered=False)]
print("zerocan", zerocan.__file__)
print("result", r, sum(many))
""")
        assert status == "ok", err
        assert f"zerocan {PACKAGE_DIR}" in out, out
        assert "result 5 999000" in out, out
        # The client stays usable from later cells, on the kernel's one loop.
        status, out, err = run_cell(kc, """
try:
    await client.apply("fail", "boom")
except zerocan.RemoteError as e:
    print("remote", e.type, e.message)
client.close()
""")
        assert status == "ok", err
        assert "remote zerocan.Fail boom" in out, out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        engine.stop()
