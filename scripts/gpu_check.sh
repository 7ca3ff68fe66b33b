#!/usr/bin/env bash
# The one prepared run for a lent GPU (H100/H200 with nvcc, CMake, ninja, PyTorch 2.x and
# its NVIDIA wheels; no package registry). It
#   1. builds dhp for Hopper (sm_90a) against the PyTorch wheel's LibTorch, with the C++
#      packages it lacks unpacked from .gpu_deps/ (made here by scripts/gpu_deps.sh and
#      carried with the call);
#   2. runs every GPU test: the CUDA kernels against the CPU reference (every head size,
#      bf16/f16, graph capture proving no host synchronisation), the NCCL backend with CP
#      attention on CUDA buffers, and the bf16/f16 autograd test through the LibTorch
#      adapter on CUDA tensors;
#   3. times dhp's attention against PyTorch (SDPA flash and cuDNN backends, varlen flash)
#      on the mission workloads (dhp_attention_bench: MathVista images through Qwen2-VL's
#      ViT, head_dim 80 non-causal; ActivityNet videos through Qwen2-VL-7B, head_dim 128
#      causal), forward and forward+backward, each output checked against a reference;
#   4. writes docs/gpu_check.json: "device", "command", "git_commit", the tests, every
#      timing row (the measured table of include/dhp/attention_backend.hpp) and dhp's ratio
#      to the fastest PyTorch backend per workload.
# It fails (exit 1) on any failed or skipped GPU test and any mismatch against a reference,
# after writing the JSON. Without a GPU it prints a skip and exits 0 before building.
#
#   scripts/gpu_check.sh [build-dir]            (default build-gpu)
#   scripts/gpu_check.sh --build-only [build-dir]   steps 1 alone, GPU or not (to check them)
# Environment: DHP_CUDA_ARCH (default 90a), BENCH_RUNS (10), BENCH_TOKENS (65536 rows per
# workload), DHP_GPU_CHECK_JSON (default docs/gpu_check.json; point it at a folder that is
# copied back when the machine is borrowed), DHP_BUILD_JOBS (nproc). Logs, the workloads
# and the raw rows stay in <build-dir>/gpu_check/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build_only=0
if [ "${1:-}" = "--build-only" ]; then
  build_only=1
  shift
fi
build=${1:-$repo/build-gpu}
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
if [ "${gpus:-0}" -eq 0 ] && [ "$build_only" = 0 ]; then
  echo "gpu_check.sh: SKIPPED: no GPU (nvidia-smi lists none): nothing built or run"
  exit 0
fi
start=$(date +%s)
arch=${DHP_CUDA_ARCH:-90a}
runs=${BENCH_RUNS:-10}
tokens=${BENCH_TOKENS:-65536}
json=${DHP_GPU_CHECK_JSON:-$repo/docs/gpu_check.json}
jobs=${DHP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 8)}
command_line="DHP_CUDA_ARCH=$arch BENCH_RUNS=$runs BENCH_TOKENS=$tokens scripts/gpu_check.sh${1:+ $1}"
out=$build/gpu_check
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
  2>/dev/null | tee "$out/nvidia-smi.txt" || true

# --- what the machine lacks: the Debian packages of .gpu_deps/, unpacked into a prefix
prefix=$build/deps
if [ -d "$repo/.gpu_deps" ] && ls "$repo"/.gpu_deps/*.deb >/dev/null 2>&1; then
  mkdir -p "$prefix"
  for deb in "$repo"/.gpu_deps/*.deb; do dpkg-deb -x "$deb" "$prefix"; done
fi
py=$(command -v python3)
torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
[ -n "$torch_prefix" ] ||
  echo "gpu_check.sh: no PyTorch in $py: LibTorch only if CMake finds one elsewhere (the adapter's CUDA test needs one with CUDA)" >&2
# The NVIDIA wheels' libraries (cuDNN, NCCL, cuSPARSELt, ...) that LibTorch links and loads.
site=$("$py" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
wheel_libs=$(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | paste -sd: || true)
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NCCL from the toolkit, else from its wheel (which has no libnccl.so link: made here).
nccl_args=()
if [ ! -e /usr/local/cuda/lib64/libnccl.so ] && [ -d "$site/nvidia/nccl" ]; then
  mkdir -p "$build/nccl/lib"
  ln -sfn "$site/nvidia/nccl/include" "$build/nccl/include"
  ln -sf "$(ls "$site"/nvidia/nccl/lib/libnccl.so.* | head -1)" "$build/nccl/lib/libnccl.so"
  nccl_args=(-DNCCL_ROOT="$build/nccl")
fi
# CMake before 3.26 does not know nvcc's C++20 flag; nvcc 12+ accepts -std=c++20.
cmake_minor=$(cmake --version | head -1 | sed -E 's/.* ([0-9]+)\.([0-9]+).*/\1 \2/')
extra=()
if [ "$(echo "$cmake_minor" | awk '{print ($1 == 3 && $2 < 26)}')" = 1 ]; then
  printf 'set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")\nset(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")\n' \
    > "$out/cuda20_override.cmake"
  extra+=("-DCMAKE_USER_MAKE_RULES_OVERRIDE_CUDA=$out/cuda20_override.cmake")
fi

echo "== build (sm_$arch, $jobs jobs)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDHP_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_prefix" \
  -DDHP_BUILD_EXAMPLES=OFF -DDHP_BUILD_PYTHON=OFF "${nccl_args[@]}" "${extra[@]}" \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
