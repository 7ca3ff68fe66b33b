#!/usr/bin/env bash
# Builds the Python package the way `pip install .` does, without pip: the CMake definitions
# of pyproject.toml's [tool.scikit-build.cmake.define] (unity build of the core and the
# planner, fmt header-only, no tests, MPI or CUDA) and its build targets, in a scratch
# directory; then imports the built dhp, plans a batch, and checks that the extension needs
# neither libfmt nor libspdlog at run time. No network: the wheel's packaging is pip's part.
#   scripts/check_python_package_build.sh [BUILD_DIR]   (default: a temporary directory)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${DHP_PYTHON:-$("$repo/scripts/find_python.sh")}"
build="${1:-$(mktemp -d)}"
mapfile -t defines < <("$python" - "$repo/pyproject.toml" <<'PY'
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    tool = tomllib.load(f)["tool"]["scikit-build"]
for key, value in tool["cmake"]["define"].items():
    print(f"-D{key}={value}")
print(f"-DCMAKE_BUILD_TYPE={tool['cmake']['build-type']}")
print("TARGETS=" + " ".join(tool["build"]["targets"]))
PY
)
targets="${defines[-1]#TARGETS=}"
unset 'defines[-1]'
cmake -S "$repo" -B "$build" -G Ninja "${defines[@]}" -DPython3_EXECUTABLE="$python" >/dev/null
# shellcheck disable=SC2086  # the targets are words
cmake --build "$build" -j"${DHP_BUILD_JOBS:-$(nproc)}" --target $targets
extension=$(ls "$build"/python/dhp/_dhp*.so)
if ldd "$extension" | grep -E 'libfmt|libspdlog'; then
  echo "check_python_package_build.sh: $extension needs the shared fmt or spdlog (above)" >&2
  exit 1
fi
PYTHONPATH="$build/python" "$python" -W error -c '
import dhp
planner = dhp.Planner("h100-8", "qwen2-vl-7b")
batch = {"samples": [{"id": i, "text": 512 * (i + 1)} for i in range(6)]}
plan = planner.plan(batch)
print("check_python_package_build.sh: the package builds as pip builds it and plans",
      len(batch["samples"]), "samples in", len(plan["waves"]), "wave(s)")'
