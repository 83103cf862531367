"""Message signatures (scheme 3) and replay protection, as the C++ library does them
(include/zerocan/signing.h, include/zerocan/replay.h; docs/SECURITY.md).

A signed message carries one more frame after its payload frames:
``[routing...] [b""] [envelope] [payload 1..N] [signature]``. The signature frame is 40
bytes: ``b"zcsig\\x03\\x00\\x00"``, a 16-byte random nonce and a 16-byte Poly1305 tag.
With C = 1 MiB (CHUNK_SIZE) and D = b"zerocan.poly1305.v3\\0"::

    K       = HMAC-SHA256(key, D + nonce)                            outer one-time key
    K(i, j) = HMAC-SHA256(key, D + nonce + u64le(i) + u64le(j))      chunk j of frame i
    tag = Poly1305(K, u16le(version) || 0^2 || u32le(C) || u64le(n)
                      || for each of the n frames i: u64le(len) || 0^8 ||
                           len <= C: bytes || 0^pad16
                           len >  C: Poly1305(K(i, j), bytes[j*C:(j+1)*C]) for each chunk j)

over every frame after the delimiter (envelope first, signature excluded). HMAC comes
from Python's ``hmac``, Poly1305 from the ``cryptography`` package (OpenSSL), nonces
from ``os.urandom``; tags are compared with ``hmac.compare_digest`` before a byte of the
envelope is parsed. Nothing here is hand-written cryptography. Chunks are MACed one
after another here (the C++ library spreads them over threads; the tags are the same).

Threading: a Signer is immutable; its methods may run on any number of threads at once.
A ReplayGuard locks an internal mutex.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import struct
import threading
import time
from typing import Any, Optional, Sequence, Union

from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import AuthError
from .wire import PROTOCOL_VERSION

SIGNATURE_MAGIC = b"zcsig\x03\x00\x00"  # "zcsig", scheme 3, two reserved zero bytes
NONCE_SIZE = 16
MAC_SIZE = 16
SIGNATURE_FRAME_SIZE = len(SIGNATURE_MAGIC) + NONCE_SIZE + MAC_SIZE  # 40
CHUNK_SIZE = 1 << 20  # zerocan::kSignatureChunkSize: longer frames are MACed in chunks
# Retired schemes, recognised only to name them in the error.
_RETIRED = {b"zcsig\x01\x00\x00": "scheme-1 (HMAC-SHA256)",
            b"zcsig\x02\x00\x00": "scheme-2 (single-pass Poly1305)"}
_DOMAIN = b"zerocan.poly1305.v3\x00"  # NUL included, as the C++ sizeof(kDomain)
_ZEROS = bytes(16)
_LENGTH = struct.Struct("<Q8x")
_HEADER = struct.Struct("<H2xIQ")
_POSITION = struct.Struct("<QQ")

# Verdicts of Signer.check (Signer::Verdict).
OK = "ok"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"

KeyLike = Union[bytes, bytearray, memoryview, str]


def _bytes_view(frame: Any) -> memoryview:
    """A flat byte view of a zmq.Frame, bytes or any C-contiguous buffer (no copy)."""
    buf = getattr(frame, "buffer", None)
    mv = buf if buf is not None else memoryview(frame)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def read_key_file(path: Union[str, os.PathLike]) -> bytes:
    """The secret in a key file, read as ``Signer::ReadKeyFile`` does: JSON with a "key"
    string (a Jupyter connection file works; a "signature_scheme" other than
    "hmac-sha256" is refused), or the raw key with surrounding whitespace removed.
    Raises AuthError("bad key") naming the path."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError:
        raise AuthError("bad key", f"key file {os.fspath(path)}: cannot open") from None
    trimmed = content.strip(b" \t\r\n")
    if trimmed.startswith(b"{"):
        try:
            obj = json.loads(trimmed)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            raise AuthError("bad key", f"key file {os.fspath(path)}: starts with '{{' but is "
                                       "not a JSON object")
        if "signature_scheme" in obj and obj["signature_scheme"] != "hmac-sha256":
            raise AuthError("bad key", f"key file {os.fspath(path)}: signature_scheme "
                                       f"{json.dumps(obj['signature_scheme'])} is not supported "
                                       '(only "hmac-sha256")')
        key = obj.get("key")
        if not isinstance(key, str):
            raise AuthError("bad key", f'key file {os.fspath(path)}: no "key" string')
        trimmed = key.encode("utf-8")
    if not trimmed:
        raise AuthError("bad key", f"key file {os.fspath(path)}: the key is empty")
    return trimmed


