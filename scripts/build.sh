#!/usr/bin/env bash
# Configures and builds dhp in ./build (Release, Ninja). Extra arguments go to cmake.
# CUDA, MPI and LibTorch parts are built when found (DHP_WITH_*=AUTO). The Python package's
# modules are built for the interpreter scripts/find_python.sh names (one that imports torch,
# so that dhp.torch is built too; DHP_PYTHON overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${DHP_BUILD_JOBS:-$(nproc)}
python=$(scripts/find_python.sh)
# -U: FindPython3 keeps what it found for an earlier interpreter (its headers) in the cache.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDHP_BUILD_PYTHON=ON \
  -U '_Python3_*' -U '_Python_*' -DPython3_EXECUTABLE="$python" "$@" >/dev/null
cmake --build build -j"$jobs"
