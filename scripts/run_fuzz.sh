#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and runs each for
# a while from the seed corpus. Fails on a crash, a leak, a timeout or an invariant break.
#   scripts/run_fuzz.sh [SECONDS_PER_TARGET]   (default 30; or DHP_FUZZ_SECONDS)
# DHP_FUZZ_SEED fixes libFuzzer's seed (the test script sets 1, so a CI run on a fresh
# build-fuzz/ explores the same inputs each time, give or take the machine's speed; inputs
# found earlier accumulate in build-fuzz/corpus). Unset or empty, each run draws its own.
set -euo pipefail

seconds="${1:-${DHP_FUZZ_SECONDS:-30}}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DHP_FUZZ_BUILD_DIR:-$repo/build-fuzz}"
jobs="${DHP_FUZZ_JOBS:-2}"
sanitizers="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$sanitizers" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DDHP_BUILD_FUZZERS=ON -DDHP_BUILD_BENCHMARKS=OFF \
  -DDHP_WITH_CUDA=OFF -DDHP_WITH_MPI=OFF -DDHP_WITH_TORCH=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target fuzz_json fuzz_planner

status=0
for fuzzer in fuzz_json fuzz_planner; do
  # A scratch corpus: the committed seeds (plus examples/ JSON files for the readers) stay
  # untouched, while new inputs the fuzzer finds accumulate in the build directory.
  corpus="$build/corpus/$fuzzer"
  mkdir -p "$corpus"
  cp "$repo/tests/fuzz/corpus/$fuzzer"/* "$corpus"/ 2>/dev/null || true
  if [[ "$fuzzer" == fuzz_json && -d "$repo/examples" ]]; then
    find "$repo/examples" -name '*.json' -size -64k -exec cp {} "$corpus"/ \;
  fi
  echo "== $fuzzer: ${seconds}s"
  if ! (cd "$build" && "$build/tests/fuzz/$fuzzer" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1 ${DHP_FUZZ_SEED:+-seed="$DHP_FUZZ_SEED"} "$corpus"); then
    echo "== $fuzzer FAILED (reproducer in $build: crash-*/timeout-*/leak-*)" >&2
    status=1
  fi
done
exit $status
