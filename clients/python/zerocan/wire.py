"""Encoding and decoding zerocan messages (docs/FORMAT.md).

A message on the wire is ``[routing...] [b""] [envelope] [payload frame 1..N]``; the
envelope is one standard Cap'n Proto message (segment table + segments) built with the
builders generated from the schema (``_schema.load()``). Payloads below the policy's
inline threshold are copied into the envelope; the rest travel as frames of their own
without a copy.

Bytes are identical to every other zerocan writer's because this writer follows the
canonical encoding of docs/FORMAT.md ("Canonical encoding"): a first segment of 8192
words, every ``init``/text/data call in the order listed there (an apply allocates its
function name, then the args list, then the kwargs list, then each argument in turn; a
tensor allocates itself, its shape, its payload struct, then its data), and the
placement and packing rules written there.

Decoding reads the envelope in place (pycapnp over the received frame's memory, one
copy when the frame is not word-aligned) and turns payload frames into numpy arrays or
memoryviews that *view* the received frames: writable views (see ``_writable_view``),
never copies, except one copy of a payload misaligned for its element type.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, cast

import numpy as np

from . import _schema
from .errors import DecodeError, EncodeError
from .policy import Policy

PROTOCOL_VERSION = 1
FIRST_SEGMENT_WORDS = 8192  # the canonical first segment (docs/FORMAT.md): 64 KiB
MAX_ENCODE_DEPTH = 64  # = kMaxEncodeDepth
MAX_CAPNP_LIST = (1 << 29) - 1
# Value.sequenceType (docs/FORMAT.md "Sequence type"): which Python sequence a list or
# tensor value was made from; 0 (unspecified) reads as a list / an ndarray.
SEQ_UNSPECIFIED, SEQ_LIST, SEQ_TUPLE = 0, 1, 2

S = _schema.load()
if int(S.protocolVersion) != PROTOCOL_VERSION:  # pragma: no cover - schema/code mismatch
    raise ImportError(f"zerocan: schema protocolVersion {S.protocolVersion} != {PROTOCOL_VERSION}")

# ---- dtypes -------------------------------------------------------------------------

# Index = wire DType enum value.
DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
               "uint64", "float16", "float32", "float64", "complex64", "complex128")
WIRE_DTYPES = tuple(np.dtype(n).newbyteorder("<") for n in DTYPE_NAMES)
_DTYPE_CODE = {(d.kind, d.itemsize): i for i, d in enumerate(WIRE_DTYPES)}

# Packing enum value -> little-endian numpy dtype (0 = none).
_PACKING_NAMES = ("none", "int8", "int16", "int32", "uint8", "uint16", "uint32")
_PACKING_DTYPES = (None,) + tuple(np.dtype(n).newbyteorder("<") for n in _PACKING_NAMES[1:])
# ChoosePacking's order of preference: (packing enum, bytes, lo, hi).
_PACKING_OPTIONS = ((4, 1, 0, 255), (1, 1, -128, 127), (5, 2, 0, 65535),
                    (2, 2, -32768, 32767), (6, 4, 0, 4294967295),
                    (3, 4, -2147483648, 2147483647))


_DTYPE_CACHE: dict[np.dtype, Optional[int]] = {}


def dtype_code(dtype: np.dtype) -> Optional[int]:
    """The wire DType of a numpy dtype (any byte order), or None if it has none."""
    code = _DTYPE_CACHE.get(dtype, -1)
    if code == -1:
        code = _DTYPE_CODE.get((dtype.kind, dtype.itemsize)) if dtype.fields is None else None
        if len(_DTYPE_CACHE) < 256:
            _DTYPE_CACHE[dtype] = code
    return code


def _choose_packing(arr: np.ndarray, item_size: int) -> int:
    lo, hi = int(arr.min()), int(arr.max())
    for packing, size, a, b in _PACKING_OPTIONS:
        if size < item_size and a <= lo and hi <= b:
            return packing
    return 0


# ---- registry -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Codec:
    """How one Python type travels: a wire name shared with other languages, ``encode``
    turning an object into its state (any encodable value; numpy arrays and bytes in it
    travel as zero-copy frames) and ``decode`` turning a received state back."""

    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


class Registry:
    """A dict from Python type to Codec (and from wire name to Codec for decoding).

    Lookups walk the type's MRO, so a codec registered for a base class serves its
    subclasses. Registries are instances; ``Registry.default()`` is the process one.
    """

    _default: Optional["Registry"] = None

    def __init__(self) -> None:
        self.by_type: dict[type, Codec] = {}
        self.by_name: dict[str, Codec] = {}

    def register(self, type_: type, name: str, encode: Callable[[Any], Any],
                 decode: Callable[[Any], Any]) -> Codec:
        if not name:
            raise EncodeError("Registry: a codec needs a non-empty wire name")
        if name in self.by_name:
            raise EncodeError(f'Registry: wire name "{name}" is already registered')
        if type_ in self.by_type:
            raise EncodeError(f"Registry: Python type {type_.__qualname__} is already "
                              f'registered as "{self.by_type[type_].name}"')
        codec = Codec(name, encode, decode)
        self.by_type[type_] = codec
        self.by_name[name] = codec
        return codec

    def find_type(self, type_: type) -> Optional[Codec]:
        codec = self.by_type.get(type_)
        if codec is not None or not self.by_type:
            return codec
        for base in type_.__mro__[1:]:
            codec = self.by_type.get(base)
            if codec is not None:
                return codec
        return None

    def find_name(self, name: str) -> Optional[Codec]:
        return self.by_name.get(name)

    def copy(self) -> "Registry":
        out = Registry()
        out.by_type = dict(self.by_type)
        out.by_name = dict(self.by_name)
        return out

    @classmethod
    def default(cls) -> "Registry":
        if cls._default is None:
            cls._default = Registry()
        return cls._default


def register(type_: type, name: str, encode: Callable[[Any], Any],
             decode: Callable[[Any], Any]) -> Codec:
    """Adds a codec to the default registry (one call per third-party type)."""
    return Registry.default().register(type_, name, encode, decode)


@dataclasses.dataclass
class Extension:
    """A received extension value whose type name this process does not know. It is
    kept as is and re-encodes to the same wire form, so forwarders can pass it on."""

    type_name: str
    state: Any


# ---- header ---------------------------------------------------------------------------

@dataclasses.dataclass
class Header:
    message_id: int = 0
    session_id: int = 0
    sequence: int = 0
    sent_at_ns: int = 0  # 0 = stamp the wall clock at finish()


class Session:
    """Identity of one sender: a random session id and increasing message ids and
    sequence numbers (both start at 1). Not thread-safe; callers hold their own lock."""

    def __init__(self, session_id: Optional[int] = None) -> None:
        self.session_id = session_id if session_id is not None else \
            random.SystemRandom().getrandbits(64)
        self._counter = itertools.count(1)

    def next_header(self) -> Header:
        n = next(self._counter)
        return Header(message_id=n, session_id=self.session_id, sequence=n)


# ---- encoding -------------------------------------------------------------------------

class Outgoing:
    """An encoded message: the envelope bytes and the payload frames (objects exposing
    the buffer protocol, still owned by the caller until the send's tracker is done)."""

    __slots__ = ("envelope", "frames")

    def __init__(self, envelope: bytes, frames: list[Any]) -> None:
        self.envelope = envelope
        self.frames = frames

    def parts(self) -> list[Any]:
        return [self.envelope, *self.frames]


def _contiguous_bytes_view(obj: Any) -> memoryview:
    mv = obj if isinstance(obj, memoryview) else memoryview(obj)
    if not mv.contiguous:
        mv = memoryview(mv.tobytes())  # the one copy a strided view costs
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


class Writer:
    """Builds one envelope in one pass, as ``zerocan::EnvelopeWriter`` does."""

    def __init__(self, policy: Optional[Policy] = None,
                 registry: Optional[Registry] = None, shared_arena: Any = None,
                 shared_returns: Sequence[tuple[str, int, int, int, Any, int]] = ()) -> None:
        """``shared_arena`` (a zerocan.shared.Arena): payloads at or above the threshold
        travel as references into it (Payload.shared), as with C++'s
        Policy::shared_arena: in place when they already lie in it, else copied in once
        (``shared_bytes_copied``), else, when it is full, as frames. ``shared_blocks``
        holds what they refer to; keep it until the receiver is done (the call's reply).
        ``shared_returns`` (a reply's: the call's ``Message.shared_origins``): a payload
        that lies inside one goes back as a reference to the caller's bytes, no copy."""
        self.policy = policy if policy is not None else Policy.default()
        self.registry = registry if registry is not None else Registry.default()
        self.threshold = self.policy.inline_threshold
        self.shared_arena = shared_arena
        self.shared_returns = shared_returns
        self.shared_blocks: list[Any] = []
        # Of those, the caller's own arrays passed in place (not copies made here).
        self.shared_in_place: list[Any] = []
        self.shared_refs = 0
        self.shared_bytes_copied = 0
        self.msg = S.Envelope.new_message(num_first_segment_words=FIRST_SEGMENT_WORDS)
        self.msg.version = PROTOCOL_VERSION
        self.frames: list[Any] = []
        self._finished = False

    # -- envelope bodies (each mirrors the C++ method of the same name) --

    def set_header(self, h: Header) -> None:
        m = self.msg
        m.messageId = h.message_id
        m.sessionId = h.session_id
        m.sequence = h.sequence
        m.sentAtNs = h.sent_at_ns

    def apply(self, function: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              timeout_ms: int = 0, retries: int = 0) -> None:
        a = self.msg.body.init("apply")
        a.function = function
        if len(args) > MAX_CAPNP_LIST or len(kwargs) > MAX_CAPNP_LIST:
            raise EncodeError("too many arguments")
        arg_list = a.init("args", len(args))
        kw_list = a.init("kwargs", len(kwargs))
        a.timeoutMs = timeout_ms
        if retries:
            a.retries = min(int(retries), 0xFFFF)
        write = self.write
        for i, arg in enumerate(args):
            write(arg_list[i], arg, 0)
        for i, (name, value) in enumerate(kwargs.items()):
            field = kw_list[i]
            field.key = name
            write(field.init("value"), value, 0)

    def result(self, call_id: int, engine_id: str, value: Any) -> None:
        r = self.msg.body.init("result")
        r.callId = call_id
        r.engineId = engine_id
        self.write(r.init("ok"), value, 0)

    def error(self, call_id: int, engine_id: str, type_: str, message: str,
              function: str, where: str) -> None:
        r = self.msg.body.init("result")
        r.callId = call_id
        r.engineId = engine_id
        e = r.init("error")
        e.type = type_
        e.message = message
        e.function = function
        e.where = where

    def hello(self, peer_id: str, role: str, functions: Sequence[str] = (),
              host: Optional[tuple[str, int, int]] = None) -> None:
        """``host``: (boot id, network namespace inode, uid), as zerocan.shared.this_host()
        gives it, for peers that may share memory with this process."""
        h = self.msg.body.init("hello")
        h.peerId = peer_id
        h.role = role
        lst = h.init("functions", len(functions))
        for i, f in enumerate(functions):
            lst[i] = f
        if host is not None:
            hh = h.init("host")
            hh.bootId, hh.netns, hh.uid = host

    def heartbeat(self, peer_id: str, now_ns: int) -> None:
        h = self.msg.body.init("heartbeat")
        h.peerId = peer_id
        h.nowNs = now_ns

    def goodbye(self) -> None:
        self.msg.body.goodbye = None

    def started(self, call_id: int) -> None:
        """Engine -> broker: the call ``call_id`` began running."""
        self.msg.body.init("started").callId = call_id

    def draining(self) -> None:
        """Engine -> broker: stopping, send no new calls."""
        self.msg.body.draining = None

    # -- cancel and streams (docs/FORMAT.md "Cancel and streams"); data fields, so
    # setting them allocates nothing and may follow the body's contents --

    def set_shared_results(self) -> None:
        """After ``apply``: the caller reads result payloads in place from arenas of its
        host (Apply.sharedResults; set only when its peer answered its hello from this
        host)."""
        self.msg.body.apply.sharedResults = True

    def set_stream_credits(self, credits: int) -> None:
        """Makes the apply written a stream call granting ``credits`` items at first."""
        # Apply.streamCredits is 16 bits wide: a larger window is the widest there is.
        self.msg.body.apply.streamCredits = min(credits, 0xFFFF)

    def set_stream_part(self, part: str) -> None:
        """Marks the result written as a stream's "item" or "end" (or "none")."""
        self.msg.body.result.stream = part

    def cancel(self, call_id: int) -> None:
        self.msg.body.init("cancel").callId = call_id

    def credit(self, call_id: int, items: int) -> None:
        c = self.msg.body.init("credit")
        c.callId = call_id
        c.items = items

    def finish(self) -> Outgoing:
        if self._finished:
            raise EncodeError("Writer.finish called twice")
        self._finished = True
        m = self.msg
        m.payloadFrames = len(self.frames)
        if m.sentAtNs == 0:
            m.sentAtNs = time.time_ns()
        return Outgoing(m.to_bytes(), self.frames)

    # -- values --

    def write(self, vb: Any, obj: Any, depth: int) -> None:
        """Writes ``obj`` into the Value builder ``vb`` (codec choice as in C++)."""
        fn = _WRITERS.get(type(obj))
        if fn is not None:
            fn(self, vb, obj, depth)
            return
        codec = self.registry.find_type(type(obj)) if self.registry.by_type else None
        if codec is not None:
            self._extension(vb, codec.name, codec.encode(obj), depth)
            return
        if isinstance(obj, np.generic):
            self._numpy_scalar(vb, obj, depth)
        elif isinstance(obj, np.ndarray):
            self.array(vb, obj)
        elif isinstance(obj, Extension):
            self._extension(vb, obj.type_name, obj.state, depth)
        elif isinstance(obj, bool):
            vb.bool = bool(obj)
        elif isinstance(obj, int):
            _write_int(self, vb, int(obj), depth)
        elif isinstance(obj, float):
            vb.float = float(obj)
        elif isinstance(obj, str):
            _write_text(self, vb, str(obj), depth)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            self.bytes(vb, obj)
        elif isinstance(obj, Mapping):
            _write_dict(self, vb, obj, depth)
        elif isinstance(obj, list):
            _write_list(self, vb, obj, depth)
        elif isinstance(obj, tuple):
            _write_tuple(self, vb, obj, depth)
        else:
            raise EncodeError(f"no codec for Python type {type(obj).__module__}."
                              f"{type(obj).__qualname__}: register one with "
                              "zerocan.register(type, name, encode, decode)")

    def copy(self, vb: Any, v: Any, msg: "Message", depth: int = 0) -> None:
        """Re-encodes the received value reader ``v`` of ``msg`` as ``ValueWriter::Copy``
        does: kinds kept exactly (a uint stays a uint, a list of ints stays a list), the
        sequenceType marker kept, payload frames forwarded without a copy (the new
        message references the received frame)."""
        seq = v.sequenceType.raw
        if seq:
            vb.sequenceType = seq
        which = v.which()
        if which == "int":
            vb.int = v.int
        elif which == "float":
            vb.float = v.float
        elif which == "text":
            vb.text = v.text
        elif which == "null":
            vb.null = None
        elif which == "bool":
            vb.bool = v.bool
        elif which == "uint":
            vb.uint = v.uint
        elif which == "bytes":
            p = v.bytes
            if p.which() == "inline":
                data = p.inline
                self.place(vb.init("bytes"), data, len(data))
            else:
                ref = p.frame
                mv = msg._frame_bytes(ref.index, ref.offset, ref.length)
                self.place(vb.init("bytes"), mv, ref.length)
        elif which == "list":
            items = v.list
            _check_depth(depth, len(items), "list")
            lst = vb.init("list", len(items))
            for i, x in enumerate(items):
                self.copy(lst[i], x, msg, depth + 1)
        elif which == "map":
            entries = v.map
            _check_depth(depth, len(entries), "map")
            out = vb.init("map", len(entries))
            for i, e in enumerate(entries):
                o = out[i]
                self.copy(o.init("key"), e.key, msg, depth + 1)
                self.copy(o.init("value"), e.value, msg, depth + 1)
        elif which == "tensor":
            t = v.tensor
            if (t.packing.raw != 0 or t.byteOrder.raw != 0) and t.data.which() == "inline":
                vb.tensor = t  # forwarded exactly as received (inline and small)
                return
            arr = msg.tensor(t, _Path(None, "tensor"))
            self.array(vb, arr, "F" if t.order.raw == 1 else "C")
        elif which == "extension":
            x = v.extension
            if depth + 1 >= MAX_ENCODE_DEPTH:
                raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} levels")
            ext = vb.init("extension")
            ext.typeName = x.typeName
            self.copy(ext.init("state"), x.state, msg, depth + 1)
        else:
            raise EncodeError(f"cannot forward a value of unknown kind {which!r}")

    def _extension(self, vb: Any, name: str, state: Any, depth: int) -> None:
        if depth + 1 >= MAX_ENCODE_DEPTH:
            raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} levels")
        x = vb.init("extension")
        x.typeName = name
        self.write(x.init("state"), state, depth + 1)

    def _numpy_scalar(self, vb: Any, obj: np.generic, depth: int) -> None:
        if isinstance(obj, np.bool_):
            vb.bool = bool(obj)
        elif isinstance(obj, np.signedinteger):
            vb.int = int(obj)
        elif isinstance(obj, np.unsignedinteger):
            vb.uint = int(obj)
        elif isinstance(obj, np.floating):
            vb.float = float(obj)
        else:
            self.array(vb, np.asarray(obj))

    def place(self, pb: Any, data: Any, size: int) -> None:
        """PlacePayload: at or above the threshold a shared-memory reference (with an
        arena) or a frame, else inline (a copy)."""
        if size > 0 and (size >= self.threshold or size > MAX_CAPNP_LIST):
            if self.shared_returns and self._place_returned(pb, data, size):
                return
            if self.shared_arena is not None and self._place_shared(pb, data, size):
                return
            self.frames.append(data)
            ref = pb.init("frame")
            ref.index = len(self.frames)
            ref.offset = 0
            ref.length = size
        else:
            pb.inline = data if type(data) is bytes else bytes(data)

    def _place_returned(self, pb: Any, data: Any, size: int) -> bool:
        address = _address(data)
        for arena, offset, start, length, _, block in self.shared_returns:
            if start <= address and address + size <= start + length:
                ref = pb.init("shared")
                ref.arena = arena
                ref.offset = offset + (address - start)
                ref.length = size
                ref.block = block
                self.shared_refs += 1
                return True
        return False

    def _place_shared(self, pb: Any, data: Any, size: int) -> bool:
        arena = self.shared_arena
        where = arena.locate(data)
        if where is not None:
            block = data  # already in the arena: referred to in place
            self.shared_in_place.append(data)
        else:
            block = arena.allocate(size)
            if block is None:
                return False  # full: a frame
            block[:] = np.frombuffer(data, dtype=np.uint8, count=size)  # the one copy
            self.shared_bytes_copied += size
            where = arena.locate(block)
        ref = pb.init("shared")
        ref.arena = arena.name
        ref.offset, ref.length = where
        ref.block = arena.block_serial(*where)
        self.shared_blocks.append(block)
        self.shared_refs += 1
        return True

    def bytes(self, vb: Any, obj: Any) -> None:
        if type(obj) is bytes:
            self.place(vb.init("bytes"), obj, len(obj))
            return
        mv = _contiguous_bytes_view(obj)
        self.place(vb.init("bytes"), mv, mv.nbytes)

    def array(self, vb: Any, arr: np.ndarray, order: Optional[str] = None) -> None:
        """ValueWriter::Array: a tensor, zero-copy at or above the threshold. ``order``
        ("F") keeps Fortran order for an array that is both C and F contiguous."""
        code = dtype_code(arr.dtype)
        if code is None:
            raise EncodeError(f"array of dtype {arr.dtype} has no wire dtype (register a "
                              "codec for the type that holds it)")
        if order == "F" and arr.flags.f_contiguous:
            fortran = True
        elif arr.flags.c_contiguous:
            fortran = False
        elif arr.flags.f_contiguous:
            fortran = True
        else:
            arr = np.ascontiguousarray(arr)  # the one copy a strided array costs
            fortran = False
        big = arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and
                                              np.little_endian is False)
        nbytes = arr.nbytes
        t = vb.init("tensor")
        t.dtype = code
        shape = arr.shape
        dims = t.init("shape", len(shape))
        for i, d in enumerate(shape):
            dims[i] = d
        if fortran:
            t.order = "fortran"
        item = arr.dtype.itemsize
        threshold = self.threshold
        policy = self.policy
        if big and item > 1:
            # Tensors leave little-endian, as every C++ sender writes them (one copy, like a
            # strided array); readers still accept byteOrder = big from other senders.
            arr = arr.astype(arr.dtype.newbyteorder("<"), order="K")
        if (policy.pack_integers and arr.dtype.kind in "iu" and item > 1
                and nbytes < 8 * threshold):
            n = nbytes // item
            if 0 < n < threshold:
                packing = _choose_packing(arr, item)
                packed_dtype = _PACKING_DTYPES[packing]
                if packed_dtype is not None and n * packed_dtype.itemsize < threshold:
                    t.packing = packing
                    packed = arr.astype(packed_dtype, order="K")
                    t.data.inline = packed.tobytes(order="F" if fortran else "C")
                    return
        if nbytes > 0 and (nbytes >= threshold or nbytes > MAX_CAPNP_LIST):
            flat = arr.reshape(-1, order="F" if fortran else "C")  # a view, no copy
            self.place(t.data, flat.view(np.uint8), nbytes)
        else:
            t.data.inline = arr.tobytes(order="F" if fortran else "C")


