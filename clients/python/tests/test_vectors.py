"""Golden vectors (tests/vectors, made by the C++ encoder): each decodes in Python to the
described value, and Python re-encodes it byte for byte."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import zerocan
from zerocan import shared, wire
from zerocan.policy import Policy

from conftest import REPO

VECTORS = REPO / "tests" / "vectors"
INDEX = VECTORS / "index.json"


def load_index():
    if not INDEX.exists():
        return None
    return json.loads(INDEX.read_text())


def read_frames(path):
    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        assert pos + n <= len(data), f"{path.name}: truncated frame"
        frames.append(data[pos:pos + n])
        pos += n
    return frames


INDEX_DATA = load_index()
NAMES = [v["name"] for v in INDEX_DATA["vectors"]] if INDEX_DATA else []
pytestmark = pytest.mark.skipif(INDEX_DATA is None, reason="tests/vectors/index.json not present")


_VECTOR_ARENA = []  # [arena, its block at offset 0], made once


def vector_arena(v):
    """For a vector in shared memory (``sharedArena`` in index.json): an arena of this
    process under the vector's fixed arena name, holding float64 i * 0.25 from offset 0
    (the C++ tests make the same); None for any other vector."""
    if "sharedArena" not in v:
        return None
    if not _VECTOR_ARENA:
        arena = shared.Arena(64 << 10, _local_name=v["sharedArena"]["name"])
        block = arena.allocate(4096)
        block.view(np.float64)[:] = np.arange(512) * 0.25
        assert arena.locate(block) == (0, 4096)
        _VECTOR_ARENA.extend([arena, block])
    return _VECTOR_ARENA[0]


# References are mapped (from this process's arena of the vector's name, see above).
LIMITS = wire.DecodeLimits(shared_refs="map")


def vector(name):
    v = next(v for v in INDEX_DATA["vectors"] if v["name"] == name)
    vector_arena(v)
    frames = read_frames(VECTORS / v["file"])
    h = v["header"]
    header = wire.Header(h["messageId"], h["sessionId"], h["sequence"], h["sentAtNs"])
    policy = Policy(inline_threshold=v.get("inlineThreshold",
                                           INDEX_DATA["policy"]["inlineThreshold"]),
                    pack_integers=INDEX_DATA["policy"]["packIntegers"])
    return v, frames, header, policy


def arr_eq(a, dtype, values, order="C"):
    assert isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype), (a, dtype)
    assert np.array_equal(a, np.array(values, dtype=dtype))
    if order == "F":
        assert a.flags.f_contiguous


def check_small_apply(msg):
    fn, args, kwargs = msg.apply()
    assert (fn, args, kwargs, msg.timeout_ms) == ("math.add", [1, 2.5], {"round": True}, 250)
    assert type(args[0]) is int and type(args[1]) is float


def check_ints_0_999(msg):
    fn, args, kwargs = msg.apply()
    assert fn == "sum" and kwargs == {}
    arr_eq(args[0], "int64", range(1000))


def check_ints_0_999_packed(msg):
    check_ints_0_999(msg)
    t = msg.envelope.body.apply.args[0].tensor
    assert t.packing == "uint16" and t.data.which() == "inline"
    assert len(msg.frames[0]) <= 2752


def check_text_bytes(msg):
    fn, args, kwargs = msg.apply()
    assert fn == "echo" and args[:2] == ["héllo, wörld", ""]
    assert bytes(args[2]) == bytes(range(16))


def check_nested(msg):
    fn, args, _ = msg.apply()
    assert fn == "nested"
    # A list of bools written value by value stays a list (only typed arrays are arrays).
    assert args[0] == [1, "two", [3.0, None], {"k": [True, False]}]
    m = args[1]
    assert list(m) == ["z", "a", "u"] and m["a"] is None and m["u"] == 2**64 - 1
    arr_eq(m["z"]["b"], "int32", [1, 2])
    assert msg.envelope.body.apply.args[1].map[2].value.which() == "uint"


def check_dtypes(msg):
    fn, args, _ = msg.apply()
    assert fn == "dtypes"
    expected = [("bool", [True, False, True]), ("int8", [-1, 0, 127]),
                ("int16", [-300, 0, 300]), ("int32", [-70000, 0, 70000]),
                ("int64", [-5000000000, 0, 5000000000]), ("uint8", [0, 1, 255]),
                ("uint16", [0, 1, 65535]), ("uint32", [0, 1, 4294967295]),
                ("uint64", [0, 1, 2**64 - 1]), ("float16", [1.0, -2.0, 0.5]),
                ("float32", [1.5, -2.25, 0.0]), ("float64", [1e-300, -0.0, 3.141592653589793]),
                ("complex64", [1 + 2j, -3 - 4j]), ("complex128", [0.5 - 0.25j])]
    assert len(args) == len(expected)
    for a, (dtype, values) in zip(args, expected):
        arr_eq(a, dtype, values)
    assert np.signbit(args[11][1])
    assert args[9].view(np.uint16).tolist() == [0x3C00, 0xC000, 0x3800]


def check_tensor_4k_float64(msg):
    fn, args, kwargs = msg.apply()
    assert fn == "scale" and kwargs == {"factor": 2.0}
    arr_eq(args[0], "float64", (np.arange(512) * 0.5).reshape(16, 32))
    assert msg.envelope.body.apply.args[0].tensor.data.which() == "frame"
    # The tensor views payload frame 1 (no copy).
    assert np.shares_memory(args[0], np.frombuffer(msg.frames[1], np.uint8))


def check_fortran_2x3(msg):
    fn, args, _ = msg.apply()
    assert fn == "transpose"
    arr_eq(args[0], "float64", [[1, 2, 3], [4, 5, 6]], order="F")
    assert args[0].ravel(order="K").tolist() == [1, 4, 2, 5, 3, 6]


def check_extension(msg):
    fn, args, _ = msg.apply()
    assert fn == "plot"
    x = args[0]
    assert isinstance(x, zerocan.Extension) and x.type_name == "example.Point"
    assert x.state == {"x": 1.5, "y": -2.0, "label": "p"}


def check_result_ok(msg):
    assert (msg.kind, msg.call_id, msg.engine_id, msg.ok) == ("result", 4097, "engine-0", True)
    value = msg.result()
    assert list(value) == ["sum", "items"] and value["sum"] == 499500
    arr_eq(value["items"], "int64", [3, 4])
    assert msg.envelope.body.result.ok.map[1].value.tensor.packing == "uint8"


def check_result_error(msg):
    assert (msg.kind, msg.call_id, msg.ok) == ("result", 4098, False)
    assert msg.error() == ("ValueError", "math domain error", "math.sqrt", "engine-0 pid 42")


def check_hello(msg):
    assert msg.kind == "hello"
    assert msg.hello() == ("engine-0", "engine", ["math.add", "sum", "echo"])


def check_heartbeat(msg):
    assert msg.kind == "heartbeat" and msg.heartbeat() == ("client-1", 1700000000123456789)


def check_goodbye(msg):
    assert msg.kind == "goodbye"


def check_started(msg):
    assert msg.kind == "started" and msg.call_id == 4097


def check_draining(msg):
    assert msg.kind == "draining"


def check_apply_retries(msg):
    assert msg.apply() == ("sleep", [0.25], {})
    assert (msg.timeout_ms, msg.retries) == (5000, 2)


def check_cancel(msg):
    assert msg.kind == "cancel" and msg.target_call_id == 4097


def check_credit(msg):
    assert msg.kind == "credit" and (msg.target_call_id, msg.credit_items) == (4097, 32)


def check_shared_tensor(msg):
    ref = msg.envelope.body.apply.args[0].tensor.data.shared
    assert (ref.arena, ref.offset, ref.length) == (
        "zerocan-arena-0-0123456789abcdef0123456789abcdef", 0, 4096)
    fn, args, kwargs = msg.apply()
    assert fn == "sum" and kwargs == {}
    arr_eq(args[0], "float64", np.arange(512) * 0.25)
    assert not args[0].flags.writeable  # read in place, in shared memory


def test_the_shared_vector_is_refused_by_a_receiver_that_takes_no_references():
    _, frames, _, _ = vector("shared_tensor")
    with pytest.raises(zerocan.DecodeError, match=r"apply\.args\[0\]\.tensor\.data\.shared"):
        wire.decode(frames).apply()


def check_stream_apply(msg):
    assert msg.apply() == ("count", [3], {}) and msg.stream_credits == 64


def check_stream_item(msg):
    assert (msg.call_id, msg.engine_id, msg.stream, msg.result()) == (4097, "engine-0", "item", 7)


def check_stream_end(msg):
    assert (msg.call_id, msg.stream, msg.ok, msg.result()) == (4097, "end", True, None)


# The Python values the `sequences` vector holds (docs/FORMAT.md "Sequence type").
SEQUENCES_ARGS = [{"a": [1, 2, 3], "t": (1, 2.5), "arr": np.arange(3, dtype=np.int64)},
                  [(1, 2), (3, 4)], [], (), [0.5, 1.5], [True, False], [1, "x", None],
                  (np.arange(2.0),)]


def check_sequences(msg):
    fn, args, kwargs = msg.apply()
    assert fn == "echo" and kwargs == {}
    d = args[0]
    assert list(d) == ["a", "t", "arr"]
    assert type(d["a"]) is list and d["a"] == [1, 2, 3]
    assert type(d["t"]) is tuple and d["t"] == (1, 2.5) and type(d["t"][1]) is float
    arr_eq(d["arr"], "int64", [0, 1, 2])
    assert args[1] == [(1, 2), (3, 4)] and all(type(x) is tuple for x in args[1])
    assert type(args[2]) is list and args[2] == []
    assert type(args[3]) is tuple and args[3] == ()
    assert type(args[4]) is list and args[4] == [0.5, 1.5]
    assert type(args[5]) is list and args[5] == [True, False] and type(args[5][0]) is bool
    assert args[6] == [1, "x", None]
    assert type(args[7]) is tuple and len(args[7]) == 1
    arr_eq(args[7][0], "float64", [0.0, 1.0])
    a = msg.envelope.body.apply.args
    assert a[0].map[0].value.tensor.packing == "uint8"
    assert [v.sequenceType for v in a] == ["unspecified", "unspecified", "unspecified",
                                           "tuple", "list", "list", "unspecified", "tuple"]


def test_python_writes_the_sequences_vector_from_its_own_values():
    """The literal Python values (not decoded ones) encode to the vector's bytes."""
    _, frames, header, policy = vector("sequences")
    out = wire.encode_apply("echo", SEQUENCES_ARGS, header=header, policy=policy)
    assert out.envelope == frames[0] and out.frames == []


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_vector_has_a_python_check():
    assert set(NAMES) <= set(CHECKS), f"vectors without a Python check: {set(NAMES) - set(CHECKS)}"


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_the_described_value(name):
    v, frames, header, _ = vector(name)
    assert [len(f) for f in frames] == v["frameBytes"]
    msg = wire.decode(frames, LIMITS)
    assert (msg.message_id, msg.session_id, msg.sequence, msg.sent_at_ns) == (
        header.message_id, header.session_id, header.sequence, header.sent_at_ns)
    assert msg.kind == v["body"]
    CHECKS[name](msg)


