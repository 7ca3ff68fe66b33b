#!/usr/bin/env bash
# The GPU run's non-GPU path, as CI can check it: scripts/gpu_check.sh parses, and without a
# GPU prints its skip and exits 0 before building anything; the workloads it would time
# come out of data/ (dhp_attention_bench --write-shapes needs no GPU) with the mission's
# shapes; dhp_attention_bench and scripts/attention_vs_sdpa.py skip, saying so.
#   check_gpu_script.sh <repo> <dhp_attention_bench> <scratch-dir>
set -euo pipefail
repo=$1 bench=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
fail() { echo "check_gpu_script: FAILED: $*" >&2; exit 1; }

bash -n "$repo/scripts/gpu_check.sh" || fail "gpu_check.sh does not parse"
bash -n "$repo/scripts/gpu_deps.sh" || fail "gpu_deps.sh does not parse"
out=$("$repo/scripts/gpu_check.sh" "$scratch/build") || fail "gpu_check.sh exited $? without a GPU"
echo "$out"
grep -q "SKIPPED: no GPU" <<<"$out" || fail "gpu_check.sh did not say it skipped"
[ ! -e "$scratch/build/CMakeCache.txt" ] || fail "gpu_check.sh configured a build without a GPU"

"$bench" --write-shapes "$scratch/shapes.json" --tokens 65536
python3 - "$scratch/shapes.json" <<'PY'
import json, sys
w = {x["name"]: x for x in json.load(open(sys.argv[1]))["workloads"]}
enc, llm = w["encoder_mathvista"], w["llm_activitynet"]
assert (enc["head_dim"], enc["heads_q"], enc["heads_kv"], enc["causal"]) == (80, 16, 16, False), enc
assert (llm["head_dim"], llm["heads_q"], llm["heads_kv"], llm["causal"]) == (128, 28, 4, True), llm
for x in (enc, llm):
    assert sum(x["lengths"]) == 65536, (x["name"], sum(x["lengths"]))
    assert len(x["lengths"]) > 1 and min(x["lengths"]) > 0, x["name"]
    assert len(set(x["lengths"])) > 1, x["name"] + ": not variable-length"
print("workloads:", {k: (len(v["lengths"]), max(v["lengths"])) for k, v in w.items()})
PY

out=$("$bench" --shapes "$scratch/shapes.json") || fail "dhp_attention_bench exited $?"
grep -q "SKIPPED: no CUDA device" <<<"$out" || fail "dhp_attention_bench ran without a GPU: $out"
out=$(python3 "$repo/scripts/attention_vs_sdpa.py" --shapes "$scratch/shapes.json") ||
  fail "attention_vs_sdpa.py exited $?"
grep -q "SKIPPED" <<<"$out" || fail "attention_vs_sdpa.py ran without a GPU: $out"
echo "check_gpu_script: ok"
