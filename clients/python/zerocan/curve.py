"""CurveZMQ encryption and client allow-lists (the C++ zerocan/curve.h; docs/SECURITY.md).

zerocan does not encrypt anything itself: when both ends set Curve keys, libzmq encrypts
every frame. A server (an engine that binds) needs a key pair; a client needs the
server's public key and any key pair of its own. Keys are Z85 text, 40 characters. Key
files are the C++ programs' (``zerocan keygen --curve FILE``): JSON with ``public_key``
and ``secret_key``, or a bare secret key.

    keys = zerocan.curve.read_key_file("engine.curve")
    engine = zerocan.Engine("tcp://0.0.0.0:5555", bind=True, curve=keys,
                            curve_allowed_clients=["alice.curve"])
    client = zerocan.Client("tcp://host:5555", curve_server_key=keys.public_key,
                            curve=zerocan.curve.read_key_file("alice.curve"))
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Optional, Union

import zmq
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from .errors import Error


@dataclasses.dataclass(frozen=True)
class CurveKeyPair:
    public_key: str  # Z85, 40 characters
    secret_key: str  # Z85, 40 characters ("" for a public key alone)


def available() -> bool:
    """Whether this libzmq was built with CurveZMQ."""
    return bool(zmq.has("curve"))


def _is_z85_key(key: str) -> bool:
    try:
        return len(key) == 40 and len(zmq.utils.z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _check_z85(key: str, what: str) -> str:
    if not _is_z85_key(key):
        raise Error(f"{what}: not a Z85 Curve key ({len(key)} characters; expected 40)")
    return key


def generate_key_pair() -> CurveKeyPair:
    public, secret = zmq.curve_keypair()
    return CurveKeyPair(public.decode(), secret.decode())


def public_key_of(secret_key: str) -> str:
    return zmq.curve_public(_check_z85(secret_key, "secret key").encode()).decode()


def read_key_file(path: str) -> CurveKeyPair:
    """A key file: JSON {"public_key", "secret_key"} (the public one derived when missing)
    or a bare secret key. Raises Error naming the path and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise Error(f"curve key file {path}: cannot open ({e.strerror})") from None
    public, secret = "", ""
    # Z85 has '{' in its alphabet: a file that is one key is a bare key before it is JSON.
    if text.startswith("{") and not _is_z85_key(text):
        try:
            data = json.loads(text)
        except ValueError:
            raise Error(f"curve key file {path}: not a JSON object") from None
        for field in ("public_key", "secret_key"):
            value = data.get(field, "")
            if not isinstance(value, str):
                raise Error(f"curve key file {path}: {field} is not a string")
            if value:
                _check_z85(value, f"curve key file {path}: {field}")
        public, secret = data.get("public_key", ""), data.get("secret_key", "")
    else:
        secret = _check_z85(text, f"curve key file {path}")
    if not public and not secret:
        raise Error(f"curve key file {path}: no public_key or secret_key")
    if secret:
        derived = public_key_of(secret)
        if public and public != derived:
            raise Error(f"curve key file {path}: public_key does not belong to secret_key")
        public = derived
    return CurveKeyPair(public, secret)


def public_key(key_or_path: str) -> str:
    """A 40-character Z85 public key, or the public key of a key file."""
    if len(key_or_path) == 40 and not os.path.exists(key_or_path):
        return _check_z85(key_or_path, "curve public key")
    return read_key_file(key_or_path).public_key


def read_allow_list(path: str) -> list[str]:
    """One Z85 public key or key file per line; blank lines and '#' comments skipped
    (the C++ ReadCurveAllowList). Raises Error naming the path and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise Error(f"curve allow-list {path}: cannot open ({e.strerror})") from None
    keys = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        # (A 40-character Z85 key never starts with '#': its first digit is at most 82 of 85.)
        if not entry or entry.startswith("#"):
            continue
        try:
            keys.append(public_key(entry))
        except Error as e:
            raise Error(f"curve allow-list {path} line {number}: neither a 40-character Z85 "
                        f"key nor a key file ({e})") from None
    return keys


KeyPairLike = Union[CurveKeyPair, str]  # a pair, or the path of a key file


def as_key_pair(keys: KeyPairLike, what: str) -> CurveKeyPair:
    pair = keys if isinstance(keys, CurveKeyPair) else read_key_file(keys)
    if not pair.secret_key:
        raise Error(f"{what}: a key pair is needed (this one has no secret key)")
    return pair


def configure_server(sock: zmq.Socket, keys: KeyPairLike) -> None:
    """Before bind: clients must know keys.public_key."""
    if not available():
        raise Error("CurveZMQ: this libzmq was built without curve support")
    pair = as_key_pair(keys, "curve server keys")
    sock.curve_server = True
    sock.curve_secretkey = pair.secret_key.encode()


def configure_client(sock: zmq.Socket, server_key: str,
                     keys: Optional[KeyPairLike] = None) -> None:
    """Before connect: `server_key` is the server's public key (or its key file); `keys`
    this client's own pair (default: a fresh one)."""
    if not available():
        raise Error("CurveZMQ: this libzmq was built without curve support")
    pair = as_key_pair(keys, "curve client keys") if keys is not None else generate_key_pair()
    sock.curve_serverkey = public_key(server_key).encode()
    sock.curve_publickey = pair.public_key.encode()
    sock.curve_secretkey = pair.secret_key.encode()


class AllowList:
    """Admits Curve clients by public key on every Curve server socket of `context`
    (libzmq's ZAP, one handler per context, on pyzmq's authenticator thread): any other
    peer is refused during the handshake. `keys`: Z85 public keys or key files."""

    def __init__(self, context: zmq.Context, keys: Iterable[str]) -> None:
        allowed = {public_key(k).encode() for k in keys}

        class _Provider:
            def callback(self, domain: str, z85_key: bytes) -> bool:
                return z85_key in allowed

        self._auth: Optional[ThreadAuthenticator] = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=_Provider())

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
