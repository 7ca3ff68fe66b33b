#!/usr/bin/env python3
"""Trains a small vision-language model with a new dhp plan every batch, from PyTorch.

    torchrun --nproc_per_node 4 examples/train_vlm.py --steps 20 --verify
    python3 examples/train_vlm.py --steps 5 --verify            (one process)

(Debian's torchrun of torch 1.13 on Python 3.11 needs ``--redirects 2 --tee 2`` before the
other options: its default of 0 no longer parses there.)

The model and the task are those of the C++ example dhp_train_vlm (examples/train_vlm/):
a ViT-like encoder (patch embedding, bidirectional pre-norm blocks), a projector merging
`merge` patches into one LLM token, and a decoder LLM (token embedding, causal pre-norm
blocks with rotary positions, an output layer), written here as plain torch.nn.Modules with
the same parameter names, the same initialisation from the same seed, the same synthetic
data (each image shows one of `classes` prototypes plus noise; the text after it starts
with its class), the same batches (ActivityNet and MathVista lengths from data/, scaled
down) and the same output: one JSON line per step on stdout (rank 0), progress on stderr.

Every rank plans every batch with dhp.Planner; dhp.torch.StepExecutor runs each plan: the
samples go to the ranks that run them, the encoder runs its items (long videos cut into
spans or shards on several ranks), the boundary moves the embeddings into the LLM's layout,
the LLM runs context-parallel attention on groups of any size, and the gradients are
summed over the replicas. AdamW steps. With --verify, rank 0 also trains the same model
whole on one process with plain PyTorch attention and prints ref_loss and
max_grad_rel_err (the largest ||g - g_ref|| / ||g_ref|| over the parameters) per step;
the exit status is 1 when a step leaves 1e-9 (float64) or 1e-4 (float32).

--dtype bfloat16|float16 is mixed precision, as in dhp_train_vlm: 16-bit parameters and
activations, fp32 master weights in AdamW (copied back rounded once), gradients summed over
the replicas in fp32, a static loss scale (--loss-scale, default 1024 for float16, 1 for
bfloat16) and a step with a non-finite gradient skipped. --verify compares such a run with
the float64 reference restarted every step from the run's master weights, within 1e-1
(bfloat16) or 1e-2 (float16).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

import dhp
import dhp.torch as dt

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- the model

@dataclass(frozen=True)
class Config:
    patch_dim: int = 24
    encoder_hidden: int = 32
    encoder_heads: int = 4
    encoder_layers: int = 2
    encoder_ffn: int = 64
    merge: int = 4  # patches per LLM token (2 x 2)
    hidden: int = 32
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2
    ffn: int = 64
    vocab: int = 64
    classes: int = 8  # visual classes; tokens [0, classes) name them
    temporal_patch: int = 2  # frames per attention span of a video
    rope_base: float = 10000.0

    def spec(self) -> Dict[str, object]:
        """The dhp model description of this model (what the planner's cost model reads)."""
        return {
            "name": "tiny-vlm",
            "llm": {"layers": self.layers, "hidden": self.hidden, "heads": self.heads,
                    "kv_heads": self.kv_heads, "ffn_hidden": self.ffn, "gated_mlp": False,
                    "vocab": self.vocab},
            "encoder": {"layers": self.encoder_layers, "hidden": self.encoder_hidden,
                        "heads": self.encoder_heads, "kv_heads": self.encoder_heads,
                        "ffn_hidden": self.encoder_ffn, "gated_mlp": False, "patch_size": 4,
                        "tokens_per_llm_token": self.merge,
                        "temporal_patch_size": self.temporal_patch,
                        "projector_parameters": float(self.hidden) * (
                            self.merge * self.encoder_hidden + 1)},
            "training": {"recompute": "none", "encoder_recompute": "none", "zero_stage": 0,
                         "bytes_per_param": 8, "bytes_per_grad": 8,
                         "bytes_optimizer_state": 16, "bytes_per_activation": 8},
        }


class ParamInfo(NamedTuple):
    name: str
    shape: Tuple[int, ...]
    split_dim: int  # -1: replicated; 0: column-parallel (output rows); 1: row-parallel
    encoder: bool


def param_infos(c: Config) -> List[ParamInfo]:
    out: List[ParamInfo] = []

    def add(name: str, shape: Tuple[int, ...], split: int, enc: bool) -> None:
        out.append(ParamInfo(name, shape, split, enc))

    E, H, d = c.encoder_hidden, c.hidden, c.hidden // c.heads
    add("enc.patch.w", (E, c.patch_dim), -1, True)
    add("enc.patch.b", (E,), -1, True)
    for layer in range(c.encoder_layers):
        b = f"enc.{layer}."
        add(b + "ln1.w", (E,), -1, True)
        add(b + "ln1.b", (E,), -1, True)
        add(b + "q.w", (E, E), 0, True)  # no key bias: softmax cancels it
        add(b + "q.b", (E,), 0, True)
        add(b + "k.w", (E, E), 0, True)
        add(b + "v.w", (E, E), 0, True)
        add(b + "v.b", (E,), 0, True)
        add(b + "o.w", (E, E), 1, True)
        add(b + "o.b", (E,), -1, True)
        add(b + "ln2.w", (E,), -1, True)
        add(b + "ln2.b", (E,), -1, True)
        add(b + "fc1.w", (c.encoder_ffn, E), 0, True)
        add(b + "fc1.b", (c.encoder_ffn,), 0, True)
        add(b + "fc2.w", (E, c.encoder_ffn), 1, True)
        add(b + "fc2.b", (E,), -1, True)
    add("enc.ln.w", (E,), -1, True)
    add("enc.ln.b", (E,), -1, True)
    add("enc.proj.w", (H, c.merge * E), -1, True)
    add("enc.proj.b", (H,), -1, True)
    add("llm.embed", (c.vocab, H), -1, False)
    for layer in range(c.layers):
        b = f"llm.{layer}."
        add(b + "ln1.w", (H,), -1, False)
        add(b + "ln1.b", (H,), -1, False)
        add(b + "q.w", (c.heads * d, H), 0, False)
        add(b + "k.w", (c.kv_heads * d, H), 0, False)
        add(b + "v.w", (c.kv_heads * d, H), 0, False)
        add(b + "o.w", (H, c.heads * d), 1, False)
        add(b + "ln2.w", (H,), -1, False)
        add(b + "ln2.b", (H,), -1, False)
        add(b + "fc1.w", (c.ffn, H), 0, False)
        add(b + "fc1.b", (c.ffn,), 0, False)
        add(b + "fc2.w", (H, c.ffn), 1, False)
        add(b + "fc2.b", (H,), -1, False)
    add("llm.ln.w", (H,), -1, False)
    add("llm.ln.b", (H,), -1, False)
    add("llm.head", (c.vocab, H), -1, False)
    return out


def full_parameters(c: Config, seed: int) -> List[torch.Tensor]:
    """The whole model for `seed` (float64, param_infos order): norms 1, biases 0, matrices
    N(0, 1/fan_in) from one torch CPU generator (the values dhp_train_vlm draws)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for info in param_infos(c):
        if ".ln" in info.name and info.name.endswith("w"):
            out.append(torch.ones(info.shape, dtype=torch.float64))
        elif len(info.shape) == 1:
            out.append(torch.zeros(info.shape, dtype=torch.float64))
        else:
            out.append(torch.randn(info.shape, generator=gen, dtype=torch.float64)
                       / math.sqrt(info.shape[-1]))
    return out


def slice_parameter(info: ParamInfo, full: torch.Tensor, tp_size: int,
                    tp_index: int) -> torch.Tensor:
    """This process's tensor-parallel slice of a full parameter."""
    if info.split_dim < 0 or tp_size == 1:
        return full
    features = full.shape[info.split_dim]
    if features % tp_size:
        raise ValueError(f"{info.name}: {features} features do not split over {tp_size}")
    share = features // tp_size
    return full.narrow(info.split_dim, tp_index * share, share)


class Affine(nn.Module):
    """Parameters of a linear layer: w [out, in] and an optional bias b [out]."""

    def __init__(self, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(b) if b is not None else None


# Mixed precision (bfloat16, float16): parameters, activations and attention are 16-bit;
# GEMMs, layer norms, GELU, rotary positions and the loss compute in fp32 from the 16-bit
# values and round their result once to 16-bit (what tensor cores and TransformerEngine do;
# torch's CPU kernels have no float16 GEMM). float32 and float64 run the plain torch ops.

def is_16bit(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def wide(t: torch.Tensor) -> torch.Tensor:
    """A 16-bit tensor in float32; any other as it is."""
    return t.float() if is_16bit(t) else t


def dense(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear; 16-bit: in fp32, rounded once."""
    if not is_16bit(x):
        return F.linear(x, w, b)
    return F.linear(wide(x), wide(w), None if b is None else wide(b)).to(x.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = F.gelu(wide(x)).to(x.dtype) if is_16bit(x) else F.gelu(x)
    return out


class Norm(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_16bit(x):
            return F.layer_norm(wide(x), (x.shape[-1],), wide(self.w), wide(self.b)).to(x.dtype)
        return F.layer_norm(x, (x.shape[-1],), self.w, self.b)


TP = Optional[dt.TensorParallel]  # None: the whole model on one process


def copy_to(x: torch.Tensor, tp: TP) -> torch.Tensor:
    return x if tp is None else dt.copy_to_tensor_parallel(x, tp)


def column(x: torch.Tensor, layer: Affine, tp: TP) -> torch.Tensor:
    if tp is None or is_16bit(x):
        return dense(copy_to(x, tp), layer.w, layer.b)
    return dt.column_parallel_linear(x, layer.w, layer.b, tp)


def row(x: torch.Tensor, layer: Affine, tp: TP) -> torch.Tensor:
    if tp is None:
        return dense(x, layer.w, layer.b)
    if is_16bit(x):  # the partial sums reduced in 16-bit, then the bias added once
        y = dt.reduce_from_tensor_parallel(dense(x, layer.w), tp)
        return y if layer.b is None else y + layer.b
    return dt.row_parallel_linear(x, layer.w, layer.b, tp)


def prefixed(p: Callable[[str], torch.Tensor], prefix: str) -> Callable[[str], torch.Tensor]:
    """The parameters of one block: its names under `prefix`."""
    def get(name: str) -> torch.Tensor:
        return p(prefix + name)
    return get


class EncoderBlock(nn.Module):
    def __init__(self, p: Callable[[str], torch.Tensor]) -> None:
        super().__init__()
        self.ln1 = Norm(p("ln1.w"), p("ln1.b"))
        self.q = Affine(p("q.w"), p("q.b"))
        self.k = Affine(p("k.w"))
        self.v = Affine(p("v.w"), p("v.b"))
        self.o = Affine(p("o.w"), p("o.b"))
        self.ln2 = Norm(p("ln2.w"), p("ln2.b"))
        self.fc1 = Affine(p("fc1.w"), p("fc1.b"))
        self.fc2 = Affine(p("fc2.w"), p("fc2.b"))

    def forward(self, x: torch.Tensor, heads: int, attention: Attention,
                tp: TP) -> torch.Tensor:
        rows = x.shape[0]
        # Sizes spelled out: an encoder shard may hold no rows, where -1 is ambiguous.
        d = self.q.w.shape[0] // heads
        h = copy_to(self.ln1(x), tp)
        q = dense(h, self.q.w, self.q.b).view(rows, heads, d).contiguous()
        k = dense(h, self.k.w).view(rows, heads, d).contiguous()
        v = dense(h, self.v.w, self.v.b).view(rows, heads, d).contiguous()
        a = attention(q, k, v).reshape(rows, heads * d)
        x = x + row(a, self.o, tp)
        f = gelu(column(self.ln2(x), self.fc1, tp))
        return x + row(f, self.fc2, tp)


class Encoder(nn.Module):
    """patches [P, patch_dim] -> embeddings [P / merge, hidden]."""

    def __init__(self, c: Config, p: Callable[[str], torch.Tensor]) -> None:
        super().__init__()
        self.config = c
        self.patch = Affine(p("enc.patch.w"), p("enc.patch.b"))
        self.blocks: List[EncoderBlock] = []
        for layer in range(c.encoder_layers):
            block = EncoderBlock(prefixed(p, f"enc.{layer}."))
            self.add_module(str(layer), block)  # parameter names enc.<layer>.<name>
            self.blocks.append(block)
        self.ln = Norm(p("enc.ln.w"), p("enc.ln.b"))
        self.proj = Affine(p("enc.proj.w"), p("enc.proj.b"))

    def forward(self, patches: torch.Tensor, attention: Attention, tp: TP) -> torch.Tensor:
        c = self.config
        heads = c.encoder_heads // (1 if tp is None else tp.size)
        x = dense(patches, self.patch.w, self.patch.b)
        for block in self.blocks:
            x = block(x, heads, attention, tp)
        x = self.ln(x)
        merged = x.reshape(x.shape[0] // c.merge, c.merge * c.encoder_hidden)
        return dense(merged, self.proj.w, self.proj.b)


class DecoderBlock(nn.Module):
    def __init__(self, p: Callable[[str], torch.Tensor]) -> None:
        super().__init__()
        self.ln1 = Norm(p("ln1.w"), p("ln1.b"))
        self.q = Affine(p("q.w"))
        self.k = Affine(p("k.w"))
        self.v = Affine(p("v.w"))
        self.o = Affine(p("o.w"))
        self.ln2 = Norm(p("ln2.w"), p("ln2.b"))
        self.fc1 = Affine(p("fc1.w"), p("fc1.b"))
        self.fc2 = Affine(p("fc2.w"), p("fc2.b"))


class Decoder(nn.Module):
    """The LLM: token ids (visual rows replaced by embeddings) -> summed cross-entropy."""

    def __init__(self, c: Config, p: Callable[[str], torch.Tensor]) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Parameter(p("llm.embed"))
        self.blocks: List[DecoderBlock] = []
        for layer in range(c.layers):
            block = DecoderBlock(prefixed(p, f"llm.{layer}."))
            self.add_module(str(layer), block)
            self.blocks.append(block)
        self.ln = Norm(p("llm.ln.w"), p("llm.ln.b"))
        self.head = nn.Parameter(p("llm.head"))

    def rotary(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if is_16bit(x):  # in fp32 (a position in bfloat16 would be off by several), rounded once
            return self.rotary(wide(x), positions).to(x.dtype)
        d = x.shape[2]
        half = d // 2
        inv = torch.exp(torch.arange(0, half, dtype=x.dtype)
                        * (-2.0 * math.log(self.config.rope_base) / d))
        angles = positions.to(x.dtype).unsqueeze(1) * inv.unsqueeze(0)
        cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
        x1, x2 = x[:, :, :half], x[:, :, half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], 2).contiguous()

    def forward(self, tokens: torch.Tensor, visual: torch.Tensor, visual_rows: torch.Tensor,
                labels: torch.Tensor, positions: torch.Tensor, attention: Attention,
                tp: TP) -> torch.Tensor:
        c = self.config
        rows, d = tokens.shape[0], c.hidden // c.heads
        size = 1 if tp is None else tp.size
        heads, kv_heads = c.heads // size, c.kv_heads // size
        x = F.embedding(tokens, wide(self.embed))  # 16-bit: gathered, then rounded (exact)
        if visual_rows.numel() > 0:
            x = x.index_put((visual_rows,), wide(visual))
        x = x.to(self.embed.dtype)
        for b in self.blocks:
            h = copy_to(b.ln1(x), tp)
            q = self.rotary(dense(h, b.q.w).view(rows, heads, d), positions)
            k = self.rotary(dense(h, b.k.w).view(rows, kv_heads, d), positions)
            v = dense(h, b.v.w).view(rows, kv_heads, d).contiguous()
            a = attention(q, k, v).reshape(rows, heads * d)
            x = x + row(a, b.o, tp)
            f = gelu(column(b.ln2(x), b.fc1, tp))
            x = x + row(f, b.fc2, tp)
        logits = wide(dense(self.ln(x), self.head))  # 16-bit logits, the loss over them in fp32
        labelled = labels.ge(0).nonzero().squeeze(1)
        return F.cross_entropy(logits.index_select(0, labelled), labels.index_select(0, labelled),
                               reduction="sum")


class VLM(nn.Module):
    """The whole model, or this process's tensor-parallel slices of it."""

    def __init__(self, c: Config, params: Sequence[torch.Tensor]) -> None:
        super().__init__()
        by_name = {info.name: t for info, t in zip(param_infos(c), params)}
        self.enc = Encoder(c, lambda n: by_name[n])
        self.llm = Decoder(c, lambda n: by_name[n])
        self.infos = param_infos(c)
        named = dict(self.named_parameters())
        assert sorted(named) == sorted(i.name for i in self.infos), "parameter names differ"
        # In the order of param_infos (the forward's): named_parameters() lists a module's own
        # parameters (llm.embed, llm.head) before its children's.
        self.ordered = [named[i.name] for i in self.infos]

    def llm_parameters(self) -> List[nn.Parameter]:
        return [p for i, p in zip(self.infos, self.ordered) if not i.encoder]

    def encoder_parameters(self) -> List[nn.Parameter]:
        return [p for i, p in zip(self.infos, self.ordered) if i.encoder]


class VLMStep(dt.StepModel):
    """How dhp's step executor calls the model."""

    def __init__(self, model: VLM, holds_llm: bool, holds_encoder: bool) -> None:
        super().__init__()
        self.model = model
        self.holds_llm = holds_llm
        self.holds_encoder = holds_encoder

    def encode(self, patches: torch.Tensor, ctx: dt.EncoderContext) -> torch.Tensor:
        out: torch.Tensor = self.model.enc(patches, ctx.attention, ctx.tp)
        return out

    def llm_loss(self, tokens: torch.Tensor, visual: torch.Tensor, visual_rows: torch.Tensor,
                 labels: torch.Tensor, ctx: dt.LlmContext) -> torch.Tensor:
        out: torch.Tensor = self.model.llm(tokens, visual, visual_rows, labels, ctx.positions,
                                           ctx.attention, ctx.tp)
        return out

    def llm_parameters(self) -> List[torch.Tensor]:
        return list(self.model.llm_parameters()) if self.holds_llm else []

    def encoder_parameters(self) -> List[torch.Tensor]:
        return list(self.model.encoder_parameters()) if self.holds_encoder else []


# ---------------------------------------------------------------- the data

class MT19937_64:
    """std::mt19937_64 (the C++ example's generator), vectorised with numpy."""

    N, M = 312, 156
    A = np.uint64(0xB5026F5AA96619E9)
    UPPER, LOWER = np.uint64(0xFFFFFFFF80000000), np.uint64(0x7FFFFFFF)

    def __init__(self, seed: int) -> None:
        mask = (1 << 64) - 1
        state = [seed & mask]
        for i in range(1, self.N):
            prev = state[-1]
            state.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & mask)
        self.mt = np.array(state, dtype=np.uint64)
        self.out: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)

    def _twist(self) -> None:
        mt, n, m = self.mt, self.N, self.M
        one = np.uint64(1)

        def mix(y: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
            odd: npt.NDArray[np.uint64] = np.where((y & one) == one, self.A, np.uint64(0))
            return (y >> one) ^ odd

        y = (mt[:n - m] & self.UPPER) | (mt[1:n - m + 1] & self.LOWER)
        mt[:n - m] = mt[m:n] ^ mix(y)
        y = (mt[n - m:n - 1] & self.UPPER) | (mt[n - m + 1:n] & self.LOWER)
        mt[n - m:n - 1] = mt[:m - 1] ^ mix(y)
        y = (mt[n - 1:n] & self.UPPER) | (mt[0:1] & self.LOWER)
        mt[n - 1:n] = mt[m - 1:m] ^ mix(y)
        z = mt.copy()
        z ^= (z >> np.uint64(29)) & np.uint64(0x5555555555555555)
        z ^= (z << np.uint64(17)) & np.uint64(0x71D67FFFEDA60000)
        z ^= (z << np.uint64(37)) & np.uint64(0xFFF7EEE000000000)
        z ^= z >> np.uint64(43)
        self.out = np.concatenate([self.out, z])

    def raw(self, count: int) -> npt.NDArray[np.uint64]:
        """The next `count` 64-bit outputs."""
        while self.out.size < count:
            self._twist()
        taken, self.out = self.out[:count], self.out[count:]
        return taken

    def next(self) -> int:
        return int(self.raw(1)[0])

    def normal(self, count: int, mean: float, stddev: float) -> npt.NDArray[np.float64]:
        """`count` draws of one std::normal_distribution (libstdc++: Marsaglia's polar
        method on pairs of generate_canonical values, the second value of an accepted pair
        kept for the next draw). Draws past the last value needed are not given back."""
        values: List[npt.NDArray[np.float64]] = []
        have = 0
        below_one = np.nextafter(1.0, 0.0)
        while have < count:
            attempts = (count - have) // 2 * 13 // 10 + 16  # ~79 % of attempts succeed
            u = self.raw(2 * attempts).astype(np.float64) / 18446744073709551616.0
            u = np.minimum(u, below_one)
            x, y = 2.0 * u[0::2] - 1.0, 2.0 * u[1::2] - 1.0
            r2 = x * x + y * y
            accepted = np.flatnonzero((r2 <= 1.0) & (r2 != 0.0))
            mult = np.sqrt(-2.0 * np.log(r2[accepted]) / r2[accepted])
            pair = np.empty(2 * accepted.size)
            pair[0::2] = y[accepted] * mult
            pair[1::2] = x[accepted] * mult
            values.append(pair)
            have += pair.size
        result: npt.NDArray[np.float64] = np.concatenate(values)[:count] * stddev + mean
        return result


def share_end(total: int, k: int, of: int) -> int:
    return total // of * k + total % of * k // of


def row_kinds(sample: dhp.Sample) -> List[Tuple[int, int]]:
    """Per row of the sample's sequence: (text segment, index in it); (-1, 0) for a visual
    row. Segment v is the text before item v (the last one after every item)."""
    visuals = sample.get("visuals", [])
    total = sample["text"] + sum(v["tokens"] for v in visuals)
    offsets = dhp.visual_token_offsets(sample)
    rows: List[Tuple[int, int]] = []
    for v in range(len(visuals) + 1):
        end = offsets[v] if v < len(visuals) else total
        rows.extend((v, i) for i in range(end - len(rows)))
        if v < len(visuals):
            rows.extend((-1, 0) for _ in range(visuals[v]["tokens"]))
    return rows


_prototypes: Dict[Tuple[Config, int], npt.NDArray[np.float64]] = {}


def prototypes(c: Config, seed: int) -> npt.NDArray[np.float64]:
    """The prototype patch pattern of every class: [classes * 4, patch_dim]."""
    if (c, seed) not in _prototypes:
        values = MT19937_64(seed).normal(c.classes * 4 * c.patch_dim, 0.0, 1.0)
        _prototypes[(c, seed)] = values.reshape(c.classes * 4, c.patch_dim)
    return _prototypes[(c, seed)]


class SampleData(NamedTuple):
    tokens: List[int]
    labels: List[int]
    patches: npt.NDArray[np.float64]  # [sum of patches, patch_dim]


def sample_data(c: Config, sample: dhp.Sample, seed: int) -> SampleData:
    """The synthetic task's data of one whole sample: each item shows one of `classes`
    prototypes plus noise; the text before any item is noise, the text after an item
    starts with its class token and continues with a sequence derived from it."""
    gen = MT19937_64((seed * 1000003 + sample.get("id", 0)) % (1 << 64))
    visuals = sample.get("visuals", [])
    classes = [gen.next() % c.classes for _ in visuals]
    text_vocab = c.vocab - c.classes
    kinds = row_kinds(sample)
    noise_tokens = iter(gen.raw(sum(1 for s, _ in kinds if s == 0)).tolist())
    tokens: List[int] = []
    for segment, index in kinds:
        if segment < 0:
            tokens.append(0)
        elif segment == 0:
            tokens.append(c.classes + next(noise_tokens) % text_vocab)
        else:
            cls = classes[segment - 1]
            tokens.append(cls if index == 0 else c.classes + (cls * 5 + index * 3) % text_vocab)
    labels = [tokens[p + 1] if p + 1 < len(kinds) and kinds[p + 1][0] >= 0 else -1
              for p in range(len(kinds))]
    proto = prototypes(c, seed)
    total = sum(v["patches"] for v in visuals)
    noise = gen.normal(total * c.patch_dim, 0.0, 0.5).reshape(total, c.patch_dim)
    parts = [proto[classes[v] * 4 + np.arange(item["patches"]) % 4]
             for v, item in enumerate(visuals)]
    patches = (np.concatenate(parts) if parts else np.zeros((0, c.patch_dim))) + noise
    return SampleData(tokens, labels, patches)


def llround(x: float) -> int:
    """C's llround for x >= 0: the nearest integer, halves away from zero."""
    floor = math.floor(x)
    return int(floor) + (1 if x - floor >= 0.5 else 0)


def batches(c: Config, count: int, samples_per_batch: int, seed: int, text_scale: float,
            visual_scale: float, max_tokens: int) -> List[dhp.Batch]:
    """Batches of real length distributions (ActivityNet video clips, MathVista images),
    scaled down to CPU size with the long tail kept: text lengths divided by text_scale,
    every item's LLM tokens by visual_scale (at least 2), patches = merge x tokens, a
    video's frames kept; samples shrunk further until they hold at most max_tokens."""
    pool = dhp.load_dataset("activitynet") + dhp.load_dataset("mathvista")
    out = dhp.make_batches(pool, count, samples_per_batch, seed)

    def scaled(n: int, scale: float, least: int) -> int:
        return max(least, llround(n / scale))

    for batch in out:
        for i, s in enumerate(batch["samples"]):
            extra = 1.0
            while True:
                t: dhp.Sample = {"id": s.get("id", i), "text": scaled(s["text"], text_scale * extra, 1)}
                visuals: List[dhp.Visual] = []
                for item in s.get("visuals", []):
                    tokens = scaled(item["tokens"], visual_scale * extra, 2)
                    v: dhp.Visual = {"patches": c.merge * tokens, "tokens": tokens}
                    if "frames" in item:
                        v["frames"] = item["frames"]
                    visuals.append(v)
                if visuals:
                    t["visuals"] = visuals
                if t["text"] + sum(v["tokens"] for v in visuals) <= max_tokens or extra > 1e6:
                    batch["samples"][i] = t
                    break
                extra *= 1.25
    return out


# ---------------------------------------------------------------- planning

def cpu_cluster(world: int, nodes: int, capacity_gib: float) -> Dict[str, object]:
    """A modelled CPU "cluster" of `world` processes on `nodes` nodes."""
    return {"name": f"cpu-{world}", "device": "cpu", "num_nodes": nodes,
            "devices_per_node": world // nodes, "peak_tflops": 0.05, "hbm_gbs": 20,
            "mem_capacity_gib": capacity_gib, "mem_reserved_gib": 0,
            "intra_node": {"bandwidth_gbs": 5, "latency_us": 20},
            "inter_node": {"bandwidth_gbs": 1, "latency_us": 50}}


def choose_capacity(make_planner: Callable[[float], dhp.Planner],
                    data: Sequence[dhp.Batch]) -> float:
    """The smallest memory (0.001 GiB x 1.25^k) with which every batch plans, times 1.25:
    memory stays a binding constraint, so long samples run on CP groups. A batch that plans
    at k plans above it too, so each batch's smallest k is found by bisection."""
    points = 64

    def capacity(k: int) -> float:
        return 0.001 * 1.25 ** k

    def fits(b: dhp.Batch, k: int) -> bool:
        try:
            make_planner(capacity(k)).plan(b)
            return True
        except dhp.DoesNotFitError:
            return False

    needed = 0
    for b in data:
        if fits(b, needed):
            continue
        lo, hi = needed, points  # fits(lo) is false; hi is assumed to fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(b, mid):
                hi = mid
            else:
                lo = mid
        if hi >= points and not fits(b, hi):
            raise dhp.DoesNotFitError(f"batch of step {b.get('step')}: no memory up to "
                                      f"{capacity(points):.0f} GiB lets it plan")
        needed = hi
    return capacity(needed) * 1.25


# ---------------------------------------------------------------- training

def role_in(layout: dhp.Layout, device: int) -> Tuple[int, int]:
    """(module rank, TP index) of `device` in a layout; (-1, 0) outside it."""
    index = device - layout["first_device"]
    if layout["ranks"] <= 0 or not 0 <= index < layout["ranks"] * layout["tp"]:
        return -1, 0
    return index // layout["tp"], index % layout["tp"]


class StepReport(NamedTuple):
    stats: dt.StepStats
    ref_loss: Optional[float]
    max_grad_rel_err: Optional[float]
    skipped: bool  # 16-bit: gradients not finite somewhere, no optimizer step


def verify_tolerance(dtype: str) -> float:
    """--verify's bound on the relative loss error and on every parameter's relative
    gradient error. bfloat16 and float16 runs are compared with the float64 reference; their
    bounds sit above the worst errors measured (docs/runtime.md, "Mixed precision")."""
    return {"float64": 1e-9, "float32": 1e-4, "bfloat16": 1e-1, "float16": 1e-2}[dtype]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rows, group = q.shape[0], q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q, kr) / math.sqrt(q.shape[2])
    mask = torch.ones(rows, rows, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, -math.inf)
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vr)


def span_attention(span_tokens: Sequence[int], merge: int) -> Attention:
    """Full attention inside each span of an item (q/k/v rows are the item's patches)."""
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outs = []
        for a, b in zip(span_tokens[:-1], span_tokens[1:]):
            qs, ks, vs = q[a * merge:b * merge], k[a * merge:b * merge], v[a * merge:b * merge]
            scores = torch.einsum("qhd,khd->hqk", qs, ks) / math.sqrt(q.shape[2])
            outs.append(torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vs))
        return torch.cat(outs, 0)
    return attention


