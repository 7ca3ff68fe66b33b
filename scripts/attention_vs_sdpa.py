#!/usr/bin/env python3
"""PyTorch's fused attention on the workloads of dhp_attention_bench (--shapes FILE).

One JSON row per workload and backend, in the measured-table schema of
include/dhp/attention_backend.hpp (as dhp_attention_bench --format json prints):
  torch_sdpa_flash   F.scaled_dot_product_attention, flash backend, one call per sequence
  torch_sdpa_cudnn   the same with the cuDNN backend
  torch_varlen_flash torch.nn.attention.varlen.varlen_attn: the packed batch in one call
                     (where this PyTorch has it)
GQA runs with enable_gqa=True; where a backend refuses it, with the KV heads repeated (the
row says "kv_expanded"). FLOPs: forward 4 * heads * head_dim per visible (query, key)
pair, forward + backward 3.5x that; CUDA-event medians after warm-up. Every backend's
output is checked against float32 math attention on the first and last 64 rows of every
sequence first: a mismatch (or a failure) makes the exit status 1.

usage: attention_vs_sdpa.py --shapes FILE [--runs N] [--warmup N] [--backends a,b,...]
Without torch or a CUDA device it prints "SKIPPED: ..." and exits 0.
"""
import argparse
import inspect
import json
import sys

BACKENDS = ("torch_sdpa_flash", "torch_sdpa_cudnn", "torch_varlen_flash")


def visible_pairs(lengths, causal):
    return float(sum(n * (n + 1) / 2 if causal else n * n for n in lengths))


