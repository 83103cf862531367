"""Signature scheme 3 and replay protection in Python (zerocan/signing.py), and signed
calls across languages: a Python client with the key calls a C++ engine with the key,
the C++ client (`zerocan call --key-file`) calls a Python engine with the key, and
anything without the right key is dropped, never answered.

The tests that run the C++ program ($ZEROCAN_BIN) are skipped with the reason when it
lacks the subcommands.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

import zerocan
from zerocan import signing
from conftest import REPO, cpp_command_missing, free_tcp_endpoint, zerocan_bin

KEY = b"zerocan-test-key"
NONCE = bytes(range(16))


def test_tests_run_this_checkout():
    assert Path(zerocan.__file__).resolve().is_relative_to(REPO)


# ---- known answers (docs/SECURITY.md) --------------------------------------------------

def rfc_poly1305(key: bytes, msg: bytes) -> bytes:  # RFC 8439, 2.5.1, in Python integers
    r = int.from_bytes(key[:16], "little") & 0x0ffffffc0ffffffc0ffffffc0fffffff
    s = int.from_bytes(key[16:], "little")
    p, acc = (1 << 130) - 5, 0
    for i in range(0, len(msg), 16):
        acc = (acc + int.from_bytes(msg[i:i + 16] + b"\x01", "little")) * r % p
    return ((acc + s) % (1 << 128)).to_bytes(16, "little")


C = 1 << 20  # chunk size


def reference_tag(key, nonce, frames, version=1):
    """docs/SECURITY.md's script: shares no code with zerocan/signing.py."""
    def one_time(*position):  # the outer key, or chunk (frame, chunk)'s key
        return hmac.new(key, b"zerocan.poly1305.v3\x00" + nonce +
                        struct.pack("<%dQ" % len(position), *position), hashlib.sha256).digest()
    msg = struct.pack("<H2xIQ", version, C, len(frames))
    for i, f in enumerate(frames):
        msg += struct.pack("<Q8x", len(f))
        if len(f) <= C:
            msg += f + bytes(-len(f) % 16)
        else:
            for j in range(0, (len(f) + C - 1) // C):
                msg += rfc_poly1305(one_time(i, j), f[j * C:(j + 1) * C])
    return rfc_poly1305(one_time(), msg)


BIG = bytes((i * 31 + 7) % 251 for i in range((5 << 19) + 3))
KNOWN = [
    (NONCE, [b"hello", b"", b"world!"], "99e13fd75e0e8b7612f6a8722528e703"),
    (b"\xff" * 16, [b"hello", b"", b"world!"], "8e6ef6d85b8a751b455ae14ad0f7a651"),
    # Three chunks, the last 0.5 MiB + 3 bytes; then exactly C bytes (not chunked).
    (NONCE, [b"env", BIG, bytes(1 << 20)], "5532e9980477413bb2114da37650c8b8"),
    # C bytes (not chunked), then C + 1 bytes: two chunks, the second of one byte.
    (NONCE, [bytes(1 << 20), b"\x01" * ((1 << 20) + 1)], "d2efcbd282f0dac63adc321c57f95a0f"),
]


def test_rfc8439_vector():
    k = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    assert rfc_poly1305(k, b"Cryptographic Forum Research Group").hex() == \
        "a8061dc1305136c6c22b8baf0c0127a9"


@pytest.mark.parametrize("i", range(len(KNOWN)))
def test_known_answers(i):
    nonce, frames, want = KNOWN[i]
    signer = zerocan.Signer(KEY)
    assert signer.tag(frames, nonce).hex() == want
    assert reference_tag(KEY, nonce, frames).hex() == want
    frame = signer.unsafe_signature_with_nonce(frames, nonce)
    assert frame == b"zcsig\x03\x00\x00" + nonce + bytes.fromhex(want)
    assert signer.check([*frames, frame]) == signing.OK
    # Any buffer works: zmq.Frames, memoryviews, numpy arrays (no copy needed).
    assert signer.check([zmq.Frame(f) for f in frames] + [memoryview(frame)]) == signing.OK
    assert signer.check([np.frombuffer(f, np.uint8) for f in frames] + [frame]) == signing.OK


def test_str_key_is_its_utf8_bytes():
    assert zerocan.Signer("zerocan-test-key").tag([b"hello", b"", b"world!"], NONCE).hex() == \
        KNOWN[0][2]


def test_nonces_are_fresh():
    s = zerocan.Signer(KEY)
    frames = [b"env", b"payload"]
    a, b = s.signature(frames), s.signature(frames)
    assert len(a) == signing.SIGNATURE_FRAME_SIZE == 40 and a[8:24] != b[8:24]
    assert s.check([*frames, a]) == s.check([*frames, b]) == signing.OK


# ---- refusals --------------------------------------------------------------------------

def signed(frames, key=KEY):
    return [*frames, zerocan.Signer(key).signature(frames)]


def test_every_single_byte_change_is_refused():
    frames = signed([b"envelope-bytes!!", b"p" * 37, b""])
    s = zerocan.Signer(KEY)
    for f in range(len(frames)):
        for pos in range(len(frames[f])):
            for flip in (0x01, 0x80):
                altered = list(frames)
                b = bytearray(altered[f])
                b[pos] ^= flip
                altered[f] = bytes(b)
                want = signing.UNSIGNED if f == len(frames) - 1 and pos < 8 else \
                    signing.BAD_SIGNATURE
                assert s.check(altered) == want, (f, pos, flip)


def test_structural_changes_are_refused():
    a, b, c = b"aaaa", b"bbbb", b"cccc"
    frames = signed([a, b, c])
    sig = frames[-1]
    s = zerocan.Signer(KEY)
    for altered in ([a, c, b, sig], [a, b, sig], [a, b, c, b"", sig], [a, b, c + b"\0", sig],
                    [a, b, c[:-1], sig], [a + b, c, sig], [a, b + c[:2], c[2:], sig]):
        assert s.check(altered) == signing.BAD_SIGNATURE
    assert s.check([a, b, c]) == signing.UNSIGNED
    assert s.check([sig]) == signing.UNSIGNED
    assert zerocan.Signer(b"another key").check(frames) == signing.BAD_SIGNATURE


def test_chunked_frames_are_bound_by_position():
    c = signing.CHUNK_SIZE
    big = b"".join(bytes([k + 1]) * c for k in range(3)) + b"tail"
    frames = signed([b"env", big])
    s = zerocan.Signer(KEY)
    assert s.check(frames) == signing.OK
    swapped = big[c:2 * c] + big[:c] + big[2 * c:]
    for altered in ([b"env", swapped, frames[-1]], [big, b"env", frames[-1]],
                    [b"env", big[:-1] + b"T", frames[-1]], [b"env", big[:-1], frames[-1]]):
        assert s.check(altered) == signing.BAD_SIGNATURE
    # Any buffer type gives the same chunk tags.
    assert s.check([b"env", memoryview(bytearray(big)), frames[-1]]) == signing.OK
    assert s.check([b"env", np.frombuffer(big, np.uint8), frames[-1]]) == signing.OK


def test_verify_strips_or_raises_with_the_cpp_codes():
    s = zerocan.Signer(KEY)
    frames = signed([b"env", b"data"])
    assert s.verify(frames) == [b"env", b"data"]
    with pytest.raises(zerocan.AuthError) as e:
        s.verify([b"env", b"data"])
    assert e.value.code == "unsigned" and "not a signature frame" in str(e.value)
    for scheme in (1, 2):  # retired schemes: unsigned, named
        old = b"zcsig" + bytes([scheme, 0, 0]) + bytes(32)
        assert s.check([b"env", b"data", old]) == signing.UNSIGNED
        with pytest.raises(zerocan.AuthError) as e:
            s.verify([b"env", b"data", old])
        assert e.value.code == "unsigned" and f"scheme-{scheme}" in str(e.value) and \
            "scheme 3" in str(e.value)
    with pytest.raises(zerocan.AuthError) as e:
        s.verify([b"env", b"datA", frames[-1]])
    assert e.value.code == "bad signature"


def test_key_files(tmp_path):
    raw = tmp_path / "raw.key"
    raw.write_bytes(b"  zerocan-test-key\n")
    jupyter = tmp_path / "conn.json"
    jupyter.write_text(json.dumps({"key": "zerocan-test-key", "signature_scheme": "hmac-sha256",
                                   "ip": "127.0.0.1"}))
    for path in (raw, jupyter, str(raw)):
        assert zerocan.Signer.from_key_file(path).tag(KNOWN[0][1], NONCE).hex() == KNOWN[0][2]
    bad = {"empty": b" \n", "scheme": b'{"key": "k", "signature_scheme": "hmac-sha512"}',
           "nokey": b'{"secret": "k"}', "notjson": b"{key: k}", "emptyjson": b'{"key": ""}'}
    for name, content in bad.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(zerocan.AuthError) as e:
            zerocan.Signer.from_key_file(p)
        assert e.value.code == "bad key" and str(p) in str(e.value), name
    with pytest.raises(zerocan.AuthError):
        zerocan.Signer.from_key_file(tmp_path / "missing")
    with pytest.raises(zerocan.AuthError):
        zerocan.Signer(b"")
    with pytest.raises(ValueError):
        zerocan.Client("tcp://127.0.0.1:1", key=KEY, key_file=raw)


def test_replay_guard():
    g = zerocan.ReplayGuard(window=64, max_sessions=2, max_age=10, max_clock_skew=1,
                            session_ttl=0)  # raised to max_age + max_clock_skew
    now = 1_000 * 10**9
    assert g.admit(1, 1, now, now) is None
    assert g.admit(1, 1, now, now) == "replayed"
    assert g.admit(1, 0, now, now) == "too old"
    assert g.admit(1, 3, now, now) is None
    assert g.admit(1, 2, now, now) is None  # out of order inside the window
    assert g.admit(1, 2, now, now) == "replayed"
    assert g.admit(1, 200, now, now) is None
    assert g.admit(1, 200 - 64, now, now) == "too old"  # behind the window
    assert g.admit(1, 200 - 63, now, now) is None
    assert g.admit(1, 201, now - 11 * 10**9, now) == "too old"
    assert g.admit(1, 201, now + 2 * 10**9, now) == "clock skew"
    assert g.admit(1, 201, 0, now) == "too old"
    assert g.admit(2, 1, now, now) is None
    assert g.admit(3, 1, now, now) == "too many sessions"
    later = now + 12 * 10**9  # past session_ttl (max_age + skew): sessions forgotten
    assert g.admit(3, 1, later, later) is None and g.session_count() == 1
    with pytest.raises(zerocan.AuthError) as e:
        g.check(3, 1, later, later)
    assert e.value.code == "replayed"


# ---- Python client <-> Python engine over a socket -------------------------------------

def wait_ready(client, seconds=20.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert client.apply_with("echo", ("ready",), timeout=0.5).result() == "ready"
            return
        except zerocan.TimeoutError:
            if time.monotonic() > deadline:
                raise


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def py_engine():
    engine = zerocan.Engine(free_tcp_endpoint(), builtins=True, bind=True, id="py-signed", key=KEY).start()
    yield engine
    engine.stop()


def test_python_client_python_engine_signed(py_engine):
    # Frames, not shared memory: the payload frame is what the signature must cover here.
    with zerocan.Client(py_engine.endpoint, key=KEY.decode(), timeout=10,
                        shared_memory=False) as c:
        wait_ready(c)
        a = np.arange(100_000, dtype=np.float64)
        assert np.array_equal(c.apply("echo", a).result(), a)
        assert c.call("add", 2, 3) == 5
        with pytest.raises(zerocan.RemoteError):
            c.call("fail", "boom")  # error replies are signed too
        assert c.counters["rejected"] == 0
    assert py_engine.counters["refused"] == 0


@pytest.mark.parametrize("key", [None, b"wrong key"])
def test_python_engine_drops_unsigned_and_wrong_key(py_engine, key):
    with zerocan.Client(py_engine.endpoint, key=key, timeout=0.5) as c:
        for _ in range(3):
            with pytest.raises(zerocan.TimeoutError):
                c.call("add", 1, 2)
        assert c.counters["received"] == 0  # never answered
    # The three calls and the client's hello (shared memory): none signed with the key.
    assert wait_for(lambda: py_engine.counters["refused"] == 4)
    assert py_engine.counters["calls"] == 0


def test_signed_client_ignores_unsigned_replies():
    engine = zerocan.Engine(free_tcp_endpoint(), bind=True).start()  # no key
    try:
        # No hello (shared_memory=False): the one message is the call.
        with zerocan.Client(engine.endpoint, key=KEY, timeout=0.5, shared_memory=False) as c:
            with pytest.raises(zerocan.TimeoutError):
                c.call("add", 1, 2)
            assert c.counters["rejected"] == 1
        # It answered, unsigned: a DecodeError (the signature is one frame more than the
        # envelope announces), which the client dropped unread.
        assert engine.counters["errors"] == 1
    finally:
        engine.stop()


def raw_dealer(endpoint):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def test_python_engine_refuses_a_tampered_byte_and_a_replay(py_engine):
    sock = raw_dealer(py_engine.endpoint)
    try:
        payload = np.arange(4096, dtype=np.uint8)  # above the inline threshold: a frame
        out = zerocan.encode_apply("nbytes", (payload,), header=zerocan.Header(1, 77, 1))
        frames = signed([out.envelope, *[bytes(memoryview(f).cast("B")) for f in out.frames]])
        assert len(frames) == 3
        for f in range(len(frames)):
            altered = list(frames)
            b = bytearray(altered[f])
            b[len(b) // 2] ^= 0x01
            altered[f] = bytes(b)
            sock.send_multipart([b"", *altered])
        assert wait_for(lambda: py_engine.counters["refused"] == 3)
        assert sock.poll(300) == 0  # none answered
        sock.send_multipart([b"", *frames])  # the genuine one
        assert sock.poll(5000)
        reply = sock.recv_multipart()
        msg = zerocan.decode(zerocan.Signer(KEY).verify(reply[1:]))
        assert msg.result() == 4096
        sock.send_multipart([b"", *frames])  # the same again: verifies, then replayed
        assert wait_for(lambda: py_engine.counters["refused"] == 4)
        assert sock.poll(300) == 0
        assert py_engine.counters["calls"] == 1
    finally:
        sock.close()


# ---- across languages ------------------------------------------------------------------

CPP_MISSING = next((r for r in (cpp_command_missing(c) for c in ("engine", "call", "broker"))
                    if r), None)
needs_cpp = pytest.mark.skipif(CPP_MISSING is not None, reason=CPP_MISSING or "")


@pytest.fixture
def key_file(tmp_path):
    # A Jupyter-style connection file, as both the C++ tools and Python read it.
    p = tmp_path / "engine.key"
    p.write_text(json.dumps({"key": KEY.decode(), "signature_scheme": "hmac-sha256"}))
    return p


def run_call(url, *args, timeout=10):
    out = subprocess.run([str(zerocan_bin()), "call", url, *args, "--timeout", str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 30)
    return out.returncode, out.stdout.strip(), out.stderr


@pytest.fixture
def cpp_engine(key_file):
    url = free_tcp_endpoint()
    p = subprocess.Popen([str(zerocan_bin()), "engine", "--bind", url, "--id", "cpp-signed", "--builtins",
                          "--key-file", str(key_file)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    state = {"url": url, "proc": p}
    yield state
    if p.poll() is None:
        p.kill()
    p.wait(10)


def stop_engine(proc):
    """SIGTERM; the engine's (calls, errors) from its last stderr line, and its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    m = re.search(r"stopped after (\d+) calls \((\d+) errors\)", err)
    assert m, err
    return int(m.group(1)), int(m.group(2)), err


@needs_cpp
def test_python_client_with_key_calls_cpp_engine_with_key(cpp_engine, key_file):
    # A 2 MiB frame each way, signed in chunks across the languages (not shared memory).
    with zerocan.Client(cpp_engine["url"], key_file=str(key_file), timeout=20,
                        shared_memory=False) as c:
        wait_ready(c)
        a = np.random.default_rng(0).random(1 << 18)
        r = c.apply("echo", a).result()
        assert np.array_equal(r, a)
        assert c.call("add", 2, 3) == 5
        assert c.call("nbytes", np.zeros(1000), b"abc") == 8003
        with pytest.raises(zerocan.RemoteError) as e:
            c.call("fail", "boom")
        assert (e.value.type, e.value.where) == ("zerocan.Fail", "cpp-signed")
        assert c.counters["rejected"] == 0
    calls, errors, err = stop_engine(cpp_engine["proc"])
    assert errors == 1, err  # the fail() call only


@needs_cpp
@pytest.mark.parametrize("key", [None, b"wrong key"])
def test_cpp_engine_drops_python_calls_without_the_key(cpp_engine, key_file, key):
    with zerocan.Client(cpp_engine["url"], key_file=str(key_file), timeout=20) as good:
        wait_ready(good)  # the engine is up
    with zerocan.Client(cpp_engine["url"], key=key, timeout=0.5) as c:
        for _ in range(3):
            with pytest.raises(zerocan.TimeoutError):
                c.call("add", 1, 2)
        assert c.counters["received"] == 0  # never answered
    calls, errors, err = stop_engine(cpp_engine["proc"])
    # The C++ engine counts refused messages as errors (src/engine.cc), not as calls: the
    # three calls and the client's hello (shared memory).
    assert errors == 4, err


@needs_cpp
def test_python_client_tampered_byte_to_cpp_engine_is_dropped(cpp_engine, key_file):
    with zerocan.Client(cpp_engine["url"], key_file=str(key_file), timeout=20) as good:
        wait_ready(good)
    sock = raw_dealer(cpp_engine["url"])
    try:
        out = zerocan.encode_apply("add", (1, 2), header=zerocan.Header(1, 99, 1))
        frames = signed([out.envelope])
        b = bytearray(frames[0])
        b[-1] ^= 0x01
        sock.send_multipart([b"", bytes(b), frames[1]])
        assert sock.poll(500) == 0
        sock.send_multipart([b"", *frames])
        assert sock.poll(5000)
        msg = zerocan.decode(zerocan.Signer(KEY).verify(sock.recv_multipart()[1:]))
        assert msg.result() == 3
    finally:
        sock.close()
    calls, errors, err = stop_engine(cpp_engine["proc"])
    assert errors == 1, err


@needs_cpp
def test_cpp_client_with_key_calls_python_engine_with_key(key_file):
    engine = zerocan.Engine(free_tcp_endpoint(), builtins=True, bind=True, id="py-signed",
                            key_file=str(key_file)).start()
    try:
        code, out, err = run_call(engine.endpoint, "add", "2", "3", "--key-file", str(key_file))
        assert (code, out) == (0, "5"), err
        code, out, err = run_call(engine.endpoint, "echo", '[1, "a", null]', "--key-file",
                                  str(key_file))
        assert (code, json.loads(out)) == (0, [1, "a", None]), err
        code, out, err = run_call(engine.endpoint, "sum",
                                  json.dumps({"dtype": "float64", "shape": [600],
                                              "data": list(range(600))}),
                                  "--key-file", str(key_file))
        assert (code, out) == (0, "179700.0"), err
        assert engine.counters["refused"] == 0
        # Without the key, or with another one: dropped, counted, the call times out.
        code, out, err = run_call(engine.endpoint, "add", "2", "3", timeout=1)
        assert code == 1 and out == "", err
        other = key_file.parent / "other.key"
        other.write_text("another key\n")
        code, out, err = run_call(engine.endpoint, "add", "2", "3", "--key-file", str(other),
                                  timeout=1)
        assert code == 1 and out == "", err
        # Each call and each client's hello (shared memory): none signed with the key.
        assert wait_for(lambda: engine.counters["refused"] == 4)
        assert engine.counters["calls"] == 3
    finally:
        engine.stop()


@needs_cpp
def test_python_engine_with_key_behind_cpp_broker_with_key(key_file):
    """The broker checks the engine's hello and heartbeats against its key."""
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    broker = subprocess.Popen([str(zerocan_bin()), "broker", "--frontend", front, "--backend",
                               back, "--key-file", str(key_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = zerocan.Engine(back, builtins=True, id="py-signed", heartbeat=0.1, key=KEY).start()
    try:
        with zerocan.Client(front, key=KEY, timeout=20) as c:
            wait_ready(c)
            assert c.call("add", 2, 3) == 5
        code, out, err = run_call(front, "add", "2", "3", "--key-file", str(key_file))
        assert (code, out) == (0, "5"), err
    finally:
        engine.stop()
        broker.terminate()
        broker.wait(10)