def _write_none(w: Writer, vb: Any, obj: Any, depth: int) -> None:
    vb.null = None


def _write_bool(w: Writer, vb: Any, obj: bool, depth: int) -> None:
    vb.bool = obj


def _write_int(w: Writer, vb: Any, obj: int, depth: int) -> None:
    if -(1 << 63) <= obj < (1 << 63):
        vb.int = obj
    elif 0 <= obj < (1 << 64):
        vb.uint = obj
    else:
        raise EncodeError(f"int {obj} does not fit in 64 bits")


def _write_float(w: Writer, vb: Any, obj: float, depth: int) -> None:
    vb.float = obj


def _write_text(w: Writer, vb: Any, obj: str, depth: int) -> None:
    try:
        vb.text = obj
    except UnicodeEncodeError as e:
        raise EncodeError(f"text is not valid UTF-8: {e}") from None


def _write_bytes(w: Writer, vb: Any, obj: Any, depth: int) -> None:
    w.bytes(vb, obj)


def _check_depth(depth: int, n: int, what: str) -> None:
    # The decoder counts an argument as level 1 while writer depth starts at 0.
    if depth + 1 >= MAX_ENCODE_DEPTH:
        raise EncodeError(f"value nested deeper than {MAX_ENCODE_DEPTH} levels")
    if n > MAX_CAPNP_LIST:
        raise EncodeError(f"{what} of {n} elements exceeds the format's bound of "
                          f"{MAX_CAPNP_LIST}")