class Signer:
    """Signs and verifies messages under one shared secret (``zerocan::Signer``).

    ``key``: any non-empty bytes (a str is taken as its UTF-8 bytes); use 32 random bytes.
    """

    def __init__(self, key: KeyLike) -> None:
        secret = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if not secret:
            raise AuthError("bad key", "signing key is empty")
        # The keyed HMAC state (pads already hashed), copied per message.
        self._kdf = hmac.new(secret, digestmod=hashlib.sha256)

    @classmethod
    def from_key_file(cls, path: Union[str, os.PathLike]) -> "Signer":
        return cls(read_key_file(path))

    def tag(self, frames: Sequence[Any], nonce: bytes) -> bytes:
        """The 16-byte Poly1305 tag of ``frames`` (envelope first) under ``nonce``."""
        kdf = self._kdf.copy()
        kdf.update(_DOMAIN)
        kdf.update(nonce)
        mac = Poly1305(kdf.digest())  # digest() leaves kdf usable for the chunk keys
        mac.update(_HEADER.pack(PROTOCOL_VERSION, CHUNK_SIZE, len(frames)))
        for i, f in enumerate(frames):
            mv = _bytes_view(f)
            n = mv.nbytes
            mac.update(_LENGTH.pack(n))
            if n > CHUNK_SIZE:
                for j, start in enumerate(range(0, n, CHUNK_SIZE)):
                    chunk_kdf = kdf.copy()
                    chunk_kdf.update(_POSITION.pack(i, j))
                    mac.update(Poly1305.generate_tag(chunk_kdf.digest(),
                                                     mv[start:start + CHUNK_SIZE]))
                continue
            if n:
                mac.update(mv)
            if n % 16:
                mac.update(_ZEROS[:16 - n % 16])
        return mac.finalize()

    def unsafe_signature_with_nonce(self, frames: Sequence[Any], nonce: bytes) -> bytes:
        """The signature frame for a caller-chosen nonce: for known-answer tests only.
        Signing two different messages with one nonce lets anyone forge under it."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        return SIGNATURE_MAGIC + bytes(nonce) + self.tag(frames, nonce)

    def signature(self, frames: Sequence[Any]) -> bytes:
        """The signature frame over ``frames`` (envelope first), with a fresh random
        nonce (os.urandom)."""
        return self.unsafe_signature_with_nonce(frames, os.urandom(NONCE_SIZE))

    def check(self, frames: Sequence[Any]) -> str:
        """OK, UNSIGNED or BAD_SIGNATURE for ``frames`` whose last one should be the
        signature; never raises (the cheap test, the last frame's size and magic, first)."""
        if len(frames) < 2:
            return UNSIGNED
        sig = _bytes_view(frames[-1])
        if sig.nbytes != SIGNATURE_FRAME_SIZE or sig[:8] != SIGNATURE_MAGIC:
            return UNSIGNED
        nonce = bytes(sig[8:8 + NONCE_SIZE])
        want = self.tag(frames[:-1], nonce)
        return OK if hmac.compare_digest(want, bytes(sig[8 + NONCE_SIZE:])) else BAD_SIGNATURE

    def verify(self, frames: Sequence[Any]) -> list[Any]:
        """The frames without the signature, or raises AuthError ("unsigned" or
        "bad signature")."""
        verdict = self.check(frames)
        if verdict == OK:
            return list(frames[:-1])
        n = len(frames)
        if verdict == UNSIGNED:
            last = _bytes_view(frames[-1]) if frames else None
            retired = _RETIRED.get(bytes(last[:8])) \
                if last is not None and last.nbytes == SIGNATURE_FRAME_SIZE else None
            if retired is not None:
                raise AuthError("unsigned", f"unsigned message: the last of its {n} frames is a "
                                            f"{retired} signature, which this version no longer "
                                            "accepts (scheme 3: chunked Poly1305)")
            raise AuthError("unsigned", f"unsigned message: a key is set but the last of its {n} "
                                        "frames is not a signature frame")
        raise AuthError("bad signature",
                        f"bad signature: frame {n - 1} does not match the Poly1305 tag of frames "
                        f"0..{n - 2} (altered, reordered, added or dropped frame, or another key)")


def make_signer(key: Optional[KeyLike] = None,
                key_file: Optional[Union[str, os.PathLike]] = None) -> Optional[Signer]:
    """The Signer for a ``key=`` / ``key_file=`` pair of arguments (None when neither)."""
    if key is not None and key_file is not None:
        raise ValueError("give key or key_file, not both")
    if key_file is not None:
        return Signer.from_key_file(key_file)
    return Signer(key) if key is not None else None


class ReplayGuard:
    """Per session id, a sliding window of the last ``window`` sequence numbers; messages
    older than ``max_age`` or more than ``max_clock_skew`` in the future refused; at most
    ``max_sessions`` sessions, each forgotten only after ``session_ttl`` (at least
    max_age + max_clock_skew) without traffic, so a forgotten session's messages are
    already too old. As ``zerocan::ReplayGuard``; times in seconds."""

    def __init__(self, window: int = 1024, max_sessions: int = 16384,
                 max_age: float = 300.0, max_clock_skew: float = 30.0,
                 session_ttl: float = 330.0) -> None:
        self.window = max(64, (window + 63) // 64 * 64)
        self.max_sessions = max(1, max_sessions)
        self.max_age_ns = int(max_age * 1e9)
        self.max_clock_skew_ns = int(max_clock_skew * 1e9)
        self.session_ttl_ns = int(session_ttl * 1e9)
        if self.max_age_ns:
            self.session_ttl_ns = max(self.session_ttl_ns,
                                      self.max_age_ns + self.max_clock_skew_ns)
        self._mask = (1 << self.window) - 1
        # session id -> [highest, seen bits (bit i: highest - i accepted), last_seen_ns];
        # least recently used first.
        self._sessions: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def admit(self, session_id: int, sequence: int, sent_at_ns: int,
              now_ns: int = 0) -> Optional[str]:
        """None when accepted (and recorded), else the AuthError code it is refused with:
        "replayed", "too old", "clock skew" or "too many sessions"."""
        now = now_ns or time.time_ns()
        if sequence == 0:
            return "too old"
        if self.max_age_ns:
            if sent_at_ns == 0:
                return "too old"
            if sent_at_ns > now and sent_at_ns - now > self.max_clock_skew_ns:
                return "clock skew"
            if now > sent_at_ns and now - sent_at_ns > self.max_age_ns:
                return "too old"
        with self._lock:
            self._expire(now)
            s = self._sessions.get(session_id)
            if s is None:
                if len(self._sessions) >= self.max_sessions:
                    return "too many sessions"
                s = self._sessions[session_id] = [0, 0, 0]
            highest, seen = s[0], s[1]
            if sequence > highest:
                s[1] = ((seen << (sequence - highest)) | 1) & self._mask \
                    if sequence - highest < self.window else 1
                s[0] = sequence
            elif highest - sequence >= self.window:
                return "too old"
            else:
                bit = 1 << (highest - sequence)
                if seen & bit:
                    return "replayed"
                s[1] = seen | bit
            s[2] = max(s[2], now)
            self._sessions.move_to_end(session_id)
            return None

    def check(self, session_id: int, sequence: int, sent_at_ns: int, now_ns: int = 0) -> None:
        """As admit, raising AuthError on refusal."""
        code = self.admit(session_id, sequence, sent_at_ns, now_ns)
        if code is not None:
            raise AuthError(code, f"session {session_id:016x} sequence {sequence}: {code}")

    def _expire(self, now: int) -> None:
        if not self.max_age_ns:
            return
        while self._sessions:
            sid, s = next(iter(self._sessions.items()))
            if now < s[2] or now - s[2] <= self.session_ttl_ns:
                break
            del self._sessions[sid]
