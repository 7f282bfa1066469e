"""``tfship probe``: replay the golden set against a live server on a schedule, as Prometheus metrics.

A deploy that drifts after it was validated (a bad rollout, a changed server flag, other hardware
numerics) shows as ``tfship_probe_parity_ok{model,version} == 0``; a server that stops answering shows
as ``tfship_probe_last_success_timestamp_seconds`` falling behind.

Each round sends at most ``max_samples`` golden samples (the next window of the set: successive rounds
cover all of it), one request at a time: the work per round is bounded whatever the golden set's size.
Answers are grouped by the version that gave them, so a rollout in progress is judged per version.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfship.client.compare import compare_outputs
from tfship.client.golden import GoldenSet
from tfship.client.grpc_client import ServingClient
from tfship.core.errors import TfshipError, UsageError
from tfship.core.tolerance import Tolerance

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``500ms``, ``30s``, ``5m``, ``1h`` or a plain number of seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise UsageError(f"--every {text!r}: expected a duration like 30s, 5m, 500ms")
    value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    if value <= 0:
        raise UsageError(f"--every {text!r}: expected a positive duration")
    return value


class ProbeMetrics:
    """The prober's metrics, on a registry of their own (not the process-wide default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.parity_ok = Gauge("tfship_probe_parity_ok", "1 when the version's answers match the golden outputs within tolerance, else 0.",
                               ["model", "version"], registry=self.registry)
        self.max_abs_error = Gauge("tfship_probe_max_abs_error", "Largest |served - golden| of the last round, per output.",
                                   ["model", "version", "output"], registry=self.registry)
        self.latency = Histogram("tfship_probe_request_latency_seconds", "Duration of each probe Predict request.",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.last_success = Gauge("tfship_probe_last_success_timestamp_seconds",
                                  "Unix time of the last round where every answering version matched.", ["model"], registry=self.registry)
        self.rounds = Counter("tfship_probe_rounds", "Probe rounds by result (ok, mismatch, error).", ["model", "result"],
                              registry=self.registry)
        self._series: set[tuple[str, ...]] = set()
        self._output_series: set[tuple[str, ...]] = set()

    def set_versions(self, model: str, results: dict[int, RoundVersion]) -> None:
        """Publish this round's verdicts; versions that no longer answer are dropped (no stale verdicts)."""
        series, output_series = set(), set()
        for version, result in results.items():
            labels = (model, str(version))
            self.parity_ok.labels(*labels).set(1 if result.passed else 0)
            series.add(labels)
            for output, error in result.max_abs.items():
                self.max_abs_error.labels(*labels, output).set(error)
                output_series.add((*labels, output))
        for gone in {s for s in self._series - series if s[0] == model}:
            self.parity_ok.remove(*gone)
        for gone in {s for s in self._output_series - output_series if s[0] == model}:
            self.max_abs_error.remove(*gone)
        self._series = {s for s in self._series if s[0] != model} | series
        self._output_series = {s for s in self._output_series if s[0] != model} | output_series


@dataclass(frozen=True)
class RoundVersion:
    passed: bool
    samples: int
    max_abs: dict[str, float]
    reasons: tuple[str, ...]


@dataclass
class ProbeSummary:
    rounds: int = 0
    ok: int = 0
    mismatches: int = 0
    errors: int = 0
    last_problem: str = ""
    versions_seen: set[int] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "ok": self.ok, "mismatches": self.mismatches, "errors": self.errors,
                "last_problem": self.last_problem, "versions_seen": sorted(self.versions_seen)}


class Prober:
    """Replays windows of a golden set against ``model`` through ``client`` and publishes the verdicts."""

    def __init__(self, client: ServingClient, model: str, golden: GoldenSet, tolerance: Tolerance, metrics: ProbeMetrics, *,
                 version: int | None = None, label: str | None = None, max_samples: int = 64, batch_size: int = 16) -> None:
        if max_samples < 1 or batch_size < 1:
            raise UsageError("--max-samples and --batch-size must be at least 1")
        self.client, self.model, self.golden, self.tolerance, self.metrics = client, model, golden, tolerance, metrics
        self.version, self.label = version, label
        self.max_samples, self.batch_size = max_samples, batch_size
        self.count = len(next(iter(golden.inputs.values())))
        self._offset = 0

    def _window(self) -> np.ndarray:
        size = min(self.max_samples, self.count)
        indices = (self._offset + np.arange(size)) % self.count
        self._offset = (self._offset + size) % self.count
        return indices

    def round(self, stop: threading.Event | None = None) -> dict[int, RoundVersion]:
        """One round: predict a window of the golden set, compare per answering version, publish."""
        indices = self._window()
        answered: dict[int, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = defaultdict(list)
        for start in range(0, len(indices), self.batch_size):
            if stop is not None and stop.is_set():
                break
            part = indices[start:start + self.batch_size]
            began = time.perf_counter()
            prediction = self.client.predict({k: v[part] for k, v in self.golden.inputs.items()}, self.model,
                                             version=self.version, label=self.label, signature=self.golden.signature.key)
            self.metrics.latency.labels(self.model).observe(time.perf_counter() - began)
            answered[prediction.version].append((part, dict(prediction)))
        results: dict[int, RoundVersion] = {}
        for version, parts in answered.items():
            picked = np.concatenate([p for p, _ in parts])
            actual = {name: np.concatenate([outputs[name] for _, outputs in parts]) for name in parts[0][1]}
            expected = {name: value[picked] for name, value in self.golden.outputs.items()}
            comparison = compare_outputs(expected, actual, self.tolerance)
            results[version] = RoundVersion(comparison.passed, len(picked), {o.name: o.max_abs for o in comparison.outputs},
                                            tuple(f"output '{o.name}': {o.reason}" for o in comparison.failures()))
        if results:
            self.metrics.set_versions(self.model, results)
        return results


def run_probe(prober: Prober, *, every: float, rounds: int | None, stop: threading.Event,
              on_round: Callable[[int, dict[int, RoundVersion] | None, str], None] | None = None) -> ProbeSummary:
    """Run rounds every ``every`` seconds (a slow round is followed at once by the next, never overlapped)
    until ``stop`` is set or ``rounds`` rounds ran."""
    summary = ProbeSummary()
    metrics, model = prober.metrics, prober.model
    while not stop.is_set() and (rounds is None or summary.rounds < rounds):
        began = time.monotonic()
        problem = ""
        results: dict[int, RoundVersion] | None = None
        try:
            results = prober.round(stop)
        except TfshipError as exc:
            problem = exc.message
        if stop.is_set() and not results and not problem:
            break  # stopped before any answer: not a round
        summary.rounds += 1
        if results is None:
            summary.errors += 1
            metrics.rounds.labels(model, "error").inc()
        elif all(r.passed for r in results.values()):
            summary.ok += 1
            metrics.rounds.labels(model, "ok").inc()
            metrics.last_success.labels(model).set(time.time())
        else:
            summary.mismatches += 1
            metrics.rounds.labels(model, "mismatch").inc()
            problem = "; ".join(f"version {v}: " + "; ".join(r.reasons) for v, r in sorted(results.items()) if not r.passed)
        if results:
            summary.versions_seen.update(results)
        if problem:
            summary.last_problem = problem
        if on_round is not None:
            on_round(summary.rounds, results, problem)
        if rounds is not None and summary.rounds >= rounds:
            break
        stop.wait(max(0.0, every - (time.monotonic() - began)))
    return summary
