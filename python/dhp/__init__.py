"""dhp: per-batch dynamic hybrid-parallelism planning for multimodal LLM training.

Thin Python layer over the C++ core (dhp._dhp). Descriptions are plain dicts with the
JSON schemas of docs/schemas.md; presets are named by strings.

    import dhp
    planner = dhp.Planner("h100-64", "qwen2-vl-7b")
    plan = planner.plan({"step": 0, "samples": [{"id": 0, "text": 900,
                          "visuals": [{"patches": 4096, "tokens": 1024}]}]})
    print(plan["estimate"]["step_ms"], planner.simulate(batch, plan)["step_ms"])
"""
import json as _json

from ._dhp import (Error, cluster_preset_names, model_preset_names, strategy_names)
from . import _dhp

__all__ = ["Error", "Planner", "cluster", "model", "cluster_preset_names",
           "model_preset_names", "strategy_names"]


def _as_json(value, loader):
    """A preset name or path (str) or a dict -> normalised JSON text."""
    if isinstance(value, str):
        return loader(value)
    if isinstance(value, dict):
        return _json.dumps(value)
    raise TypeError(f"expected a preset name, a path or a dict, got {type(value).__name__}")


def cluster(preset_or_path):
    """The cluster description of a preset name or JSON file, as a dict."""
    return _json.loads(_dhp.cluster_json(preset_or_path))


def model(preset_or_path):
    """The model description of a preset name or JSON file, as a dict."""
    return _json.loads(_dhp.model_json(preset_or_path))


class Planner:
    """Plans batches for one cluster and model. See include/dhp/planner.hpp."""

    def __init__(self, cluster, model, strategy="dhp", llm_tp=0, encoder_tp=0,
                 placement="colocated", encoder_devices=0):
        self._impl = _dhp.Planner(_as_json(cluster, _dhp.cluster_json),
                                  _as_json(model, _dhp.model_json),
                                  strategy, llm_tp, encoder_tp, placement, encoder_devices)

    def plan(self, batch):
        """batch: dict {"step", "samples": [...]} -> plan dict."""
        return _json.loads(self._impl.plan(_json.dumps(batch)))

    def simulate(self, batch, plan):
        """Simulated step of `plan` on the modelled cluster: step_ms, idle, peak memory."""
        return self._impl.simulate(_json.dumps(batch), _json.dumps(plan))

    def svg(self, batch, plan):
        """An SVG picture of the plan (one row per device, time along the axis)."""
        return self._impl.svg(_json.dumps(batch), _json.dumps(plan))