def median_ms(torch, fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def sdpa_runner(torch, backend, w, q, k, v, cu):
    """A function (q, k, v) -> out over the packed batch, and its notes."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = SDPBackend.FLASH_ATTENTION if backend == "torch_sdpa_flash" else SDPBackend.CUDNN_ATTENTION
    group = w["heads_q"] // w["heads_kv"]
    notes = []

    def one(qs, ks, vs, expand):
        # [L, H, D] -> [1, H, L, D] views
        qs, ks, vs = (t.transpose(0, 1).unsqueeze(0) for t in (qs, ks, vs))
        if expand and group > 1:
            ks = ks.repeat_interleave(group, 1)
            vs = vs.repeat_interleave(group, 1)
        extra = {} if expand or group == 1 else {"enable_gqa": True}
        with sdpa_kernel(kind):
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=w["causal"], **extra)
        return out.squeeze(0).transpose(0, 1)

    def run(q, k, v, expand):
        outs = [one(q[cu[i]:cu[i + 1]], k[cu[i]:cu[i + 1]], v[cu[i]:cu[i + 1]], expand)
                for i in range(len(cu) - 1)]
        return torch.cat(outs, 0)

    try:
        run(q, k, v, False)
        return (lambda q, k, v: run(q, k, v, False)), notes
    except RuntimeError as e:
        if group == 1:
            raise
        notes.append("kv_expanded")
        print(f"{backend} {w['name']}: enable_gqa refused ({str(e).splitlines()[0]}); "
              "timing with the KV heads repeated", file=sys.stderr)
        return (lambda q, k, v: run(q, k, v, True)), notes


def varlen_runner(torch, w, cu):
    from torch.nn.attention import varlen  # PyTorch 2.10+

    cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
    longest = max(w["lengths"])
    params = inspect.signature(varlen.varlen_attn).parameters
    extra = {}
    if "is_causal" in params:
        extra["is_causal"] = w["causal"]
    elif w["causal"]:
        extra["window_size"] = (-1, 0)

    def run(q, k, v):
        return varlen.varlen_attn(q, k, v, cu_t, cu_t, longest, longest, **extra)

    return run, []


def reference_error(torch, w, q, k, v, out, cu):
    """Worst |got - want| / max(1, |want|) over the first and last 64 rows of every sequence,
    want = float32 math attention of the same inputs."""
    group = w["heads_q"] // w["heads_kv"]
    scale = w["head_dim"] ** -0.5
    worst = 0.0
    for i in range(len(cu) - 1):
        b, e = cu[i], cu[i + 1]
        n = e - b
        rows = list(range(min(n, 64))) + [r for r in range(max(64, n - 64), n)]
        rows_t = torch.tensor(rows, device="cuda")
        qs = q[b:e].float()[rows_t].transpose(0, 1)                         # [H, r, D]
        ks = k[b:e].float().repeat_interleave(group, 1).transpose(0, 1)      # [H, n, D]
        vs = v[b:e].float().repeat_interleave(group, 1).transpose(0, 1)
        s = torch.matmul(qs, ks.transpose(1, 2)) * scale
        if w["causal"]:
            mask = torch.arange(n, device="cuda")[None, :] > rows_t[:, None]
            s = s.masked_fill(mask, float("-inf"))
        want = torch.matmul(torch.softmax(s, -1), vs).transpose(0, 1)        # [r, H, D]
        got = out[b:e].float()[rows_t]
        err = ((got - want).abs() / want.abs().clamp(min=1)).max().item()
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst


def bench(torch, args, w, backend, device_name):
    dtype = torch.bfloat16 if w["dtype"] == "bf16" else torch.float16
    lengths = w["lengths"]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    total = cu[-1]
    gen = torch.Generator(device="cuda").manual_seed(1)

    def randn(heads):
        return torch.randn(total, heads, w["head_dim"], device="cuda", dtype=dtype, generator=gen)

    q, k, v, dout = randn(w["heads_q"]), randn(w["heads_kv"]), randn(w["heads_kv"]), randn(w["heads_q"])
    if backend == "torch_varlen_flash":
        fn, notes = varlen_runner(torch, w, cu)
    else:
        fn, notes = sdpa_runner(torch, backend, w, q, k, v, cu)
    with torch.no_grad():
        out = fn(q, k, v)
    torch.cuda.synchronize()
    max_error = reference_error(torch, w, q, k, v, out, cu)

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

    def forward_backward():
        qg.grad = kg.grad = vg.grad = None
        fn(qg, kg, vg).backward(dout)

    fwd_ms = median_ms(torch, forward, args.runs, args.warmup)
    fwd_bwd_ms = median_ms(torch, forward_backward, args.runs, args.warmup)
    pairs = visible_pairs(lengths, w["causal"])
    flops = 4.0 * w["heads_q"] * w["head_dim"] * pairs
    tolerance = 2.5e-2 if w["dtype"] == "bf16" else 4e-3
    return {
        "backend": backend, "device": device_name, "workload": w["name"], "dtype": w["dtype"],
        "head_dim": w["head_dim"], "heads_q": w["heads_q"], "heads_kv": w["heads_kv"],
        "causal": w["causal"], "tokens": total, "seqs": len(lengths), "visible_pairs": pairs,
        "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms,
        "fwd_tflops": flops / (fwd_ms * 1e-3) / 1e12,
        "fwd_bwd_tflops": 3.5 * flops / (fwd_bwd_ms * 1e-3) / 1e12,
        "max_error": max_error, "check": "ok" if max_error <= tolerance else "MISMATCH",
        "notes": notes,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="workloads (dhp_attention_bench --write-shapes)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {', '.join(BACKENDS)}")
    with open(args.shapes) as f:
        workloads = json.load(f)["workloads"]
    try:
        import torch
    except ImportError:
        print("SKIPPED: torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        return 0
    device_name = torch.cuda.get_device_name(0)
    status = 0
    for w in workloads:
        for backend in backends:
            try:
                row = bench(torch, args, w, backend, device_name)
            except Exception as e:  # a backend this PyTorch or GPU lacks: said, not fatal
                print(json.dumps({"backend": backend, "workload": w["name"], "device": device_name,
                                  "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}),
                      flush=True)
                continue
            if row["check"] != "ok":
                status = 1
                print(f"{backend} {w['name']}: max error {row['max_error']:.3g} against float32 "
                      "math attention", file=sys.stderr)
            print(json.dumps(row), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
