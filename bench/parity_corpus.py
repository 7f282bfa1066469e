"""Measured conversion error per model and format: the evidence behind tfship's float32 parity defaults.

    .venv/bin/python bench/parity_corpus.py [--only NAME ...] [--json out.json] [--shared ../shared/models]

Corpus: every model in ../shared/models (files other people made; skipped when absent), the example
digits CNN (examples/train_digits.py, with its held-out images as samples), and generated
architectures (CNN, BatchNorm, separable/residual, LSTM/GRU stateful and not, Keras 2 (tf_keras)
recurrent models, Embedding with int and float inputs, Attention, MultiHeadAttention, multi-input/
output, dict I/O, int inputs, a wide TF-IDF classifier). Each model is loaded the way ``tfship export``
loads it (:func:`tfship.exporter.sources.load_source`), fed the samples ``tfship export`` designs
(:func:`tfship.exporter.sample_design.design_samples`), written as a SavedModel and converted with the
exporter's own functions (:mod:`tfship.exporter.tflite`, :mod:`tfship.exporter.onnx`); each artifact
runs on TensorFlow (the serving signature), LiteRT and onnxruntime, and is compared with the original
Keras model. Printed per model and format: max abs error, max rel error, p99 abs error, elements beyond
the old default (atol=rtol=1e-5) and whether it passes under the defaults of
:data:`tfship.core.tolerance.DEFAULT_TOLERANCES` (Polygraphy's rule: an element fails only beyond
both atol and rtol).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SHARED = ROOT.parent / "shared" / "models"
OLD_DEFAULT = 1e-5


@dataclass
class Row:
    model: str
    origin: str  # "shared", "example" or "generated"
    format: str
    status: str  # "pass", "mismatch" or "failed" (did not convert or run)
    max_abs: float | None = None
    max_rel: float | None = None
    p99_abs: float | None = None
    beyond_old: int | None = None  # elements beyond atol=rtol=1e-5 (the old default)
    elements: int | None = None
    note: str = ""


@dataclass
class Entry:
    name: str
    origin: str
    make: Callable[[Path], tuple[Path, str | None, Path | None]]  # tmp dir -> (source, architecture, samples .npz)


# --- generated architectures ---------------------------------------------------------------------


def _k3() -> Any:
    import keras

    keras.utils.set_random_seed(11)
    return keras


def _k2() -> Any:
    import tf_keras

    tf_keras.utils.set_random_seed(11)
    return tf_keras


def _save(model: Any, path: Path) -> tuple[Path, None, None]:
    model.save(path)
    return path, None, None


def _randomize_bn(model: Any) -> None:
    """Moving statistics far from (0, 1), as a trained model's are: a dropped normalisation then shows."""
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 1.0, mean.shape), rng.uniform(0.5, 3.0, var.shape)])


