"""Typed views of the JSON descriptions (docs/schemas.md) as Python dicts.

Inputs are accepted as any mapping with these fields (numpy numbers too); outputs are
plain dicts of these shapes.
"""
from __future__ import annotations

import sys
from typing import List

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

__all__ = ["Visual", "Sample", "Batch", "Layout", "Group", "Sequence", "Wave", "EncoderTask",
           "Estimate", "Plan", "Simulation"]


class Visual(TypedDict):
    """One image or video of a sample."""
    patches: int  #: encoder input patches (all frames together)
    tokens: int  #: LLM tokens the item becomes after the projector
    frames: NotRequired[int]  #: frames of a video (default 1)


class Sample(TypedDict):
    """One training sequence: text tokens and visual items."""
    id: NotRequired[int]
    text: int  #: text tokens
    visuals: NotRequired[List[Visual]]


class Batch(TypedDict):
    """A global batch: the samples of one optimizer step."""
    step: NotRequired[int]
    samples: List[Sample]


class Layout(TypedDict):
    """A module's layout: `ranks` ranks of `tp` devices from `first_device`."""
    tp: int
    first_device: int
    ranks: int


class Group(TypedDict):
    """A context-parallel group of LLM ranks (ring order) and its attention."""
    ranks: List[int]
    attention: NotRequired[str]  #: "ring", "ulysses" or "ulysses_ring"


class Sequence(TypedDict):
    """Where a sample runs in a wave: its group, zigzag over it or whole on one member."""
    sample: int
    group: int
    sharding: str  #: "zigzag" or "whole"
    member: int  #: whole: the member's index in the group; zigzag: -1


class Wave(TypedDict):
    groups: List[Group]
    sequences: List[Sequence]


class EncoderTask(TypedDict):
    """One visual item (or part of one) encoded by one encoder rank in one wave."""
    sample: int
    visual: int
    wave: int
    rank: int
    part: NotRequired[int]
    parts: NotRequired[int]


class Estimate(TypedDict):
    """The cost model's estimate of a plan (milliseconds, GiB)."""
    step_ms: float
    encoder_ms: float
    llm_ms: float
    grad_sync_ms: float
    wave_ms: List[float]
    peak_mem_gib: List[float]
    mem_capacity_gib: float
    #: moving weights and optimizer state from the previous batch's layout (not in step_ms)
    layout_switch_ms: float


class Plan(TypedDict):
    """A plan for one batch (docs/schemas.md)."""
    strategy: str
    step: int
    placement: str  #: "colocated" or "disjoint"
    llm: Layout
    encoder: Layout
    waves: List[Wave]
    encoder_tasks: List[EncoderTask]
    estimate: Estimate


class Simulation(TypedDict):
    """A simulated step of a plan on the modelled cluster (milliseconds, GiB)."""
    step_ms: float
    mean_idle_fraction: float
    max_peak_mem_gib: float
    mem_capacity_gib: float
    device_busy_ms: List[float]
    device_idle_fraction: List[float]
    device_peak_mem_gib: List[float]
