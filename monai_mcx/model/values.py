"""Plain-value helpers of the model description: JSON values, tolerant comparison, the UTC time stamp."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable", "same_value", "utc_now"]


def utc_now() -> str:
    """The current UTC time, ISO 8601, whole seconds (the dates recorded in a description)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def jsonable(v: Any) -> Any:
    """Plain JSON values (tuples -> lists, tensors / numpy -> lists / numbers, NaN -> None)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def same_value(a: Any, b: Any) -> bool:
    """Whether two description values agree: numbers within ``rel_tol=1e-6`` (``abs_tol=1e-9``), lists and dicts
    element by element, anything else by ``==`` (after :func:`jsonable`)."""
    a, b = jsonable(a), jsonable(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b
