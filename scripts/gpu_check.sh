#!/usr/bin/env bash
# On a GPU machine: configure and build dhp with CUDA for Hopper (sm_90a), run the GPU
# tests of the kernels, then dhp_attention_bench and PyTorch SDPA on the same shapes, and
# print one table side by side (ratio = dhp TFLOP/s / SDPA TFLOP/s).
#
#   scripts/gpu_check.sh [build-dir]        (default build-gpu)
# Environment: DHP_CUDA_ARCH (default 90a), BENCH_RUNS (10), BENCH_MAX_TOKENS (32768).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build-gpu}
arch=${DHP_CUDA_ARCH:-90a}
runs=${BENCH_RUNS:-10}
max_tokens=${BENCH_MAX_TOKENS:-32768}
jobs=$(nproc 2>/dev/null || echo 8)
out=$build/gpu_check
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# CMake before 3.26 does not know nvcc's C++20 flag; nvcc 12+ accepts -std=c++20.
cmake_minor=$(cmake --version | head -1 | sed -E 's/.* ([0-9]+)\.([0-9]+).*/\1 \2/')
extra=()
if [ "$(echo "$cmake_minor" | awk '{print ($1 == 3 && $2 < 26)}')" = 1 ]; then
  cat > "$out/cuda20_override.cmake" <<'EOF'
set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
EOF
  extra+=("-DCMAKE_USER_MAKE_RULES_OVERRIDE_CUDA=$out/cuda20_override.cmake")
fi

start=$(date +%s)
cmake -S "$repo" -B "$build" -G Ninja -DDHP_WITH_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" "${extra[@]}" > "$out/configure.log"
cmake --build "$build" -j "$jobs" --target dhp_kernels_cuda gpu_test_attention_cuda \
  dhp_attention_bench > "$out/build.log"
echo "build: $(( $(date +%s) - start )) s"

echo "== GPU tests"
test_rc=0
"$build/tests/kernels/gpu/gpu_test_attention_cuda" 2>&1 | tee "$out/tests.log" | \
  grep -E "^\[( +OK|  FAILED|  PASSED|  SKIPPED) |Failure|SKIPPED:" || true
grep -q "^\[  PASSED  \]" "$out/tests.log" && ! grep -q "FAILED" "$out/tests.log" || test_rc=1

echo "== benchmarks (runs=$runs, max tokens=$max_tokens)"
"$build/benchmarks/kernels/dhp_attention_bench" --format json --runs "$runs" \
  --max-tokens "$max_tokens" > "$out/dhp.jsonl"
python3 "$repo/scripts/attention_vs_sdpa.py" --runs "$runs" --max-tokens "$max_tokens" \
  > "$out/sdpa.jsonl" || echo "attention_vs_sdpa.py failed (see above)"

python3 - "$out/dhp.jsonl" "$out/sdpa.jsonl" <<'EOF'
import json, sys
def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.startswith("{")]
    except FileNotFoundError:
        return []
dhp, sdpa = rows(sys.argv[1]), rows(sys.argv[2])
key = lambda r: (r["layout"], r["tokens"], r["head_dim"])
ref = {key(r): r for r in sdpa}
if dhp:
    print(f"# {dhp[0]['device']}, {dhp[0]['dtype']}, causal={dhp[0]['causal']}; TFLOP/s, causal work counted once")
hdr = f"{'layout':8} {'tokens':>6} {'seqs':>4} {'hd':>3} | {'fwd dhp':>8} {'sdpa':>7} {'ratio':>5} | {'bwd dhp':>8} {'sdpa':>7} {'ratio':>5}"
print(hdr)
print("-" * len(hdr))
def ratio(a, b):
    return f"{a / b:5.2f}" if b else "    -"
for r in dhp:
    s = ref.get(key(r), {})
    print(f"{r['layout']:8} {r['tokens']:6d} {r['seqs']:4d} {r['head_dim']:3d} | "
          f"{r['fwd_tflops']:8.1f} {s.get('fwd_tflops', 0):7.1f} {ratio(r['fwd_tflops'], s.get('fwd_tflops'))} | "
          f"{r['bwd_tflops']:8.1f} {s.get('bwd_tflops', 0):7.1f} {ratio(r['bwd_tflops'], s.get('bwd_tflops'))}")
EOF
echo "logs and JSON rows in $out"
exit $test_rc
