"""Prometheus metrics with TF Serving's names, served at /monitoring/prometheus/metrics.

Written out by hand because TF Serving's names do not follow the client libraries' conventions
(prometheus_client would append ``_total`` to ``:tensorflow:serving:request_count``), and dashboards
built for TF Serving query the exact names.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Requests for a model the engine does not serve are counted under this one name: anyone can send any
# name, and a label per name would let them grow the page without limit.
UNKNOWN_MODEL = "<unknown>"

# Microseconds, as TF Serving reports request latency.
LATENCY_BUCKETS = (10, 18, 32, 58, 105, 190, 342, 616, 1110, 2000, 3600, 6480, 11700, 21000, 37800, 68000,
                   122000, 220000, 396000, 713000, 1280000, 2310000, 4160000, 7490000, 13500000, 24300000)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = defaultdict(int)
        self._latency: dict[tuple, list[int]] = {}
        self._latency_sum: dict[tuple, float] = defaultdict(float)
        self._latency_count: dict[tuple, int] = defaultdict(int)
        self._loads: dict[tuple, int] = defaultdict(int)
        self._load_seconds: dict[tuple, float] = {}
        self._warmup_seconds: dict[tuple, float] = {}
        self._batches: dict[tuple, int] = defaultdict(int)
        self._batched_requests: dict[tuple, int] = defaultdict(int)
        # Names get labels of their own once the engine loads (or fails to load) a version of them,
        # which it does only for the models it is configured with.
        self._models: set[str] = set()

    def model_label(self, model: str) -> str:
        return model if model in self._models else UNKNOWN_MODEL

    def request(self, model: str, api: str, entrypoint: str, status: str, micros: float) -> None:
        with self._lock:
            model = self.model_label(model)
            self._requests[(("model_name", model), ("status", status))] += 1
            key = (("model_name", model), ("API", api), ("entrypoint", entrypoint))
            buckets = self._latency.setdefault(key, [0] * (len(LATENCY_BUCKETS) + 1))
            buckets[bisect.bisect_left(LATENCY_BUCKETS, micros)] += 1
            self._latency_sum[key] += micros
            self._latency_count[key] += 1

    def load(self, model: str, version: int, status: str, seconds: float, warmup_seconds: float) -> None:
        with self._lock:
            self._models.add(model)
            self._loads[(("model_name", model), ("status", status))] += 1
            self._load_seconds[(("model_name", model), ("model_version", str(version)))] = seconds
            self._warmup_seconds[(("model_name", model), ("model_version", str(version)))] = warmup_seconds

    def batch(self, model: str, size: int, requests: int) -> None:
        with self._lock:
            self._batches[(("model_name", model),)] += 1
            self._batched_requests[(("model_name", model),)] += requests

    def render(self) -> str:
        with self._lock:
            lines = ["# TYPE :tensorflow:serving:request_count counter"]
            lines += [f":tensorflow:serving:request_count{{{_labels(k)}}} {v}" for k, v in sorted(self._requests.items())]
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for key, buckets in sorted(self._latency.items()):
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS + ("+Inf",), buckets):
                    cumulative += count
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{_labels(key)},le="{bound}"}} {cumulative}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{_labels(key)}}} {self._latency_sum[key]:g}")
                lines.append(f":tensorflow:serving:request_latency_count{{{_labels(key)}}} {self._latency_count[key]}")
            lines.append("# TYPE :tensorflow:serving:model_load_count counter")
            lines += [f":tensorflow:serving:model_load_count{{{_labels(k)}}} {v}" for k, v in sorted(self._loads.items())]
            lines.append("# TYPE :tensorflow:serving:model_load_seconds gauge")
            lines += [f":tensorflow:serving:model_load_seconds{{{_labels(k)}}} {v:g}" for k, v in sorted(self._load_seconds.items())]
            lines.append("# TYPE tfship_model_warmup_seconds gauge")
            lines += [f"tfship_model_warmup_seconds{{{_labels(k)}}} {v:g}" for k, v in sorted(self._warmup_seconds.items())]
            lines.append("# TYPE :tensorflow:serving:batching_session:batch_count counter")
            lines += [f":tensorflow:serving:batching_session:batch_count{{{_labels(k)}}} {v}" for k, v in sorted(self._batches.items())]
            lines.append("# TYPE :tensorflow:serving:batching_session:batched_request_count counter")
            lines += [f":tensorflow:serving:batching_session:batched_request_count{{{_labels(k)}}} {v}" for k, v in sorted(self._batched_requests.items())]
        return "\n".join(lines) + "\n"
