"""zerocan for Python: remote apply calls over ZeroMQ with a Cap'n Proto envelope
(schema/zerocan.capnp) and zero-copy numpy payloads, byte-compatible with the C++
library.

    import zerocan, numpy as np
    with zerocan.Client("tcp://127.0.0.1:5555") as c:
        y = c.apply("echo", np.arange(10**6)).result()   # y views the reply frame

    engine = zerocan.Engine("tcp://127.0.0.1:5556")      # a broker's backend
    @engine.register
    def scale(x, k=2.0):
        return x * k
    engine.run()

    async with zerocan.AsyncClient("tcp://127.0.0.1:5555") as c:   # asyncio, notebooks
        y = await c.apply("add", 2, 3)
"""

from . import curve
from .aio import AsyncCallFuture, AsyncClient
from .client import CallFuture, Client
from ._stream import AsyncStream, Stream
from .engine import Call, CallContext, Engine, current_call
from .errors import (ArgumentError, AuthError, BrokerLost, Busy, CancelledError, DecodeError,
                     EncodeError, Error, RemoteError, TimeoutError, TransportError)
from .policy import Policy
from .signing import ReplayGuard, Signer
from .wire import (Codec, DecodeLimits, Extension, Header, Message, Outgoing, Registry,
                   Writer, decode, encode_apply, encode_error, encode_result, received_frame,
                   register)
from ._schema import schema_path

__version__ = "0.2.0"

__all__ = [
    "ArgumentError", "AsyncCallFuture", "AsyncClient", "AsyncStream", "AuthError", "BrokerLost",
    "Busy", "Call", "CallContext", "CallFuture", "CancelledError", "Client", "Codec",
    "DecodeError",
    "DecodeLimits", "EncodeError", "Engine", "Error", "Extension", "Header", "Message",
    "Outgoing", "Policy", "Registry", "RemoteError", "ReplayGuard", "Signer", "Stream",
    "TimeoutError", "TransportError", "Writer", "current_call", "decode", "encode_apply", "encode_error", "encode_result",
    "curve", "received_frame", "register", "schema_path",
]
