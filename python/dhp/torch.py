"""dhp.torch: run dhp plans inside a PyTorch model, under torchrun.

A new plan every batch: the executor moves each sample to the ranks that run it, runs the
encoder (whole items, spans, shards of long videos in non-causal rings), moves the
embeddings across the encoder/LLM boundary into the LLM's layout (gradients back), runs
the LLM's context-parallel attention over groups of any size (ring for any degree,
Ulysses where the heads divide; zigzag or whole sequences; packed variable lengths), and
synchronises the gradients in buckets while the backward runs. Your model stays a plain
``torch.nn.Module``; a small ``StepModel`` tells the executor how to call it.

    import torch, dhp, dhp.torch as dt

    world = dt.world()                      # torchrun's ranks over Gloo (CPU tensors)
    pool = dt.GroupPool(world)              # communicator groups, reused across plans
    planner = dhp.Planner(cluster, model_description, llm_tp=1, encoder_tp=1)
    executor = dt.StepExecutor(world, pool, model_description, dtype=torch.float32,
                               patch_dim=24)
    for batch in batches:                   # the same batches on every rank
        plan = planner.plan(batch)          # the same plan on every rank
        stats = executor.run(batch, plan, inputs, step_model)   # forward + backward
        optimizer.step(); optimizer.zero_grad()

The building blocks are also usable alone: ``RingAttention`` (context-parallel attention
over a packed batch, returning the log-sum-exp if asked), ``WaveDispatch`` (rows to the
ranks of a plan's wave, gradients back), ``StepSchedule`` + ``Boundary``, the tensor-
parallel functions and ``sync_gradients``.

Devices and dtypes: CPU tensors in float32 and float64 (bfloat16/float16 where dhp's CPU
kernels take them; the call says so otherwise) over Gloo; CUDA tensors go to dhp's CUDA
kernels over NCCL (``world(backend="nccl")``, in a build with CUDA). The step executor
runs on CPU tensors.

It runs beside ``torch.distributed``: under torchrun, dhp connects to the agent's store
on MASTER_PORT (keys under their own prefix); otherwise rank 0 serves MASTER_PORT in the
same multi-tenant way ``torch.distributed``'s env:// store does, whether or not a default
process group exists. Every collective fails with ``dhp.CommunicationError`` instead of
hanging when a peer dies or DHP_COMM_TIMEOUT_S (default 300 s) passes.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ._check import as_choice, as_float, as_int, show, to_json, type_name
from ._errors import InputTypeError, InvalidArgumentError

try:
    from . import _torch
except ImportError as error:  # pragma: no cover - depends on how dhp was built
    raise ImportError(
        "dhp.torch needs dhp's torch extension (dhp._torch), which this installation lacks: "
        "it is built when the Python that builds dhp imports torch. Reinstall from the "
        "source tree with that Python: `python -m pip install --no-build-isolation .` "
        f"(see python/README.md). Import error: {error}") from error

__all__ = [
    "world", "Communicator", "GroupPool", "TensorParallel", "copy_to_tensor_parallel",
    "reduce_from_tensor_parallel", "column_parallel_linear", "row_parallel_linear",
    "RingAttention", "WaveDispatch", "StepSchedule", "Boundary", "sync_gradients",
    "StepModel", "StepInputs", "StepExecutor", "StepStats", "StepEvent", "LlmContext",
    "EncoderContext", "dtype_name",
]

Communicator = _torch.Communicator
GroupPool = _torch.GroupPool
TensorParallel = _torch.TensorParallel
LlmContext = _torch.LlmContext
EncoderContext = _torch.EncoderContext
StepStats = _torch.StepStats
StepEvent = _torch.StepEvent

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
           torch.float16: "float16"}


def dtype_name(dtype: Union[torch.dtype, str], name: str = "dtype") -> str:
    """"float32", "float64", "bfloat16" or "float16" for a torch dtype or such a name."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES:
            raise InvalidArgumentError(
                f"{name}={dtype}: expected torch.float32, float64, bfloat16 or float16")
        return _DTYPES[dtype]
    return as_choice(name, dtype, tuple(_DTYPES.values()))


def _tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name}: expected a torch.Tensor, got {type_name(value)} {show(value)}")
    return value


