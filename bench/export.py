"""Export wall time per stage, against the raw library calls it wraps, in one run.

    .venv/bin/python bench/export.py [--repeat 2]

Models: the example digits CNN and a ~5M-parameter CNN (64x64x3 input). For each, tfship export
(savedmodel, tflite, onnx; parity on 32 samples) is timed per stage, and the same work done with the
libraries directly (keras load_model, ExportArchive, TFLiteConverter, tf2onnx, and running each
artifact on the samples with TensorFlow, LiteRT and onnxruntime) is timed in the same process.
Overhead = tfship total / raw total - 1 (target <= 25%). Best of --repeat.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def big_cnn():
    import keras

    image = keras.Input((64, 64, 3), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu")(image)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(384, activation="relu")(x)
    return keras.Model(image, keras.layers.Dense(10, activation="softmax", name="probabilities")(x), name="big_cnn")


def raw_pipeline(source: Path, out: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """The same artifacts with the libraries called directly (what tfship wraps)."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter
    from tf2onnx import tf_loader

    times = {}
    began = time.perf_counter()
    model = keras.saving.load_model(source, compile=False)
    times["load"] = time.perf_counter() - began

    began = time.perf_counter()
    model.predict(inputs["image"], verbose=0)
    times["original"] = time.perf_counter() - began

    began = time.perf_counter()
    spec = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="image")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", tf.function(lambda x: {"probabilities": model(x, training=False)}, input_signature=spec))
    archive.write_out(str(out), verbose=False)
    times["savedmodel"] = time.perf_counter() - began

    began = time.perf_counter()
    tf.saved_model.load(str(out)).signatures["serving_default"](image=tf.constant(inputs["image"]))
    times["savedmodel run"] = time.perf_counter() - began

    began = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(out), signature_keys=["serving_default"])
    (out / "model.tflite").write_bytes(converter.convert())
    times["tflite"] = time.perf_counter() - began

    began = time.perf_counter()
    Interpreter(model_path=str(out / "model.tflite")).get_signature_runner("serving_default")(image=inputs["image"])
    times["tflite run"] = time.perf_counter() - began

    began = time.perf_counter()
    graph_def, ins, outs, renames = tf_loader.from_saved_model(str(out), None, None, signatures=["serving_default"],
                                                              return_tensors_to_rename=True)
    tf2onnx.convert._convert_common(graph_def, name="model", opset=17, input_names=ins, output_names=outs,
                                    tensors_to_rename=renames, output_path=str(out / "model.onnx"))
    times["onnx"] = time.perf_counter() - began

    began = time.perf_counter()
    onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": inputs["image"]})
    times["onnx run"] = time.perf_counter() - began
    return times


def tfship_pipeline(source: Path, repo: Path, samples: Path) -> tuple[dict[str, float], float]:
    from tfship.exporter import ExportOptions, export

    began = time.perf_counter()
    result = export(ExportOptions(source=source, name="m", repo=repo, samples=samples), progress=lambda m: None)
    total = time.perf_counter() - began
    assert all(p.status == "pass" for p in result.manifest.parity), result.to_dict()["parity"]
    return result.timings, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "examples"))
    from train_digits import build_model

    with tempfile.TemporaryDirectory(prefix="tfship-bench-") as tmp:
        tmp = Path(tmp)
        for label, model, shape in (("digits CNN", build_model(), (8, 8, 1)), ("5M CNN", big_cnn(), (64, 64, 3))):
            source = tmp / f"{model.name}.keras"
            model.save(source)
            inputs = {"image": np.random.default_rng(0).random((32, *shape), dtype=np.float32)}
            np.savez(tmp / "samples.npz", **inputs)
            raw_best, ours_best, stages_best = None, None, None
            for attempt in range(args.repeat):
                raw = raw_pipeline(source, tmp / f"raw-{label}-{attempt}", inputs)
                stages, total = tfship_pipeline(source, tmp / f"repo-{label}-{attempt}", tmp / "samples.npz")
                if raw_best is None or sum(raw.values()) < sum(raw_best.values()):
                    raw_best = raw
                if ours_best is None or total < ours_best:
                    ours_best, stages_best = total, stages
            raw_total = sum(raw_best.values())
            print(f"\n{label}: {model.count_params():,} parameters")
            print("  raw library calls: " + ", ".join(f"{k} {v:.2f}s" for k, v in raw_best.items()) + f"  = {raw_total:.2f}s")
            print("  tfship stages:     " + ", ".join(f"{k} {v:.2f}s" for k, v in stages_best.items()) + f"  (wall {ours_best:.2f}s)")
            print(f"  overhead beyond the converters: {(ours_best / raw_total - 1) * 100:+.0f}% (target <= 25%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
