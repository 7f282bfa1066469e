"""The float32 parity defaults pass honest conversions and fail real conversion faults.

Each fault is made where a broken converter would make it: in the model an artifact is converted from
(a copy of the original with its weights or layers altered), then converted with the exporter's own
functions and compared with the *original* model's outputs under the defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tfship.client.compare import compare_output, compare_outputs
from tfship.core.tolerance import DEFAULT_TOLERANCES, Tolerance

ROOT = Path(__file__).resolve().parents[1]


def _build(batchnorm: bool = True, activation: str = "tanh"):
    import keras

    keras.utils.set_random_seed(5)
    image = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(8, 3, name="conv")(image)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation=activation, name="hidden")(x)
    return keras.Model(image, keras.layers.Dense(4, activation="softmax", name="probabilities")(x))


@pytest.fixture(scope="module")
def original():
    model = _build()
    rng = np.random.default_rng(1)
    norm = model.get_layer("norm")
    # Trained statistics, far from (0, 1): a dropped normalisation must show.
    norm.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.5, 8), rng.normal(0.3, 0.5, 8), rng.uniform(0.3, 2, 8)])
    return model


def _copy(model, **changes):
    """The original's architecture (with ``changes``) and weights."""
    copy = _build(**changes)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def transposed_kernel(model):
    copy = _copy(model)
    kernel, bias = copy.get_layer("conv").get_weights()
    copy.get_layer("conv").set_weights([kernel.transpose(1, 0, 2, 3), bias])  # height and width swapped (an NHWC/NCHW slip)
    return copy


def dropped_normalisation(model):
    return _copy(model, batchnorm=False)


def wrong_activation(model):
    return _copy(model, activation="sigmoid")


def perturbed_weight(model):
    copy = _copy(model)
    kernel, bias = copy.get_layer("conv").get_weights()
    kernel[1, 1, 0, 0] += 1e-2  # one weight of 211, by 1e-2
    copy.get_layer("conv").set_weights([kernel, bias])
    return copy


def honest(model):
    return _copy(model)


def _converted_outputs(model, tmp: Path, inputs: dict[str, np.ndarray], formats: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``model`` in ``formats``, converted and run by the exporter's own functions."""
    import tensorflow as tf

    from tfship.exporter import onnx as onnx_export
    from tfship.exporter import tflite
    from tfship.exporter.keras_model import from_keras_model

    loaded = from_keras_model(model, "keras", tmp / "source.keras")
    saved = tmp / "savedmodel"
    loaded.write_savedmodel(saved)
    served = tf.saved_model.load(str(saved)).signatures["serving_default"]
    result = {"savedmodel": {k: v.numpy() for k, v in served(**{k: tf.constant(v) for k, v in inputs.items()}).items()}}
    if "tflite" in formats:
        tflite.convert(saved, tmp / "model.tflite", keras_model=model)
        result["tflite"] = tflite.run(tmp / "model.tflite", inputs)
    if "onnx" in formats:
        onnx_export.convert(saved, tmp / "model.onnx")
        result["onnx"] = onnx_export.run(tmp / "model.onnx", inputs)
    return result


@pytest.mark.parametrize("make", [honest, transposed_kernel, dropped_normalisation, wrong_activation, perturbed_weight],
                         ids=lambda f: f.__name__)
def test_defaults_fail_each_conversion_fault_and_pass_an_honest_conversion(original, make, tmp_path):
    from tfship.exporter.keras_model import from_keras_model
    from tfship.exporter.sample_design import design_samples

    loaded = from_keras_model(original, "keras", tmp_path / "original.keras")
    inputs, _ = design_samples(original, loaded.signature, 32, predict=loaded.predict)
    reference = loaded.predict(inputs)
    # The fault is in the converted model, not in the format: the faults go through SavedModel and TFLite
    # (the quick routes), the honest copy through every format.
    formats = ("savedmodel", "tflite", "onnx") if make is honest else ("savedmodel", "tflite")
    for fmt, actual in _converted_outputs(make(original), tmp_path, inputs, formats).items():
        comparison = compare_outputs(reference, actual, DEFAULT_TOLERANCES[fmt])
        if make is honest:
            assert comparison.passed, (fmt, [o.reason for o in comparison.failures()])
        else:
            assert not comparison.passed, f"{make.__name__} passes {fmt} parity under {DEFAULT_TOLERANCES[fmt].describe()}"


def test_float32_defaults_pass_the_issues_fused_lstm_rounding():
    # The issue's Keras-2 LSTM: max abs error 2.45e-05, one of 32 elements beyond atol=rtol=1e-5.
    reference = np.linspace(0.02, 0.9, 32, dtype=np.float32).reshape(8, 4)
    actual = reference.copy()
    actual[3, 1] += 2.45e-5
    actual[5, 2] -= 8e-6
    assert not compare_output("label", reference, actual, Tolerance(1e-5, 1e-5)).passed
    for fmt in ("savedmodel", "tflite", "onnx"):
        result = compare_output("label", reference, actual, DEFAULT_TOLERANCES[fmt])
        assert result.passed and result.failed_elements == 0


def test_float32_defaults_fail_an_error_ten_times_the_lstm_rounding_on_small_outputs():
    reference = np.full((4, 3), 0.3, dtype=np.float32)
    actual = reference.copy()
    actual[0, 0] += 3e-4  # beyond atol and, relative to 0.3, beyond rtol
    result = compare_output("label", reference, actual, DEFAULT_TOLERANCES["tflite"])
    assert not result.passed and result.failed_elements == 1


@pytest.mark.slow
def test_parity_corpus_every_artifact_that_converts_passes_under_the_defaults(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import parity_corpus

    entries = parity_corpus.corpus()
    assert len([e for e in entries if e.origin == "generated"]) >= 15
    rows = [row for entry in entries for row in parity_corpus.measure(entry, tmp_path)]
    mismatched = [(r.model, r.format, r.note) for r in rows if r.status == "mismatch"]
    assert not mismatched
    measured = {(r.model, r.format) for r in rows if r.status == "pass"}
    assert len(measured) >= 45
    for name, *_ in parity_corpus.SHARED_MODELS:
        if any(e.name == name for e in entries):
            assert {(name, f) for f in ("savedmodel", "tflite", "onnx")} <= measured, name
