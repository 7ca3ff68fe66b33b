#!/usr/bin/env bash
# Checks that a build compiled every CUDA source of the repository for Hopper (sm_90), so
# that a CUDA compile error cannot pass CI although no GPU test runs there. Wherever nvcc
# is found (PATH or /usr/local/cuda) the build must have CUDA on, and every .cu file under
# version control must have an object in the build tree holding sm_90 code. Without nvcc
# it says so and exits 0.
#   scripts/check_cuda_build.sh [build-dir]        (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -z "$nvcc" ]; then
  echo "check_cuda_build.sh: no nvcc here: CUDA sources not checked"
  exit 0
fi
if [ -z "$(find "$build/CMakeFiles" -maxdepth 2 -name CMakeCUDACompiler.cmake 2>/dev/null)" ]; then
  echo "check_cuda_build.sh: FAILED: $nvcc is here but $build was configured without CUDA" >&2
  exit 1
fi
sources=$(git ls-files '*.cu' 2>/dev/null || find . -name '*.cu' -not -path './build*')
count=0
for src in $sources; do
  object=$(find "$build" -path '*CMakeFiles*' -name "$(basename "$src").o" | head -1)
  if [ -z "$object" ]; then
    echo "check_cuda_build.sh: FAILED: $src has no object in $build (not compiled)" >&2
    exit 1
  fi
  # The PTX target line or nvcc's embedded command line names the architecture.
  if ! strings -a "$object" | grep -E '(\.target|-arch) sm_90a?\b' >/dev/null; then
    echo "check_cuda_build.sh: FAILED: $object has no sm_90 code (CMAKE_CUDA_ARCHITECTURES?)" >&2
    exit 1
  fi
  count=$((count + 1))
done
echo "check_cuda_build.sh: $count CUDA sources compiled for sm_90 ($("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/nvcc \1/p'))"