def reference_step(model: VLM, c: Config, batch: dhp.Batch, seed: int) -> Tuple[float, List[torch.Tensor]]:
    """The model over whole samples on one process with plain PyTorch attention: the loss
    (mean over the batch's labelled rows) and every parameter's full gradient."""
    dtype = model.ordered[0].dtype
    for p in model.ordered:
        p.grad = None
    data = [sample_data(c, s, seed) for s in batch["samples"]]
    labelled = sum(sum(1 for label in d.labels if label >= 0) for d in data)
    spec = c.spec()
    total = torch.zeros((), dtype=dtype)
    for sample, d in zip(batch["samples"], data):
        embeddings = []
        first = 0
        for item in sample.get("visuals", []):
            x = torch.from_numpy(d.patches[first:first + item["patches"]]).to(dtype)
            first += item["patches"]
            spans = dhp.encoder_span_tokens(spec, item)
            embeddings.append(model.enc(x, span_attention(spans, c.merge), None))
        offsets = dhp.visual_token_offsets(sample)
        visual_rows = [o + t for o, item in zip(offsets, sample.get("visuals", []))
                       for t in range(item["tokens"])]
        visual = torch.cat(embeddings, 0) if embeddings else torch.zeros((0, c.hidden), dtype=dtype)
        length = len(d.tokens)
        total = total + model.llm(torch.tensor(d.tokens), visual,
                                  torch.tensor(visual_rows, dtype=torch.int64),
                                  torch.tensor(d.labels), torch.arange(length), causal_attention,
                                  None)
    total = total / labelled
    torch.autograd.backward([total])
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in model.ordered]
    return float(total.item()), grads


