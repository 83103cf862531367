#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: set up, build, and run `zerocan demo`
# (a broker and two engines on loopback, a scripted tour, a table of what happened).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
cmake --build build -j "$(nproc)" --target zerocan_tool
exec build/zerocan demo "$@"