_TYPED_LIST = {int: np.int64, float: np.float64, bool: np.bool_}


def _write_list(w: Writer, vb: Any, obj: list, depth: int) -> None:
    # A homogeneous list of numbers is a typed array, as a C++ std::vector<int64_t>,
    # std::vector<double> or std::vector<bool> is, marked sequenceType = list so that it
    # reads back as a list; any other list is a list of values, unmarked.
    if obj:
        t0 = type(obj[0])
        np_type = _TYPED_LIST.get(t0)
        if np_type is not None and len(set(map(type, obj))) == 1:
            arr: Optional[np.ndarray]
            try:
                arr = np.array(obj, dtype=np_type)
            except OverflowError:
                arr = None  # an int beyond int64: a list of values instead
            if arr is not None:
                w.array(vb, arr)
                vb.sequenceType = SEQ_LIST
                return
    _write_items(w, vb, obj, depth)


def _write_tuple(w: Writer, vb: Any, obj: Sequence[Any], depth: int) -> None:
    # A tuple is a list of values (never a typed array), marked sequenceType = tuple.
    _write_items(w, vb, obj, depth)
    vb.sequenceType = SEQ_TUPLE


def _write_items(w: Writer, vb: Any, obj: Sequence[Any], depth: int) -> None:
    n = len(obj)
    _check_depth(depth, n, "list")
    lst = vb.init("list", n)
    write = w.write
    for i, item in enumerate(obj):
        write(lst[i], item, depth + 1)