class Trainer:
    """One per process: this process's slices of the model, the executor, AdamW; with
    verify, on world rank 0, the whole model trained on one process beside it.

    Mixed precision (bfloat16, float16), as Megatron's Float16OptimizerWithFloat16Params:
    the model's parameters are 16-bit for compute; AdamW steps fp32 master weights on the
    synchronised gradients widened and divided by the loss scale in fp32, then the masters
    are copied back into the model rounded once. A step whose gradients are not finite on
    any process is skipped (with a static loss scale, an overflow)."""

    def __init__(self, world: dt.Communicator, pool: dt.GroupPool, c: Config, dtype: torch.dtype,
                 seed: int, lr: float, verify: bool, plan: dhp.Plan,
                 use_torch_distributed: bool, loss_scale: float = 1.0) -> None:
        self.world, self.config, self.dtype, self.seed = world, c, dtype, seed
        self.mixed = dtype in (torch.bfloat16, torch.float16)
        self.loss_scale = loss_scale
        self.llm, self.encoder, self.placement = plan["llm"], plan["encoder"], plan["placement"]
        self.torch_distributed = use_torch_distributed
        self.verify = verify
        llm_rank, llm_index = role_in(self.llm, world.rank)
        enc_rank, enc_index = role_in(self.encoder, world.rank)
        full = full_parameters(c, seed)
        params = []
        self.master: List[torch.Tensor] = []  # mixed: fp32 copies of every parameter
        self.held: List[bool] = []  # the parameters this process trains
        for info, tensor in zip(param_infos(c), full):
            layout, index = (self.encoder, enc_index) if info.encoder else (self.llm, llm_index)
            piece = slice_parameter(info, tensor, layout["tp"], index)
            self.held.append(enc_rank >= 0 if info.encoder else llm_rank >= 0)
            if self.mixed:  # the model computes with the fp32 master weights rounded to 16-bit
                self.master.append(piece.to(torch.float32).clone().requires_grad_(True))
                params.append(self.master[-1].detach().to(dtype))
            else:
                params.append(piece.to(dtype).clone())
        self.model = VLM(c, params)
        self.step_model = VLMStep(self.model, llm_rank >= 0, enc_rank >= 0)
        if self.mixed:
            trained = [m for m, held in zip(self.master, self.held) if held]
        else:
            trained = self.step_model.llm_parameters() + self.step_model.encoder_parameters()
        self.optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01) if trained else None
        self.executor = dt.StepExecutor(world, pool, c.spec(), dtype=dtype, patch_dim=c.patch_dim,
                                        llm_tp=self.llm["tp"], encoder_tp=self.encoder["tp"],
                                        loss_scale=loss_scale)
        self.reference: Optional[VLM] = None
        self.reference_optimizer: Optional[torch.optim.Optimizer] = None
        if verify and world.rank == 0:
            # The reference of a 16-bit run is the same model in float64.
            ref_dtype = torch.float64 if self.mixed else dtype
            self.reference = VLM(c, [t.to(ref_dtype).clone() for t in full])
            self.reference_optimizer = torch.optim.AdamW(self.reference.ordered, lr=lr,
                                                         weight_decay=0.01)

    def step(self, batch: dhp.Batch, plan: dhp.Plan, next_plan: Optional[dhp.Plan]) -> StepReport:
        if (plan["llm"] != self.llm or plan["encoder"] != self.encoder
                or plan["placement"] != self.placement):
            raise dhp.InvalidArgumentError(
                f"step {plan['step']}: the plan's layout (llm {plan['llm']}, encoder "
                f"{plan['encoder']}, {plan['placement']}) is not the run's: the model's slices "
                "follow the run's layout")
        c, me, size = self.config, self.world.rank, self.world.size
        owners = [s % size for s in range(len(batch["samples"]))]
        tokens: List[int] = []
        labels: List[int] = []
        patches = []
        for s, sample in enumerate(batch["samples"]):
            if owners[s] != me:
                continue
            d = sample_data(c, sample, self.seed)
            tokens += d.tokens
            labels += d.labels
            patches.append(d.patches)
        patch_tensor = torch.from_numpy(np.concatenate(patches) if patches
                                        else np.zeros((0, c.patch_dim))).to(self.dtype)
        if self.mixed:
            for p in self.model.ordered:
                if p.grad is not None:
                    p.grad.zero_()
        elif self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=False)
        inputs = dt.StepInputs(owners, tokens, labels, patch_tensor)
        stats = self.executor.run(batch, plan, inputs, self.step_model)
        skipped = False
        if self.mixed:
            # The synchronised 16-bit gradients, widened and unscaled in fp32 onto the master
            # weights; a non-finite one anywhere skips the step on every process.
            finite = True
            for p, m, held in zip(self.model.ordered, self.master, self.held):
                if held:
                    grad = p.grad if p.grad is not None else torch.zeros_like(p)
                    m.grad = grad.float() / self.loss_scale
                    finite = finite and bool(torch.isfinite(m.grad).all())
            overflow = torch.tensor([0 if finite else 1], dtype=torch.int32)
            self.world.all_reduce(overflow, "max")
            skipped = int(overflow[0]) != 0
        ref_loss = err = None
        if self.verify:
            # Mixed precision: the float64 reference restarts every step from the weights this
            # step ran with (the fp32 master weights), so each step's error is its own, not the
            # drift of two trajectories apart.
            weights = []
            if self.mixed:
                weights = self.gather(lambda i: self.master[i].detach(), torch.float32)
            grads = self.gather_gradients()  # collective
            if self.reference is not None and self.reference_optimizer is not None:
                with torch.no_grad():
                    for ref, w in zip(self.reference.ordered, weights):
                        ref.copy_(w)
                ref_loss, ref_grads = reference_step(self.reference, c, batch, self.seed)
                err = 0.0
                for g, r in zip(grads, ref_grads):
                    norm = float(torch.linalg.vector_norm(r))
                    diff = float(torch.linalg.vector_norm(g - r))
                    err = max(err, diff / norm if norm > 0 else diff)
                self.reference_optimizer.step()
        if self.optimizer is not None and not skipped:
            self.optimizer.step()
        if self.mixed and not skipped:  # the master weights, rounded once, back into the model
            with torch.no_grad():
                for p, m, held in zip(self.model.ordered, self.master, self.held):
                    if held:
                        p.copy_(m)
        if next_plan is not None:
            self.executor.prewarm(next_plan)  # the next step's groups, off its path
        return StepReport(stats, ref_loss, err, skipped)

    def gather_gradients(self) -> List[torch.Tensor]:
        """Full gradients on world rank 0 (param_infos order): each slice from the processes
        of module rank 0 (collective); empty elsewhere. Mixed precision: the master weights'
        fp32 gradients (unscaled)."""
        if self.mixed:
            return self.gather(lambda i: self.master[i].grad, torch.float32)
        return self.gather(lambda i: self.model.ordered[i].grad, self.dtype)

    def gather(self, local: Callable[[int], Optional[torch.Tensor]],
               dtype: torch.dtype) -> List[torch.Tensor]:
        """Full tensors on world rank 0 of local(i) (this process's slice of parameter i, in
        `dtype`) from module rank 0's processes (collective); empty elsewhere."""
        out: List[torch.Tensor] = []
        me = self.world.rank
        for i, info in enumerate(param_infos(self.config)):
            layout = self.encoder if info.encoder else self.llm
            slices = layout["tp"] if info.split_dim >= 0 else 1
            parts = []
            for t in range(slices):
                holder = layout["first_device"] + t
                if me == holder and me != 0:
                    tensor = local(i)
                    assert tensor is not None
                    self._send(tensor.contiguous(), 0, 30 + t)
                elif me == 0:
                    if holder == 0:
                        tensor = local(i)
                        assert tensor is not None
                        parts.append(tensor.clone())
                    else:
                        shape = list(info.shape)
                        if info.split_dim >= 0:
                            shape[info.split_dim] //= slices
                        received = torch.empty(shape, dtype=dtype)
                        self._recv(received, holder, 30 + t)
                        parts.append(received)
            if me == 0:
                out.append(torch.cat(parts, info.split_dim) if slices > 1 else parts[0])
        return out

    def _send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        if self.torch_distributed:
            torch.distributed.send(tensor, peer, tag=tag)
        else:
            self.world.send(tensor, peer, tag)

    def _recv(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        if self.torch_distributed:
            torch.distributed.recv(tensor, peer, tag=tag)
        else:
            self.world.recv(tensor, peer, tag)


def step_line(step: int, plan: dhp.Plan, world: int, r: StepReport, times: List[float],
              plan_ms: float, simulated_ms: float) -> str:
    """The step's JSON line, as dhp_train_vlm prints it (fields in the same order)."""
    degrees = sorted({len(g["ranks"]) for w in plan["waves"] for g in w["groups"]})
    cut = sum(1 for t in plan["encoder_tasks"] if t.get("part", 0) == 0 and t.get("parts", 1) > 1)
    s = r.stats
    step_ms, dispatch_ms, encoder_ms, boundary_ms, llm_ms, grad_sync_ms = times
    line = (f'{{"step": {step}, "loss": {s.loss:.8f}, "plan_hash": "{dhp.plan_hash(plan):016x}", '
            f'"world": {world}, "cp_degrees": [{",".join(map(str, degrees))}], '
            f'"waves": {len(plan["waves"])}, "cut_items": {cut}, "placement": '
            f'"{plan["placement"]}", "encoder_tp": {plan["encoder"]["tp"]}, "llm_tp": '
            f'{plan["llm"]["tp"]}, "comm_created": {s.comm_created}, "boundary_bytes": '
            f'{s.boundary_bytes}, "boundary_min_bytes": {s.boundary_min_bytes}, '
            f'"dispatch_bytes": {s.dispatch_bytes}, "dispatch_min_bytes": '
            f'{s.dispatch_min_bytes}, "step_ms": {step_ms:.2f}, "plan_ms": {plan_ms:.2f}, '
            f'"dispatch_ms": {dispatch_ms:.2f}, "encoder_ms": {encoder_ms:.2f}, '
            f'"boundary_ms": {boundary_ms:.2f}, "llm_ms": {llm_ms:.2f}, '
            f'"grad_sync_ms": {grad_sync_ms:.2f}, "estimate_ms": '
            f'{plan["estimate"]["step_ms"]:.2f}, "simulated_ms": {simulated_ms:.2f}')
    if r.ref_loss is not None and r.max_grad_rel_err is not None:
        line += f', "ref_loss": {r.ref_loss:.8f}, "max_grad_rel_err": {r.max_grad_rel_err:.3e}'
    return line + "}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_vlm.py", allow_abbrev=False,
        description="Trains a small vision-language model with a new dhp plan every batch "
                    "(torchrun --nproc_per_node N examples/train_vlm.py [options]).",
        epilog="Batches come from ActivityNet (videos) and MathVista (images) in data/, scaled "
               "down to CPU size with the long tail kept. Output: one JSON line per step on "
               "stdout (rank 0); progress on stderr.")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=10, metavar="K",
                   help="optimizer steps, one batch and one plan each (default 10)")
    t.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"],
                   default="float32",
                   help="parameters and activations (default float32). bfloat16 and float16 are "
                        "mixed precision: 16-bit parameters, activations, attention, boundary "
                        "and dispatch; fp32 master weights in AdamW (copied back rounded once), "
                        "gradients summed over replicas in fp32, attention statistics and ring "
                        "merge in fp32")
    t.add_argument("--loss-scale", type=float, default=None, metavar="S",
                   help="16-bit only: static loss scale; the backward starts from loss x S and "
                        "the gradients are unscaled in fp32 before the optimizer; a step with "
                        "non-finite gradients is skipped (default 1024 for float16, 1 for "
                        "bfloat16)")
    t.add_argument("--seed", type=int, default=1, metavar="S",
                   help="parameters, data and batches (default 1)")
    t.add_argument("--lr", type=float, default=3e-3, metavar="X",
                   help="AdamW learning rate (default 3e-3)")
    t.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="samples per global batch (default 8)")
    t.add_argument("--verify", action="store_true",
                   help="world rank 0 also trains the same model on one process on the same "
                        "batches; each line adds ref_loss and max_grad_rel_err; exits 1 past "
                        "1e-9 (float64) or 1e-4 (float32); a 16-bit run is compared with the "
                        "float64 reference restarted every step from the run's master weights, "
                        "bound 1e-1 (bfloat16) or 1e-2 (float16)")
    t.add_argument("--torch-distributed", action="store_true",
                   help="also initialise torch.distributed's default process group (gloo) and "
                        "gather the verification gradients with it, beside dhp's communicators")
    lay = p.add_argument_group("layout")
    lay.add_argument("--placement", choices=["auto", "colocated", "disjoint"], default="auto",
                     help="the encoder on the LLM's processes or on its own, one wave ahead "
                          "(default auto: disjoint on an even world of 4 or more)")
    lay.add_argument("--encoder-devices", type=int, default=None, metavar="N",
                     help="disjoint: processes of the encoder (default world / 3)")
    lay.add_argument("--llm-tp", type=int, default=1, metavar="T",
                     help="LLM tensor-parallel degree (must divide its 4 and 2 heads)")
    lay.add_argument("--encoder-tp", type=int, default=1, metavar="T",
                     help="encoder tensor-parallel degree (must divide its 4 heads)")
    lay.add_argument("--nodes", type=int, default=1, metavar="N",
                     help="nodes the processes are modelled on (default 1)")
    d = p.add_argument_group("data")
    d.add_argument("--max-tokens", type=int, default=2048, metavar="N",
                   help="longest sample after scaling (default 2048)")
    d.add_argument("--text-scale", type=float, default=2.0, metavar="X",
                   help="text lengths of data/ are divided by X (default 2)")
    d.add_argument("--visual-scale", type=float, default=8.0, metavar="X",
                   help="visual tokens of data/ are divided by X (default 8)")
    args = p.parse_args(argv)
    for name, least in (("steps", 1), ("batch_size", 1), ("llm_tp", 1), ("encoder_tp", 1),
                        ("nodes", 1), ("max_tokens", 16)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= {least}")
    mixed = args.dtype in ("bfloat16", "float16")
    if args.loss_scale is None:
        args.loss_scale = 1024.0 if args.dtype == "float16" else 1.0
    if not (math.isfinite(args.loss_scale) and args.loss_scale > 0
            and (mixed or args.loss_scale == 1)):
        p.error(f"--loss-scale {args.loss_scale:g} with --dtype {args.dtype}: a positive scale, "
                "for bfloat16 or float16 only")
    if args.encoder_devices is not None and args.encoder_devices < 1:
        p.error(f"--encoder-devices {args.encoder_devices}: must be >= 1")
    for name in ("text_scale", "visual_scale", "lr"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            p.error(f"--{name.replace('_', '-')} {value}: must be a positive number")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    if args.torch_distributed:
        torch.distributed.init_process_group("gloo")
    world = dt.world()
    pool = dt.GroupPool(world)
    n, me = world.size, world.rank
    if n % args.nodes:
        raise dhp.InvalidArgumentError(f"--nodes {args.nodes} does not divide the world of {n}")
    c = Config()
    dtype: torch.dtype = getattr(torch, args.dtype)
    mixed = args.dtype in ("bfloat16", "float16")
    disjoint = args.placement == "disjoint" or (args.placement == "auto" and n >= 4 and n % 2 == 0)
    if disjoint and n < 2:
        raise dhp.InvalidArgumentError("a disjoint encoder needs two processes or more")

    def make_planner(capacity: float) -> dhp.Planner:
        return dhp.Planner(cpu_cluster(n, args.nodes, capacity), c.spec(), llm_tp=args.llm_tp,
                           encoder_tp=args.encoder_tp,
                           placement="disjoint" if disjoint else "colocated",
                           encoder_devices=(args.encoder_devices or max(1, n // 3)) if disjoint
                           else None)

    data = batches(c, args.steps + 1, args.batch_size, args.seed, args.text_scale,
                   args.visual_scale, args.max_tokens)
    capacity = choose_capacity(make_planner, data)
    planner = make_planner(capacity)

    plan = planner.plan(data[0])
    trainer = Trainer(world, pool, c, dtype, args.seed, args.lr, args.verify, plan,
                      args.torch_distributed, args.loss_scale)
    trainer.executor.prewarm(plan)
    if me == 0:
        precision = (f" (fp32 master weights, loss scale {args.loss_scale:g})" if mixed else "")
        print(f"train_vlm.py: {n} processes, {args.dtype}{precision}, {plan['placement']}, LLM "
              f"{plan['llm']['ranks']} ranks x tp {plan['llm']['tp']}, encoder "
              f"{plan['encoder']['ranks']} ranks x tp {plan['encoder']['tp']}, {capacity:.4f} GiB "
              f"per process{', verifying against one process' if args.verify else ''}",
              file=sys.stderr, flush=True)
    start = time.monotonic()
    tolerance = verify_tolerance(args.dtype)
    mismatches = 0
    for s in range(args.steps):
        plan_start = time.monotonic()
        next_plan = planner.plan(data[s + 1])
        plan_ms = (time.monotonic() - plan_start) * 1e3
        r = trainer.step(data[s], plan, next_plan)
        # The slowest process's time of the step and of each phase.
        t = r.stats
        times = torch.tensor([t.step_ms, t.dispatch_ms, t.encoder_ms, t.boundary_ms, t.llm_ms,
                              t.grad_sync_ms], dtype=torch.float64)
        world.all_reduce(times, "max")
        if me == 0 and r.skipped:
            print(f"step {s}: gradients not finite at loss scale {args.loss_scale:g}: no "
                  "optimizer step", file=sys.stderr, flush=True)
        if me == 0:
            simulated_ms = planner.simulate(data[s], plan)["step_ms"]
            line = step_line(s, plan, n, r, [float(x) for x in times], plan_ms, simulated_ms)
            if r.ref_loss is not None and r.max_grad_rel_err is not None:
                if (r.max_grad_rel_err > tolerance
                        or abs(r.stats.loss - r.ref_loss) > tolerance * abs(r.ref_loss)):
                    mismatches += 1
                    print(f"step {s}: the run does not match one process (loss "
                          f"{r.stats.loss:.10g} vs {r.ref_loss:.10g}, gradient error "
                          f"{r.max_grad_rel_err:.3g}, tolerance {tolerance:.0e})",
                          file=sys.stderr, flush=True)
            print(line, flush=True)
            error = (f", gradient error {r.max_grad_rel_err:.1e}"
                     if r.max_grad_rel_err is not None else "")
            print(f"step {s + 1}/{args.steps}: loss {r.stats.loss:.4f}{error} "
                  f"({time.monotonic() - start:.1f} s)", file=sys.stderr, flush=True)
        plan = next_plan
    flag = torch.tensor([mismatches], dtype=torch.int32)
    world.broadcast(flag, 0)
    if args.torch_distributed:
        torch.distributed.destroy_process_group()
    return 0 if int(flag[0]) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
