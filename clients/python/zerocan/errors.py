"""Exceptions raised by the zerocan Python package (mirroring zerocan::Error's family)."""

from __future__ import annotations

import concurrent.futures


class Error(Exception):
    """Base class of every zerocan error."""


class DecodeError(Error):
    """A received message is malformed, exceeds a limit, or is not the expected kind.

    The message names the frame and the field path, as the C++ DecodeError does.
    ``code`` is one of ``DecodeError.CODES``, the names C++'s
    ``zerocan::DecodeCodeName(DecodeError::Code)`` gives: "malformed",
    "limit_exceeded", "type_mismatch" or "version".
    """

    CODES = ("malformed", "limit_exceeded", "type_mismatch", "version")

    def __init__(self, message: str, code: str = "malformed") -> None:
        super().__init__(message)
        if code not in self.CODES:
            raise ValueError(f"DecodeError code {code!r} is not one of {self.CODES}")
        self.code = code

    def __reduce__(self):  # keeps the code through pickling
        return (DecodeError, (str(self), self.code))


class EncodeError(Error):
    """A value cannot be encoded (no codec, out of range, too deep, ...)."""


class TransportError(Error):
    """The socket failed or the peer went away."""


class TimeoutError(Error, concurrent.futures.TimeoutError):
    """A call's deadline passed before its result arrived."""


class CancelledError(Error, concurrent.futures.CancelledError):
    """A call or stream was cancelled (``future.cancel()``, ``stream.cancel()``); the C++
    ``zerocan::CancelledError``. ``TYPE`` is the name both languages give it
    (``kErrorCancelled`` in include/zerocan/remote_error.h)."""

    TYPE = "zerocan.CancelledError"


class RemoteError(Error):
    """A call failed on the engine: the remote exception's type, message, the function
    that was called and where it happened (engine id, host, or a traceback)."""

    def __init__(self, type: str, message: str, function: str = "", where: str = "") -> None:
        super().__init__(type, message, function, where)
        self.type = type
        self.message = message
        self.function = function
        self.where = where

    def __str__(self) -> str:
        text = f"{self.function}: {self.type}: {self.message}" if self.function else \
            f"{self.type}: {self.message}"
        return f"{text} (at {self.where})" if self.where else text

    def __reduce__(self):  # keeps the four fields through pickling
        return (RemoteError, (self.type, self.message, self.function, self.where))


# Remote error types zerocan itself produces: RemoteError.type, the same strings as the
# kError* constants of C++'s include/zerocan/remote_error.h (a test keeps them in sync).
ERROR_ARGUMENT = "zerocan.ArgumentError"
ERROR_UNKNOWN_FUNCTION = "zerocan.UnknownFunction"
ERROR_DECODE = "zerocan.DecodeError"
ERROR_ENGINE_LOST = "zerocan.EngineLost"
ERROR_FAIL = "zerocan.Fail"
ERROR_ENGINE_STOPPING = "zerocan.EngineStopping"
ERROR_BROKER_STOPPING = "zerocan.BrokerStopping"
ERROR_BUSY = "zerocan.Busy"
ERROR_BROKER_LOST = "zerocan.BrokerLost"
ERROR_CANCELLED = CancelledError.TYPE  # local: a cancelled call gets no reply


class Busy(RemoteError):
    """A broker's queue of calls waiting for an engine, or an engine's of calls waiting
    for a worker, was full; nothing ran (type
    "zerocan.Busy", C++ ``zerocan::Busy``). Retry later."""

    def __reduce__(self):
        return (Busy, (self.type, self.message, self.function, self.where))


class BrokerLost(RemoteError):
    """The connection to the broker (or the engine called directly) was lost while the
    call was in flight; the call may or may not have run (type "zerocan.BrokerLost",
    C++ ``zerocan::BrokerLost``). Made by the client itself."""

    def __reduce__(self):
        return (BrokerLost, (self.type, self.message, self.function, self.where))


def remote_error(type: str, message: str, function: str = "", where: str = "") -> RemoteError:
    """The exception for a remote error: Busy or BrokerLost for those types, else
    RemoteError (as C++'s ``zerocan::MakeRemoteError``)."""
    cls = {ERROR_BUSY: Busy, ERROR_BROKER_LOST: BrokerLost}.get(type, RemoteError)
    return cls(type, message, function, where)


class ArgumentError(Error):
    """Raised inside an engine function when an argument has the wrong count or type;
    the client sees a RemoteError of type "zerocan.ArgumentError"."""


class AuthError(Error):
    """A message was refused by the signature check or the replay guard, or a key is
    unusable. ``code`` is the C++ ``AuthCodeName``: "unsigned", "bad signature",
    "replayed", "too old", "clock skew", "too many sessions" or "bad key"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (AuthError, (self.code, str(self)))