@pytest.mark.parametrize("name", NAMES)
def test_vector_reencodes_byte_for_byte(name):
    v, frames, header, policy = vector(name)
    out = wire.reencode(wire.decode(frames, LIMITS), header, policy,
                        shared_arena=vector_arena(v))
    assert out.envelope == frames[0]
    assert [bytes(memoryview(f).cast("B")) for f in out.frames] == frames[1:]


# Vectors holding a list of numbers written value by value: Python decodes it to a list,
# and a Python list of numbers is sent as a typed array (as a C++ std::vector is), so only
# the copy-based re-encoding above can reproduce those bytes.
ITEMWISE_NUMBER_LISTS = {"nested"}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ITEMWISE_NUMBER_LISTS])
def test_vector_reencodes_from_python_values(name):
    """The Python values alone (not the wire kinds) re-encode to the same bytes: Python's
    own encoder makes the C++ encoder's choices."""
    v, frames, header, policy = vector(name)
    msg = wire.decode(frames, LIMITS)
    w = wire.Writer(policy, shared_arena=vector_arena(v))
    w.set_header(header)
    if msg.kind == "apply":
        fn, args, kwargs = msg.apply()
        w.apply(fn, args, kwargs, msg.timeout_ms, msg.retries)
        if msg.stream_credits:
            w.set_stream_credits(msg.stream_credits)
    elif msg.kind == "result" and msg.ok:
        w.result(msg.call_id, msg.engine_id, msg.result())
    elif msg.kind == "result":
        w.error(msg.call_id, msg.engine_id, *msg.error())
    if msg.kind == "result" and msg.stream != "none":
        w.set_stream_part(msg.stream)
    if msg.kind == "cancel":
        w.cancel(msg.target_call_id)
    elif msg.kind == "credit":
        w.credit(msg.target_call_id, msg.credit_items)
    elif msg.kind == "hello":
        w.hello(*msg.hello())
    elif msg.kind == "heartbeat":
        w.heartbeat(*msg.heartbeat())
    elif msg.kind == "started":
        w.started(msg.call_id)
    elif msg.kind == "draining":
        w.draining()
    elif msg.kind == "goodbye":
        w.goodbye()
    out = w.finish()
    assert out.envelope == frames[0]
    assert [bytes(memoryview(f).cast("B")) for f in out.frames] == frames[1:]


@pytest.mark.parametrize("name", NAMES)
def test_truncated_or_flipped_vectors_fail_cleanly(name):
    _, frames, _, _ = vector(name)
    env = frames[0]
    for cut in range(0, len(env), 8):
        try:
            wire.decode([env[:cut], *frames[1:]]).apply() if cut else None
        except zerocan.DecodeError:
            pass
    rng = np.random.default_rng(len(env))
    for _ in range(50):
        bad = bytearray(env)
        i = int(rng.integers(0, len(bad)))
        bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            msg = wire.decode([bytes(bad), *frames[1:]])
            if msg.kind == "apply":
                msg.apply()
            elif msg.kind == "result" and msg.ok:
                msg.result()
        except zerocan.DecodeError:
            pass
