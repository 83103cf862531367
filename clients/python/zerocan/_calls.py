"""What the threaded client (client.py) and the asyncio client (aio.py) share: the socket
options, one apply encoded into the frames to send (signature included), and one
received reply checked and decoded into its call id and outcome. Neither owns a socket
or a thread here; each client keeps its own I/O model around these functions.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import zmq

from . import signing, wire
from .errors import DecodeError, remote_error
from .errors import BrokerLost
from .signing import Signer
from .wire import DecodeLimits, Registry

PICKLED_FUNCTION = "zerocan.pickled"  # apply(callable, ...) sends the function by value

# A per-call timeout argument: seconds, None (no deadline) or "default" (the client's).
TimeoutArg = Union[float, None, str]


def configure(sock: zmq.Socket, limits: DecodeLimits) -> None:
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)
    # The policy, not pyzmq's 64 KiB default, decides what is copied: frames we hand to
    # send(copy=False) are payloads at or above the inline threshold.
    sock.copy_threshold = 0


def limit_connections(sock: zmq.Socket, idle_timeout: float, handshake_timeout: float,
                      max_queued_messages: int = 10000) -> None:
    """Bounds the connections of a socket that accepts peers (zerocan::ConnectionLimits):
    a handshake must finish within handshake_timeout seconds, libzmq queues at most
    max_queued_messages per connection, and peers get ZMTP pings every third of
    idle_timeout, with no libzmq timeout: a ConnectionGuard (_guard.py) closes the
    connections from which no byte came for idle_timeout. 0 = no limit."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(handshake_timeout * 1000))
    if idle_timeout > 0:
        ms = int(idle_timeout * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(ms // 3, 1))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1 << 30)  # the guard decides
    sock.setsockopt(zmq.RCVHWM, max_queued_messages)


def payload_frames(out: wire.Outgoing) -> tuple[list[Any], Optional[zmq.MessageTracker]]:
    """The zmq.Frames of an Outgoing's payloads (zero-copy, tracked) and their tracker."""
    if not out.frames:
        return [], None
    frames = [zmq.Frame(buf, copy=False, track=True) for buf in out.frames]
    return frames, zmq.MessageTracker(*frames)


def call_timeout(default: Optional[float], timeout: TimeoutArg) -> Optional[float]:
    """The deadline, in seconds from now, of a call given ``timeout``."""
    return default if isinstance(timeout, str) else timeout


class EncodedCall:
    """One apply ready to send (``send_multipart(parts, copy=True)``): ``parts`` (empty
    delimiter, envelope, payload frames, signature if keyed), its call id, the tracker of
    its zero-copy frames, the (address, length) of each (the caller's own buffers), and
    the arena blocks its shared-memory references name (``wire.Writer.shared_blocks``:
    keep them until the reply) with what placing them cost."""

    __slots__ = ("parts", "call_id", "tracker", "sent_buffers", "shared_blocks",
                 "shared_in_place", "shared_refs", "shared_bytes_copied")

    def __init__(self, parts: list[Any], call_id: int, tracker: Optional[zmq.MessageTracker],
                 sent_buffers: list[tuple[int, int]], writer: wire.Writer) -> None:
        self.parts = parts
        self.call_id = call_id
        self.tracker = tracker
        self.sent_buffers = sent_buffers
        self.shared_blocks = writer.shared_blocks
        self.shared_in_place = writer.shared_in_place
        self.shared_refs = writer.shared_refs
        self.shared_bytes_copied = writer.shared_bytes_copied


def encode_call(header: wire.Header, name: Union[str, Callable[..., Any]],
                args: tuple[Any, ...], kwargs: Optional[dict[str, Any]],
                timeout: Optional[float], policy: Any, registry: Registry,
                signer: Optional[Signer], retries: int = 0,
                stream_credits: int = 0, shared_arena: Any = None) -> EncodedCall:
    """Encodes ``name(*args, **kwargs)`` under ``header``. ``name`` may be a Python
    callable: it is sent by value (cloudpickle) as ``zerocan.pickled``. With
    ``shared_arena`` large payloads travel as references into it (wire.Writer)."""
    if not isinstance(name, str):
        import cloudpickle  # type: ignore[import-untyped]
        args = (cloudpickle.dumps(name), *args)
        name = PICKLED_FUNCTION
    timeout_ms = 0 if timeout is None else max(1, min(int(timeout * 1000), 0xFFFFFFFF))
    w = wire.Writer(policy, registry, shared_arena)
    w.set_header(header)
    w.apply(name, args, kwargs or {}, timeout_ms, retries)
    if shared_arena is not None and not stream_credits:  # the peer shares this host
        w.set_shared_results()
    if stream_credits:  # a stream call (client.stream)
        w.set_stream_credits(stream_credits)
    out = w.finish()
    frames, tracker = payload_frames(out)
    # Addresses, not the frames: a frame object kept here would keep the message alive
    # and the tracker from completing.
    sent = [(wire._address(f.buffer), f.buffer.nbytes) for f in frames]
    # Sent with copy=True: the bytes (delimiter, a small envelope, the signature) are
    # copied into libzmq's messages, the zmq.Frames go as they are. A zero-copy send of a
    # small bytes object would cost more than the copy: libzmq's release of it goes
    # through pyzmq's garbage-collector thread, which then takes the GIL from the sender.
    envelope = out.envelope if len(out.envelope) < zmq.COPY_THRESHOLD else \
        zmq.Frame(out.envelope, copy=False)
    parts: list[Any] = [b"", envelope, *frames]
    if signer is not None:
        # The frames' buffers are read in place (no copy) and no view of them is kept,
        # so the tracker can complete.
        parts.append(signer.signature(parts[1:]))
    return EncodedCall(parts, header.message_id, tracker, sent, w)


def read_reply(parts: list[zmq.Frame], signer: Optional[Signer], limits: DecodeLimits,
               registry: Registry, counters: dict[str, int],
               hellos: bool = False) -> Optional[tuple[int, wire.Message]]:
    """(call id, result message) of a received ``["", envelope, payloads...,
    signature?]``, or None for anything that is not one for a client (counted in
    ``counters["rejected"]`` when refused: malformed, unsigned or forged, undecodable).
    ``hellos``: a peer's hello too, as (0, message)."""
    counters["received"] += 1
    if not parts or parts[0].buffer.nbytes != 0 or len(parts) < 2:
        counters["rejected"] += 1
        return None
    frames = parts[1:]
    if signer is not None:
        # Verified before a byte of the envelope is parsed; refused replies are ignored
        # (their call times out), as zerocan::Client does.
        if len(frames) > limits.max_frames + 1 or signer.check(frames) != signing.OK:
            counters["rejected"] += 1
            return None
        frames = frames[:-1]
    try:
        msg = wire.Message(frames, (), limits, registry)
        if hellos and msg.kind == "hello":
            return 0, msg
        if msg.kind != "result":
            return None  # hellos/heartbeats are not for clients
        call_id = msg.call_id
    except DecodeError:
        counters["rejected"] += 1
        return None
    return call_id, msg


def outcome(msg: wire.Message) -> tuple[Any, Optional[BaseException]]:
    """(result, None) or (None, the exception) of a result message: RemoteError for a
    remote failure, DecodeError for a result that does not decode."""
    try:
        if msg.ok:
            return msg.result(), None
        return None, remote_error(*msg.error())
    except DecodeError as e:
        return None, e


def deliver_to_stream(streams: dict[int, Any], call_id: int, msg: wire.Message) -> bool:
    """Hands a reply to the stream call ``call_id`` if one waits for it (an item, or its
    end or error, which also retires it from ``streams``); False when none does."""
    stream = streams.get(call_id)
    if stream is None:
        return False
    value, err = outcome(msg)
    if msg.stream == "item" and err is None:
        stream._push("item", value)
        return True
    del streams[call_id]
    stream._push("error" if err is not None else "end", err)
    return True


# Items a stream call lets the engine send ahead of the reader (client.stream): the
# client grants more, half a window at a time, as items are read.
DEFAULT_STREAM_CREDITS = 64


def encode_control(header: wire.Header, call_id: int, credit: Optional[int],
                   signer: Optional[Signer]) -> list[Any]:
    """The parts of a cancel (``credit`` None) or a credit of ``credit`` items for call
    ``call_id``."""
    w = wire.Writer()
    w.set_header(header)
    if credit is None:
        w.cancel(call_id)
    else:
        w.credit(call_id, credit)
    parts: list[Any] = [b"", w.finish().envelope]
    if signer is not None:
        parts.append(signer.signature(parts[1:]))
    return parts


def broker_lost(url: str, liveness_s: float, function: str) -> BrokerLost:
    """The error of a call in flight when its connection was lost (both clients)."""
    return BrokerLost(
        "zerocan.BrokerLost",
        f"the connection to {url} was lost while this call was in flight (the broker or "
        f"engine there stopped, restarted, or was silent for {liveness_s:g} s); the call "
        "may or may not have run", function, url)
