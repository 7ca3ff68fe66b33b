"""Checks and conversions of Python values before they reach the C++ core.

Descriptions (batches, plans, clusters, models) cross to C++ as JSON. This module turns a
Python value into JSON-safe data (numpy scalars and arrays become ints, floats and lists)
and refuses what JSON cannot carry or the core would misread: NaN and infinities, integers
beyond 64 bits, objects of other types. Every message names the value's path
(``batch.samples[3].visuals[0].tokens``) and the value, in one line.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Mapping, Optional, Union

from ._errors import InputTypeError, InvalidArgumentError, InvalidInputError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1


def show(value: Any) -> str:
    """A short, one-line repr of `value` for messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _tolist(value: Any) -> Any:
    """numpy scalars/arrays (and torch tensors) as Python values; anything else unchanged."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__.split(".")[0] in ("numpy", "torch"):
        return tolist()
    return value


def to_json_value(value: Any, path: str) -> Any:
    """`value` as JSON-safe Python data; raises InvalidInputError naming `path`."""
    value = _tolist(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise InvalidInputError(
                f"{path}={number} does not fit in 64 bits (at most {INT64_MAX})")
        return number
    if isinstance(value, numbers.Real):
        real = float(value)
        if not math.isfinite(real):
            raise InvalidInputError(f"{path}={real} is not a finite number")
        return real
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputTypeError(
                    f"{path}: key {show(key)} is a {type_name(key)}; field names are strings")
            out[key] = to_json_value(item, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise InputTypeError(
        f"{path}: got {type_name(value)} {show(value)}; expected a number, string, bool, "
        "list or dict")


def to_json(value: Any, root: str) -> str:
    """JSON text of a description given as a dict (checked as `root`)."""
    if not isinstance(_tolist(value), Mapping):
        raise InputTypeError(
            f"{root}: got {type_name(value)} {show(value)}; expected a dict (see docs/schemas.md)")
    return json.dumps(to_json_value(value, root), allow_nan=False)


def as_int(name: str, value: Any, minimum: Optional[int] = None,
           maximum: int = INT32_MAX) -> int:
    """An integer argument (Python or numpy int, or a whole float) within [minimum, maximum]."""
    value = _tolist(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name}={show(value)}: expected an integer, got {type_name(value)}")
    if not isinstance(value, numbers.Integral):
        real = float(value)
        if not math.isfinite(real) or real != math.floor(real):
            raise InvalidArgumentError(f"{name}={real}: expected an integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidArgumentError(f"{name}={number}: expected >= {minimum}")
    if number > maximum:
        raise InvalidArgumentError(f"{name}={number}: expected <= {maximum}")
    return number


def as_float(name: str, value: Any, minimum: Optional[float] = None,
             positive: bool = False) -> float:
    """A finite real argument (Python or numpy)."""
    value = _tolist(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name}={show(value)}: expected a number, got {type_name(value)}")
    real = float(value)
    if not math.isfinite(real):
        raise InvalidArgumentError(f"{name}={real}: expected a finite number")
    if positive and real <= 0:
        raise InvalidArgumentError(f"{name}={real}: expected > 0")
    if minimum is not None and real < minimum:
        raise InvalidArgumentError(f"{name}={real}: expected >= {minimum}")
    return real


def as_degree(name: str, value: Any) -> int:
    """A parallel degree: a positive integer, or None / "auto" (returned as 0)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return 0
    if isinstance(value, str):
        raise InvalidArgumentError(
            f"{name}={value!r}: expected a positive integer, None or 'auto'")
    number = as_int(name, value)
    if number < 1:
        raise InvalidArgumentError(
            f"{name}={number}: expected a positive integer, None or 'auto' (for the planner's "
            "choice)")
    return number


def as_choice(name: str, value: Any, choices: "list[str] | tuple[str, ...]") -> str:
    if not isinstance(value, str):
        raise InputTypeError(
            f"{name}={show(value)}: expected one of {', '.join(map(repr, choices))}, got "
            f"{type_name(value)}")
    if value not in choices:
        raise InvalidArgumentError(
            f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


PathOrPreset = Union[str, "os.PathLike[str]"]


def as_preset_or_path(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    if isinstance(value, str):
        return value
    raise InputTypeError(
        f"{name}={show(value)}: expected a preset name, a path or a dict, got {type_name(value)}")
