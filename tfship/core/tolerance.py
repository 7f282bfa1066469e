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


# Float32 default for every format, from the errors bench/parity_corpus.py measured on 7 real model files,
# the example and 22 generated architectures: honest conversions reach max abs 3.1e-05 where outputs are
# small (a transformer's TFLite file; the fused Keras-2 LSTM: 2.45e-05) and max rel 2e-06 where
# they are large (4.9e-04 abs on outputs near 1000); the smallest injected fault (one weight moved by
# 1e-2) moves outputs by 1.5e-03 (tests/test_parity_defaults.py). An element fails only beyond both
# (Polygraphy's rule), so 1e-4 leaves about 3x over the worst rounding and 15x under that fault.
FLOAT32 = Tolerance(atol=1e-4, rtol=1e-4)

DEFAULT_TOLERANCES = {
    "savedmodel": FLOAT32,
    "tflite": FLOAT32,
    "onnx": FLOAT32,
    "tflite:float16": Tolerance(atol=1e-3, rtol=1e-3),
    "tflite:dynamic": Tolerance(atol=1e-2, rtol=1e-2),
    "tflite:int8": Tolerance(atol=0.1, rtol=0.1, min_top1=0.99),
}
