#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/*_fuzz.cc) with clang and
# -fsanitize=fuzzer,address,undefined, then runs each for a fixed time.
#
#   scripts/fuzz.sh                 # CI: 60 s per target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh envelope value   # longer, chosen targets
#   FUZZ_JOBS=4 FUZZ_SECONDS=0 scripts/fuzz.sh          # until stopped (Ctrl-C), 4 jobs each
#   FUZZ_NO_BUILD=1 ...                                 # run what is already built
#
# Seeds come from tests/fuzz/corpus/<target>/ and tests/vectors/; what the fuzzer
# learns goes to $FUZZ_WORK/<target>/corpus (not committed; copy interesting inputs
# into tests/fuzz/corpus/<target>/ to keep them as regression seeds, which ctest then
# replays). A crash leaves its input in $FUZZ_WORK/<target>/ and fails the script; every
# target's executions are summed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
work=${FUZZ_WORK:-$build/fuzz-work}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}

if [[ ! -f $build/build.ninja ]]; then
  cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DZEROCAN_SANITIZE=address,undefined,fuzzer-no-link \
    -DZEROCAN_FUZZ=ON -DZEROCAN_BUILD_BENCH=OFF \
    ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER}
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in "$root"/tests/fuzz/*_fuzz.cc; do
    name=$(basename "$f" _fuzz.cc)
    targets+=("$name")
  done
fi
[[ -n ${FUZZ_NO_BUILD:-} ]] || ninja -C "$build" $(printf '%s_fuzz ' "${targets[@]}")

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
total=0
status=0
for t in "${targets[@]}"; do
  dir=$work/$t
  mkdir -p "$dir/corpus"
  seeds=("$root/tests/fuzz/corpus/$t")
  [[ -d ${seeds[0]} ]] || seeds=()
  [[ $t == capture ]] || seeds+=("$root/tests/vectors")
  log=$dir/log.txt
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536
        -artifact_prefix="$dir/" -print_final_stats=1)
  [[ $seconds == 0 ]] && args=("${args[@]/-max_total_time=0}")
  echo "== $t: ${seconds}s, $jobs job(s), log $log"
  if [[ $jobs -gt 1 ]]; then
    args+=(-jobs="$jobs" -workers="$jobs")
  fi
  # Run inside the target's work directory: with -jobs, libFuzzer writes fuzz-N.log there.
  if ! (cd "$dir" && "$build/tests/fuzz/${t}_fuzz" "${args[@]}" "$dir/corpus" "${seeds[@]}") >"$log" 2>&1; then
    echo "!! $t failed; see $log and $dir/crash-*" >&2
    tail -30 "$log" >&2
    status=1
  fi
  # With -jobs, libFuzzer copies each job's fuzz-N.log into its own output as the job
  # ends, so the log holds every job's final stats once.
  runs=$( { grep -h 'stat::number_of_executed_units' "$log" 2>/dev/null || true; } |
         awk '{s += $2} END {print s + 0}')
  echo "   $t: $runs executions"
  total=$((total + runs))
done
echo "total executions: $total"
exit $status