def _write_dict(w: Writer, vb: Any, obj: Mapping[Any, Any], depth: int) -> None:
    n = len(obj)
    _check_depth(depth, n, "map")
    entries = vb.init("map", n)
    write = w.write
    for i, (k, v) in enumerate(obj.items()):
        e = entries[i]
        write(e.init("key"), k, depth + 1)
        write(e.init("value"), v, depth + 1)


def _write_ndarray(w: Writer, vb: Any, obj: np.ndarray, depth: int) -> None:
    w.array(vb, obj)


_WRITERS: dict[type, Callable[[Writer, Any, Any, int], None]] = {
    type(None): _write_none, bool: _write_bool, int: _write_int, float: _write_float,
    str: _write_text, bytes: _write_bytes, bytearray: _write_bytes,
    memoryview: _write_bytes, list: _write_list, tuple: _write_tuple, dict: _write_dict,
    np.ndarray: _write_ndarray,
}


# ---- decoding -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Every bound the decoder enforces; defaults as zerocan::DecodeLimits."""

    max_frames: int = 4096
    max_routing_frames: int = 16
    max_frame_bytes: int = 1 << 30
    max_message_bytes: int = 5 << 28  # 1.25 GiB
    max_envelope_bytes: int = 256 << 20
    traversal_factor: int = 4
    max_depth: int = 64
    max_list_length: int = 1 << 24
    max_rank: int = 32
    max_payload_refs: int = 1 << 20
    max_text_bytes: int = 64 << 20
    # Payload.shared references into a peer's arena on this host (zerocan.shared):
    # "refuse" (a message carrying one is a DecodeError naming the field) or "map" (the
    # arena is mapped read-only and the range checked; arrays arrive read-only).
    shared_refs: str = "refuse"


