#!/usr/bin/env bash
# Builds the Python package against PyTorch 2.x from PyPI (default 2.11.0, the version on
# the GPU machine) and runs its torch tests there: a virtual environment under .torch2/
# gets torch (with the NVIDIA wheels it depends on), numpy, pytest, scikit-build-core and
# pybind11; `pip install --no-build-isolation .` builds dhp._dhp and dhp._torch against that
# torch (its headers, its pybind11, its libtorch_python and its LibTorch CMake files); then
# the tests of dhp.torch and the example's parity at 3 processes run with that Python, on
# the CPU. The wheel is a CUDA build: its CMake files need the CUDA toolkit (nvcc) at
# $CUDA_HOME (default /usr/local/cuda). Not part of CI: it downloads about 3 GB.
#   scripts/torch2_python_check.sh [TORCH_VERSION]
#   PYTHON=python3.12 scripts/torch2_python_check.sh   (the interpreter of the environment)
set -euo pipefail
version="${1:-2.11.0}"
python="${PYTHON:-python3}"
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
[ -x "$cuda_home/bin/nvcc" ] || {
  echo "torch2_python_check.sh: needs the CUDA toolkit at $cuda_home (set CUDA_HOME): the torch" \
       "wheel's CMake files look for it" >&2
  exit 2
}
for tool in cmake ninja; do
  command -v "$tool" >/dev/null || { echo "torch2_python_check.sh: needs $tool" >&2; exit 2; }
done
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="$repo/.torch2/python-$version"
"$python" -m venv "$env_dir"
py="$env_dir/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "torch==$version" numpy pytest scikit-build-core pybind11
"$py" -c "import torch; print('torch', torch.__version__, 'from', torch.__file__)"

export CUDA_HOME="$cuda_home" CUDAToolkit_ROOT="$cuda_home"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"  # no GPU query at configure
# --no-build-isolation: the build sees this environment's torch (pip's isolated build
# environment would have none). The build directory is kept, so a rerun is incremental.
(cd "$repo" && "$py" -m pip install --no-build-isolation -v \
  -Cbuild-dir="$repo/.torch2/python-build-$version" .)
"$py" -c "import dhp.torch as dt, torch; print('dhp.torch imports with torch', torch.__version__)"

cd "$repo/tests/python"
export OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1 DHP_SOURCE_DIR="$repo"
"$py" -m pytest -q -p no:cacheprovider -rs test_torch_layer.py
"$py" -m pytest -q -p no:cacheprovider -rs test_train_vlm.py -k "np3 or killed or bad_command"
echo "torch2_python_check.sh: dhp.torch builds and passes its tests against PyTorch $version"
