"""dhp: per-batch dynamic hybrid-parallelism planning for multimodal LLM training.

The planner chooses, for every global batch, how the devices split into context-parallel
groups of any size, which sequences each group runs and how (zigzag over the group or
whole on one member), which images each encoder rank encodes, and the modules' tensor
parallelism and placement. The simulator runs a plan on a modelled cluster.

Descriptions are dicts with the JSON schemas of docs/schemas.md (typed as dhp.Batch,
dhp.Plan, ...); numpy numbers and arrays are accepted wherever numbers and lists are.
Clusters and models are preset names, JSON file paths or dicts. Units: milliseconds (ms)
and GiB; token and patch counts are integers.

    import dhp
    planner = dhp.Planner("h100-8", "qwen2-vl-7b")
    batch = {"step": 0, "samples": [{"id": 0, "text": 900,
                                      "visuals": [{"patches": 4096, "tokens": 1024}]}]}
    plan = planner.plan(batch)
    print(plan["estimate"]["step_ms"], planner.simulate(batch, plan)["step_ms"])

Training with the plans from PyTorch: dhp.torch (needs the package built with torch).
Command line: python -m dhp -h.
"""
from __future__ import annotations

import difflib
import json as _json
import os
from typing import Any, List, Mapping, Optional, Union

from . import _dhp
from ._check import (as_choice, as_degree, as_int, as_preset_or_path, show, to_json,
                     to_json_value, type_name)
from ._errors import (CommunicationError, DoesNotFitError, Error, InputTypeError,
                      InternalError, InvalidArgumentError, InvalidInputError)
from ._types import (Batch, EncoderTask, Estimate, Group, Layout, Plan, Sample, Sequence,
                     Simulation, Visual, Wave)

__version__ = "0.1.0"

__all__ = [
    "Error", "InvalidArgumentError", "InvalidInputError", "InputTypeError", "DoesNotFitError",
    "CommunicationError", "InternalError",
    "Batch", "Sample", "Visual", "Plan", "Layout", "Group", "Sequence", "Wave", "EncoderTask",
    "Estimate", "Simulation",
    "Planner", "cluster", "model", "check_batch", "check_plan", "load_batches",
    "load_dataset", "make_batches", "plan_hash", "visual_token_offsets", "encoder_span_tokens",
    "cluster_preset_names", "model_preset_names",
    "strategy_names", "__version__",
]

Description = Union[str, "Mapping[str, Any]"]


def cluster_preset_names() -> List[str]:
    """Names of the cluster presets (e.g. "h100-8": one node of 8 H100)."""
    return list(_dhp.cluster_preset_names())


def model_preset_names() -> List[str]:
    """Names of the model presets (e.g. "qwen2-vl-7b")."""
    return list(_dhp.model_preset_names())


def strategy_names() -> List[str]:
    """Names of the planning strategies: "dhp" and the baselines it is compared with."""
    return list(_dhp.strategy_names())


def _description_json(name: str, value: Any, loader: Any, parser: Any) -> str:
    """A preset name, a path or a dict -> normalised JSON text (checked as `name`)."""
    if isinstance(value, Mapping):
        return str(parser(to_json(value, name), name))
    return str(loader(as_preset_or_path(name, value)))


def cluster(preset_or_path: Description) -> dict[str, Any]:
    """The cluster description of a preset name, a JSON file or a dict, normalised.

    Fields: name, device, num_nodes, devices_per_node, peak_tflops (per device),
    hbm_gbs (GB/s), mem_capacity_gib and mem_reserved_gib (GiB per device), intra_node and
    inter_node links (bandwidth_gbs in GB/s, latency_us in microseconds).
    """
    text = _description_json("cluster", preset_or_path, _dhp.cluster_json,
                             _dhp.cluster_from_json)
    result: dict[str, Any] = _json.loads(text)
    return result