DEFAULT_LIMITS = DecodeLimits()


class _FrameArray:
    """Exposes a received frame's memory to numpy as a *writable* array.

    pyzmq hands out a received ``zmq.Frame``'s memory as a read-only memoryview, and
    numpy refuses to make a read-only buffer writable. The receiver owns that memory
    (libzmq allocated it for this message and frees it with the Frame), so writing is
    safe; this holder gives numpy the address through ``__array_interface__`` and keeps
    the Frame alive for as long as any array viewing it (``array.base`` is the holder).
    Over ``inproc://`` a received frame may be the sender's own buffer: a write then
    shows on the sender's side too, as with any zero-copy in-process hand-over.
    """

    __slots__ = ("frame", "__array_interface__")

    def __init__(self, frame: Any, address: int, nbytes: int) -> None:
        self.frame = frame
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1",
                                    "data": (address, False)}


def received_frame(obj: Any) -> Any:
    """The received frame (a ``zmq.Frame``) that a decoded numpy array or memoryview
    views, or None when it views no frame (an inline payload, a copy)."""
    seen = 0
    while obj is not None and seen < 64:
        if isinstance(obj, _FrameArray):
            return obj.frame
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        seen += 1
    return None


def _address(buf: Any) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if len(buf) else 0


def _alignment(dtype: np.dtype) -> int:
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


class _Path:
    """A field path built as the walk descends, rendered only for an error message."""

    __slots__ = ("parent", "field", "index")

    def __init__(self, parent: Optional["_Path"], field: Optional[str], index: int = -1):
        self.parent = parent
        self.field = field
        self.index = index

    def render(self) -> str:
        out = self.parent.render() if self.parent is not None else ""
        if self.field is not None:
            out = f"{out}.{self.field}" if out else self.field
        if self.index >= 0:
            out += f"[{self.index}]"
        return out


def _fail(path: _Path, what: str, code: str = "malformed") -> DecodeError:
    return DecodeError(f"{path.render()}: {what}", code)


