"""Latency statistics: percentiles (numpy's default linear interpolation), mean, throughput."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    data = sorted(float(s) for s in samples)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(latencies_ms: Sequence[float], batch: int) -> dict:
    """p50/p90/p99/mean/min/max/std latency (ms) of timed calls, and throughput (items/s) of a batch."""
    n = len(latencies_ms)
    if n == 0:
        raise ValueError("no timed iterations")
    mean = sum(latencies_ms) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in latencies_ms) / (n - 1)) if n > 1 else 0.0
    return {
        "iters": n,
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": mean,
        "min_ms": min(latencies_ms),
        "max_ms": max(latencies_ms),
        "std_ms": std,
        # items per second over the whole timed loop: total items / total time
        "throughput": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }
