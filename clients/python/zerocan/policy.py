"""The sender's placement policy: inline in the envelope or a zero-copy frame.

Same rule and same sources as the C++ ``zerocan::Policy`` (include/zerocan/policy.h):
a payload of at least ``inline_threshold`` bytes leaves as its own ZeroMQ frame without
a copy, a smaller one is copied into the envelope. The threshold comes from, in order:

1. the environment variable ``ZEROCAN_INLINE_THRESHOLD`` ("4096", "64k", "1M");
2. the file ``zerocan tune --write`` writes, ``$XDG_CONFIG_HOME/zerocan/threshold.json``
   (else ``~/.config/zerocan/threshold.json``): ``{"format": "zerocan-threshold/1",
   "inline_threshold": {"tcp": 4096, ...}, "default": 4096, ...}`` — the transport's
   value, else ``"default"``;
3. the built-in default, 4096 bytes (``kDefaultInlineThreshold``).

A missing file is silent; an invalid variable or a corrupt file gives one warning and
the fallback, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any, Optional

DEFAULT_INLINE_THRESHOLD = 4096
CONFIG_FORMAT = "zerocan-threshold/1"

_SCALES = {
    "": 1, "B": 1, "b": 1,
    "k": 1 << 10, "K": 1 << 10, "KiB": 1 << 10, "kB": 1 << 10,
    "M": 1 << 20, "m": 1 << 20, "MiB": 1 << 20, "MB": 1 << 20,
    "G": 1 << 30, "g": 1 << 30, "GiB": 1 << 30, "GB": 1 << 30,
}


def parse_size(text: str) -> Optional[int]:
    """Parses "4096", "64k", "1M" like Policy::ParseSize; None when invalid."""
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", text)
    if m is None or m.group(2) not in _SCALES:
        return None
    scale = _SCALES[m.group(2)]
    n = int(m.group(1))
    return n * scale if n <= (1 << 62) // scale else None


def transport_of(endpoint: str) -> str:
    """"tcp" from "tcp://host:port"; a bare transport name is returned as is."""
    i = endpoint.find("://")
    return endpoint if i < 0 else endpoint[:i]


def config_path() -> Optional[str]:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and xdg.startswith("/"):
        return os.path.join(xdg, "zerocan", "threshold.json")
    home = os.environ.get("HOME")
    if home:
        return os.path.join(home, ".config", "zerocan", "threshold.json")
    return None


@dataclasses.dataclass
class ThresholdConfig:
    inline_threshold: dict[str, int] = dataclasses.field(default_factory=dict)
    default: Optional[int] = None

    def threshold_for(self, transport: str) -> Optional[int]:
        return self.inline_threshold.get(transport_of(transport), self.default)


def _size_from_json(v: Any) -> Optional[int]:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, str):
        return parse_size(v)
    return None


def read_config(path: str) -> tuple[Optional[ThresholdConfig], str]:
    """(config, warning): (None, "") when the file does not exist."""
    def fail(why: str) -> tuple[Optional[ThresholdConfig], str]:
        return None, f"threshold config {path}: {why}"
    if not os.path.exists(path):
        return None, ""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError:
        return fail("cannot be read")
    except ValueError:
        return fail("not valid JSON")
    if not isinstance(doc, dict):
        return fail("not a JSON object")
    if doc.get("format") != CONFIG_FORMAT:
        return fail(f'"format" is not "{CONFIG_FORMAT}"')
    config = ThresholdConfig()
    thresholds = doc.get("inline_threshold", {})
    if not isinstance(thresholds, dict):
        return fail('"inline_threshold" is not an object')
    for transport, value in thresholds.items():
        size = _size_from_json(value)
        if size is None:
            return fail(f'"inline_threshold"."{transport}" is not a size')
        config.inline_threshold[transport] = size
    if "default" in doc:
        size = _size_from_json(doc["default"])
        if size is None:
            return fail('"default" is not a size')
        config.default = size
    return config, ""


@dataclasses.dataclass(frozen=True)
class Policy:
    inline_threshold: int = DEFAULT_INLINE_THRESHOLD
    # Store small integer arrays in the narrowest integer type that holds every element
    # (inline payloads only), exactly as the C++ writer does.
    pack_integers: bool = True

    @staticmethod
    def default() -> "Policy":
        """The process default (variable, else the file's "default", else 4096); read
        once."""
        global _default
        if _default is None:
            _default = _resolve("", _cached_config())
        return _default

    @staticmethod
    def for_transport(endpoint: str) -> "Policy":
        """The policy for an endpoint or transport name (variable, else the file's value
        for that transport, else its "default", else 4096). The file is read once."""
        return _resolve(transport_of(endpoint), _cached_config())

    @staticmethod
    def load(endpoint: str) -> "Policy":
        """As for_transport, reading the environment and the file now (for tests)."""
        path = config_path()
        config, warning = read_config(path) if path else (None, "")
        if warning:
            warnings.warn(f"zerocan: {warning}; using the built-in inline threshold "
                          f"{DEFAULT_INLINE_THRESHOLD}", stacklevel=2)
        return _resolve(transport_of(endpoint), config)


_default: Optional[Policy] = None
_config_read = False
_config: Optional[ThresholdConfig] = None


def _cached_config() -> Optional[ThresholdConfig]:
    global _config_read, _config
    if not _config_read:
        path = config_path()
        config, warning = read_config(path) if path else (None, "")
        if warning:
            warnings.warn(f"zerocan: {warning}; using the built-in inline threshold "
                          f"{DEFAULT_INLINE_THRESHOLD}", stacklevel=3)
        _config, _config_read = config, True
    return _config


def _resolve(transport: str, config: Optional[ThresholdConfig]) -> Policy:
    env = os.environ.get("ZEROCAN_INLINE_THRESHOLD")
    if env is not None:
        size = parse_size(env)
        if size is not None:
            return Policy(inline_threshold=size)
        warnings.warn(f'zerocan: ignoring ZEROCAN_INLINE_THRESHOLD="{env}" (not a size such '
                      "as 4096, 64k or 1M)", stacklevel=3)
    if config is not None:
        t = config.default if not transport else config.threshold_for(transport)
        if t is not None:
            return Policy(inline_threshold=t)
    return Policy()


# ---- memory policy (as zerocan::UseReusingAllocator / ApplyMemoryPolicy) ----------------
#
# With glibc's defaults every large buffer (a received 100 MB frame) is a fresh mmap whose
# pages fault on first touch. The reusing allocator keeps freed memory in the process for
# the next large buffer (M_MMAP_MAX = 0: large blocks come from the heap; the heap is not
# trimmed). Process-wide: the programs (``python -m zerocan engine``, the benchmark) turn
# it on; a library import never does.
#
# One arena (M_ARENA_MAX = 1), as in src/policy.cc: received frames are allocated by
# libzmq's I/O thread, whose own glibc arena is an mmap'd heap of at most 64 MiB; glibc
# serves anything larger there with a fresh mmap whatever M_MMAP_MAX says, and unmaps it
# on free. Without this setting a 100 MB receive faulted in all 25,600 of its pages on
# every call (36 ms of a 72 ms receive on the reference machine). The limit applies to
# threads that have not allocated yet: call it before the first zmq.Context starts.

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_M_ARENA_MAX = -8
_reusing = False


def use_reusing_allocator(enable: bool = True) -> bool:
    """Turns glibc's reusing settings on (or back to the defaults); returns whether on.
    A no-op (False) where the C library is not glibc."""
    global _reusing
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if enable:
        ok = mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and \
            mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_TOP_PAD, 64 << 20)
    else:
        ok = mallopt(_M_ARENA_MAX, 8 * (os.cpu_count() or 1)) and \
            mallopt(_M_MMAP_MAX, 65536) and mallopt(_M_TRIM_THRESHOLD, 128 << 10) and \
            mallopt(_M_TOP_PAD, 128 << 10) and mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        try:
            libc.malloc_trim(0)
        except AttributeError:
            pass
    _reusing = bool(ok) and enable
    return _reusing


def apply_memory_policy() -> bool:
    """ZEROCAN_REUSE_MEMORY=0/1 if set, else the config file's "reuse_memory", else on."""
    env = os.environ.get("ZEROCAN_REUSE_MEMORY")
    if env in ("0", "1"):
        return use_reusing_allocator(env == "1")
    path = config_path()
    reuse = True
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
            if isinstance(doc, dict) and isinstance(doc.get("reuse_memory"), bool):
                reuse = doc["reuse_memory"]
        except (OSError, ValueError):
            pass
    return use_reusing_allocator(reuse)
