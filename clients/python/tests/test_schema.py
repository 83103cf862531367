"""One source of truth: the package uses the repository's schema/zerocan.capnp."""

from __future__ import annotations

import subprocess
import sys

import zerocan
from zerocan import _schema, wire

from conftest import REPO


def test_loaded_schema_is_the_repository_file():
    assert _schema.loaded_path().read_bytes() == (REPO / "schema" / "zerocan.capnp").read_bytes()


def test_packaged_copy_if_any_equals_the_repository_file():
    packaged = _schema._PACKAGED_SCHEMA
    if packaged.exists():  # only in a built (non-editable) package
        assert packaged.read_bytes() == (REPO / "schema" / "zerocan.capnp").read_bytes()


def test_build_step_copies_the_schema_into_the_package(tmp_path):
    setup = REPO / "clients" / "python" / "setup.py"
    out = subprocess.run([sys.executable, str(setup), "-q", "build", "--build-base",
                          str(tmp_path)], cwd=setup.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    built = tmp_path / "lib" / "zerocan" / "zerocan.capnp"
    assert built.read_bytes() == (REPO / "schema" / "zerocan.capnp").read_bytes()
    assert (tmp_path / "lib" / "zerocan" / "py.typed").exists()
    # Outside the repository, the built package loads the copy it carries.
    env = {"PYTHONPATH": str(tmp_path / "lib"), "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", "import zerocan; print(zerocan.schema_path()); "
                            "print(zerocan.encode_apply('echo', [1]).envelope.hex())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    path, _ = probe.stdout.split()
    assert path == str(built)


def test_protocol_version_matches_schema_constant():
    assert int(wire.S.protocolVersion) == wire.PROTOCOL_VERSION == 1


def test_dtype_table_follows_the_schema_enum():
    names = [e for e in wire.S.DType.schema.enumerants]
    assert sorted(names, key=lambda n: wire.S.DType.schema.enumerants[n]) == \
        list(wire.DTYPE_NAMES)


def test_env_var_overrides_schema_path(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROCAN_SCHEMA", str(tmp_path / "missing.capnp"))
    try:
        _schema.schema_path()
    except FileNotFoundError as e:
        assert "ZEROCAN_SCHEMA" in str(e)
    else:
        raise AssertionError("a missing ZEROCAN_SCHEMA file must be reported")
    assert zerocan.schema_path is _schema.schema_path
