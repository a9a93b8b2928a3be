"""End-to-end latency: a Prometheus histogram plus a window of recent samples.

The histogram is what ``/metrics`` serves (buckets from 1 ms to an hour); the
window (the last ``window`` samples, bounded) gives exact recent percentiles
for displays such as the demo's live view.
"""

from __future__ import annotations

import math
from collections import deque

from prometheus_client import CollectorRegistry, Histogram

BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


class LatencyRecorder:
    """Observes durations into a histogram and keeps the last ``window`` for percentiles."""

    def __init__(
        self,
        name: str,
        documentation: str,
        registry: CollectorRegistry,
        service: str,
        window: int = 4_096,
    ) -> None:
        self._histogram = Histogram(
            name, documentation, ("service",), registry=registry, buckets=BUCKETS
        ).labels(service)
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one duration (negative ones, from clock skew, count as 0)."""
        value = max(0.0, seconds)
        self._histogram.observe(value)
        self._recent.append(value)
        self.count += 1

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the recent window; NaN when empty."""
        if not self._recent:
            return math.nan
        ordered = sorted(self._recent)
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index]
