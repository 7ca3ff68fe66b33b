#!/usr/bin/env bash
# Builds everything and runs every test: a quick benchmark smoke run, a short fuzz run,
# then the CTest suite (unit tests, multi-process runtime tests under mpirun, GPU tests
# that skip, saying so, where there is no GPU). CTest's summary is the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -x build/benchmarks/planner/dhp_bench ]; then
  ./build/benchmarks/planner/dhp_bench --quick >/dev/null
  echo "dhp_bench --quick: ok"
fi
if [ -x scripts/run_fuzz.sh ]; then
  scripts/run_fuzz.sh "${DHP_FUZZ_SECONDS:-20}"
fi
ctest --test-dir build --output-on-failure -j"${DHP_TEST_JOBS:-2}" --timeout 600
