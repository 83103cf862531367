"""Encoding and decoding without sockets: every type, the placement and packing rules of
the C++ writer, limits and malformed input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import zerocan
from zerocan import wire
from zerocan.policy import Policy


def roundtrip(value, policy=None, registry=None):
    out = wire.encode_apply("f", [value], policy=policy, registry=registry)
    msg = wire.decode(wire.loopback(out), registry=registry)
    fn, args, kwargs = msg.apply()
    assert fn == "f" and len(args) == 1 and kwargs == {}
    return args[0], out, msg


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**63, 2**64 - 1, 1.5, float("inf"), "",
    "héllo wörld", "x" * 10000, [], [None, "a", 1.5, True], [[1, "a"], [2, "b"]],
    {"a": 1, "b": [1.5, "x"], "c": {"d": None}}, {}, {1: "int key", "s": 2},
])
def test_scalars_and_containers_round_trip(value):
    got, _, _ = roundtrip(value)
    assert got == value
    assert type(got) is type(value)


def test_float_nan_round_trips():
    got, _, _ = roundtrip(float("nan"))
    assert got != got


def test_int_beyond_64_bits_is_refused():
    with pytest.raises(zerocan.EncodeError, match="64 bits"):
        wire.encode_apply("f", [2**64])
    with pytest.raises(zerocan.EncodeError):
        wire.encode_apply("f", [-2**63 - 1])


def test_uint_and_int_kinds_follow_the_value():
    out = wire.encode_apply("f", [5, 2**63, np.uint8(3), np.int16(-3)])
    msg = wire.decode(wire.loopback(out))
    kinds = [a.which() for a in msg.envelope.body.apply.args]
    assert kinds == ["int", "uint", "uint", "int"]


def test_tuples_travel_item_by_item_marked_tuple():
    got, out, msg = roundtrip((1, 2, "x"))
    assert type(got) is tuple and got == (1, 2, "x")
    v = msg.envelope.body.apply.args[0]
    assert v.which() == "list" and v.sequenceType == "tuple"


@pytest.mark.parametrize("values,dtype", [
    (list(range(1000)), np.int64), ([0.5, 1.5, -2.0], np.float64), ([True, False], np.bool_),
])
def test_homogeneous_number_lists_travel_as_typed_arrays_and_come_back_as_lists(values, dtype):
    got, _, msg = roundtrip(values)
    v = msg.envelope.body.apply.args[0]
    assert v.which() == "tensor" and v.sequenceType == "list"
    assert wire.WIRE_DTYPES[v.tensor.dtype.raw] == np.dtype(dtype)
    assert type(got) is list and got == values
    assert [type(x) for x in got] == [type(x) for x in values]


def test_mixed_or_huge_number_lists_stay_lists():
    for values in ([1, 2.0], [1, True], [1, 2**64 - 1], [1, None]):
        got, _, msg = roundtrip(values)
        v = msg.envelope.body.apply.args[0]
        assert v.which() == "list" and v.sequenceType == "unspecified"
        assert type(got) is list and got == values


def same_typed(a, b):
    """Equal, and of the same container types all the way down."""
    if isinstance(b, np.ndarray):
        return type(a) is np.ndarray and a.dtype == b.dtype and np.array_equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_typed(x, y) for x, y in zip(a, b))
    if isinstance(b, dict):
        return list(a) == list(b) and all(same_typed(a[k], b[k]) for k in b)
    return a == b


SEQUENCES = [
    {"a": [1, 2, 3], "t": (1, 2.5), "arr": np.arange(3)},
    [(1, 2), (3, 4)], [], (), [[]], ((),), [0.5, 1.5, -2.0], [True, False, True],
    [1, "x", None, 2.5], (np.arange(3), np.zeros((2, 2))), [np.arange(2)], (1,),
    (1, 2, 3), ([1, 2], (3, 4), [5.0]), {"k": ([True], ("s",))}, [2**64 - 1, 1],
    list(range(100_000)), [float(i) for i in range(1000)],
]


@pytest.mark.parametrize("value", SEQUENCES, ids=range(len(SEQUENCES)))
def test_lists_tuples_and_arrays_round_trip_with_their_type(value):
    got, _, _ = roundtrip(value)
    assert same_typed(got, value), (got, value)


@pytest.mark.parametrize("value", SEQUENCES, ids=range(len(SEQUENCES)))
def test_forwarding_keeps_the_sequence_type(value):
    out = wire.encode_apply("f", [value], header=wire.Header(1, 2, 1, 3))
    again = wire.reencode(wire.decode(wire.loopback(out)))
    assert again.envelope == out.envelope
    assert same_typed(wire.decode(wire.loopback(again)).apply()[1][0], value)


def marked(build, seq):
    """A message whose one argument is written by ``build`` and marked ``seq``."""
    w = wire.Writer()
    a = w.msg.body.init("apply")
    a.function = "f"
    args = a.init("args", 1)
    a.init("kwargs", 0)
    build(w, args[0])
    args[0].sequenceType = seq
    return wire.decode(wire.loopback(w.finish())).apply()[1][0]


def test_readers_map_the_marker_only_where_it_means_something():
    # A typed array marked tuple reads as a tuple; a rank-2 tensor ignores the marker;
    # scalars and maps ignore it; unmarked tensors stay arrays (what C++ writes).
    assert marked(lambda w, v: w.array(v, np.arange(3)), "tuple") == (0, 1, 2)
    got = marked(lambda w, v: w.array(v, np.ones((2, 2))), "list")
    assert type(got) is np.ndarray and got.shape == (2, 2)
    assert marked(lambda w, v: setattr(v, "int", 5), "tuple") == 5
    assert marked(lambda w, v: w.write(v, {"a": 1}, 0), "tuple") == {"a": 1}
    assert type(marked(lambda w, v: w.array(v, np.arange(3)), "unspecified")) is np.ndarray
    assert marked(lambda w, v: w.write(v, [1, "x"], 0), "list") == [1, "x"]


def test_unknown_sequence_type_reads_as_unspecified_and_is_forwarded():
    w = wire.Writer()
    w.set_header(wire.Header(1, 2, 1, 3))
    a = w.msg.body.init("apply")
    a.function = "f"
    args = a.init("args", 2)
    a.init("kwargs", 0)
    w.array(args[0], np.arange(3))
    w.write(args[1], [1, "x"], 0)
    args[0].sequenceType = 7  # from a newer writer
    args[1].sequenceType = 9
    out = w.finish()
    msg = wire.decode(wire.loopback(out))
    got = msg.apply()[1]
    assert type(got[0]) is np.ndarray and got[1] == [1, "x"]
    assert wire.reencode(msg).envelope == out.envelope


def test_bytes_like_inline_and_frame():
    for data in (b"", b"abc", bytearray(b"xyz"), memoryview(b"hello")):
        got, out, _ = roundtrip(data)
        assert not out.frames
        assert bytes(got) == bytes(data)
    big = bytearray(np.random.default_rng(0).integers(0, 255, 100_000, dtype=np.uint8))
    got, out, _ = roundtrip(big)
    assert len(out.frames) == 1
    assert bytes(got) == bytes(big)
    # Zero-copy both ways: the frame is the sender's buffer, the result views it.
    assert np.shares_memory(np.frombuffer(got, np.uint8), np.frombuffer(big, np.uint8))
    assert not got.readonly


def test_strided_memoryview_is_copied_once():
    base = bytes(range(256)) * 100
    mv = memoryview(base)[::2]
    got, _, _ = roundtrip(mv)
    assert bytes(got) == base[::2]


ALL_DTYPES = list(wire.DTYPE_NAMES)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 5)])
def test_every_dtype_and_shape_round_trips(dtype, shape):
    rng = np.random.default_rng(1)
    arr = (rng.integers(0, 100, size=shape) if shape else np.array(rng.integers(0, 100))).astype(dtype)
    got, _, _ = roundtrip(arr)
    assert got.dtype == np.dtype(dtype) and got.shape == arr.shape
    assert np.array_equal(got, arr)
    assert got.flags.writeable


@pytest.mark.parametrize("dtype", ["float64", "int32", "complex128", "float16", "bool"])
def test_large_arrays_are_zero_copy_both_ways(dtype):
    arr = (np.arange(100_000) % 1000).astype(dtype)
    got, out, msg = roundtrip(arr)
    assert len(out.frames) == 1
    assert np.shares_memory(got, arr)  # the frame is the sender's array, the result views it
    assert msg.payloads_copied == 0
    got[0] = 1  # writable view of the received frame


def test_fortran_order_is_kept():
    arr = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    for a in (arr, np.asfortranarray(np.arange(60_000.0).reshape(300, 200))):
        got, out, msg = roundtrip(a)
        assert msg.envelope.body.apply.args[0].tensor.order == "fortran"
        assert np.array_equal(got, a) and got.flags.f_contiguous


def test_non_contiguous_array_costs_one_copy_and_keeps_values():
    base = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    view = base[::2, ::3]
    got, out, _ = roundtrip(view)
    assert np.array_equal(got, view)
    assert not np.shares_memory(out.frames[0], base)


def test_big_endian_arrays_leave_little_endian():
    for arr in (np.arange(10, dtype=">f8"), np.arange(10_000, dtype=">i4")):
        got, out, msg = roundtrip(arr)
        assert msg.envelope.body.apply.args[0].tensor.byteOrder == "little"
        assert np.array_equal(got, arr) and got.dtype.byteorder in "=<|"


def test_big_endian_tensors_from_other_senders_are_read():
    w = wire.Writer()
    w.apply("f", [None], {})
    t = w.msg.body.apply.args[0].init("tensor")
    t.dtype = "int32"
    t.init("shape", 1)[0] = 3
    t.byteOrder = "big"
    t.data.inline = np.array([1, -2, 300], dtype=">i4").tobytes()
    got = wire.decode(wire.loopback(w.finish())).apply()[1][0]
    assert got.dtype == np.int32 and got.tolist() == [1, -2, 300]


def test_unsupported_dtype_is_refused():
    with pytest.raises(zerocan.EncodeError, match="no wire dtype"):
        wire.encode_apply("f", [np.array(["a"])])


# ---- the C++ writer's placement and packing rules ---------------------------------------

def tensor_of(out):
    return wire.decode(wire.loopback(out)).envelope.body.apply.args[0].tensor


@pytest.mark.parametrize("threshold", [64, 4096])
def test_threshold_n_minus_1_inline_n_frame(threshold):
    p = Policy(inline_threshold=threshold)
    below = wire.encode_apply("f", [b"x" * (threshold - 1)], policy=p)
    at = wire.encode_apply("f", [b"x" * threshold], policy=p)
    assert below.frames == [] and len(at.frames) == 1


@pytest.mark.parametrize("values,packing", [
    ([0, 255], "uint8"), ([-1, 127], "int8"), ([0, 256], "uint16"), ([-129, 5], "int16"),
    ([0, 65536], "uint32"), ([-40000, 1], "int32"), ([0, 2**32], "none"), ([-2**31 - 1], "none"),
])
def test_integer_packing_chooses_the_narrowest_type(values, packing):
    arr = np.array(values, dtype=np.int64)
    out = wire.encode_apply("f", [arr])
    t = tensor_of(out)
    assert t.packing == packing
    got = wire.decode(wire.loopback(out)).apply()[1][0]
    assert got.dtype == np.int64 and got.tolist() == values


def test_packing_only_when_narrower_and_below_threshold():
    assert tensor_of(wire.encode_apply("f", [np.array([1, 2], np.uint16)])).packing == "uint8"
    assert tensor_of(wire.encode_apply("f", [np.array([1, 2], np.int8)])).packing == "none"
    assert tensor_of(wire.encode_apply("f", [np.array([300, 2], np.int16)])).packing == "none"
    p = Policy(inline_threshold=100)
    # 99 elements pack to 99 bytes < 100: packed; 100 elements: n >= threshold, not packed.
    assert tensor_of(wire.encode_apply("f", [np.ones(99, np.int64)], policy=p)).packing == "uint8"
    out = wire.encode_apply("f", [np.ones(100, np.int64)], policy=p)
    assert tensor_of(out).packing == "none" and len(out.frames) == 1
    off = Policy(inline_threshold=4096, pack_integers=False)
    assert tensor_of(wire.encode_apply("f", [np.ones(9, np.int64)], policy=off)).packing == "none"


def test_packing_keeps_fortran_memory_order():
    arr = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    got, _, msg = roundtrip(arr)
    assert msg.envelope.body.apply.args[0].tensor.packing == "uint8"
    assert np.array_equal(got, arr)


def test_envelope_of_echo_ints_0_to_999_is_at_most_pickles_2752_bytes():
    out = wire.encode_apply("echo", [list(range(1000))])
    assert len(out.envelope) <= 2752
    assert out.frames == []
    # Still the compact typed array (packed uint16 inline), and still a list on receipt.
    got = wire.decode(wire.loopback(out)).apply()[1][0]
    assert type(got) is list and got == list(range(1000))


def test_envelope_is_one_segment_when_it_fits_the_first_segment():
    out = wire.encode_apply("f", [b"x" * 4000] * 10, policy=Policy(inline_threshold=1 << 20))
    (segments_minus_one,) = struct.unpack_from("<I", out.envelope, 0)
    assert segments_minus_one == 0


# ---- registry -----------------------------------------------------------------------

class Point:
    def __init__(self, x, y, data):
        self.x, self.y, self.data = x, y, data


def test_registry_codec_with_its_own_zero_copy_buffer():
    reg = zerocan.Registry()
    reg.register(Point, "test.Point", lambda p: {"x": p.x, "y": p.y, "data": p.data},
                 lambda s: Point(s["x"], s["y"], s["data"]))
    p = Point(1, 2.5, np.arange(10_000, dtype=np.float32))
    got, out, msg = roundtrip(p, registry=reg)
    assert isinstance(got, Point) and (got.x, got.y) == (1, 2.5)
    assert len(out.frames) == 1 and np.shares_memory(got.data, p.data)
    assert msg.envelope.body.apply.args[0].extension.typeName == "test.Point"
    with pytest.raises(zerocan.EncodeError, match="already registered"):
        reg.register(Point, "other", str, str)
    with pytest.raises(zerocan.EncodeError, match="already registered"):
        reg.register(dict, "test.Point", str, str)


def test_registry_serves_subclasses():
    reg = zerocan.Registry()
    reg.register(Point, "test.Point", lambda p: [p.x, p.y], lambda s: Point(s[0], s[1], None))

    class Sub(Point):
        pass
    got, _, _ = roundtrip(Sub(3, 4, None), registry=reg)
    assert (got.x, got.y) == (3, 4)


def test_unknown_extension_decodes_generic_and_reencodes_identically():
    reg = zerocan.Registry()
    reg.register(Point, "test.Point", lambda p: [p.x, p.y], lambda s: Point(s[0], s[1], None))
    h = wire.Header(1, 2, 1, 3)
    out = wire.encode_apply("f", [Point(1, 2, None)], header=h, registry=reg)
    got = wire.decode(wire.loopback(out)).apply()[1][0]  # default registry: unknown name
    assert isinstance(got, zerocan.Extension) and got.type_name == "test.Point"
    again = wire.encode_apply("f", [got], header=h)
    assert again.envelope == out.envelope


def test_object_without_codec_is_refused_naming_the_type():
    with pytest.raises(zerocan.EncodeError, match="Point"):
        wire.encode_apply("f", [Point(1, 2, None)])


def test_depth_limit_matches_the_decoder():
    v = []
    for _ in range(62):
        v = [v]
    wire.encode_apply("f", [v])  # 63 levels: what the default decoder accepts
    with pytest.raises(zerocan.EncodeError, match="nested deeper"):
        wire.encode_apply("f", [[v]])  # 64 levels


# ---- decoding untrusted input --------------------------------------------------------

def frames_of(value):
    return wire.loopback(wire.encode_apply("f", [value]))


def test_truncated_envelope():
    env = frames_of(1)[0]
    with pytest.raises(zerocan.DecodeError, match="8-byte words"):
        wire.decode([env[:-3]])
    with pytest.raises(zerocan.DecodeError):
        wire.decode([env[:16]]).apply()


def test_missing_frame_and_bad_ranges_name_the_field_path():
    frames = frames_of(np.zeros(1000))
    with pytest.raises(zerocan.DecodeError, match="payload frames"):
        wire.decode(frames[:1])
    with pytest.raises(zerocan.DecodeError, match=r"apply\.args\[0\]\.tensor\.data.*past the end"):
        wire.decode([frames[0], bytes(100)]).apply()
    w = wire.Writer()
    w.apply("f", [None], {})
    t = w.msg.body.apply.args[0].init("tensor")
    t.dtype = "float64"
    t.init("shape", 1)[0] = 3
    t.data.inline = bytes(16)
    with pytest.raises(zerocan.DecodeError, match=r"args\[0\]\.tensor\.shape: 3 float64 needs 24"):
        wire.decode(wire.loopback(w.finish())).apply()


def test_frame_index_out_of_range():
    w = wire.Writer()
    w.apply("f", [None], {})
    ref = w.msg.body.apply.args[0].init("bytes").init("frame")
    ref.index, ref.offset, ref.length = 2, 0, 1
    w.frames.append(b"x")
    with pytest.raises(zerocan.DecodeError, match=r"args\[0\]\.bytes: refers to frame 2"):
        wire.decode(wire.loopback(w.finish())).apply()


def test_wrong_version_is_rejected():
    w = wire.Writer()
    w.msg.version = 2
    w.apply("f", [], {})
    with pytest.raises(zerocan.DecodeError, match="version"):
        wire.decode(wire.loopback(w.finish()))


def test_nesting_too_deep_for_the_limits():
    v = [[[[1]]]]
    with pytest.raises(zerocan.DecodeError, match="max_depth"):
        wire.decode(frames_of(v), limits=wire.DecodeLimits(max_depth=3)).apply()


def test_random_bit_flips_never_crash():
    frames = frames_of({"a": [1, 2.5, "x"], "b": np.arange(5), "c": b"xyz"})
    env = bytearray(frames[0])
    rng = np.random.default_rng(2)
    for _ in range(300):
        bad = bytearray(env)
        for _ in range(3):
            i = int(rng.integers(0, len(bad)))
            bad[i] ^= 1 << int(rng.integers(0, 8))
        try:
            wire.decode([bytes(bad)]).apply()
        except zerocan.DecodeError:
            pass


def test_misaligned_envelope_and_payload_are_copied_once():
    out = wire.encode_apply("f", [np.arange(2000, dtype=np.float64)])
    env = bytearray(len(out.envelope) + 1)
    env[1:] = out.envelope
    payload = bytearray(16001)
    payload[1:] = np.asarray(out.frames[0]).tobytes()
    msg = wire.decode([memoryview(env)[1:], memoryview(payload)[1:]])
    got = msg.apply()[1][0]
    assert msg.envelope_copied and msg.payloads_copied == 1
    assert np.array_equal(got, np.arange(2000.0))


def test_pandas_dataframe_codec_from_the_readme():
    pd = pytest.importorskip("pandas")
    reg = zerocan.Registry()
    reg.register(pd.DataFrame, "pandas.DataFrame",
                 encode=lambda df: {"columns": list(df.columns),
                                    "data": [df[c].to_numpy() for c in df.columns]},
                 decode=lambda s: pd.DataFrame(dict(zip(s["columns"], s["data"]))))
    df = pd.DataFrame({"a": np.arange(10_000.0), "b": np.arange(10_000)})
    got, out, _ = roundtrip(df, registry=reg)
    assert len(out.frames) == 2 and got.equals(df)


def test_decode_error_codes_are_the_cpp_names():
    import re
    from pathlib import Path
    from zerocan.errors import DecodeError
    header = (Path(__file__).resolve().parents[3] / "include" / "zerocan" / "error.h").read_text()
    cpp = re.findall(r'case DecodeError::Code::k\w+: return "(\w+)";', header)
    assert tuple(cpp) == DecodeError.CODES


def test_decode_errors_carry_their_code():
    import numpy as np
    from zerocan import wire
    from zerocan.errors import DecodeError
    w = wire.Writer()
    w.apply("f", [np.arange(100)], {})
    out = w.finish()
    frames = [out.envelope, *out.frames]
    try:
        wire.Message(frames, limits=wire.DecodeLimits(max_envelope_bytes=16))
    except DecodeError as e:
        assert e.code == "limit_exceeded", e
    else:
        raise AssertionError("no DecodeError")
    m = wire.Message(frames)
    try:
        m.result()
    except DecodeError as e:
        assert e.code == "type_mismatch", e
    else:
        raise AssertionError("no DecodeError")
