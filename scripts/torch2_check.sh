#!/usr/bin/env bash
# Builds the LibTorch adapter (dhp_torch) against LibTorch 2.x from PyPI's torch wheel
# (its include/, lib/ and CMake files; default 2.11.0, the version on the GPU machine) and
# runs the adapter's tests on the CPU. The wheel's libraries need CUDA 13 ones at link and
# load time: the toolkit's from /usr/local/cuda, the rest (cuSPARSELt, NVSHMEM, cuFile)
# from their own PyPI wheels. Everything goes under .torch2/ (ignored by git). Not part of
# CI: it downloads about 800 MB.
#   scripts/torch2_check.sh [TORCH_VERSION]
#   DHP_WITH_CUDA=ON scripts/torch2_check.sh   (dhp's CUDA and NCCL parts compiled too, as
#                                               on the GPU machine; the tests stay on CPU)
set -euo pipefail
version="${1:-2.11.0}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.torch2"
root="$dir/root-$version"
cuda="${DHP_WITH_CUDA:-OFF}"
build="$dir/build-$version-cuda-$cuda"
mkdir -p "$dir/wheels" "$root"

python3 -m pip download -q --no-deps -d "$dir/wheels" "torch==$version"
wheel=$(ls "$dir"/wheels/torch-"$version"-*.whl)
# The NVIDIA wheels at the versions this torch was built with (its Requires-Dist pins).
pins=$(unzip -p "$wheel" "torch-$version.dist-info/METADATA" |
  sed -n 's/^Requires-Dist: \(nvidia-\(cusparselt\|nvshmem\)[^ ;]*\).*/\1/p')
python3 -m pip download -q --no-deps -d "$dir/wheels" $pins nvidia-cufile
if [ ! -d "$root/torch/share/cmake/Torch" ]; then
  unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$root"
fi
for w in "$dir"/wheels/nvidia_*.whl; do unzip -q -o "$w" 'nvidia/*' -d "$root"; done

nvidia_libs=$(find "$root/nvidia" -type d -name lib | paste -sd:)
export LD_LIBRARY_PATH="$nvidia_libs:/usr/local/cuda/lib64:/usr/local/cuda/lib:$root/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The wheel is a CUDA build: its CMake files look for the toolkit and, unless told the
# architectures, try to run a GPU query.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDHP_WITH_TORCH=ON \
  -DCMAKE_PREFIX_PATH="$root/torch" -DDHP_WITH_CUDA="$cuda" -DDHP_BUILD_BENCHMARKS=OFF \
  -DDHP_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" -j"${DHP_BUILD_JOBS:-2}" --target runtime_torch_bootstrap runtime_torch_cp_attention
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$build" -L torch --output-on-failure
echo "torch2_check.sh: dhp_torch (DHP_WITH_CUDA=$cuda) builds and passes its tests against LibTorch $version"
