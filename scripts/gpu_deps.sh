#!/usr/bin/env bash
# Fetches, here (where the distribution's archive is reachable), the Debian packages of the
# C++ libraries dhp builds against that the GPU machine's image lacks (fmt, spdlog,
# nlohmann-json, Eigen, GoogleTest), into .gpu_deps/ (ignored by git). A GPU session carries
# that folder with its call; scripts/gpu_check.sh unpacks the packages into its build tree
# (dpkg-deb -x, no installation) and builds against them.
#   scripts/gpu_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libfmt-dev libfmt9 libspdlog-dev libspdlog1.10 nlohmann-json3-dev libeigen3-dev
          libgtest-dev libgmock-dev)
mkdir -p .gpu_deps
cd .gpu_deps
apt-get download "${packages[@]}" >/dev/null
ls -1 *.deb | sed 's/^/gpu_deps.sh: /'
du -sh . | sed 's/^/gpu_deps.sh: total /'
