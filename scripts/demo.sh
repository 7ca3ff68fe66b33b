#!/usr/bin/env bash
# The main job: install what is missing, build, then plan a real multimodal batch stream
# (ActivityNet video long tail, Qwen2-VL-7B) on a modelled 64-GPU H100 cluster with every
# strategy and print the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
./build/benchmarks/planner/dhp_bench --scenario video-longtail "$@"
