"""`tfship export` on models that break naive conversions, and on model files other people made.

Every test runs the real exporter (the confined worker, TensorFlow, the TFLite converter, tf2onnx,
LiteRT, onnxruntime); the terminal tests run `tfship export` as a subprocess under a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_MODELS, run_cli

pytestmark = pytest.mark.slow

# What TensorFlow, Keras, the MLIR converter, tf2onnx and LiteRT print when nobody silences them.
NOISE = re.compile(r"^[IWEF]\d{4} |tensorflow|absl|XNNPACK|Saved artifact|loc\(|tf2onnx|oneDNN|cuda|"
                   r"WARNING:|UserWarning|MLIR|TensorFlow Lite", re.IGNORECASE | re.MULTILINE)

CUSTOM_LAYER = textwrap.dedent("""
    import keras


    @keras.saving.register_keras_serializable(package="demo")
    class Gain(keras.layers.Layer):
        def __init__(self, gain=1.5, **kwargs):
            super().__init__(**kwargs)
            self.gain = gain

        def call(self, x):
            return x * self.gain

        def get_config(self):
            return {**super().get_config(), "gain": self.gain}
""")


def _tflite_names(path: Path) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]
    return sorted(signature["inputs"]), sorted(signature["outputs"])


def test_recurrent_multi_output_model_keeps_names_custom_objects_and_variable_length(tmp_path, monkeypatch):
    """Embedding + LSTM and a variable-length GRU, a custom layer, two named heads: the static-batch TFLite
    rebuild keeps both output names, gets the custom objects, and its [1, -1, 6] input is resized per sample."""
    import keras

    module = tmp_path / "demo_layers.py"
    module.write_text(CUSTOM_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import demo_layers

    keras.utils.set_random_seed(5)
    tokens = keras.Input((12,), name="tokens")  # float32, as Keras makes it, but carrying token ids
    signal = keras.Input((None, 6), name="signal")
    x = keras.layers.Embedding(50, 8)(tokens)
    x = demo_layers.Gain(2.0)(keras.layers.LSTM(10)(x))
    y = keras.layers.GRU(7)(signal)
    joined = keras.layers.Concatenate()([x, y])
    sentiment = keras.layers.Dense(3, activation="softmax", name="sentiment")(joined)
    score = keras.layers.Dense(1, name="score")(joined)
    model = keras.Model([tokens, signal], [sentiment, score])
    model.save(tmp_path / "recurrent.keras")
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.npz"
    np.savez(samples, tokens=rng.integers(0, 50, (6, 12)).astype("float32"),
             signal=rng.normal(size=(6, 8, 6)).astype("float32"))
    del sys.modules["demo_layers"]

    result = run_cli("export", tmp_path / "recurrent.keras", "--name", "rec", "--repo", tmp_path / "repo",
                     "--custom-objects", module, "--samples", samples, "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == 0, document["errors"]
    parity = {p["artifact"]: p for p in document["data"]["parity"]}
    assert {k: p["status"] for k, p in parity.items()} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}, parity
    version = Path(document["data"]["directory"])
    assert _tflite_names(version / "model.tflite") == (["signal", "tokens"], ["score", "sentiment"])
    manifest = json.loads((version / "manifest.json").read_text())
    tflite = next(p for p in manifest["parity"] if p["format"] == "tflite")
    assert sorted(o["name"] for o in tflite["outputs"]) == ["score", "sentiment"]
    assert any("static batch of 1" in n for n in manifest["notices"])


def _tf_keras_upsampling(folder: Path) -> Path:
    """A Keras-2 .h5 (tf_keras) with UpSampling2D -> Conv2D on any image size: Keras 3 reads it, but its
    SavedModel does not convert to TFLite ('tf.Conv2D' op is neither a custom op nor a flex op); the same
    file read by tf_keras converts."""
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    image = tf_keras.Input((None, None, 3), name="image")
    x = tf_keras.layers.Conv2D(4, 3, padding="same", name="c1")(image)
    x = tf_keras.layers.UpSampling2D(2, name="up")(x)
    x = tf_keras.layers.Conv2D(2, 3, padding="same", name="c2")(x)
    path = folder / "upsampling.h5"
    tf_keras.Model(image, x).save(path)
    return path


def _run_in_terminal(args: list[str], cwd: Path, stdout_pipe: bool = False, timeout: float = 600) -> tuple[int, str, str]:
    """Run ``python -m tfship ARGS`` with stderr (and stdout unless ``stdout_pipe``) on a pseudo-terminal."""
    main, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    env.update(COLUMNS="200", TERM="xterm")
    child = subprocess.Popen([sys.executable, "-m", "tfship", *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if stdout_pipe else secondary, stderr=secondary, cwd=cwd, env=env)
    os.close(secondary)
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([main], [], [], timeout)
            if not ready:
                child.kill()
                raise AssertionError(f"no output for {timeout}s: {seen[-2000:].decode(errors='replace')}")
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other side closed (the child exited)
                break
            if not chunk:
                break
            seen += chunk
        out = child.stdout.read().decode() if child.stdout else ""
        code = child.wait(timeout=60)
    finally:
        os.close(main)
    terminal = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace")).replace("\r", "\n")
    return code, out, terminal


def test_terminal_is_clean_and_the_other_keras_library_converts_what_keras3_cannot(tmp_path, keys):
    """On a terminal: rich stage progress, the table, no line from TensorFlow or a converter although the
    first TFLite route fails loudly in C++; TFLite is produced through tf_keras, and what the converter said
    is kept in the version's export.log, covered by the signature."""
    from tfship.core import signing

    source = _tf_keras_upsampling(tmp_path)
    code, _, terminal = _run_in_terminal(["export", str(source), "--name", "up", "--repo", str(tmp_path / "repo"),
                                          "--sign-key", str(keys["private"])], tmp_path)
    assert code == 0, terminal
    assert not NOISE.search(terminal), NOISE.search(terminal).group(0) + "\n" + terminal  # type: ignore[union-attr]
    assert "✓" in terminal and "converting to TFLite" in terminal  # the stage display
    assert re.search(r"tflite\s.*pass", terminal), terminal
    version = tmp_path / "repo" / "up" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert {p["format"]: p["status"] for p in manifest["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}
    assert any("as tf_keras reads it" in n for n in manifest["notices"]), manifest["notices"]
    log_text = (version / "export.log").read_text()
    assert "neither a custom op nor a flex op" in log_text and "== converting to TFLite" in log_text
    assert signing.verify(version, public_key=keys["public"]).ok
    (version / "export.log").write_text(log_text + "edited\n")
    assert not signing.verify(version, public_key=keys["public"]).ok  # the log is signed with the rest

    # -q --json: stdout is one JSON document, stderr (still a terminal) stays empty.
    code, out, terminal = _run_in_terminal(["-q", "export", str(source), "--name", "up", "--repo", str(tmp_path / "repo"),
                                            "--json"], tmp_path, stdout_pipe=True)
    assert code == 0, terminal
    assert json.loads(out)["data"]["version"] == 2
    assert terminal.strip() == "", terminal


def test_a_format_that_cannot_be_produced_says_why_in_one_line(tmp_path):
    """A string-input model has no TFLite builtin for its ops: one warning line naming the cause, the table row,
    and the manifest's notices say so; the other formats still ship."""
    import tensorflow as tf

    class Lengths(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.cast(tf.strings.length(tf.strings.upper(text)), tf.float32)}

    module = Lengths()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    result = run_cli("export", tmp_path / "sm", "--name", "text", "--repo", tmp_path / "repo")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: tflite")]
    assert len(warnings) == 1 and "TFLite conversion failed" in warnings[0], result.stdout
    manifest = json.loads((tmp_path / "repo" / "text" / "1" / "manifest.json").read_text())
    assert any(n.startswith("tflite could not be produced: ") for n in manifest["notices"]), manifest["notices"]
    assert not (tmp_path / "repo" / "text" / "1" / "model.tflite").exists()


def _carnd_architecture(folder: Path) -> str:
    """The PilotNet architecture of carnd_lambda_h5 in code: its Lambda(x / 127.5 - 1.0) is marshalled Python
    3.5 bytecode that no current Python reads, so the weights are loaded into this rebuild."""
    module = folder / "carnd_arch.py"
    module.write_text(textwrap.dedent("""
        import keras


        def build():
            layers = keras.layers
            image = keras.Input((68, 204, 3), name="image")
            x = layers.Rescaling(1 / 127.5, offset=-1.0, name="lambda_1")(image)
            for i, (filters, size, stride) in enumerate([(24, 5, 2), (36, 5, 2), (48, 5, 2), (64, 3, 1), (64, 3, 1)], 1):
                x = layers.Conv2D(filters, size, strides=stride, activation="elu", name=f"conv2d_{i}")(x)
            x = layers.Flatten(name="flatten_1")(layers.Dropout(0.5, name="dropout_1")(x))
            for i, units in enumerate([100, 50, 10], 1):
                x = layers.Dense(units, activation="elu", name=f"dense_{i}")(x)
            return keras.Model(image, layers.Dense(1, name="dense_4")(x))
    """))
    return f"{module}:build"


REAL_MODELS = {
    "carnd_lambda_h5": ("model.h5", lambda d, tmp: ["--architecture", _carnd_architecture(tmp)]),
    "circuit_gru_h5": ("gru_model.h5", None),
    "cloudml_multi_savedmodel": ("saved_model", None),
    "creditcard_weights_json": ("model.h5", lambda d, tmp: ["--architecture", str(d / "model.json")]),
    "face_xception_hdf5": ("fer2013_mini_XCEPTION.102-0.66.hdf5", None),
    "retail_transformer_keras": ("transformer_model.keras", None),
    "sentiment_bilstm_json": ("bidirectional_lstm_softmax_weights.h5",
                              lambda d, tmp: ["--architecture", str(d / "bidirectional_lstm_softmax_architecture.json")]),
}


@pytest.mark.parametrize("folder", sorted(REAL_MODELS))
def test_real_model_exports_every_format_on_the_defaults(folder, tmp_path):
    """Model files other people made: every format passes parity on the default tolerances, the generated
    samples make every output vary, --json stdout parses, and export.log is kept."""
    directory = SHARED_MODELS / folder
    if not directory.exists():
        pytest.skip(f"{directory} is absent (the shared real-world models are not next to this checkout)")
    filename, extra = REAL_MODELS[folder]
    args = ["export", str(directory / filename), "--name", "real", "--repo", str(tmp_path / "repo"), "--json"]
    args += extra(directory, tmp_path) if extra else []
    done = subprocess.run([sys.executable, "-m", "tfship", *args], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    document = json.loads(done.stdout)
    assert done.returncode == 0, (document["errors"], done.stderr[-3000:])
    statuses = {p["artifact"]: p["status"] for p in document["data"]["parity"]}
    assert statuses == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}, document["data"]["parity"]
    version = Path(document["data"]["directory"])
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["samples"].get("degenerate_outputs", []) == [], manifest["samples"]
    golden = np.load(version / "golden.npz")
    for key in (k for k in golden.files if k.startswith("outputs/")):
        assert np.ptp(golden[key], axis=0).max() > 0, f"{key} is the same for every sample"
    assert (version / "export.log").stat().st_size > 0
