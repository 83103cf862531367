#!/usr/bin/env bash
# The one command that sets up a fresh Debian 12 machine and runs every test:
#   1. installs packages (scripts/setup.sh),
#   2. builds and runs the GoogleTest suite (ctest),
#   3. installs into a staging prefix and builds tests/consumer against it,
#   4. rebuilds with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite again,
#   5. rebuilds the test program with ThreadSanitizer and runs the concurrency suites
#      (client receive, engine, broker, tracker callbacks, signing pool, cancel and
#      streams, the channels) within a fixed
#      budget (ZEROCAN_TSAN_SECONDS, default 600),
#   6. runs the Python client's tests (pytest), C++ <-> Python through the broker,
#   7. runs each fuzz target for a fixed budget (ZEROCAN_FUZZ_SECONDS, default 30).
# Set ZEROCAN_SKIP_ASAN=1, ZEROCAN_SKIP_TSAN=1 or ZEROCAN_SKIP_FUZZ=1 to skip steps locally.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

step() { printf '\n==== %s\n' "$*"; }

step "setup"
./scripts/setup.sh

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

step "build (Release) and test"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

step "install and build an outside consumer against the package"
rm -rf build/stage build/consumer
cmake --install build --prefix "$root/build/stage" >/dev/null
cmake -S tests/consumer -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$root/build/stage" >/dev/null
cmake --build build/consumer
LD_LIBRARY_PATH="$root/build/stage/lib" build/consumer/consumer
"$root/build/stage/bin/zerocan" schema --path
# The installed program carries no benchmark baselines (they are build/bench/zerocan-bench's).
if ldd "$root/build/stage/bin/zerocan" | grep -E 'protobuf|msgpack'; then
  echo "the installed zerocan links a benchmark library" >&2
  exit 1
fi
PKG_CONFIG_PATH="$root/build/stage/lib/pkgconfig" pkg-config --cflags --libs zerocan >/dev/null

if [ "${ZEROCAN_SKIP_ASAN:-0}" != 1 ]; then
  step "AddressSanitizer + UndefinedBehaviorSanitizer build and test"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DZEROCAN_SANITIZE=address,undefined \
        "${launcher[@]}" >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if [ "${ZEROCAN_SKIP_TSAN:-0}" != 1 ]; then
  step "ThreadSanitizer build and the concurrency tests"
  # Callbacks run on libzmq's threads and on our workers: the suites that cross threads.
  # libzmq itself is not instrumented; tests/tsan.supp names what of it TSan misreads.
  tsan_suites='^(ClientTest|ResultTest|EngineTest|BrokerTest|FramesTest|SigningTest|HostDefaultsTest|MapTest|ZmqTransportTest|BothTransports/ChannelTest|DirectAndBrokered/StreamTest|SharedCallTest|SharedBrokerTest|SharedResultTest)\.'
  # Not under TSan: tests that fork a process which then starts threads.
  tsan_excluded='^SharedResultTest\.AnEngineInAnotherProcess'
  tsan_started=$(date +%s)
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZEROCAN_SANITIZE=thread \
        "${launcher[@]}" >/dev/null
  cmake --build build-tsan -j "$jobs" --target zerocan_tests zerocan_host_defaults_test
  # ignore_noninstrumented_modules: libzmq's own calls into libc (its send() of a frame
  # our thread wrote) are not checked. Checked, every word of a large frame sent while
  # libzmq's pipe was already awake (no eventfd edge TSan can see) was reported and then
  # suppressed, one by one: seconds per frame, enough to make a connection look silent.
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1 suppressions=$root/tests/tsan.supp" \
    timeout --kill-after=30 "${ZEROCAN_TSAN_SECONDS:-600}" \
    ctest --test-dir build-tsan --output-on-failure -j "$jobs" -R "$tsan_suites" -E "$tsan_excluded"
  echo "ThreadSanitizer step: $(( $(date +%s) - tsan_started )) s"
fi

if [ -d clients/python ]; then
  step "Python client tests"
  python3 -m pip install -q --disable-pip-version-check -e clients/python 2>&1 | grep -v "^\[notice\]\|WARNING: Running pip as" || true
  ZEROCAN_BIN="$root/build/zerocan" python3 -m pytest -q clients/python/tests
fi

if [ "${ZEROCAN_SKIP_FUZZ:-0}" != 1 ] && [ -x scripts/fuzz.sh ]; then
  step "fuzzing (fixed budget)"
  FUZZ_SECONDS="${ZEROCAN_FUZZ_SECONDS:-30}" ./scripts/fuzz.sh
fi

step "all tests passed"