def model(preset_or_path: Description) -> dict[str, Any]:
    """The model description of a preset name, a JSON file or a dict, normalised.

    Fields: name, llm {layers, hidden, heads, kv_heads, ffn_hidden, gated_mlp, vocab},
    encoder {..., patch_size, tokens_per_llm_token, temporal_patch_size, ...} or None for a
    text-only model, training {recompute, zero_stage, bytes_per_param, ...}.
    """
    text = _description_json("model", preset_or_path, _dhp.model_json, _dhp.model_from_json)
    result: dict[str, Any] = _json.loads(text)
    return result


def _batch_json(batch: Any) -> str:
    return to_json(batch, "batch")


def check_batch(batch: Mapping[str, Any]) -> Batch:
    """`batch` checked and normalised (ids filled in, numpy values converted).

    Raises InvalidInputError naming the field (``batch.samples[3].visuals[0].tokens``) and
    the value; unknown fields are named with the closest valid one.
    """
    result: Batch = _json.loads(_dhp.batch_from_json(_batch_json(batch), "batch"))
    return result


def check_plan(plan: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
    """Checks that `plan` is a valid plan of `batch`; raises InvalidArgumentError (a plan
    that does not match its batch) or InvalidInputError (a malformed field) otherwise."""
    _dhp.validate_plan(_batch_json(batch), to_json(plan, "plan"))


def load_batches(path: Union[str, "os.PathLike[str]"]) -> List[Batch]:
    """The batches of a batch file: one batch, a list of batches or {"batches": [...]}."""
    result: List[Batch] = _json.loads(_dhp.load_batches(as_preset_or_path("path", path)))["batches"]
    return result


DATASETS = ("activitynet", "mathvista", "llava_cc3m", "narrativeqa")


def load_dataset(name: str, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> List[Sample]:
    """The samples of a real length data set: "activitynet" (videos), "mathvista" (images),
    "llava_cc3m" (images) or "narrativeqa" (long text), from `path` or the default file
    (DHP_DATA_DIR, the source tree's data/, then ../shared/data)."""
    as_choice("name", name, DATASETS)
    file = "" if path is None else as_preset_or_path("path", path)
    result: List[Sample] = _json.loads(_dhp.dataset_samples(name, file))["samples"]
    return result


def make_batches(samples: List[Sample], num_batches: int, samples_per_batch: int,
                 seed: int = 1) -> List[Batch]:
    """Cuts a sample pool into `num_batches` batches of `samples_per_batch` samples, drawn
    with a seeded shuffle (the same on every process for the same seed)."""
    pool = to_json({"samples": to_json_value(samples, "samples")}, "samples")
    result: List[Batch] = _json.loads(_dhp.make_batches(
        pool, as_int("num_batches", num_batches, 1), as_int("samples_per_batch",
                                                               samples_per_batch, 1),
        as_int("seed", seed, 0, 2**64 - 1)))["batches"]
    return result


def plan_hash(plan: Mapping[str, Any]) -> int:
    """The 64-bit hash of a plan, the value every rank's runtime checks it agrees on."""
    return int(_dhp.plan_hash(to_json(plan, "plan")))


def visual_token_offsets(sample: Mapping[str, Any]) -> List[int]:
    """Where each visual item's LLM tokens start in the sample's sequence: the runtime lays
    a sample out as text, item 0, text, item 1, ..., text, the text split evenly (floor
    shares) into len(visuals) + 1 segments."""
    checked = check_batch({"samples": [sample]})["samples"][0]
    visuals = checked.get("visuals", [])
    text, parts = checked["text"], len(visuals) + 1
    offsets, before = [], 0
    for i, item in enumerate(visuals):
        k = i + 1
        offsets.append(text // parts * k + text % parts * k // parts + before)
        before += item["tokens"]
    return offsets


def encoder_span_tokens(model: Description, visual: Mapping[str, Any]) -> List[int]:
    """Token offsets of the attention spans of a visual item encoded whole (len = spans + 1):
    the encoder attends within each span (temporal slices of a video; the whole of an
    image)."""
    item = check_batch({"samples": [{"text": 0, "visuals": [visual]}]})["samples"][0]
    v = item.get("visuals", [])[0]
    return list(_dhp.encoder_span_tokens(
        _description_json("model", model, _dhp.model_json, _dhp.model_from_json),
        v["patches"], v["tokens"], v.get("frames", 1)))


class Planner:
    """Plans batches for one cluster and model.

    Args:
        cluster: a preset name (dhp.cluster_preset_names()), a JSON file or a dict.
        model: a preset name (dhp.model_preset_names()), a JSON file or a dict.
        strategy: "dhp" (default) or a baseline (dhp.strategy_names()).
        llm_tp, encoder_tp: tensor-parallel degree of each module; None or "auto": the
            smallest that divides the heads and fits memory.
        placement: "colocated" (the encoder on the LLM's devices) or "disjoint" (on its own).
        encoder_devices: disjoint placement: devices given to the encoder; None: chosen.
        max_waves: most micro-batches a batch may be split into.
        split_visual_items: whether a long video may be encoded in parts on several ranks.

    Plans are deterministic: the same batch gives the same plan on every process.
    """

    def __init__(self, cluster: Description, model: Description, strategy: str = "dhp",
                 llm_tp: Union[int, str, None] = None, encoder_tp: Union[int, str, None] = None,
                 placement: str = "colocated", encoder_devices: Union[int, str, None] = None,
                 max_waves: int = 256, split_visual_items: bool = True) -> None:
        names = strategy_names()
        if not isinstance(strategy, str) or strategy not in names:
            near = difflib.get_close_matches(str(strategy), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InvalidArgumentError(
                f"strategy={show(strategy)}: expected one of {', '.join(names)}{hint}")
        as_choice("placement", placement, ("colocated", "disjoint"))
        if not isinstance(split_visual_items, bool):
            raise InputTypeError(f"split_visual_items={show(split_visual_items)}: expected "
                                 f"True or False, got {type_name(split_visual_items)}")
        self._cluster_json = _description_json("cluster", cluster, _dhp.cluster_json,
                                               _dhp.cluster_from_json)
        self._model_json = _description_json("model", model, _dhp.model_json,
                                             _dhp.model_from_json)
        self._impl = _dhp.Planner(
            self._cluster_json, self._model_json, strategy, as_degree("llm_tp", llm_tp),
            as_degree("encoder_tp", encoder_tp), placement,
            as_degree("encoder_devices", encoder_devices), as_int("max_waves", max_waves, 1),
            split_visual_items)
        self.strategy = strategy
        self.placement = placement

    @property
    def cluster(self) -> dict[str, Any]:
        """The cluster description the planner plans for."""
        result: dict[str, Any] = _json.loads(self._cluster_json)
        return result

    @property
    def model(self) -> dict[str, Any]:
        """The model description the planner plans for."""
        result: dict[str, Any] = _json.loads(self._model_json)
        return result

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        """Plans one batch: {"step": int, "samples": [{"id", "text", "visuals": [{"patches",
        "tokens", "frames"}]}]} -> the plan (dhp.Plan). Raises DoesNotFitError naming the
        sample and the numbers when a sample cannot fit in memory whatever the plan."""
        result: Plan = _json.loads(self._impl.plan(_batch_json(batch)))
        return result

    def simulate(self, batch: Mapping[str, Any], plan: Mapping[str, Any]) -> Simulation:
        """The simulated step of `plan` on the modelled cluster: step_ms, per-device busy ms,
        idle fractions and peak memory (GiB). A plan that does not match the batch raises
        InvalidArgumentError."""
        return self._impl.simulate(_batch_json(batch), to_json(plan, "plan"))

    def svg(self, batch: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
        """An SVG picture of the plan: one row per device, simulated time along the axis."""
        return str(self._impl.svg(_batch_json(batch), to_json(plan, "plan")))

    def __repr__(self) -> str:
        c, m = _json.loads(self._cluster_json), _json.loads(self._model_json)
        return (f"dhp.Planner(cluster={c['name']!r}, model={m['name']!r}, "
                f"strategy={self.strategy!r}, placement={self.placement!r})")

