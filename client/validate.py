"""``tfship validate``: does the deployment serve what the original model computes?

1. The served signature is checked against the manifest (names, dtypes, shapes) before any prediction.
2. The golden inputs go to the server in batches, several requests in flight.
3. Every output is compared with the original model's outputs (client.compare), and latency recorded.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfship.client.compare import Comparison, compare_outputs
from tfship.client.grpc_client import Prediction, ServingClient
from tfship.client.latency import LatencyStats
from tfship.core.errors import PredictionMismatch, TfshipError
from tfship.core.signature import Signature
from tfship.core.tolerance import Tolerance


@dataclass(frozen=True)
class ValidationReport:
    target: str
    model: str
    requested: str
    served_versions: tuple[int, ...]
    samples: int
    signature_problems: tuple[str, ...]
    comparison: Comparison | None
    latency: LatencyStats
    throughput: float
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.signature_problems and self.comparison is not None and self.comparison.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "model": self.model, "requested": self.requested,
            "served_versions": list(self.served_versions), "samples": self.samples, "passed": self.passed,
            "signature_problems": list(self.signature_problems),
            "outputs": [o.to_dict() for o in self.comparison.outputs] if self.comparison else [],
            "latency": self.latency.to_dict(), "throughput_samples_per_s": self.throughput, "seconds": self.seconds,
        }


def predict_all(client: ServingClient, model: str, inputs: dict[str, np.ndarray], *, version: int | None = None,
                label: str | None = None, batch_size: int = 32, concurrency: int = 4,
                signature: str = "serving_default") -> tuple[dict[str, np.ndarray], list[float], set[int]]:
    """Predict every sample in batches, ``concurrency`` requests in flight.

    Returns the outputs in input order, each request's duration (seconds), and the versions that answered.
    """
    count = len(next(iter(inputs.values())))

    def one(start: int) -> tuple[Prediction, float]:
        part = {k: v[start:start + batch_size] for k, v in inputs.items()}
        began = time.perf_counter()
        prediction = client.predict(part, model, version=version, label=label, signature=signature)
        return prediction, time.perf_counter() - began

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(one, range(0, count, batch_size)))  # map keeps the order of the batches
    outputs = {name: np.concatenate([p[name] for p, _ in results]) for name in results[0][0]}
    return outputs, [seconds for _, seconds in results], {p.version for p, _ in results}


def validate(client: ServingClient, model: str, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
             expected_signature: Signature | None, tolerance: Tolerance, *, version: int | None = None,
             label: str | None = None, batch_size: int = 32, concurrency: int = 4) -> ValidationReport:
    requested = f"version {version}" if version is not None else (f"label {label}" if label else "latest")
    problems: tuple[str, ...] = ()
    if expected_signature is not None:
        served = client.metadata(model, version=version, label=label).get(expected_signature.key)
        if served is None:
            problems = (f"the server has no signature '{expected_signature.key}'",)
        else:
            problems = tuple(expected_signature.differences(served))
    if problems:
        return ValidationReport(client.target, model, requested, (), 0, problems, None, LatencyStats.of([]), 0.0, 0.0)
    began = time.perf_counter()
    actual, latencies, versions = predict_all(client, model, inputs, version=version, label=label,
                                              batch_size=batch_size, concurrency=concurrency,
                                              signature=expected_signature.key if expected_signature else "serving_default")
    seconds = time.perf_counter() - began
    comparison = compare_outputs(expected, actual, tolerance)
    count = len(next(iter(inputs.values())))
    return ValidationReport(client.target, model, requested, tuple(sorted(versions)), count, (), comparison,
                            LatencyStats.of(latencies), count / seconds if seconds > 0 else 0.0, seconds)


def raise_for(report: ValidationReport) -> None:
    if report.signature_problems:
        raise PredictionMismatch(f"{report.model} at {report.target}: the served signature differs from the manifest: "
                                 + "; ".join(report.signature_problems))
    if report.comparison is None:
        raise TfshipError("validation did not run")
    if not report.comparison.passed:
        failures = report.comparison.failures()
        raise PredictionMismatch(f"{report.model} at {report.target} ({report.requested}, served version(s) "
                                 f"{', '.join(map(str, report.served_versions))}) does not predict what the original predicts: "
                                 + "; ".join(f"output '{o.name}': {o.reason}" for o in failures))
