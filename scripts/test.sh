#!/usr/bin/env bash
# Builds everything (every CUDA source for sm_90 where nvcc is; scripts/check_cuda_build.sh
# fails the run otherwise) and runs every test: a quick benchmark smoke run, a short fuzz run,
# then the CTest suite (unit tests, multi-process runtime tests under mpirun, GPU tests
# that skip, saying so, where there is no GPU). CTest's summary is the last line, unless
# the fuzz run failed: then its failure is.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# Every CUDA source compiled for sm_90 wherever the toolkit is (no GPU needed for that).
scripts/check_cuda_build.sh build
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -x build/benchmarks/planner/dhp_bench ]; then
  ./build/benchmarks/planner/dhp_bench --quick >/dev/null
  echo "dhp_bench --quick: ok"
  ./build/benchmarks/planner/dhp_megatron_study --gpus 4 >/dev/null
  echo "dhp_megatron_study --gpus 4: ok"
fi
# A fuzz failure does not stop the suite: CTest still runs, and the failure is repeated last.
fuzz_status=0
if [ -x scripts/run_fuzz.sh ]; then
  DHP_FUZZ_SEED="${DHP_FUZZ_SEED-1}" scripts/run_fuzz.sh "${DHP_FUZZ_SECONDS:-20}" || fuzz_status=$?
fi
ctest_status=0
ctest --test-dir build --output-on-failure -j"${DHP_TEST_JOBS:-2}" --timeout 600 || ctest_status=$?
if [ "$fuzz_status" -ne 0 ]; then
  msg="FAILED: scripts/run_fuzz.sh (exit $fuzz_status; its output is above, reproducers under build-fuzz/)"
  echo "$msg"
  echo "$msg" >&2
  exit 1
fi
exit "$ctest_status"
