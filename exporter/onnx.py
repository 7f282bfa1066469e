"""SavedModel to ONNX through tf2onnx, and running an .onnx file with onnxruntime.

tf2onnx's ``from_keras`` fails on Keras 3 Sequential models (tf2onnx issue #2448), so the conversion
always starts from the exported SavedModel, whose signature keys become the ONNX input/output names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tfship.core.errors import ExportError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(9, 19)  # 19 and above do not convert with the tf2onnx release we use


def convert(savedmodel_dir: Path, out: Path, opset: int = DEFAULT_OPSET) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"ONNX opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
    import tf2onnx
    from tf2onnx import tf_loader

    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(savedmodel_dir), None, None, signatures=["serving_default"], return_tensors_to_rename=True
        )
        tf2onnx.convert._convert_common(  # the function tf2onnx's own from_* helpers call
            graph_def, name="model", opset=opset, input_names=inputs, output_names=outputs,
            tensors_to_rename=renames, output_path=str(out),
        )
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {(text[0] if text else '')[:300]}") from None
    if not out.exists():
        raise ExportError("ONNX conversion failed: tf2onnx wrote no file")


def run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, feed)))
