"""``tfship validate``: does the deployment serve what the original model computes?

1. The served signature is checked against the manifest (names, dtypes, shapes) before any prediction.
2. The golden inputs go to the server in batches, several requests in flight.
3. Every output is compared with the original model's outputs (client.compare), and latency recorded,
   within the tolerance :func:`choose_tolerance` picks: the flags given, else the one the export proved
   for the float32 SavedModel (the version's manifest.json), else tfship's float32 default.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfship.client.compare import Comparison, compare_outputs
from tfship.client.golden import MAX_MANIFEST_BYTES
from tfship.client.grpc_client import Prediction, ServingClient
from tfship.client.latency import LatencyStats
from tfship.core.errors import PredictionMismatch, TfshipError, UsageError
from tfship.core.signature import Signature
from tfship.core.tolerance import FLOAT32, Tolerance

MANIFEST = "manifest.json"
FLAGS = "flags"
MANIFEST_SOURCE = "manifest"
DEFAULT_SOURCE = "default"
GIVEN = "given"  # a library caller passed a Tolerance


@dataclass(frozen=True)
class ToleranceChoice:
    """The tolerance a client command compares with, and where its values came from.

    ``source`` is ``manifest`` or ``default`` for the values no flag gave (``flags`` when both flags were
    given); ``flags`` lists the values given on the command line, which always win.
    """

    tolerance: Tolerance
    source: str
    flags: tuple[str, ...] = ()
    manifest: str | None = None  # the manifest.json the values not given by flags came from
    note: str = ""  # why the default was used although a manifest.json was there

    def origin(self) -> str:
        if self.source == MANIFEST_SOURCE:
            return f"{self.manifest} (the float32 SavedModel's parity)"
        if self.source == DEFAULT_SOURCE:
            return "tfship's float32 default" + (f" ({self.note})" if self.note else "")
        return "the caller" if self.source == GIVEN else "--atol/--rtol"

    def describe(self) -> str:
        values = self.tolerance.describe()
        if self.source == FLAGS or not self.flags:
            return f"{values} from {self.origin()}"
        given = " and ".join(f"--{name}" for name in self.flags)
        return f"{values}: {', '.join(self.flags)} from {given}, the rest from {self.origin()}"

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol, "min_top1": self.tolerance.min_top1,
                "source": self.source, "flags": list(self.flags), "manifest": self.manifest, "description": self.describe()}


def _bound(value: object, upper: float = math.inf) -> float | None:
    """``value`` as a float when it is a finite number in [0, upper], else None.

    NaN would pass every element (no error is "beyond" NaN): it is refused, as are negatives and non-numbers.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= upper:
        return float(value)
    return None


def manifest_tolerance(manifest: Path) -> Tolerance | None:
    """The tolerance ``manifest`` records for the float32 SavedModel's parity, None when it records none.

    The SavedModel is what TF Serving answers with: it loads saved_model.pb unless started with the
    experimental --prefer_tflite_model (tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc).
    """
    manifest = Path(manifest)
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        entries = json.loads(manifest.read_text(encoding="utf-8")).get("parity", ())
        recorded = next((e.get("tolerance") for e in entries if e.get("format") == "savedmodel"
                         and e.get("variant", "float32") == "float32" and e.get("tolerance")), None)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise TfshipError(f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc}); "
                          "fix it, or pass --atol and --rtol") from exc
    if recorded is None:
        return None
    fields = recorded if isinstance(recorded, dict) else {}
    atol, rtol = _bound(fields.get("atol")), _bound(fields.get("rtol"))
    min_top1 = None if fields.get("min_top1") is None else _bound(fields["min_top1"], 1.0)
    if atol is None or rtol is None or (fields.get("min_top1") is not None and min_top1 is None):
        raise TfshipError(f"{manifest}: the float32 SavedModel's parity tolerance {recorded!r} is not a tolerance "
                          "(atol and rtol: finite numbers >= 0); fix the manifest, or pass --atol and --rtol")
    return Tolerance(atol=atol, rtol=rtol, min_top1=min_top1)


def choose_tolerance(atol: float | None, rtol: float | None, golden: Path | None) -> ToleranceChoice:
    """``--atol``/``--rtol`` when given; for the rest, the tolerance recorded in the manifest.json beside
    ``golden`` (a golden.npz or its version directory), else tfship's float32 default."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and _bound(value) is None:
            raise UsageError(f"--{name} {value}: expected a finite number >= 0")
    if atol is not None and rtol is not None:
        return ToleranceChoice(Tolerance(atol=atol, rtol=rtol), FLAGS, ("atol", "rtol"))
    flags = tuple(name for name, value in (("atol", atol), ("rtol", rtol)) if value is not None)
    base, source, where, note = FLOAT32, DEFAULT_SOURCE, None, ""
    if golden is not None:
        manifest = (Path(golden) if Path(golden).is_dir() else Path(golden).parent) / MANIFEST
        if manifest.is_file():
            recorded = manifest_tolerance(manifest)
            if recorded is None:
                note = f"{manifest} records no float32 SavedModel tolerance"
            else:
                base, source, where = recorded, MANIFEST_SOURCE, str(manifest)
    if flags:
        # One flag given: an elementwise bound from the command line, so no top-1 rule from the manifest.
        base = Tolerance(atol=base.atol if atol is None else atol, rtol=base.rtol if rtol is None else rtol)
    return ToleranceChoice(base, source, flags, where, note)


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
    tolerance: ToleranceChoice | None = None

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
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
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
             expected_signature: Signature | None, tolerance: Tolerance | ToleranceChoice, *, version: int | None = None,
             label: str | None = None, batch_size: int = 32, concurrency: int = 4) -> ValidationReport:
    choice = tolerance if isinstance(tolerance, ToleranceChoice) else ToleranceChoice(tolerance, GIVEN)
    requested = f"version {version}" if version is not None else (f"label {label}" if label else "latest")
    problems: tuple[str, ...] = ()
    if expected_signature is not None:
        served = client.metadata(model, version=version, label=label).get(expected_signature.key)
        if served is None:
            problems = (f"the server has no signature '{expected_signature.key}'",)
        else:
            problems = tuple(expected_signature.differences(served))
    if problems:
        return ValidationReport(client.target, model, requested, (), 0, problems, None, LatencyStats.of([]), 0.0, 0.0, choice)
    began = time.perf_counter()
    actual, latencies, versions = predict_all(client, model, inputs, version=version, label=label,
                                              batch_size=batch_size, concurrency=concurrency,
                                              signature=expected_signature.key if expected_signature else "serving_default")
    seconds = time.perf_counter() - began
    comparison = compare_outputs(expected, actual, choice.tolerance)
    count = len(next(iter(inputs.values())))
    return ValidationReport(client.target, model, requested, tuple(sorted(versions)), count, (), comparison,
                            LatencyStats.of(latencies), count / seconds if seconds > 0 else 0.0, seconds, choice)


def raise_for(report: ValidationReport) -> None:
    if report.signature_problems:
        raise PredictionMismatch(f"{report.model} at {report.target}: the served signature differs from the manifest: "
                                 + "; ".join(report.signature_problems))
    if report.comparison is None:
        raise TfshipError("validation did not run")
    if not report.comparison.passed:
        failures = report.comparison.failures()
        raise PredictionMismatch(f"{report.model} at {report.target} ({report.requested}, served version(s) "
                                 f"{', '.join(map(str, report.served_versions))}) does not predict what the original predicts"
                                 + (f" within {report.tolerance.describe()}" if report.tolerance else "") + ": "
                                 + "; ".join(f"output '{o.name}': {o.reason}" for o in failures))