def cnn(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    image = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu")(image)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return _save(keras.Model(image, keras.layers.Dense(10, activation="softmax", name="probabilities")(x)), tmp / "cnn.keras")


def cnn_batchnorm(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    image = keras.Input((32, 32, 3), name="image")
    x = image
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(5, activation="softmax", name="probabilities")(x))
    _randomize_bn(model)
    return _save(model, tmp / "cnn_bn.keras")


def separable_residual(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    image = keras.Input((24, 24, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    y = keras.layers.SeparableConv2D(16, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(7, activation="softmax", name="emotion")(x))
    _randomize_bn(model)
    return _save(model, tmp / "separable.keras")


def _recurrent(layer: str, stateful: bool = False, bidirectional: bool = False) -> Callable[[Path], tuple[Path, None, None]]:
    def make(tmp: Path) -> tuple[Path, None, None]:
        keras = _k3()
        shape = dict(batch_shape=(1, 12, 6)) if stateful else dict(shape=(12, 6))
        seq = keras.Input(name="sequence", **shape)
        rnn = getattr(keras.layers, layer)(24, return_sequences=True, stateful=stateful)
        x = keras.layers.Bidirectional(rnn)(seq) if bidirectional else rnn(seq)
        x = getattr(keras.layers, layer)(16, stateful=stateful)(x)
        model = keras.Model(seq, keras.layers.Dense(3, name="forecast")(x))
        return _save(model, tmp / f"{layer.lower()}{'_stateful' if stateful else ''}{'_bi' if bidirectional else ''}.keras")
    return make


def keras2_lstm_attention(tmp: Path) -> tuple[Path, None, None]:
    """The issue's shape: a Keras 2 .h5 with three inputs, an LSTM and attention."""
    keras = _k2()
    tokens = keras.Input((16,), name="tokens")
    extra = keras.Input((16, 4), name="extra")
    meta = keras.Input((5,), name="meta")
    x = keras.layers.Embedding(300, 16)(tokens)
    x = keras.layers.Concatenate()([x, extra])
    x = keras.layers.LSTM(32, return_sequences=True)(x)
    x = keras.layers.Attention()([x, x])
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(meta)])
    model = keras.Model([tokens, extra, meta], keras.layers.Dense(4, activation="softmax", name="label")(x))
    return _save(model, tmp / "keras2_lstm_attention.h5")


def keras2_lstm_long(tmp: Path) -> tuple[Path, None, None]:
    """A long sequence through a wide LSTM with large weights, as trained recurrent models have: the fused
    TFLite LSTM accumulates float rounding over 80 steps (the issue's 2.45e-05 case)."""
    keras = _k2()
    words = keras.Input((80,), name="words")
    prices = keras.Input((80, 3), name="prices")
    flags = keras.Input((6,), name="flags")
    x = keras.layers.Concatenate()([keras.layers.Embedding(2000, 32)(words), prices])
    x = keras.layers.LSTM(96, return_sequences=True)(x)
    x = keras.layers.LSTM(64)(x)
    x = keras.layers.Concatenate()([x, flags])
    model = keras.Model([words, prices, flags], keras.layers.Dense(8, name="score")(x))
    for layer in model.layers:
        if type(layer).__name__ == "LSTM":
            kernel, recurrent, bias = layer.get_weights()
            layer.set_weights([kernel * 2.5, recurrent * 2.5, bias])
    return _save(model, tmp / "keras2_lstm_long.h5")


def keras2_gru(tmp: Path) -> tuple[Path, None, None]:
    keras = _k2()
    model = keras.Sequential([keras.layers.GRU(32, return_sequences=True, input_shape=(20, 3)), keras.layers.GRU(16),
                              keras.layers.Dense(2)])
    return _save(model, tmp / "keras2_gru.h5")


def keras2_lstm_stateful(tmp: Path) -> tuple[Path, None, None]:
    keras = _k2()
    model = keras.Sequential([keras.layers.LSTM(16, stateful=True, batch_input_shape=(1, 10, 4)), keras.layers.Dense(1)])
    return _save(model, tmp / "keras2_lstm_stateful.h5")


def embedding_lstm_int(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    tokens = keras.Input((20,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(1000, 32, mask_zero=True)(tokens)
    x = keras.layers.LSTM(32)(x)
    return _save(keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid", name="sentiment")(x)), tmp / "embedding_lstm.keras")


def embedding_float_input(tmp: Path) -> tuple[Path, None, None]:
    """A float32 Input (Keras' default) carrying token ids into an Embedding."""
    keras = _k3()
    tokens = keras.Input((30,), name="tokens")
    x = keras.layers.Embedding(5000, 24)(tokens)
    x = keras.layers.Conv1D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    return _save(keras.Model(tokens, keras.layers.Dense(3, activation="softmax", name="topic")(x)), tmp / "embedding_float.keras")


def mha_encoder(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    seq = keras.Input((10, 32), name="sequence")
    y = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(seq, seq)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([seq, y]))
    y = keras.layers.Dense(64, activation="gelu")(x)
    y = keras.layers.Dense(32)(y)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return _save(keras.Model(seq, keras.layers.Dense(1, name="demand")(x)), tmp / "mha.keras")


def dot_attention(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    query = keras.Input((8, 16), name="query")
    value = keras.Input((12, 16), name="value")
    x = keras.layers.Attention()([query, value])
    x = keras.layers.GlobalAveragePooling1D()(x)
    return _save(keras.Model([query, value], keras.layers.Dense(4, activation="softmax", name="scores")(x)), tmp / "attention.keras")


def multi_io(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    image = keras.Input((16, 16, 3), name="image")
    numbers = keras.Input((10,), name="numbers")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(image))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(16, activation="tanh")(numbers)])
    kind = keras.layers.Dense(5, activation="softmax", name="kind")(x)
    price = keras.layers.Dense(1, name="price")(x)
    return _save(keras.Model([image, numbers], [kind, price]), tmp / "multi_io.keras")


def dict_io(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    inputs = {"age": keras.Input((1,), name="age"), "visits": keras.Input((7,), name="visits")}
    x = keras.layers.Concatenate()([inputs["age"], inputs["visits"]])
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = {"churn": keras.layers.Dense(1, activation="sigmoid", name="churn")(x),
               "spend": keras.layers.Dense(1, name="spend")(x)}
    return _save(keras.Model(inputs, outputs), tmp / "dict_io.keras")


def int_category(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    category = keras.Input((1,), dtype="int64", name="category")
    amount = keras.Input((3,), name="amount")
    x = keras.layers.CategoryEncoding(num_tokens=12, output_mode="one_hot")(category)
    x = keras.layers.Concatenate()([x, amount])
    x = keras.layers.Dense(16, activation="relu")(x)
    return _save(keras.Model([category, amount], keras.layers.Dense(2, activation="softmax", name="fraud")(x)), tmp / "int_category.keras")


def wide_tfidf(tmp: Path) -> tuple[Path, None, None]:
    """A 5000-wide bag-of-words classifier whose first layer saturates on uniform [0, 1) rows."""
    keras = _k3()
    features = keras.Input((5000,), name="tfidf")
    x = keras.layers.Dense(64, activation="relu")(features)
    model = keras.Model(features, keras.layers.Dense(4, activation="softmax", name="label")(x))
    first, last = model.layers[1], model.layers[2]
    kernel, bias = first.get_weights()
    first.set_weights([kernel + 0.02, bias])  # a full row of 5000 values drives every unit far up ...
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 4.0, bias])  # ... and the softmax to the same one-hot answer for every uniform row
    return _save(model, tmp / "wide_tfidf.keras")


def deep_regression(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    features = keras.Input((20,), name="features")
    x = features
    for units in (128, 128, 64):
        x = keras.layers.Dense(units, activation="swish")(x)
        x = keras.layers.LayerNormalization()(x)
    model = keras.Model(features, keras.layers.Dense(1, name="value")(x))
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 300.0, bias + 1000.0])  # outputs in the thousands: relative error matters, not absolute
    return _save(model, tmp / "deep_regression.keras")


def upsample_decoder(tmp: Path) -> tuple[Path, None, None]:
    keras = _k3()
    code = keras.Input((8, 8, 4), name="code")
    x = keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(code)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="image")(x)
    return _save(keras.Model(code, x), tmp / "decoder.keras")


GENERATED = [
    ("cnn", cnn), ("cnn_batchnorm", cnn_batchnorm), ("separable_residual", separable_residual),
    ("lstm", _recurrent("LSTM")), ("gru", _recurrent("GRU")), ("lstm_bidirectional", _recurrent("LSTM", bidirectional=True)),
    ("lstm_stateful", _recurrent("LSTM", stateful=True)), ("gru_stateful", _recurrent("GRU", stateful=True)),
    ("keras2_lstm_attention", keras2_lstm_attention), ("keras2_lstm_long", keras2_lstm_long),
    ("keras2_gru", keras2_gru), ("keras2_lstm_stateful", keras2_lstm_stateful),
    ("embedding_lstm_int", embedding_lstm_int), ("embedding_float_input", embedding_float_input),
    ("mha_encoder", mha_encoder), ("dot_attention", dot_attention), ("multi_io", multi_io), ("dict_io", dict_io),
    ("int_category", int_category), ("wide_tfidf", wide_tfidf), ("deep_regression", deep_regression),
    ("upsample_decoder", upsample_decoder),
]


# --- real files and the example --------------------------------------------------------------------


SHARED_MODELS = [
    ("carnd_pilotnet", "carnd_lambda_h5", "model.h5", str(ROOT / "examples" / "pilotnet_architecture.py") + ":build"),
    ("creditcard_mlp", "creditcard_weights_json", "model.h5", "model.json"),
    ("retail_transformer", "retail_transformer_keras", "transformer_model.keras", None),
    ("cloudml_multi", "cloudml_multi_savedmodel", "saved_model", None),
    ("face_xception", "face_xception_hdf5", "fer2013_mini_XCEPTION.102-0.66.hdf5", None),
    ("circuit_gru", "circuit_gru_h5", "gru_model.h5", None),
    ("sentiment_bilstm", "sentiment_bilstm_json", "bidirectional_lstm_softmax_weights.h5", "bidirectional_lstm_softmax_architecture.json"),
]


def digits_example(tmp: Path) -> tuple[Path, None, Path]:
    sys.path.insert(0, str(ROOT / "examples"))
    import train_digits

    out = tmp / "digits"
    train_digits.main(["--out", str(out), "--epochs", "3"])
    return out / "digits_cnn.h5", None, out / "digits_samples.npz"


def corpus(shared: Path = SHARED) -> list[Entry]:
    entries = []
    for name, folder, source, architecture in SHARED_MODELS:
        if (shared / folder).is_dir():
            entries.append(Entry(name, "shared", _shared_entry(shared / folder, source, architecture)))
    entries.append(Entry("digits_example", "example", digits_example))
    entries += [Entry(name, "generated", make) for name, make in GENERATED]
    return entries


def _shared_entry(base: Path, source: str, architecture: str | None) -> Callable[[Path], tuple[Path, str | None, None]]:
    def make(tmp: Path) -> tuple[Path, str | None, None]:
        arch = architecture if architecture is None or ":" in architecture else str(base / architecture)
        return base / source, arch, None
    return make


# --- measuring ------------------------------------------------------------------------------------


def _match(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """``actual`` keyed like ``reference``; outputs renamed by the converter are matched by order (noted)."""
    if set(actual) >= set(reference) or len(actual) != len(reference):
        return actual, ""
    return dict(zip(reference, actual.values())), f"output names {sorted(actual)} != {sorted(reference)}, matched by order"


def measure(entry: Entry, tmp: Path, formats: tuple[str, ...] = ("savedmodel", "tflite", "onnx")) -> list[Row]:
    """Rows for one model: its artifacts, converted by the exporter's functions, against the original."""
    import tensorflow as tf

    from tfship.client.compare import compare_outputs
    from tfship.core.samples import load_npz_inputs
    from tfship.core.tolerance import DEFAULT_TOLERANCES, Tolerance
    from tfship.exporter import onnx as onnx_export
    from tfship.exporter import sources, tflite
    from tfship.exporter.sample_design import design_samples

    work = tmp / entry.name
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, architecture, samples = entry.make(work)
        loaded = sources.load_source(source, architecture=architecture)
        static = _static_batch(loaded.signature)
        stateful = static and loaded.keras_model is not None and _reset(loaded.keras_model)

        def predict(inputs: dict[str, np.ndarray], reset: bool = True) -> dict[str, np.ndarray]:
            """The original model; a static-batch model one sample at a time, from a fresh state each (as LiteRT runs it)."""
            if not static:
                return loaded.predict(inputs)
            parts = []
            for i in range(len(next(iter(inputs.values())))):
                if reset:
                    _reset(loaded.keras_model)
                parts.append(loaded.predict({k: v[i:i + 1] for k, v in inputs.items()}))
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        if samples is not None:
            inputs = load_npz_inputs(samples, loaded.signature)
            note = "samples: held-out data"
        else:
            inputs, report = design_samples(loaded.keras_model, loaded.signature, 32, predict=predict)
            kinds = sorted({v.get("kind", "") for v in report["inputs"].values()})
            note = f"samples: {'+'.join(kinds)} {report['distribution']}" + (f"; degenerate {report['degenerate_outputs']}"
                                                                                if report["degenerate_outputs"] else "")
        reference = predict(inputs)
        references = {"savedmodel": reference, "tflite": reference, "onnx": reference}
        if stateful:
            # A SavedModel keeps a stateful layer's state in variables that no signature resets: each request
            # continues from the previous one. The TFLite file too: its state is a resource variable that
            # reset_all_variables() leaves alone (checked: it matches the carried run to 1e-7, not the reset one).
            _reset(loaded.keras_model)
            references["savedmodel"] = references["tflite"] = predict(inputs, reset=False)
            _reset(loaded.keras_model)
            note += "; stateful: SavedModel and TFLite carry state across calls, compared with the original run so"
        saved = work / "savedmodel"
        loaded.write_savedmodel(saved)
    except Exception as exc:
        return [Row(entry.name, entry.origin, "load", "failed", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]

    def run_savedmodel() -> dict[str, np.ndarray]:
        served = tf.saved_model.load(str(saved)).signatures["serving_default"]
        step = 1 if _static_batch(loaded.signature) else 256
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(next(iter(inputs.values()))), step):
            for key, value in served(**{k: tf.constant(v[start:start + step]) for k, v in inputs.items()}).items():
                parts.setdefault(key, []).append(value.numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def run_tflite() -> dict[str, np.ndarray]:
        path = work / "model.tflite"
        tflite.convert(saved, path, keras_model=loaded.keras_model)
        return tflite.run(path, inputs)

    def run_onnx() -> dict[str, np.ndarray]:
        path = work / "model.onnx"
        onnx_export.convert(saved, path)
        return onnx_export.run(path, inputs)

    runners = {"savedmodel": run_savedmodel, "tflite": run_tflite, "onnx": run_onnx}
    rows = []
    for fmt in formats:
        try:
            reference = references[fmt]
            actual, renamed = _match(reference, runners[fmt]())
        except Exception as exc:
            text = (str(getattr(exc, "message", "")) or str(exc)).strip().splitlines()
            rows.append(Row(entry.name, entry.origin, fmt, "failed", note=f"{type(exc).__name__}: {(text[0] if text else '')[:160]}"))
            continue
        comparison = compare_outputs(reference, actual, DEFAULT_TOLERANCES[fmt])
        old = compare_outputs(reference, actual, Tolerance(OLD_DEFAULT, OLD_DEFAULT))
        outs = comparison.outputs
        rows.append(Row(
            entry.name, entry.origin, fmt, "pass" if comparison.passed else "mismatch",
            max_abs=max(o.max_abs for o in outs), max_rel=max(o.max_rel for o in outs), p99_abs=max(o.p99_abs for o in outs),
            beyond_old=sum(o.failed_elements for o in old.outputs), elements=sum(o.total_elements for o in outs),
            note="; ".join(x for x in (note, renamed, *(o.reason for o in comparison.failures())) if x),
        ))
    return rows


def _reset(model: Any) -> bool:
    """Reset every stateful layer's state; True when the model has one."""
    found = False
    for layer in getattr(model, "layers", []):
        if getattr(layer, "stateful", False) or getattr(getattr(layer, "forward_layer", None), "stateful", False):
            found = True
            for method in ("reset_states", "reset_state"):
                if hasattr(layer, method):
                    getattr(layer, method)()
                    break
    return found


def _static_batch(signature: Any) -> bool:
    return any(s.shape and s.shape[0] == 1 for s in signature.inputs)


def table(rows: list[Row]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2e}"

    lines = ["| model | origin | format | max abs | max rel | p99 abs | beyond 1e-5 | result | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beyond = "-" if r.beyond_old is None else f"{r.beyond_old}/{r.elements}"
        lines.append(f"| {r.model} | {r.origin} | {r.format} | {num(r.max_abs)} | {num(r.max_rel)} | {num(r.p99_abs)} | "
                     f"{beyond} | {r.status} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder of real model files (skipped when absent)")
    args = parser.parse_args(argv)
    from tfship.core.tolerance import DEFAULT_TOLERANCES

    entries = [e for e in corpus(args.shared) if not args.only or e.name in args.only]
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            t0 = time.perf_counter()
            rows += measure(entry, Path(tmp))
            print(f"{entry.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    defaults = ", ".join(f"{k} {DEFAULT_TOLERANCES[k].describe()}" for k in ("savedmodel", "tflite", "onnx"))
    measured = [r for r in rows if r.max_abs is not None]
    print(f"\n{len(entries)} models, {len(measured)} artifacts measured, {sum(r.status == 'pass' for r in measured)} pass, "
          f"{sum(r.status == 'mismatch' for r in measured)} mismatch, {sum(r.status == 'failed' for r in rows)} did not convert or run; "
          f"defaults: {defaults}; {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0 if all(r.status != "mismatch" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
