"""How far a prediction may be from its reference: shared by the exporter's parity check and the client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    # When set, the output is judged by top-1 agreement (and max abs error <= atol), not elementwise.
    min_top1: float | None = None

    def describe(self) -> str:
        text = f"atol={self.atol:g} rtol={self.rtol:g}"
        return text + (f" top1>={self.min_top1:g}" if self.min_top1 is not None else "")
