"""Numeric comparison of predictions against reference outputs.

An element fails only if it is beyond both ``atol`` and ``rtol`` (Polygraphy's rule), where the
relative error is ``|actual - reference| / |reference|``. Results are reported per output: max and p99
absolute and relative error, the worst element, NaN/Inf counts, and top-1 agreement for outputs that
look like class scores (floating point, last axis longer than one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tfship.core.tolerance import Tolerance


@dataclass(frozen=True)
class OutputComparison:
    name: str
    passed: bool
    reason: str
    shape: tuple[int, ...]
    max_abs: float
    p99_abs: float
    max_rel: float
    p99_rel: float
    worst_index: tuple[int, ...]
    worst_reference: float
    worst_actual: float
    failed_elements: int
    total_elements: int
    nan_count: int
    inf_count: int
    top1_agreement: float | None
    tolerance: Tolerance
    abs_errors_sample: tuple[float, ...] = field(default=(), repr=False, compare=False)
    # |actual - reference| / allowed error, for the same elements as abs_errors_sample: an element fails
    # when its ratio is above 1. allowed = max(atol, rtol * |reference|) (beyond both fails), or atol
    # under the top-1 rule. The report plots its distribution against the line at 1.
    error_ratio_sample: tuple[float, ...] = field(default=(), repr=False, compare=False)
    exact_elements: int = 0  # elements where served == original exactly
    # The largest absolute errors: (index, reference value, actual value, abs error), worst first.
    worst_cases: tuple[tuple[tuple[int, ...], float, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("abs_errors_sample")
        data.pop("error_ratio_sample")
        data["worst_cases"] = [{"index": list(i), "reference": r, "actual": a, "abs_error": e} for i, r, a, e in self.worst_cases]
        data["tolerance"] = asdict(self.tolerance)
        data["shape"] = list(self.shape)
        data["worst_index"] = list(self.worst_index)
        return data


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def failures(self) -> list[OutputComparison]:
        return [o for o in self.outputs if not o.passed]


def is_classifier_like(reference: np.ndarray) -> bool:
    return reference.ndim >= 2 and reference.shape[-1] > 1 and np.issubdtype(reference.dtype, np.floating)


def _without_errors(name: str, reason: str, shape: tuple[int, ...], total: int, tolerance: Tolerance,
                    failed: int = 0, exact: int = 0) -> OutputComparison:
    """A result with no numeric error statistics: passed when ``reason`` is empty."""
    return OutputComparison(name=name, passed=not reason, reason=reason, shape=shape, max_abs=0.0, p99_abs=0.0, max_rel=0.0,
                            p99_rel=0.0, worst_index=(), worst_reference=0.0, worst_actual=0.0, failed_elements=failed,
                            total_elements=total, nan_count=0, inf_count=0, top1_agreement=None, tolerance=tolerance,
                            exact_elements=exact)


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> OutputComparison:
    reference = np.asarray(reference)
    actual = np.asarray(actual)
    if reference.shape != actual.shape:
        return _without_errors(name, f"shape {list(actual.shape)} != expected {list(reference.shape)}", tuple(actual.shape),
                               int(reference.size), tolerance)
    if reference.dtype == object or actual.dtype == object or reference.dtype.kind in "SU":
        mismatched = int(np.sum(reference != actual))
        return _without_errors(name, f"{mismatched} values differ" if mismatched else "", tuple(actual.shape),
                               int(reference.size), tolerance, failed=mismatched,
                               exact=int(reference.size) - mismatched)
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    nan_count = int(np.isnan(act).sum())
    inf_count = int(np.isinf(act).sum())
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        abs_err = np.abs(act - ref)
        rel_err = abs_err / np.abs(ref)
    # NaN where both are NaN counts as agreement; NaN on one side only is a failure.
    both_nan = np.isnan(ref) & np.isnan(act)
    abs_err = np.where(both_nan, 0.0, abs_err)
    rel_err = np.where(both_nan | (abs_err == 0), 0.0, rel_err)
    abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
    rel_err = np.where(np.isnan(rel_err), np.inf, rel_err)
    fails = (abs_err > tolerance.atol) & (rel_err > tolerance.rtol)
    top1 = None
    if is_classifier_like(reference) and reference.size:
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(np.nan_to_num(act, nan=-np.inf), axis=-1)))
    if reference.size == 0:
        return _without_errors(name, "", tuple(actual.shape), 0, tolerance)
    flat_worst = int(np.argmax(abs_err))
    worst_index = tuple(int(i) for i in np.unravel_index(flat_worst, abs_err.shape))
    max_abs = float(abs_err.reshape(-1)[flat_worst])
    finite_rel = rel_err[np.isfinite(rel_err)]
    failed = int(fails.sum())
    if tolerance.min_top1 is not None and top1 is not None:
        passed = top1 >= tolerance.min_top1 and max_abs <= tolerance.atol and nan_count == int(np.isnan(ref).sum())
        reason = "" if passed else f"top-1 agreement {top1:.4f} (need >= {tolerance.min_top1:g}), max abs error {max_abs:.3g} (bound {tolerance.atol:g})"
    else:
        passed = failed == 0
        reason = "" if passed else f"{failed} of {reference.size} elements beyond {tolerance.describe()}; max abs error {max_abs:.3g}"
    flat_err = abs_err.reshape(-1)
    top = np.argsort(flat_err)[::-1][:5]
    worst_cases = tuple((tuple(int(i) for i in np.unravel_index(int(k), abs_err.shape)), float(ref.reshape(-1)[k]),
                         float(act.reshape(-1)[k]), float(flat_err[k])) for k in top)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        allowed = (np.full(flat_err.shape, tolerance.atol) if tolerance.min_top1 is not None
                   else np.maximum(tolerance.atol, tolerance.rtol * np.abs(ref.reshape(-1))))
        ratio = np.where(flat_err == 0, 0.0, flat_err / allowed)
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    picked = np.arange(flat_err.size)
    if picked.size > 10_000:
        picked = np.linspace(0, flat_err.size - 1, 10_000).astype(np.int64)
    sample = flat_err[picked]
    return OutputComparison(
        name=name, passed=passed, reason=reason, shape=tuple(actual.shape),
        max_abs=max_abs, p99_abs=float(np.percentile(abs_err, 99)),
        max_rel=float(rel_err.max()) if rel_err.size else 0.0,
        p99_rel=float(np.percentile(finite_rel, 99)) if finite_rel.size else 0.0,
        worst_index=worst_index, worst_reference=float(ref.reshape(-1)[flat_worst]),
        worst_actual=float(act.reshape(-1)[flat_worst]), failed_elements=failed, total_elements=int(reference.size),
        nan_count=nan_count, inf_count=inf_count, top1_agreement=top1, tolerance=tolerance,
        abs_errors_sample=tuple(float(x) for x in sample), worst_cases=worst_cases,
        error_ratio_sample=tuple(float(x) for x in ratio[picked]), exact_elements=int(np.sum(flat_err == 0)),
    )


def compare_outputs(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tolerance: Tolerance) -> Comparison:
    results = []
    for name in sorted(reference):
        if name not in actual:
            results.append(_without_errors(name, "output missing from the answer", (), int(np.asarray(reference[name]).size), tolerance))
            continue
        results.append(compare_output(name, reference[name], actual[name], tolerance))
    return Comparison(outputs=tuple(results))
