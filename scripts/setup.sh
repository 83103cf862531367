#!/usr/bin/env bash
# Installs everything zerocan needs on Debian 12: build tools, libraries, Python packages.
# Idempotent; run as root (or with sudo available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
DEBIAN_PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache
  capnproto libcapnp-dev
  libzmq3-dev cppzmq-dev
  libabsl-dev
  libgtest-dev libgmock-dev
  libmsgpack-dev libprotobuf-dev protobuf-compiler
  nlohmann-json3-dev libcli11-dev gnuplot-nox
  libssl-dev
  clang libclang-rt-14-dev
  python3 python3-pip python3-venv
)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Python side (clients/python): pycapnp, pyzmq, numpy, cryptography (Poly1305 for signed
# messages); pytest and mypy (the package is typed: tests/test_typing.py); tqdm (map's
# progress bar), jupyter_client and ipykernel (AsyncClient in a kernel: tests/test_jupyter.py);
# ipyparallel for the baseline.
python3 -m pip install -q --disable-pip-version-check \
  "pycapnp>=1.3,<3" pyzmq numpy "cryptography>=3.4" pytest mypy tqdm jupyter_client ipykernel \
  ipyparallel cloudpickle 2>&1 | grep -v "^\[notice\]" || true
