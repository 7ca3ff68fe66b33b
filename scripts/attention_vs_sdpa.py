#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention on the shapes of dhp_attention_bench.

Prints one JSON row per shape in the schema of `dhp_attention_bench --format json`
(impl "torch_sdpa"). Packed batches run the way PyTorch users run varlen attention with
SDPA: a loop over the sequences (each [1, H, L, D], is_causal=True), forward and backward
timed as a whole. FLOPs count causal work once (forward 4*L^2*H*D/2 per sequence,
backward 2.5x that); times are CUDA-event medians after warm-up.

usage: attention_vs_sdpa.py [--runs N] [--warmup N] [--max-tokens N] [--dtype bf16|f16] [--full]
"""
import argparse
import json
import sys


def packed_lengths(tokens):
    # Same mix as dhp_attention_bench: halves down to 1/8, remainder in pieces of <= 512.
    lens, left, part = [], tokens, tokens // 2
    while part >= 128 and left > 0:
        lens.append(min(part, left))
        left -= lens[-1]
        if len(lens) == 3:
            break
        part //= 2
    while left > 0:
        lens.append(min(left, 512))
        left -= lens[-1]
    return lens


def median_ms(torch, fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        prepare = getattr(fn, "prepare", None)
        if prepare:
            prepare()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def bench_shape(torch, args, layout, tokens, head_dim):
    import torch.nn.functional as F

    heads = 2048 // head_dim
    lens = packed_lengths(tokens) if layout == "packed" else [tokens]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    causal = not args.full
    work = sum(4.0 * n * n * heads * head_dim * (0.5 if causal else 1.0) for n in lens)
    qs = [torch.randn(1, heads, n, head_dim, device="cuda", dtype=dtype, requires_grad=True) for n in lens]
    ks = [torch.randn_like(q, requires_grad=True) for q in qs]
    vs = [torch.randn_like(q, requires_grad=True) for q in qs]
    douts = [torch.randn_like(q) for q in qs]

    def forward():
        with torch.no_grad():
            for q, k, v in zip(qs, ks, vs):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    state = {}

    def backward():
        torch.autograd.backward(state["outs"], douts)

    def prepare_backward():
        for t in qs + ks + vs:
            t.grad = None
        state["outs"] = [F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                         for q, k, v in zip(qs, ks, vs)]
        torch.cuda.synchronize()

    backward.prepare = prepare_backward
    fwd_ms = median_ms(torch, forward, args.runs, args.warmup)

    def warm_backward():
        prepare_backward()
        backward()

    for _ in range(args.warmup):
        warm_backward()
    bwd_ms = median_ms(torch, backward, args.runs, 0)
    return {
        "impl": "torch_sdpa", "device": torch.cuda.get_device_name(0), "dtype": args.dtype,
        "causal": causal, "layout": layout, "tokens": tokens, "seqs": len(lens),
        "head_dim": head_dim, "heads": heads, "fwd_ms": round(fwd_ms, 4),
        "fwd_tflops": round(work / (fwd_ms * 1e-3) / 1e12, 2), "bwd_ms": round(bwd_ms, 4),
        "bwd_tflops": round(2.5 * work / (bwd_ms * 1e-3) / 1e12, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    parser.add_argument("--full", action="store_true", help="no causal mask")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("SKIPPED: torch is not installed", file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device", file=sys.stderr)
        return 0
    for head_dim in (64, 128):
        for layout in ("unpacked", "packed"):
            tokens = 512
            while tokens <= args.max_tokens:
                print(json.dumps(bench_shape(torch, args, layout, tokens, head_dim)), flush=True)
                tokens *= 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