def _attach(outputs: Any, *owners: Any) -> None:
    """Keeps `owners` alive as long as the autograd graph of `outputs` (their C++ contexts
    are what the graph's backward reads)."""
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            out.grad_fn.metadata.setdefault("dhp", []).extend(owners)


# ---------------------------------------------------------------- communicators

_worlds: Dict[str, Communicator] = {}


def _env_int(name: str, default: Optional[int] = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise InvalidArgumentError(
                f"environment variable {name} is not set: launch with torchrun (or set RANK, "
                "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"environment variable {name}={value!r} is not an integer") \
            from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def world(backend: str = "gloo", timeout: Optional[float] = None) -> Communicator:
    """The communicator of every process of the job, from torchrun's environment.

    Args:
        backend: "gloo" (CPU tensors; no MPI needed) or "nccl" (CUDA tensors; a build with
            CUDA). Both bootstrap through torchrun's store on MASTER_ADDR:MASTER_PORT.
        timeout: seconds a collective may wait for its peers before it raises
            dhp.CommunicationError (default: DHP_COMM_TIMEOUT_S, else 300).

    Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with
    none of them set (a plain ``python script.py``) it is a world of one process. Called
    again with the same backend, it returns the same communicator.
    """
    as_choice("backend", backend, ("gloo", "nccl"))
    if timeout is None:
        timeout = float(os.environ.get("DHP_COMM_TIMEOUT_S", "300") or 300)
    seconds = as_float("timeout", timeout, positive=True)
    if backend in _worlds:
        existing: Communicator = _worlds[backend]
        return existing
    if all(os.environ.get(v) in (None, "") for v in ("RANK", "WORLD_SIZE", "MASTER_PORT")):
        rank, size, local, local_size, addr, port = 0, 1, 0, 1, "127.0.0.1", _free_port()
    else:
        rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
        local = _env_int("LOCAL_RANK")
        local_size = _env_int("LOCAL_WORLD_SIZE", 1)
        addr = os.environ.get("MASTER_ADDR") or ""
        if not addr:
            raise InvalidArgumentError("environment variable MASTER_ADDR is not set: launch "
                                       "with torchrun")
        port = _env_int("MASTER_PORT")
    comm: Communicator = _torch.world(backend, seconds, rank, size, local, local_size, addr, port)
    _worlds[backend] = comm
    return comm


# ---------------------------------------------------------------- tensor parallelism

def copy_to_tensor_parallel(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Megatron's f: identity forward; the input gradient is all-reduced over the TP group
    in backward. Use before a column-parallel layer's input."""
    out: torch.Tensor = _torch.copy_to_tensor_parallel(_tensor("x", x), tp)
    _attach(out, tp)
    return out


def reduce_from_tensor_parallel(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Megatron's g: all-reduce over the TP group forward; identity backward. Use on a
    row-parallel layer's partial output."""
    out: torch.Tensor = _torch.reduce_from_tensor_parallel(_tensor("x", x), tp)
    _attach(out, tp)
    return out


def column_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           tp: TensorParallel) -> torch.Tensor:
    """y = x W^T + b over this process's slice of the output features (W [out/tp, in])."""
    out: torch.Tensor = _torch.column_parallel_linear(
        _tensor("x", x), _tensor("weight", weight),
        None if bias is None else _tensor("bias", bias), tp)
    _attach(out, tp)
    return out


def row_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        tp: TensorParallel) -> torch.Tensor:
    """y = all_reduce(x_slice W_slice^T) + b over this process's slice of the input
    features (W [out, in/tp]); the bias is added once, after the sum."""
    out: torch.Tensor = _torch.row_parallel_linear(
        _tensor("x", x), _tensor("weight", weight),
        None if bias is None else _tensor("bias", bias), tp)
    _attach(out, tp)
    return out


def sync_gradients(gradients: Sequence[torch.Tensor], group: Communicator,
                   bucket_mb: Optional[float] = None) -> None:
    """Sums `gradients` in place over `group` (every member calls it with the same shapes),
    in buckets of about `bucket_mb` MiB (default DHP_GRAD_BUCKET_MB, else 25), one
    non-blocking all-reduce per bucket. Contiguous tensors of one dtype."""
    grads = [_tensor(f"gradients[{i}]", g) for i, g in enumerate(gradients)]
    mb = 0.0 if bucket_mb is None else as_float("bucket_mb", bucket_mb, positive=True)
    _torch.sync_gradients(grads, group, mb)


# ---------------------------------------------------------------- attention

Sharding = Union[str, Tuple[str, int]]


class RingAttention:
    """Context-parallel attention over a packed batch of variable-length sequences.

    Args:
        lengths: every sequence's length, in packed order (the same on every rank).
        ring: the world ranks of the ring, in ring order (any number of them).
        world: the world communicator (dt.world()).
        sharding: per sequence "zigzag" (split over the ring in 2 x degree chunks, member i
            holding chunks i and 2d-1-i: balanced causal work for any length) or
            ("whole", member) (kept on one member); None: chosen (long sequences split,
            the rest placed whole, longest first, on the least-loaded member).
        attention: "ring" (any degree), "ulysses" (all-to-all over heads; the degree must
            divide the heads) or "ulysses_ring" (Ulysses inside a node, ring across);
            the last two need `pool`, and then the constructor is collective over the
            world (it acquires the ring's group).
        causal: causal mask inside each sequence (positions are true sequence positions)
            or full attention within each sequence.
        softmax_scale: None for 1/sqrt(head_dim).

    Each rank holds ``local_rows`` rows: row i is row ``packed_rows[i]`` of the packed
    batch, at position ``positions[i]`` in its sequence. ``shard`` cuts a packed tensor to
    them; calling the object runs the attention (collective over the ring) with autograd.
    """

    def __init__(self, lengths: Sequence[int], ring: Sequence[int], world: Communicator,
                 sharding: Optional[Sequence[Sharding]] = None, attention: str = "ring",
                 causal: bool = True, softmax_scale: Optional[float] = None,
                 pool: Optional[GroupPool] = None, ranks_per_node: int = 0) -> None:
        lens = [as_int(f"lengths[{i}]", n, 0, 2**62) for i, n in enumerate(lengths)]
        ranks = [as_int(f"ring[{i}]", r, 0) for i, r in enumerate(ring)]
        kinds: List[str] = []
        members: List[int] = []
        for i, s in enumerate(sharding or []):
            if isinstance(s, str) and s == "zigzag":
                kinds.append("zigzag")
                members.append(-1)
            elif isinstance(s, (tuple, list)) and len(s) == 2 and s[0] == "whole":
                kinds.append("whole")
                members.append(as_int(f"sharding[{i}][1]", s[1], 0))
            else:
                raise InvalidArgumentError(
                    f"sharding[{i}]={show(s)}: expected 'zigzag' or ('whole', member)")
        if sharding is not None and len(kinds) != len(lens):
            raise InvalidArgumentError(
                f"sharding has {len(kinds)} entries for {len(lens)} sequences")
        as_choice("attention", attention, ("ring", "ulysses", "ulysses_ring"))
        scale = 0.0 if softmax_scale is None else as_float("softmax_scale", softmax_scale,
                                                             positive=True)
        if attention != "ring":
            if pool is None:
                raise InvalidArgumentError(
                    f"attention={attention!r} needs pool= (a dt.GroupPool of the world): its "
                    "all-to-all runs on the ring's own communicator")
            pool.acquire([ranks])  # collective over the world
        self._impl = _torch.RingAttention(lens, ranks, world, kinds, members, attention,
                                          bool(causal), scale, pool,
                                          as_int("ranks_per_node", ranks_per_node, 0))
        self.lengths = lens
        self.ring = ranks

    @property
    def in_ring(self) -> bool:
        """Whether this rank is a member of the ring (else calls do nothing)."""
        return bool(self._impl.in_ring)

    @property
    def local_rows(self) -> int:
        """Rows of the packed batch this rank holds."""
        return int(self._impl.local_rows)

    @property
    def total_rows(self) -> int:
        return int(self._impl.total_rows)

    @property
    def packed_rows(self) -> torch.Tensor:
        """int64 [local_rows]: the packed row of each local row."""
        rows: torch.Tensor = self._impl.packed_rows
        return rows

    @property
    def positions(self) -> torch.Tensor:
        """int64 [local_rows]: each local row's position in its sequence (for rotary
        embeddings)."""
        positions: torch.Tensor = self._impl.positions
        return positions

    @property
    def sharding(self) -> List[Tuple[str, int]]:
        """The sharding in use: ("zigzag", -1) or ("whole", member) per sequence."""
        return [(str(k), int(m)) for k, m in self._impl.sharding]

    def shard(self, packed: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a packed tensor [total_rows, ...] (differentiable, no
        communication)."""
        packed = _tensor("packed", packed)
        if packed.dim() < 1 or packed.shape[0] != self.total_rows:
            raise InvalidArgumentError(
                f"packed has shape {list(packed.shape)}; expected {self.total_rows} rows")
        return packed.index_select(0, self.packed_rows.to(packed.device))

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every member's local rows -> the packed tensor on every member (collective over
        the ring; CPU tensors; no gradient)."""
        out: torch.Tensor = self._impl.gather(_tensor("local", local).detach())
        return out

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [local_rows, heads_q, head_dim], k/v [local_rows, heads_kv, head_dim]
        (contiguous, one dtype) -> out [local_rows, heads_q, head_dim]; differentiable in
        q, k and v. Collective over the ring, forward and backward."""
        out: torch.Tensor = self._impl(_tensor("q", q), _tensor("k", k), _tensor("v", v), False)
        _attach(out, self)
        return out

    def with_lse(self, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(out, lse): the attention and the log-sum-exp of every head and query row,
        lse [heads_q, local_rows] (not differentiable)."""
        out, lse = self._impl(_tensor("q", q), _tensor("k", k), _tensor("v", v), True)
        _attach((out, lse), self)
        return out, lse


# ---------------------------------------------------------------- dispatch

def _owners(sample_owners: Any, samples: int) -> List[int]:
    owners = [as_int(f"sample_owners[{i}]", o, 0) for i, o in enumerate(list(sample_owners))]
    if len(owners) != samples:
        raise InvalidArgumentError(
            f"sample_owners has {len(owners)} entries for the batch's {samples} samples")
    return owners


class WaveDispatch:
    """Moves rows of one wave of a plan from the ranks that loaded its samples to the ranks
    that run them (one all-to-all), and their gradients back in backward.

    Args:
        batch, plan: the step's batch and its plan (dicts).
        wave: index of the wave in the plan.
        sample_owners: the world rank that loaded each sample (known to every rank).
        world: the world communicator.

    The owned tensor holds this rank's samples (all waves), in increasing sample index,
    each sample's rows in sequence order; the local tensor holds what this rank runs in the
    wave: first its group's zigzag pieces, then its whole sequences (``pieces``). Every
    process of a TP group receives the same rows.
    """

    def __init__(self, batch: Mapping[str, Any], plan: Mapping[str, Any], wave: int,
                 sample_owners: Sequence[int], world: Communicator) -> None:
        batch_json = to_json(batch, "batch")
        owners = _owners(sample_owners, len(batch.get("samples", [])))
        self._impl = _torch.WaveDispatch(batch_json, to_json(plan, "plan"),
                                         as_int("wave", wave, 0), owners, world)

    @property
    def owned_rows(self) -> int:
        """Rows of the owned tensor (every sample this rank loaded)."""
        return int(self._impl.owned_rows)

    @property
    def local_rows(self) -> int:
        """Rows this rank runs in the wave."""
        return int(self._impl.local_rows)

    @property
    def positions(self) -> torch.Tensor:
        """int64 [local_rows]: each local row's position in its sequence."""
        positions: torch.Tensor = self._impl.positions
        return positions

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int64 [pieces + 1]: where each local piece starts (flash-attn's cu_seqlens)."""
        cu: torch.Tensor = self._impl.cu_seqlens
        return cu

    @property
    def pieces(self) -> List[Dict[str, Any]]:
        """The local pieces: sequence, sample, sharding, length, offset, rows."""
        return list(self._impl.pieces)

    @property
    def group_ranks(self) -> List[int]:
        """World ranks of this rank's CP group in the wave (ring order; [] when idle)."""
        return list(self._impl.group_ranks)

    def __call__(self, owned: torch.Tensor) -> torch.Tensor:
        """owned [owned_rows, ...] -> local [local_rows, ...] (CPU, any float dtype; int64
        token ids too, without gradient). Collective over the world."""
        out: torch.Tensor = self._impl(_tensor("owned", owned))
        _attach(out, self)
        return out

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                  softmax_scale: Optional[float] = None, pool: Optional[GroupPool] = None,
                  ranks_per_node: int = 0, with_lse: bool = False) -> Any:
        """The wave's context-parallel attention over the local rows (the plan's groups:
        ring, or Ulysses where the plan says so and `pool` is given). Returns out, or
        (out, lse) with `with_lse`."""
        scale = 0.0 if softmax_scale is None else as_float("softmax_scale", softmax_scale,
                                                             positive=True)
        result = self._impl.attention(_tensor("q", q), _tensor("k", k), _tensor("v", v),
                                      bool(causal), scale, pool,
                                      as_int("ranks_per_node", ranks_per_node, 0),
                                      bool(with_lse))
        _attach(result, self)
        return result


class StepSchedule:
    """What this process runs in every wave of a plan: LLM rows (and which are visual),
    encoder patches and embeddings, and the order of the step's actions."""

    def __init__(self, batch: Mapping[str, Any], plan: Mapping[str, Any],
                 model: Mapping[str, Any], world: Communicator) -> None:
        from . import model as _model
        self._impl = _torch.StepSchedule(to_json(batch, "batch"), to_json(plan, "plan"),
                                         to_json(_model(model), "model"), world.rank,
                                         world.size)

    @property
    def waves(self) -> int:
        return int(self._impl.waves)

    @property
    def program(self) -> List[Tuple[str, int]]:
        """The actions in order: ("encoder_forward" | "llm" | "encoder_backward", wave)."""
        return [(str(k), int(w)) for k, w in self._impl.program]

    def llm_rows(self, wave: int) -> int:
        return int(self._impl.llm_rows(as_int("wave", wave, 0)))

    def visual_rows(self, wave: int) -> torch.Tensor:
        """int64: the local LLM rows of the wave that are visual tokens, in boundary order."""
        rows: torch.Tensor = self._impl.visual_rows(as_int("wave", wave, 0))
        return rows

    def encoder_rows(self, wave: int) -> Tuple[int, int]:
        """(patches, embeddings) this process encodes in the wave."""
        patches, tokens = self._impl.encoder_rows(as_int("wave", wave, 0))
        return int(patches), int(tokens)


class Boundary:
    """The encoder/LLM boundary of one step: each visual item's embeddings from the encoder
    processes that produced them to the LLM processes that consume them, in the LLM's
    layout; gradients back in backward. Every element crosses at most once per direction.

    Colocated placement: ``visual = boundary.exchange(embeddings, wave)``. Disjoint: the
    encoder side calls ``handle = boundary.send(embeddings, wave)`` (later
    ``handle.backward()`` receives the gradients and backpropagates the encoder), the LLM
    side ``visual = boundary.receive(wave)``. Every process must use the returned tensor in
    the loss it backpropagates (``loss + visual.sum() * 0`` where it has no rows), since
    the backward is collective; call ``wait()`` at the end of the step.
    """

    def __init__(self, schedule: StepSchedule, hidden: int, dtype: Union[torch.dtype, str],
                 world: Communicator) -> None:
        self.dtype = dtype_name(dtype)
        self._schedule = schedule
        self._impl = _torch.Boundary(schedule._impl, as_int("hidden", hidden, 1), self.dtype,
                                     world)

    def _anchor(self) -> torch.Tensor:
        anchor = torch.zeros((), dtype=getattr(torch, self.dtype)).requires_grad_(True)
        return anchor

    def exchange(self, embeddings: torch.Tensor, wave: int) -> torch.Tensor:
        out: torch.Tensor = self._impl.exchange(_tensor("embeddings", embeddings),
                                                self._anchor(), as_int("wave", wave, 0))
        _attach(out, self)
        return out

    def send(self, embeddings: torch.Tensor, wave: int) -> torch.Tensor:
        out: torch.Tensor = self._impl.send(_tensor("embeddings", embeddings),
                                            as_int("wave", wave, 0))
        _attach(out, self)
        return out

    def receive(self, wave: int) -> torch.Tensor:
        out: torch.Tensor = self._impl.receive(self._anchor(), as_int("wave", wave, 0))
        _attach(out, self)
        return out

    def wait(self) -> None:
        """Waits for the sends still in flight."""
        self._impl.wait()

    @property
    def bytes(self) -> Dict[str, int]:
        """Bytes this process sent (forward, backward) and the step's minimum for the world."""
        return dict(self._impl.bytes)


# ---------------------------------------------------------------- the step executor

def _missing(model: Any, method: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(model).__name__}.{method} is not defined: a dhp.torch.StepModel subclass "
        "defines encode, llm_loss, llm_parameters and encoder_parameters")


class StepModel(_torch.StepModel):
    """Your model as the step executor calls it. Subclass it, call ``super().__init__()``,
    and define the four methods; keep the model itself a plain ``torch.nn.Module``.

    The executor calls ``encode`` for every wave this process encodes and ``llm_loss``
    for every wave it runs the LLM of, in the plan's order, then backpropagates.
    """

    def encode(self, patches: torch.Tensor, ctx: EncoderContext) -> torch.Tensor:
        """patches [ctx.patch_rows, patch_dim] -> embeddings [ctx.token_rows, llm_hidden].

        The rows are this process's pieces of visual items (whole items, or span ranges /
        shards of long ones); attention layers call ``ctx.attention(q, k, v)`` with
        q/k/v [patch_rows, heads, head_dim], which attends within each item's spans (across
        the ranks that share a shard). ``ctx.merge`` consecutive patches make one token;
        ``ctx.patch_positions`` is each patch's index inside its item; tensor-parallel
        layers use ``ctx.tp``."""
        raise _missing(self, "encode")

    def llm_loss(self, tokens: torch.Tensor, visual: torch.Tensor, visual_rows: torch.Tensor,
                 labels: torch.Tensor, ctx: LlmContext) -> torch.Tensor:
        """The LLM over this process's rows of the wave -> the SUM of the per-token loss
        over rows whose label is >= 0 (a scalar; the executor divides by the step's
        loss tokens).

        tokens, labels: int64 [ctx.rows] (a visual row's token id is meaningless; its
        embedding is visual[i] at row visual_rows[i]); visual [V, llm_hidden]. Attention
        layers call ``ctx.attention(q, k, v)`` (causal, over the wave's CP group) with q
        [rows, ctx.heads, head_dim] and k/v [rows, ctx.kv_heads, head_dim]; rotary
        embeddings take ``ctx.positions``; tensor-parallel layers use ``ctx.tp``."""
        raise _missing(self, "llm_loss")

    def llm_parameters(self) -> List[torch.Tensor]:
        """The LLM parameters this process holds (its TP slices), in the order of the
        forward; [] on a process without the LLM (disjoint encoder)."""
        raise _missing(self, "llm_parameters")

    def encoder_parameters(self) -> List[torch.Tensor]:
        """The encoder (and projector) parameters this process holds, in the order of the
        forward; [] on a process without the encoder."""
        raise _missing(self, "encoder_parameters")


@dataclass
class StepInputs:
    """This process's share of a step's inputs: the samples it loaded.

    sample_owners: the world rank that loaded each sample of the batch (every rank passes
        the same list). tokens, labels: int64 [rows]: the token ids and labels (-1: no
        loss) of this process's samples, in increasing sample index, each sample's rows in
        sequence order (visual rows included, their ids ignored). patches: [patches,
        patch_dim] in the executor's dtype: the patches of those samples' visual items, in
        order.
    """
    sample_owners: Sequence[int]
    tokens: Any
    labels: Any
    patches: Any = None


class StepExecutor:
    """Runs whole training steps as their plans say (collective over the world).

    Args:
        world: dt.world(); pool: dt.GroupPool(world).
        model: the model description the planner plans with (preset, path or dict): the
            executor reads the LLM's hidden size and heads and the encoder's spans from it.
        dtype: of parameters, activations, embeddings, patches and attention (torch.float32,
            float64, bfloat16 or float16 on CPU). bfloat16/float16 is mixed precision: the
            gradients are summed over the replicas in fp32 and rounded once, the attention's
            softmax statistics stay fp32; keep fp32 master weights in your optimizer
            (examples/train_vlm.py).
        patch_dim: features of one encoder input patch.
        llm_tp, encoder_tp: the run's tensor-parallel degrees (every plan must use them;
            plan with ``dhp.Planner(..., llm_tp=..., encoder_tp=...)``).
        ranks_per_node: processes per node, for Ulysses-ring groups (0: one node).
        llm_softmax_scale, encoder_softmax_scale: None for 1/sqrt(head_dim).
        loss_scale: static loss scale (a positive number, default 1.0): the backward starts
            from the loss times loss_scale, so the parameters' ``.grad`` come out scaled by
            it (divide them by it, in fp32, before the optimizer step, and skip a step whose
            gradients are not finite); ``StepStats.loss`` stays unscaled. float16 needs one
            (e.g. 1024) to keep small gradients from flushing to zero.
    """

    def __init__(self, world: Communicator, pool: GroupPool, model: Any, *,
                 dtype: Union[torch.dtype, str] = torch.float32, patch_dim: int = 0,
                 llm_tp: int = 1, encoder_tp: int = 1, ranks_per_node: int = 0,
                 llm_softmax_scale: Optional[float] = None,
                 encoder_softmax_scale: Optional[float] = None,
                 loss_scale: float = 1.0) -> None:
        from . import model as _model
        if not isinstance(world, Communicator):
            raise InputTypeError(f"world: expected a dhp.torch.Communicator (dt.world()), got "
                                 f"{type_name(world)}")
        if not isinstance(pool, GroupPool):
            raise InputTypeError(f"pool: expected a dhp.torch.GroupPool, got {type_name(pool)}")
        self.dtype = getattr(torch, dtype_name(dtype))
        self.world = world
        self.pool = pool
        self.model = _model(model)
        self.llm_tp = as_int("llm_tp", llm_tp, 1)
        self.encoder_tp = as_int("encoder_tp", encoder_tp, 1)
        self.loss_scale = as_float("loss_scale", loss_scale, positive=True)
        scale = [0.0 if s is None else as_float(n, s, positive=True)
                 for n, s in (("llm_softmax_scale", llm_softmax_scale),
                              ("encoder_softmax_scale", encoder_softmax_scale))]
        self._impl = _torch.StepExecutor(
            world, pool, to_json(self.model, "model"), dtype_name(dtype),
            as_int("patch_dim", patch_dim, 0), self.llm_tp, self.encoder_tp,
            as_int("ranks_per_node", ranks_per_node, 0), scale[0], scale[1], self.loss_scale)

    def prewarm(self, plan: Mapping[str, Any]) -> None:
        """Creates the communicator groups `plan` needs (collective). Call it with the next
        step's plan after a step, so that the step itself creates none."""
        self._impl.prewarm(to_json(plan, "plan"))

    def run(self, batch: Mapping[str, Any], plan: Mapping[str, Any], inputs: StepInputs,
            model: StepModel) -> StepStats:
        """Runs one step: forward and backward of every wave; the gradients accumulate into
        the parameters' ``.grad`` (zero them before) and are summed over each module's
        replicas on return (scaled by ``loss_scale``). Returns the step's stats: loss (global mean over the loss
        tokens), loss_tokens, step_ms and per-phase ms, boundary bytes, communicators
        created. The plan is checked against the batch (and agreed on) on every rank first.
        """
        if not isinstance(inputs, StepInputs):
            raise InputTypeError(f"inputs: expected dhp.torch.StepInputs, got {type_name(inputs)}")
        if not isinstance(model, StepModel):
            raise InputTypeError(
                f"model: expected a dhp.torch.StepModel subclass, got {type_name(model)}")
        batch_json = to_json(batch, "batch")
        owners = _owners(inputs.sample_owners, len(batch.get("samples", [])))
        tokens = torch.as_tensor(inputs.tokens, dtype=torch.int64).contiguous()
        labels = torch.as_tensor(inputs.labels, dtype=torch.int64).contiguous()
        patches = inputs.patches
        if patches is None:
            patches = torch.zeros((0, 0), dtype=self.dtype)
        elif not isinstance(patches, torch.Tensor):
            patches = torch.as_tensor(patches, dtype=self.dtype)
        stats: StepStats = self._impl.run(batch_json, to_json(plan, "plan"), owners, tokens,
                                          labels, patches.contiguous(), model)
        return stats
