#!/usr/bin/env bash
# Installs the Debian packages dhp builds against, only those that are missing.
# Nothing is downloaded from anywhere but the distribution's package archive.
# python3-torch is PyTorch for /usr/bin/python3 (the same 1.13 as libtorch-dev): the
# Python package's torch layer and its tests (pytest, mypy) run with that interpreter.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libeigen3-dev libfmt-dev libspdlog-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  libtorch-dev libgloo-dev
  python3-torch  # Debian's torch for /usr/bin/python3, and its torchrun launcher
  pybind11-dev python3-dev
  python3-numpy python3-pytest python3-mypy  # the Python package's tests
  clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
echo "install_deps: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