grep -E "^-- dhp:" "$out/configure.log" || true
targets=(gpu_test_attention_cuda dhp_attention_bench)
grep -q "NCCL=ON" "$out/configure.log" && targets+=(runtime_gpu_nccl)
grep -q "NCCL=ON.*LibTorch=ON" "$out/configure.log" && targets+=(runtime_torch_cuda)
cmake --build "$build" -j "$jobs" --target "${targets[@]}" > "$out/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
build_s=$(( $(date +%s) - start ))
echo "build: ${build_s} s (${targets[*]})"
if [ "$build_only" = 1 ]; then
  echo "gpu_check.sh: built (--build-only): nothing run"
  exit 0
fi

echo "== GPU tests"
tests_json=$out/tests.jsonl
: > "$tests_json"
failed=0
run_test() {  # name binary: a test passes with exit 0, no failure and nothing skipped
  local name=$1 binary=$2 log=$out/$1.log status=ok
  if [ ! -x "$binary" ]; then
    status=missing
  elif ! "$binary" > "$log" 2>&1; then
    status=failed
  elif grep -Eq '^\[  (FAILED|SKIPPED) ' "$log"; then
    status=$(grep -Eq '^\[  FAILED ' "$log" && echo failed || echo skipped)
  fi
  local summary
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\]' "$log" 2>/dev/null | tr '\n' ' ' || true)
  echo "$name: $status  $summary"
  [ "$status" = ok ] || { failed=1; grep -E 'Failure|SKIPPED|error' "$log" | head -20 || true; }
  "$py" -c 'import json,sys; print(json.dumps({"test": sys.argv[1], "status": sys.argv[2], "summary": sys.argv[3]}))' \
    "$name" "$status" "$summary" >> "$tests_json"
}
run_test gpu_test_attention_cuda "$build/tests/kernels/gpu/gpu_test_attention_cuda"
run_test runtime_gpu_nccl "$build/tests/runtime/gpu/runtime_gpu_nccl"
run_test runtime_torch_cuda "$build/tests/runtime/torch/runtime_torch_cuda"

echo "== attention: dhp and PyTorch on the mission workloads ($tokens rows each, median of $runs)"
bench=$build/benchmarks/kernels/dhp_attention_bench
"$bench" --write-shapes "$out/shapes.json" --tokens "$tokens"
"$bench" --shapes "$out/shapes.json" --format json --runs "$runs" > "$out/dhp.jsonl" || failed=1
"$py" "$repo/scripts/attention_vs_sdpa.py" --shapes "$out/shapes.json" --runs "$runs" \
  > "$out/torch.jsonl" || failed=1

git_commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$repo" status --porcelain 2>/dev/null | grep -vc '^??' || true)
"$py" - "$json" "$out" "$command_line" "$git_commit" "$dirty" "$build_s" "$start" "$failed" <<'EOF'
import json, os, subprocess, sys, time
path, out, command, commit, dirty, build_s, start, failed = sys.argv[1:9]
def rows(name):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.startswith("{")]
    except FileNotFoundError:
        return []
timings = [r for r in rows("dhp.jsonl") + rows("torch.jsonl") if "fwd_ms" in r]
errors = [r for r in rows("torch.jsonl") if "error" in r]
def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except Exception:
        return ""
try:
    import torch
    torch_version = torch.__version__
except Exception:
    torch_version = ""
device = open(os.path.join(out, "nvidia-smi.txt")).read().strip().split(",")[0]
comparison = []
for w in sorted({r["workload"] for r in timings}):
    ours = [r for r in timings if r["workload"] == w and r["backend"] == "dhp"]
    theirs = [r for r in timings if r["workload"] == w and r["backend"] != "dhp" and r["check"] == "ok"]
    if not ours or not theirs:
        continue
    entry = {"workload": w}
    for key in ("fwd_ms", "fwd_bwd_ms"):
        best = min(theirs, key=lambda r: r[key])
        entry[key] = {"dhp": ours[0][key], "fastest_torch": best[key], "torch_backend": best["backend"],
                      "torch_over_dhp": best[key] / ours[0][key]}
    comparison.append(entry)
mismatches = [r for r in timings if r.get("check") != "ok"]
tests = rows("tests.jsonl")
doc = {
    "device": device,
    "command": command,
    "git_commit": commit + ("+uncommitted" if dirty not in ("", "0") else ""),
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "nvcc": version(["nvcc", "--version"]),
    "torch": torch_version,
    "build_s": int(build_s),
    "total_s": int(time.time()) - int(start),
    "status": "failed" if failed != "0" or mismatches or any(t["status"] != "ok" for t in tests) else "ok",
    "tests": tests,
    "attention": timings,
    "torch_errors": errors,
    "comparison": comparison,
}
with open(path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"# {device}; fwd and fwd+bwd ms (TFLOP/s), dhp against the fastest PyTorch backend")
print(f"{'workload':18} {'backend':18} {'fwd_ms':>8} {'TF/s':>6} {'f+b_ms':>8} {'TF/s':>6} {'max_err':>8} check")
for r in timings:
    print(f"{r['workload']:18} {r['backend']:18} {r['fwd_ms']:8.3f} {r['fwd_tflops']:6.0f} "
          f"{r['fwd_bwd_ms']:8.3f} {r['fwd_bwd_tflops']:6.0f} {r['max_error']:8.1e} {r['check']}")
for e in errors:
    print(f"{e['workload']:18} {e['backend']:18} not run: {e['error']}")
for c in comparison:
    print(f"{c['workload']}: PyTorch ({c['fwd_ms']['torch_backend']}) / dhp time, forward "
          f"{c['fwd_ms']['torch_over_dhp']:.2f}; forward+backward ({c['fwd_bwd_ms']['torch_backend']}) "
          f"{c['fwd_bwd_ms']['torch_over_dhp']:.2f} (> 1: dhp faster)")
print(f"status {doc['status']}; wrote {path} ({doc['total_s']} s)")
sys.exit(0 if doc["status"] == "ok" else 1)
EOF