class Message:
    """A received, decoded message. ``frames`` are the frames after the delimiter (the
    envelope first); ``routing`` the frames before it. Values decoded from it view the
    frames; they keep the frames alive on their own."""

    def __init__(self, frames: Sequence[Any], routing: Sequence[Any] = (),
                 limits: DecodeLimits = DEFAULT_LIMITS,
                 registry: Optional[Registry] = None) -> None:
        self.routing = list(routing)
        self.frames = list(frames)
        self.limits = limits
        self.registry = registry if registry is not None else Registry.default()
        self.envelope_copied = False
        self.payloads_copied = 0
        # Payloads in their sender's arena (Payload.shared): (arena, offset, address of
        # the mapped bytes here, length, the view itself, which keeps them mapped and
        # holds their block, and the block's serial number, SharedRef.block). A
        # reply may hand them back in place (Writer's ``shared_returns``).
        self.shared_origins: list[tuple[str, int, int, int, memoryview, int]] = []
        # Set by a client before reading a result: what each shared-memory view in it
        # keeps alive (the call's own argument blocks, which the result may name).
        self.keep_with_shared: Any = None
        if not self.frames:
            raise DecodeError("message has no envelope frame")
        if len(self.frames) > limits.max_frames:
            raise DecodeError(f"message has {len(self.frames)} frames; max_frames is "
                              f"{limits.max_frames}", "limit_exceeded")
        self._views = [_frame_view(f) for f in self.frames]
        total = 0
        for i, v in enumerate(self._views):
            if v.nbytes > limits.max_frame_bytes:
                raise DecodeError(f"frame {i} has {v.nbytes} bytes; max_frame_bytes is "
                                  f"{limits.max_frame_bytes}", "limit_exceeded")
            total += v.nbytes
        if total > limits.max_message_bytes:
            raise DecodeError(f"message has {total} bytes; max_message_bytes is "
                              f"{limits.max_message_bytes}", "limit_exceeded")
        env = self._views[0]
        size = env.nbytes
        if size > limits.max_envelope_bytes:
            raise DecodeError(f"envelope (frame 0) has {size} bytes; max_envelope_bytes is "
                              f"{limits.max_envelope_bytes}", "limit_exceeded")
        if size < 8 or size % 8:
            raise DecodeError(f"envelope (frame 0): {size} bytes is not a whole number of "
                              "8-byte words (truncated?)")
        if _address(env) % 8:
            env = memoryview(bytearray(env))  # one copy, into fresh (aligned) storage
            if _address(env) % 8:  # pragma: no cover - allocators align to 16
                env = memoryview(env.tobytes())
            self.envelope_copied = True
        words = size // 8
        try:
            self._cm = S.Envelope.from_bytes(
                env, traversal_limit_in_words=limits.traversal_factor * words + 64,
                nesting_limit=2 * limits.max_depth + 16)
            self.envelope = self._cm.__enter__()
            version = self.envelope.version
            self.kind = self.envelope.body.which()
            self._read_body_fields()
        except DecodeError:
            raise
        except Exception as e:  # kj::Exception surfaces as capnp.KjException
            raise DecodeError(f"envelope (frame 0): {e}") from None
        if version != PROTOCOL_VERSION:
            raise DecodeError(f"version: {version} is not protocol version {PROTOCOL_VERSION}", "version")
        pf = self.envelope.payloadFrames
        if pf != len(self.frames) - 1:
            raise DecodeError(f"payloadFrames: envelope announces {pf} payload frames, "
                              f"message has {len(self.frames) - 1}")
        self._payload_refs = 0

    def _read_body_fields(self) -> None:
        """Reads every field of the body that is not a Value, so that the accessors below
        never meet a malformed pointer (values are checked as they are decoded)."""
        body = self.envelope.body
        kind = self.kind
        if kind == "apply":
            a = body.apply
            self._function = a.function
            self._timeout_ms = a.timeoutMs
            self._retries = a.retries
            self._stream_credits = a.streamCredits
            self._shared_results = a.sharedResults
            n = len(a.args) + len(a.kwargs)
            self._length(n, _Path(None, "apply"))
        elif kind == "result":
            r = body.result
            self._call_id = r.callId
            self._engine_id = r.engineId
            self._stream = str(r.stream)
            self._ok = r.which() == "ok"
            if not self._ok:
                e = r.error
                self._error = (e.type, e.message, e.function, e.where)
        elif kind == "hello":
            h = body.hello
            self._hello = (h.peerId, h.role, list(h.functions))
            self._hello_host = ((h.host.bootId, h.host.netns, h.host.uid)
                                if h._has("host") else None)
        elif kind == "heartbeat":
            h = body.heartbeat
            self._heartbeat = (h.peerId, h.nowNs)
        elif kind == "started":
            self._call_id = body.started.callId
        elif kind == "cancel":
            self._target = body.cancel.callId
        elif kind == "credit":
            self._target = body.credit.callId
            self._credit_items = body.credit.items
        elif kind not in ("goodbye", "draining"):
            raise DecodeError(f"body: unknown message kind {kind!r} (sent by a newer "
                              "protocol version?)")

    # -- header --
    @property
    def message_id(self) -> int:
        return self.envelope.messageId

    @property
    def session_id(self) -> int:
        return self.envelope.sessionId

    @property
    def sequence(self) -> int:
        return self.envelope.sequence

    @property
    def sent_at_ns(self) -> int:
        return self.envelope.sentAtNs

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (DecodeError, EncodeError):
            raise
        except Exception as e:  # a KjException from a malformed pointer
            raise DecodeError(f"envelope (frame 0): {e}") from None

    # -- apply --
    def apply(self) -> tuple[str, list[Any], dict[str, Any]]:
        """(function, args, kwargs) of an apply message, decoded."""
        if self.kind != "apply":
            raise DecodeError(f"message is not an apply (it is a {self.kind})", "type_mismatch")

        def run() -> tuple[str, list[Any], dict[str, Any]]:
            a = self.envelope.body.apply
            root = _Path(None, "apply")
            function = self._text(a.function, _Path(root, "function"))
            args_r = a.args
            self._length(len(args_r), _Path(root, "args"))
            args = [self.value(v, _Path(root, "args", i), 1) for i, v in enumerate(args_r)]
            kwargs: dict[str, Any] = {}
            kw_r = a.kwargs
            self._length(len(kw_r), _Path(root, "kwargs"))
            for i, f in enumerate(kw_r):
                p = _Path(root, "kwargs", i)
                kwargs[self._text(f.key, _Path(p, "key"))] = self.value(f.value, _Path(p, "value"), 1)
            return function, args, kwargs
        return self._guard(run)

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise DecodeError(f"message is not a{'n' if kind[0] in 'aeiou' else ''} {kind} "
                              f"(it is a {self.kind})", "type_mismatch")

    @property
    def function(self) -> str:
        self._require("apply")
        return self._function

    @property
    def timeout_ms(self) -> int:
        self._require("apply")
        return self._timeout_ms

    @property
    def retries(self) -> int:
        """Apply.retries: further engines a broker may try if this call's is lost."""
        self._require("apply")
        return self._retries

    @property
    def stream_credits(self) -> int:
        """Items the engine may send ahead; 0 = a plain call."""
        self._require("apply")
        return self._stream_credits

    @property
    def shared_results(self) -> bool:
        """Apply.sharedResults: the caller reads result payloads in shared memory of its
        host."""
        self._require("apply")
        return self._shared_results

    # -- cancel and credit --
    @property
    def target_call_id(self) -> int:
        """The call a cancel or credit names."""
        if self.kind not in ("cancel", "credit"):
            raise DecodeError(f"message is not a cancel or credit (it is a {self.kind})",
                              "type_mismatch")
        return self._target

    @property
    def credit_items(self) -> int:
        self._require("credit")
        return self._credit_items

    # -- result --
    @property
    def stream(self) -> str:
        """"none" (a plain call's result), "item" or "end" (a stream's)."""
        self._require("result")
        return self._stream

    @property
    def call_id(self) -> int:
        """The call a result answers, or a ``started`` message names."""
        if self.kind != "started":
            self._require("result")
        return self._call_id

    @property
    def engine_id(self) -> str:
        self._require("result")
        return self._engine_id

    @property
    def ok(self) -> bool:
        self._require("result")
        return self._ok

    def result(self) -> Any:
        """The ok value of a result message, decoded."""
        self._require("result")
        if not self._ok:
            raise DecodeError("message is not a successful result", "type_mismatch")
        return self._guard(lambda: self.value(self.envelope.body.result.ok,
                                              _Path(_Path(None, "result"), "ok"), 1))

    def error(self) -> tuple[str, str, str, str]:
        """(type, message, function, where) of an error result."""
        self._require("result")
        if self._ok:
            raise DecodeError("message is not an error result", "type_mismatch")
        return self._error

    # -- hello / heartbeat --
    def hello(self) -> tuple[str, str, list[str]]:
        self._require("hello")
        return self._hello

    def hello_host(self) -> Optional[tuple[str, int, int]]:
        """Where a hello's sender runs (as zerocan.shared.this_host() says it), or None
        when it did not say."""
        self._require("hello")
        return self._hello_host

    def heartbeat(self) -> tuple[str, int]:
        self._require("heartbeat")
        return self._heartbeat

    # -- values --
    def _text(self, text: str, path: _Path) -> str:
        if len(text) > self.limits.max_text_bytes:  # characters <= bytes: a cheap bound
            if len(text.encode()) > self.limits.max_text_bytes:
                raise _fail(path, f"text exceeds max_text_bytes {self.limits.max_text_bytes}", "limit_exceeded")
        return text

    def _length(self, n: int, path: _Path) -> None:
        if n > self.limits.max_list_length:
            raise _fail(path, f"length {n} exceeds max_list_length "
                              f"{self.limits.max_list_length}", "limit_exceeded")

    def payload(self, p: Any, path: _Path) -> tuple[Any, int, Optional[int]]:
        """Resolves a Payload: (buffer, address, frame index or None)."""
        self._payload_refs += 1
        if self._payload_refs > self.limits.max_payload_refs:
            raise _fail(path, f"more than max_payload_refs {self.limits.max_payload_refs} "
                              "payload references", "limit_exceeded")
        which = p.which()
        if which == "inline":
            return p.inline, 0, None
        if which == "shared":
            ref = p.shared
            where = _Path(path, "shared")
            if self.limits.shared_refs != "map":
                raise _fail(where, f'a shared-memory reference (arena "{ref.arena}"), which '
                                   "this receiver does not accept (shared memory is off, or the "
                                   "sender is not on this host)")
            from .shared import _held_view, process_segments
            view = process_segments().resolve(ref.arena, ref.offset, ref.length, where.render(),
                                              ref.block)
            self.shared_origins.append((ref.arena, ref.offset, _address(view), ref.length,
                                        view, ref.block))
            if self.keep_with_shared is not None and view.nbytes:
                # A result handed back in the caller's own arena keeps the caller's
                # argument blocks for as long as any array views it.
                view = _held_view(view, self.keep_with_shared)
            return view, 0, -1
        if which != "frame":
            raise _fail(path, "unknown payload kind (from a newer protocol?)")
        ref = p.frame
        index, offset, length = ref.index, ref.offset, ref.length
        n = len(self.frames) - 1
        if index == 0 or index > n:
            raise _fail(path, f"refers to frame {index}, but the message has {n} payload "
                              f"frame{'' if n == 1 else 's'} (valid: 1..{n})")
        view = self._views[index]
        size = view.nbytes
        if length > size or offset > size - length:
            raise _fail(path, f"offset {offset} + length {length} is past the end of frame "
                              f"{index} ({size} bytes)")
        return view, offset, index

    def _frame_bytes(self, index: int, offset: int, length: int) -> memoryview:
        """A writable memoryview of frame[index][offset:offset+length], no copy."""
        view = self._views[index]
        if length == 0:
            return memoryview(bytearray())
        holder = _FrameArray(self.frames[index], _address(view) + offset, length)
        return memoryview(cast(Any, np.asarray(holder)))

    def value(self, v: Any, path: _Path, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise _fail(path, f"values nested deeper than max_depth {self.limits.max_depth}", "limit_exceeded")
        which = v.which()
        if which == "int":
            return v.int
        if which == "float":
            return v.float
        if which == "text":
            return self._text(v.text, _Path(path, "text"))
        if which == "null":
            return None
        if which == "bool":
            return v.bool
        if which == "uint":
            return v.uint
        if which == "tensor":
            arr = self.tensor(v.tensor, _Path(path, "tensor"))
            seq = v.sequenceType.raw
            if seq and arr.ndim == 1:
                # A homogeneous list (or tuple) sent as a typed array: Python scalars back.
                if seq == SEQ_LIST:
                    return arr.tolist()
                if seq == SEQ_TUPLE:
                    return tuple(arr.tolist())
            return arr
        if which == "list":
            items = v.list
            self._length(len(items), path)
            out_list = [self.value(x, _Path(path, None, i), depth + 1)
                        for i, x in enumerate(items)]
            return tuple(out_list) if v.sequenceType.raw == SEQ_TUPLE else out_list
        if which == "map":
            entries = v.map
            self._length(len(entries), path)
            out: dict[Any, Any] = {}
            for i, e in enumerate(entries):
                p = _Path(path, None, i)
                key = self.value(e.key, _Path(p, "key"), depth + 1)
                out[_hashable(key)] = self.value(e.value, _Path(p, "value"), depth + 1)
            return out
        if which == "bytes":
            p = _Path(path, "bytes")
            buf, offset, index = self.payload(v.bytes, p)
            if index is None or index == -1:  # inline, or read-only in shared memory
                return buf
            return self._frame_bytes(index, offset, v.bytes.frame.length)
        if which == "extension":
            x = v.extension
            name = self._text(x.typeName, _Path(path, "typeName"))
            if not name:
                raise _fail(_Path(path, "typeName"), "extension without a type name")
            state = self.value(x.state, _Path(path, "state"), depth + 1)
            codec = self.registry.find_name(name)
            if codec is None:
                return Extension(name, state)
            return codec.decode(state)
        raise _fail(path, f"unknown value kind {which!r} (sent by a newer protocol version?)")

    def tensor(self, t: Any, path: _Path) -> np.ndarray:
        code = t.dtype.raw
        if code >= len(WIRE_DTYPES):
            raise _fail(_Path(path, "dtype"), f"unknown dtype {code}")
        dtype = WIRE_DTYPES[code]
        order = t.order.raw
        if order > 1:
            raise _fail(_Path(path, "order"), f"unknown order {order}")
        byte_order = t.byteOrder.raw
        if byte_order > 1:
            raise _fail(_Path(path, "byteOrder"), f"unknown byte order {byte_order}")
        shape = tuple(t.shape)
        if len(shape) > self.limits.max_rank:
            raise _fail(_Path(path, "shape"), f"rank {len(shape)} exceeds max_rank "
                                              f"{self.limits.max_rank}", "limit_exceeded")
        count = 1
        for d in shape:
            count *= d
        item = dtype.itemsize
        packing = t.packing.raw
        stored = dtype
        data = t.data
        if packing:
            if packing >= len(_PACKING_DTYPES):
                raise _fail(_Path(path, "packing"), f"unknown packing {packing}")
            stored = _PACKING_DTYPES[packing]
            if dtype.kind not in "iu" or stored.itemsize >= item:
                raise _fail(_Path(path, "packing"),
                            f"packing to {stored.itemsize}-byte integers is not narrower "
                            f"than {DTYPE_NAMES[code]}")
            if data.which() != "inline":
                raise _fail(_Path(path, "packing"), "packed tensors must be inline")
        buf, offset, index = self.payload(data, _Path(path, "data"))
        length = len(buf) if index is None or index == -1 else data.frame.length
        if count * stored.itemsize != length:
            dims = "x".join(str(d) for d in shape) or "scalar"
            where = "inline data has" if index is None else f"frame {index} has"
            raise _fail(_Path(path, "shape"), f"{dims} {DTYPE_NAMES[code]} needs "
                                              f"{count * stored.itemsize} bytes, {where} {length}")
        if byte_order == 1:
            stored = stored.newbyteorder(">")
        np_order: Any = "F" if order == 1 else "C"
        if index == -1:
            # In a peer's arena, mapped read-only: a view, no copy (blocks are 64-byte
            # aligned; a misaligned reference is copied, counted).
            raw = np.frombuffer(buf, dtype=np.uint8, count=length)
            if _address(buf) % _alignment(stored):
                self.payloads_copied += 1
                raw = raw.copy()
            arr = raw.view(stored).reshape(shape, order=np_order) if shape else \
                raw.view(stored).reshape(())
        elif index is None:
            # Inline bytes came out of the envelope as a bytes copy; a bytearray makes the
            # array writable without another copy of consequence (inline data is small).
            arr = np.ndarray(shape, stored, buffer=bytearray(buf), order=np_order)
        else:
            address = _address(buf) + offset
            if address % _alignment(stored):
                # A typed view of misaligned memory is undefined behaviour in C; numpy
                # would be slow on it. One copy, counted.
                self.payloads_copied += 1
                raw = np.empty(length, dtype=np.uint8)
                raw[:] = np.frombuffer(buf, dtype=np.uint8, count=length, offset=offset)
            else:
                raw = np.asarray(_FrameArray(self.frames[index], address, length))
            arr = raw.view(stored).reshape(shape, order=np_order) if shape else \
                raw.view(stored).reshape(())
        if packing or byte_order == 1:
            arr = arr.astype(dtype.newbyteorder("="), order="K")
        return arr


def _frame_view(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)
    if buf is None:
        buf = memoryview(frame)
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    return buf


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, np.ndarray):
        return tuple(key.tolist()) if key.ndim else key.item()
    if isinstance(key, (dict, memoryview, bytearray)):
        return bytes(key) if not isinstance(key, dict) else tuple(key.items())
    return key


