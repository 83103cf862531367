"""The threshold policy reads what `zerocan tune --write` writes, and the variable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zerocan.policy import DEFAULT_INLINE_THRESHOLD, Policy, parse_size, read_config


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("ZEROCAN_INLINE_THRESHOLD", raising=False)
    (tmp_path / "zerocan").mkdir()
    return tmp_path / "zerocan" / "threshold.json"


def write(path, doc):
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


@pytest.mark.parametrize("text,value", [("4096", 4096), ("64k", 65536), ("1M", 1 << 20),
                                        ("2GiB", 2 << 30), ("0", 0), ("", None), ("-1", None),
                                        ("12q", None), ("1.5k", None)])
def test_parse_size_like_cpp(text, value):
    assert parse_size(text) == value


def test_missing_file_gives_the_built_in_default(config_home):
    assert Policy.load("tcp://x:1").inline_threshold == DEFAULT_INLINE_THRESHOLD


def test_file_per_transport_then_default(config_home):
    write(config_home, {"format": "zerocan-threshold/1",
                        "inline_threshold": {"inproc": 1024, "tcp": "8k"}, "default": 2048})
    assert Policy.load("tcp://127.0.0.1:5555").inline_threshold == 8192
    assert Policy.load("inproc://x").inline_threshold == 1024
    assert Policy.load("ipc:///tmp/x").inline_threshold == 2048
    assert Policy.load("").inline_threshold == 2048


def test_variable_overrides_the_file(config_home, monkeypatch):
    write(config_home, {"format": "zerocan-threshold/1", "default": 2048})
    monkeypatch.setenv("ZEROCAN_INLINE_THRESHOLD", "100")
    assert Policy.load("tcp://x:1").inline_threshold == 100


def test_invalid_variable_warns_and_falls_back(config_home, monkeypatch):
    write(config_home, {"format": "zerocan-threshold/1", "default": 2048})
    monkeypatch.setenv("ZEROCAN_INLINE_THRESHOLD", "lots")
    with pytest.warns(UserWarning, match="ZEROCAN_INLINE_THRESHOLD"):
        assert Policy.load("tcp://x:1").inline_threshold == 2048


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": "other/1"}',
                                  '{"format": "zerocan-threshold/1", "default": -5}',
                                  '{"format": "zerocan-threshold/1", "inline_threshold": 5}'])
def test_corrupt_file_warns_and_uses_the_default(config_home, text):
    write(config_home, text)
    config, warning = read_config(str(config_home))
    assert config is None and str(config_home) in warning
    with pytest.warns(UserWarning, match="threshold config"):
        assert Policy.load("tcp://x:1").inline_threshold == DEFAULT_INLINE_THRESHOLD


# A receiver process: receives 80 MB frames over tcp (allocated by libzmq's I/O thread,
# larger than a thread arena's 64 MiB heap) and prints the page faults of each receive.
_RECEIVE_FAULTS = r"""
import resource, sys, threading, numpy as np, zmq
import zerocan.policy
print(zerocan.policy.use_reusing_allocator() if sys.argv[1] == "1" else True, flush=True)
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
port = pull.bind_to_random_port("tcp://127.0.0.1")
big = np.ones(80 << 17)  # 80 MiB, sent zero-copy from this process's main thread
push = ctx.socket(zmq.PUSH)
push.connect(f"tcp://127.0.0.1:{port}")
for _ in range(5):  # one message in flight at a time: the previous one is freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    push.send(big, copy=False)
    frame = pull.recv(copy=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, flush=True)
    del frame
push.close(linger=0); pull.close(linger=0); ctx.term()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_reusing_allocator_receives_large_frames_into_reused_memory():
    """With the memory policy on, a large received frame reuses the memory the previous
    one freed (no page faults after the first two), as zerocan::UseReusingAllocator does;
    with glibc's defaults every receive faults in fresh pages."""
    def faults(enable: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _RECEIVE_FAULTS, enable],
                             capture_output=True, text=True, timeout=120, check=True)
        lines = out.stdout.split()
        if lines[0] != "True":
            pytest.skip("mallopt unavailable (not glibc)")
        return [int(x) for x in lines[1:]]

    pages = (80 << 20) // 4096
    reused = faults("1")
    assert max(reused[2:]) < pages // 100, reused
    fresh = faults("0")
    assert min(fresh[2:]) > pages // 2, fresh
