"""CurveZMQ from Python (zerocan.curve): against the C++ programs, and a Python engine
with an allow-list, with the C++ `zerocan call` as one of its clients."""
from __future__ import annotations

import subprocess
import time

import pytest

import zerocan
from conftest import cpp_command_missing, free_tcp_endpoint, zerocan_bin

pytestmark = pytest.mark.skipif(not zerocan.curve.available(),
                                reason="libzmq built without CurveZMQ")


def keygen(path) -> str:
    out = subprocess.run([str(zerocan_bin()), "keygen", "--curve", str(path)],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def adds(url: str, timeout: float, **curve) -> bool:
    with zerocan.Client(url, timeout=timeout, **curve) as c:
        try:
            return c.call("add", 1, 2) == 3
        except (zerocan.TimeoutError, zerocan.TransportError):
            return False  # no handshake got through: timed out, or refused at once


@pytest.mark.skipif(cpp_command_missing("keygen") is not None, reason="no zerocan keygen")
def test_python_client_and_a_cpp_engine_with_curve(tmp_path):
    public = keygen(tmp_path / "engine.curve")
    assert zerocan.curve.read_key_file(str(tmp_path / "engine.curve")).public_key == public
    url = free_tcp_endpoint()
    engine = subprocess.Popen([str(zerocan_bin()), "engine", "--bind", url, "--builtins",
                               "--curve-secret-key-file", str(tmp_path / "engine.curve")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not adds(url, 0.2, curve_server_key=public):
            assert time.monotonic() < deadline, "the engine never answered"
        # The key file works as the server key too; plain text and a wrong key never do.
        assert adds(url, 5, curve_server_key=str(tmp_path / "engine.curve"))
        assert not adds(url, 0.5)
        assert not adds(url, 0.5, curve_server_key=zerocan.curve.generate_key_pair().public_key)
    finally:
        engine.kill()
        engine.wait()


def test_a_python_engine_admits_only_listed_clients_cpp_ones_too(tmp_path):
    server = zerocan.curve.generate_key_pair()
    listed_file = tmp_path / "listed.curve"
    subprocess.run([str(zerocan_bin()), "keygen", "--curve", str(listed_file)],
                   capture_output=True, check=True)
    listed = zerocan.curve.read_key_file(str(listed_file))
    allow = tmp_path / "clients.allow"
    allow.write_text(f"# who may call\n{listed_file}\n")
    url = free_tcp_endpoint()
    engine = zerocan.Engine(url, bind=True, builtins=True, curve=server,
                            curve_allowed_clients=zerocan.curve.read_allow_list(str(allow)))
    engine.start()
    try:
        assert adds(url, 10, curve_server_key=server.public_key, curve=listed)
        assert not adds(url, 0.5, curve_server_key=server.public_key)  # a fresh pair
        out = subprocess.run([str(zerocan_bin()), "call", url, "add", "2", "3", "--timeout",
                              "10", "--curve-server-key", server.public_key,
                              "--curve-key-file", str(listed_file)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout == "5\n", out.stderr
    finally:
        engine.stop()


def test_allow_list_files_name_the_line_that_is_wrong(tmp_path):
    good = zerocan.curve.generate_key_pair().public_key
    path = tmp_path / "clients.allow"
    path.write_text(f"{good}\n\nnot-a-key\n")
    with pytest.raises(zerocan.Error, match="line 3"):
        zerocan.curve.read_allow_list(str(path))
    with pytest.raises(zerocan.Error, match="needs curve"):
        zerocan.Engine(free_tcp_endpoint(), bind=True, curve_allowed_clients=[good])


def test_bare_key_starting_with_a_brace_is_a_key(tmp_path):
    # Z85 has '{' in its alphabet (about one key in 85 starts with it): a key file holding
    # such a bare secret key is a key, not malformed JSON.
    brace = None
    for _ in range(100000):
        pair = zerocan.curve.generate_key_pair()
        if pair.secret_key.startswith("{"):
            brace = pair
            break
    assert brace
    key_file = tmp_path / "brace.key"
    key_file.write_text(brace.secret_key + "\n")
    assert zerocan.curve.read_key_file(str(key_file)).public_key == brace.public_key
