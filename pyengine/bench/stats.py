"""Percentiles and summaries of measured values (standard library only)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default); None for no values. Monotonic in q, so p50 <= p95 <= p99 always holds."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: Iterable[float | None], scale: float = 1.0) -> dict[str, float | int]:
    """``n``, ``mean``, ``min``, ``p50``, ``p95``, ``p99``, ``max`` of the values that are not
    None, each multiplied by ``scale`` (e.g. 1000 for seconds to milliseconds); just ``n: 0``
    when there are none."""
    data = [v * scale for v in values if v is not None]
    if not data:
        return {"n": 0}
    out: dict[str, float | int] = {"n": len(data), "mean": sum(data) / len(data),
                                   "min": min(data)}
    for q in (50, 95, 99):
        out[f"p{q}"] = percentile(data, q)  # type: ignore[assignment]
    out["max"] = max(data)
    return out


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    return percentile((v for v in values if v is not None), 50)
