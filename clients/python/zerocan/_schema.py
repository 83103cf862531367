"""Finds and loads the one zerocan schema (schema/zerocan.capnp) with pycapnp.

There is exactly one source of truth for the wire format: the project's
``schema/zerocan.capnp``. This module never carries a hand-written copy. It looks, in
order, for:

1. ``$ZEROCAN_SCHEMA`` (a path to a ``.capnp`` file), for unusual installs;
2. the repository's ``schema/zerocan.capnp`` when this package runs from a checkout
   (``pip install -e clients/python``);
3. the copy placed inside the package at build time (``zerocan/zerocan.capnp``, copied
   from the repository's file by ``setup.py``'s build step, never edited by hand);
4. the path printed by ``zerocan schema --path`` (``$ZEROCAN_BIN`` or ``zerocan`` on
   ``PATH``), i.e. the schema installed with the C++ library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import capnp  # type: ignore[import-untyped]

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_SCHEMA = _PACKAGE_DIR.parent.parent.parent / "schema" / "zerocan.capnp"
_PACKAGED_SCHEMA = _PACKAGE_DIR / "zerocan.capnp"

_loaded: Optional[Any] = None
_loaded_path: Optional[Path] = None


def _from_tool() -> Optional[Path]:
    tool = os.environ.get("ZEROCAN_BIN") or shutil.which("zerocan")
    if not tool or not os.path.exists(tool):
        return None
    try:
        out = subprocess.run([tool, "schema", "--path"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(out.stdout.strip())
    return path if out.returncode == 0 and path.is_file() else None


def schema_path() -> Path:
    """The path of the schema file this package uses (see the module docstring)."""
    env = os.environ.get("ZEROCAN_SCHEMA")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"ZEROCAN_SCHEMA={env!r} is not a file")
        return path
    for candidate in (_REPO_SCHEMA, _PACKAGED_SCHEMA):
        if candidate.is_file():
            return candidate
    tool = _from_tool()
    if tool is not None:
        return tool
    raise FileNotFoundError(
        "zerocan: cannot find zerocan.capnp (looked at $ZEROCAN_SCHEMA, "
        f"{_REPO_SCHEMA}, {_PACKAGED_SCHEMA} and `zerocan schema --path`)")


def _import_dirs() -> list[str]:
    # The schema imports "/capnp/c++.capnp": pycapnp ships it inside its package, so the
    # directory that holds the `capnp` package is an import root; system ones follow.
    dirs = [str(Path(capnp.__file__).resolve().parent.parent)]
    for d in ("/usr/local/include", "/usr/include"):
        if os.path.isfile(os.path.join(d, "capnp", "c++.capnp")):
            dirs.append(d)
    return dirs


def load() -> Any:
    """The pycapnp module generated from the schema (loaded once per process)."""
    global _loaded, _loaded_path
    if _loaded is None:
        path = schema_path()
        _loaded = capnp.load(str(path), imports=_import_dirs())
        _loaded_path = path
    return _loaded


def loaded_path() -> Path:
    load()
    assert _loaded_path is not None
    return _loaded_path
