"""Latency percentiles of a run of requests: the one place tfship computes them (validate, compare,
bench, and the serving benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The report's histogram keeps at most this many raw samples.
MAX_KEPT_SAMPLES = 5000


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        """Statistics of request durations given in seconds."""
        if not len(seconds):
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ms = np.asarray(seconds, dtype=np.float64) * 1000
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(len(ms), p50, p90, p99, float(ms.mean()), float(ms.max()),
                   tuple(float(x) for x in ms[:MAX_KEPT_SAMPLES]))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("count", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")}
