"""SavedModel to TFLite (float32 and quantized variants), and running a .tflite file with LiteRT."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tfship.core.errors import ExportError, first_line

log = logging.getLogger(__name__)

VARIANTS = ("float16", "dynamic", "int8")


def convert(savedmodel_dir: Path, out: Path, variant: str = "float32",
            calibration: dict[str, np.ndarray] | None = None, keras_model: Any = None) -> list[str]:
    """Write ``out``; returns notices. Raises ExportError with the converter's reason on failure."""
    import tensorflow as tf

    notices: list[str] = []

    def configure(converter: Any) -> None:
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8":
            if not calibration:
                raise ExportError("int8 quantization needs calibration inputs (--calibration X.npz or the samples)")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative(calibration)
        elif variant != "float32":
            raise ExportError(f"unknown TFLite variant '{variant}' (choose from {', '.join(VARIANTS)})")

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel_dir), signature_keys=["serving_default"])
        configure(converter)
        data = converter.convert()
    except ExportError:
        raise
    except Exception as exc:
        message = str(exc)
        if keras_model is not None and "TensorList" in message:
            # Recurrent layers with a dynamic batch do not lower to builtin ops; a static batch of 1 does.
            data = _convert_static_batch(keras_model, configure)
            notices.append("recurrent layers: TFLite model built with a static batch of 1 (feed one sample at a time and "
                           "call reset_all_variables() between samples: the fused LSTM/GRU keeps its state)")
        else:
            raise ExportError(f"TFLite conversion failed: {first_line(message, prefer='error:')}") from exc
    out.write_bytes(data)
    return notices


def _convert_static_batch(model: Any, configure: Callable) -> bytes:
    import tensorflow as tf

    try:
        config = model.get_config()
        for layer in config.get("layers", []):
            if layer.get("class_name") == "InputLayer":
                cfg = layer["config"]
                shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
                key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
                cfg[key] = [1] + list(shape[1:])
        static = type(model).from_config(config)
        static.set_weights(model.get_weights())
        converter = tf.lite.TFLiteConverter.from_keras_model(static)
        configure(converter)
        return converter.convert()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed (static-batch rebuild too): {first_line(exc, prefer='error:')}") from exc


def _representative(calibration: dict[str, np.ndarray]) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    count = len(next(iter(calibration.values())))

    def generate():
        for i in range(count):
            yield {name: value[i:i + 1] for name, value in calibration.items()}

    return generate




def run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the 'serving_default' signature of a .tflite file on ``inputs`` with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    details = runner.get_input_details()
    static_batch = all(int(d["shape_signature"][0]) == 1 for d in details.values() if len(d["shape_signature"]))
    count = len(next(iter(inputs.values())))
    if static_batch and count != 1:
        # Fused recurrent ops keep their state in variable tensors across invocations: reset between
        # samples. That needs the plain tensor API (a signature runner holds references that block it).
        outputs = runner.get_output_details()
        plain = Interpreter(model_path=str(path))
        plain.allocate_tensors()
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for i in range(count):
            plain.reset_all_variables()
            for name, detail in details.items():
                plain.set_tensor(detail["index"], inputs[name][i:i + 1])
            plain.invoke()
            for name, detail in outputs.items():
                parts[name].append(np.array(plain.get_tensor(detail["index"])))
        return {name: np.concatenate(values) for name, values in parts.items()}
    return {k: np.array(v) for k, v in runner(**inputs).items()}