# ---- forwarding -------------------------------------------------------------------------

def reencode(msg: Message, header: Optional[Header] = None, policy: Optional[Policy] = None,
             registry: Optional[Registry] = None, shared_arena: Any = None) -> Outgoing:
    """Encodes ``msg`` again, body and values copied in order as C++ forwards them
    (``ValueWriter::Copy``): a received message comes out byte for byte identical when
    the header and policy (and ``shared_arena``, for references into it) are the
    sender's."""
    w = Writer(policy, registry, shared_arena)
    w.set_header(header if header is not None else Header(
        msg.message_id, msg.session_id, msg.sequence, msg.sent_at_ns))
    body = msg.envelope.body
    kind = msg.kind
    if kind == "apply":
        a = body.apply
        out = w.msg.body.init("apply")
        out.function = a.function
        args = out.init("args", len(a.args))
        kwargs = out.init("kwargs", len(a.kwargs))
        out.timeoutMs = a.timeoutMs
        out.retries = a.retries
        out.streamCredits = a.streamCredits
        out.sharedResults = a.sharedResults
        for i, v in enumerate(a.args):
            w.copy(args[i], v, msg)
        for i, f in enumerate(a.kwargs):
            kwargs[i].key = f.key
            w.copy(kwargs[i].init("value"), f.value, msg)
    elif kind == "result":
        r = body.result
        if r.which() == "ok":
            out = w.msg.body.init("result")
            out.callId = r.callId
            out.engineId = r.engineId
            w.copy(out.init("ok"), r.ok, msg)
        else:
            w.error(r.callId, r.engineId, *msg.error())
        w.msg.body.result.stream = r.stream
    elif kind == "hello":
        w.hello(*msg.hello())
    elif kind == "heartbeat":
        w.heartbeat(*msg.heartbeat())
    elif kind == "goodbye":
        w.goodbye()
    elif kind == "started":
        w.started(msg.call_id)
    elif kind == "draining":
        w.draining()
    elif kind == "cancel":
        w.cancel(msg.target_call_id)
    elif kind == "credit":
        w.credit(msg.target_call_id, msg.credit_items)
    else:
        raise EncodeError(f"cannot re-encode a message of kind {kind!r}")
    return w.finish()


