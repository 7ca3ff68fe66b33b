"""One rank of the multi-process checks of dhp.torch's building blocks (test_torch_layer.py).

Every rank computes the same reference on the whole packed batch and checks its own rows
against it; rank 0 prints one JSON line of the largest errors. --torch-distributed before|after
initialises torch.distributed's default process group (gloo) on the same MASTER_PORT before
or after dhp's world.
"""
import argparse
import json
import math
import sys

import torch

import dhp
import dhp.torch as dt


def reference(q, k, v, lengths, causal):
    """Per-sequence softmax attention with GQA: out and lse [heads, rows]."""
    outs, lses, start = [], [], 0
    group = q.shape[1] // k.shape[1]
    for n in lengths:
        qs, ks, vs = q[start:start + n], k[start:start + n], v[start:start + n]
        ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(q.shape[2])
        if causal:
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
        lses.append(torch.logsumexp(scores, -1))
        outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vs))
        start += n
    return torch.cat(outs), torch.cat(lses, 1)


def rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="float64")
    p.add_argument("--torch-distributed", choices=["none", "before", "after"], default="none",
                   help="initialise torch.distributed's default group before or after dhp's world")
    args = p.parse_args()
    if args.torch_distributed == "before":
        torch.distributed.init_process_group("gloo")
    dtype = getattr(torch, args.dtype)
    world = dt.world()
    if args.torch_distributed == "after":
        torch.distributed.init_process_group("gloo")
    pool = dt.GroupPool(world)
    n, me = world.size, world.rank
    results = {"world": n}

    # --- ring attention over the whole world, odd lengths, causal and not, with LSE
    lengths = [37, 5, 1, 64, 23]
    gen = torch.Generator().manual_seed(7)
    total = sum(lengths)
    heads, kv_heads, dim = 4, 2, 8
    q = torch.randn(total, heads, dim, generator=gen, dtype=dtype)
    k = torch.randn(total, kv_heads, dim, generator=gen, dtype=dtype)
    v = torch.randn(total, kv_heads, dim, generator=gen, dtype=dtype)
    dout = torch.randn(total, heads, dim, generator=gen, dtype=dtype)
    worst = {}
    for causal in (True, False):
        for sharding in (None, ["zigzag"] * len(lengths)):
            ring = dt.RingAttention(lengths, list(range(n)), world, sharding=sharding,
                                    causal=causal)
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            ref_out, ref_lse = reference(*leaves, lengths, causal)
            (ref_out * dout).sum().backward()
            local = [ring.shard(t.detach()).contiguous().requires_grad_(True) for t in (q, k, v)]
            out, lse = ring.with_lse(*local)
            (out * ring.shard(dout)).sum().backward()
            rows = ring.packed_rows
            errors = [rel(out, ref_out[rows]), rel(lse, ref_lse[:, rows])]
            errors += [rel(l.grad, r.grad[rows]) for l, r in zip(local, leaves)]
            # the gathered output on every member equals the reference
            errors.append(rel(ring.gather(out.detach()), ref_out.detach()))
            key = f"ring_causal={causal}_sharding={'zigzag' if sharding else 'auto'}"
            worst[key] = max(errors)
    results["ring"] = worst

    # --- Ulysses over the whole world where the heads divide (n | kv_heads)
    if kv_heads % n == 0:
        ring = dt.RingAttention(lengths, list(range(n)), world, attention="ulysses", pool=pool)
        local = [ring.shard(t) .contiguous() for t in (q, k, v)]
        ref_out, _ = reference(q, k, v, lengths, True)
        results["ulysses"] = rel(ring(*local), ref_out[ring.packed_rows])

    # --- gradients summed over the world, in buckets
    grads = [torch.full((3, 5), float(me + 1), dtype=dtype), torch.arange(7, dtype=dtype) * (me + 1)]
    dt.sync_gradients(grads, world, bucket_mb=0.0001)
    s = n * (n + 1) / 2
    results["sync"] = max(float((grads[0] - s).abs().max()),
                          float((grads[1] - torch.arange(7, dtype=dtype) * s).abs().max()))

    # --- tensor parallelism over the whole world (a pool group), column then row
    pool.acquire([list(range(n))])
    tp_group = pool.get(list(range(n)))
    tp = dt.TensorParallel(tp_group if n > 1 else None, n, me)
    x = torch.randn(6, 10, generator=gen, dtype=dtype)
    w1 = torch.randn(4 * n, 10, generator=gen, dtype=dtype)
    w2 = torch.randn(10, 4 * n, generator=gen, dtype=dtype)
    b2 = torch.randn(10, generator=gen, dtype=dtype)
    full = [t.clone().requires_grad_(True) for t in (x, w1, w2, b2)]
    y_ref = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(full[0], full[1])),
                                       full[2], full[3])
    y_ref.square().sum().backward()
    xs = x.clone().requires_grad_(True)
    w1s = w1[4 * me:4 * me + 4].clone().requires_grad_(True)
    w2s = w2[:, 4 * me:4 * me + 4].clone().requires_grad_(True)
    b2s = b2.clone().requires_grad_(True)
    y = dt.row_parallel_linear(torch.tanh(dt.column_parallel_linear(xs, w1s, None, tp)), w2s,
                               b2s, tp)
    y.square().sum().backward()
    results["tp"] = max(rel(y, y_ref), rel(xs.grad, full[0].grad),
                        rel(w1s.grad, full[1].grad[4 * me:4 * me + 4]),
                        rel(w2s.grad, full[2].grad[:, 4 * me:4 * me + 4]),
                        rel(b2s.grad, full[3].grad))

    # --- a bad call raises on this rank and leaves the world usable
    try:
        dt.RingAttention(lengths, list(range(n)), world)(q[:3], k[:3], v[:3])
        results["bad_call"] = "no error"
    except dhp.Error as e:
        results["bad_call"] = str(e)
    world.barrier()
    if args.torch_distributed != "none":
        t = torch.ones(1)
        torch.distributed.all_reduce(t)
        results["torch_distributed_sum"] = float(t[0])
        torch.distributed.destroy_process_group()
    if me == 0:
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    sys.exit(main())
