#!/usr/bin/env bash
# Configures and builds dhp in ./build (Release, Ninja). Extra arguments go to cmake.
# CUDA, MPI and LibTorch parts are built when found (DHP_WITH_*=AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${DHP_BUILD_JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDHP_BUILD_PYTHON=ON "$@" >/dev/null
cmake --build build -j"$jobs"
