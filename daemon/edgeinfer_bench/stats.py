"""Latency/throughput arithmetic shared by the load generator, the ceiling and the report.

Kept free of I/O so the math can be tested on known inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

# Fixed log-spaced bins (ms) so histograms from different targets overlay.
HIST_EDGES_MS = np.geomspace(0.05, 20_000.0, 81)


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics.

    Raises:
        ValueError: no values.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentile of an empty sample")
    return float(np.percentile(arr, q))


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


@dataclass
class Summary:
    """One measured point: what completed inside the measurement window."""

    count: int
    errors: int
    duration_s: float
    throughput: float  # completed requests (or stream messages) per second
    p50_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    hist_counts: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(latencies_s: Sequence[float], duration_s: float, errors: int = 0) -> Summary:
    """Summarize latencies (seconds) of requests completed in a window of `duration_s` seconds.

    Throughput counts successful completions only: an error answered fast must
    not look like speed.
    """
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    lat_ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    s = Summary(count=int(lat_ms.size), errors=int(errors), duration_s=float(duration_s),
                throughput=float(lat_ms.size) / float(duration_s))
    if lat_ms.size:
        p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99])
        s.p50_ms, s.p95_ms, s.p99_ms = float(p50), float(p95), float(p99)
        s.mean_ms = float(lat_ms.mean())
        s.min_ms, s.max_ms = float(lat_ms.min()), float(lat_ms.max())
        counts, _ = np.histogram(np.clip(lat_ms, HIST_EDGES_MS[0], HIST_EDGES_MS[-1]), bins=HIST_EDGES_MS)
        s.hist_counts = [int(c) for c in counts]
    return s
