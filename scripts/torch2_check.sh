#!/usr/bin/env bash
# Builds the LibTorch adapter (dhp_torch) against LibTorch 2.x from PyPI's torch wheel
# (its include/, lib/ and CMake files; default 2.11.0, the version on the GPU machine) and
# runs the adapter's tests on the CPU. The wheel's libraries need CUDA 13 ones at link and
# load time: the toolkit's from $CUDA_HOME (default /usr/local/cuda; this machine's image
# also has cuDNN 9 and NCCL 2 there), the rest (cuSPARSELt, NVSHMEM, cuFile; cuDNN and NCCL
# too when the toolkit lacks them) from their own PyPI wheels, at the versions the torch
# wheel pins (cuFile: the newest, its pin is only through cuda-toolkit). Then installs dhp
# and builds a trainer against the installed package's torch component. Everything goes
# under .torch2/ (ignored by git). Not part of CI: it downloads about 800 MB.
#   scripts/torch2_check.sh [TORCH_VERSION]
#   DHP_WITH_CUDA=ON scripts/torch2_check.sh   (dhp's CUDA and NCCL parts compiled too, as
#                                               on the GPU machine; the tests stay on CPU)
set -euo pipefail
for tool in unzip cmake ninja; do
  command -v "$tool" >/dev/null || { echo "torch2_check.sh: needs $tool" >&2; exit 2; }
done
python3 -m pip --version >/dev/null || { echo "torch2_check.sh: needs python3 -m pip" >&2; exit 2; }
version="${1:-2.11.0}"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
[ -x "$cuda_home/bin/nvcc" ] || {
  echo "torch2_check.sh: needs the CUDA 13 toolkit at $cuda_home (set CUDA_HOME)" >&2
  exit 2
}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.torch2"
root="$dir/root-$version"
cuda="${DHP_WITH_CUDA:-OFF}"
build="$dir/build-$version-cuda-$cuda"
wheels="$dir/wheels-$version"
mkdir -p "$wheels" "$root"

python3 -m pip download -q --no-deps -d "$wheels" "torch==$version"
wheel=$(ls "$wheels"/torch-"$version"-*.whl)
# The NVIDIA wheels at the versions this torch was built with (its Requires-Dist pins).
wanted="cusparselt|nvshmem"
ls "$cuda_home"/lib64/libcudnn.so.9 >/dev/null 2>&1 || wanted="$wanted|cudnn"
ls "$cuda_home"/lib64/libnccl.so.2 >/dev/null 2>&1 || wanted="$wanted|nccl"
pins=$(unzip -p "$wheel" "torch-$version.dist-info/METADATA" |
  sed -En "s/^Requires-Dist: (nvidia-($wanted)[^ ;]*).*/\1/p")
python3 -m pip download -q --no-deps -d "$wheels" $pins nvidia-cufile
if [ ! -d "$root/torch/share/cmake/Torch" ]; then
  unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$root"
fi
for w in "$wheels"/nvidia_*.whl; do unzip -q -o "$w" 'nvidia/*' -d "$root"; done

nvidia_libs=$(find "$root/nvidia" -type d -name lib | paste -sd:)
export LD_LIBRARY_PATH="$nvidia_libs:$cuda_home/lib64:$cuda_home/lib:$root/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The wheel is a CUDA build: its CMake files look for the toolkit and, unless told the
# architectures, try to run a GPU query.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDHP_WITH_TORCH=ON \
  -DCMAKE_PREFIX_PATH="$root/torch" -DCUDAToolkit_ROOT="$cuda_home" -DDHP_WITH_CUDA="$cuda" -DDHP_BUILD_BENCHMARKS=OFF \
  -DDHP_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" -j"${DHP_BUILD_JOBS:-2}" --target runtime_torch_bootstrap runtime_torch_cp_attention
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$build" -L torch --output-on-failure --no-tests=error
# The installed package's torch component against the same LibTorch: installed, moved, and a
# trainer (tests/install/torch) built and run against it; that trainer finds LibTorch and
# the toolkit through Torch_ROOT / CUDAToolkit_ROOT. dhp_plan and dhp_torch bring every
# installed library with them.
cmake --build "$build" -j"${DHP_BUILD_JOBS:-2}" --target dhp_plan dhp_torch
Torch_ROOT="$root/torch" CUDAToolkit_ROOT="$cuda_home" \
  ctest --test-dir "$build" -R '^install_(prefix|consumer_torch)$' --output-on-failure --no-tests=error
echo "torch2_check.sh: dhp_torch (DHP_WITH_CUDA=$cuda) builds and passes its tests against LibTorch $version, installed too"
