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


# Float32 defaults, chosen from the errors measured by bench/parity_corpus.py (README: "Parity defaults").
DEFAULT_TOLERANCES = {
    "savedmodel": Tolerance(atol=1e-4, rtol=1e-4),
    "tflite": Tolerance(atol=1e-4, rtol=1e-4),
    "onnx": Tolerance(atol=1e-4, rtol=1e-4),
    "tflite:float16": Tolerance(atol=1e-3, rtol=1e-3),
    "tflite:dynamic": Tolerance(atol=1e-2, rtol=1e-2),
    "tflite:int8": Tolerance(atol=0.1, rtol=0.1, min_top1=0.99),
}