# ---- one-call helpers -----------------------------------------------------------------

def encode_apply(function: str, args: Sequence[Any] = (), kwargs: Optional[Mapping[str, Any]] = None,
                 header: Optional[Header] = None, timeout_ms: int = 0,
                 policy: Optional[Policy] = None, registry: Optional[Registry] = None) -> Outgoing:
    w = Writer(policy, registry)
    if header is not None:
        w.set_header(header)
    w.apply(function, args, kwargs or {}, timeout_ms)
    return w.finish()


def encode_result(call_id: int, engine_id: str, value: Any, header: Optional[Header] = None,
                  policy: Optional[Policy] = None, registry: Optional[Registry] = None) -> Outgoing:
    w = Writer(policy, registry)
    if header is not None:
        w.set_header(header)
    w.result(call_id, engine_id, value)
    return w.finish()


def encode_error(call_id: int, engine_id: str, type_: str, message: str, function: str,
                 where: str, header: Optional[Header] = None) -> Outgoing:
    w = Writer()
    if header is not None:
        w.set_header(header)
    w.error(call_id, engine_id, type_, message, function, where)
    return w.finish()


def decode(frames: Sequence[Any], limits: DecodeLimits = DEFAULT_LIMITS,
           registry: Optional[Registry] = None) -> Message:
    """Decodes the frames after the delimiter (envelope first)."""
    return Message(frames, (), limits, registry)


def loopback(out: Outgoing) -> list[Any]:
    """The frames a receiver would get for ``out``, without a socket (no copy)."""
    return [out.envelope, *out.frames]


__all__ = [
    "Codec", "DecodeLimits", "Extension", "Header", "Message", "Outgoing", "Registry",
    "Session", "Writer", "decode", "encode_apply", "reencode", "encode_error", "encode_result",
    "loopback", "received_frame", "register", "DTYPE_NAMES", "PROTOCOL_VERSION",
]
