"""``tfship inspect``: versions, model directories and source files (never loaded), as a user reads them."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tfship.cli_export import COMMANDS as EXPORT_COMMANDS
from tfship.cli_inspect import COMMANDS


def run(*args: object) -> tuple[int, str, str]:
    group = click.Group("tfship", commands={c.name: c for c in [*COMMANDS, *EXPORT_COMMANDS]})
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "300"})
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: object) -> tuple[int, dict]:
    code, out, _ = run(*args, "--json")
    return code, json.loads(out)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a version and a model directory ------------------------------------------------------------------

def test_inspect_version_lists_signatures_artifacts_parity_and_signature(signed_repo, keys):
    version = signed_repo["repo"] / "digits" / "1"
    code, document = run_json("inspect", version, "--public-key", keys["public"])
    assert code == 0 and document["ok"] and document["command"] == "inspect"
    data = document["data"]
    assert data["kind"] == "version" and (data["name"], data["version"]) == ("digits", 1)
    (served,) = [s for s in data["signatures"] if s["key"] == "serving_default"]
    assert served["method_name"] == "tensorflow/serving/predict"
    assert served["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 8, 8, 1]}]
    assert served["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [None, 10]}]
    labels = {(a["format"], a["variant"]) for a in data["artifacts"]}
    assert {("savedmodel", "float32"), ("tflite", "float32"), ("tflite", "float16"), ("tflite", "int8"), ("onnx", "float32")} <= labels
    for artifact in data["artifacts"]:  # every hash is the file's own SHA-256, as hashlib computes it now
        for entry in artifact["files"]:
            assert entry["sha256"] == sha256(version / entry["path"]) and entry["state"] == "ok"
            assert entry["bytes"] == (version / entry["path"]).stat().st_size
    parity = {p["artifact"]: p for p in data["parity"]}
    assert parity["onnx"]["status"] == "pass" and parity["onnx"]["outputs"][0]["name"] == "probabilities"
    assert parity["onnx"]["outputs"][0]["max_abs"] < 1e-4 and parity["tflite:int8"]["tolerance"]["min_top1"] == 0.99
    assert data["signing"]["verified"] is True
    attested = (version / "attestation.intoto.jsonl").is_file()
    assert data["signing"]["attestation"].startswith("verified") if attested else data["signing"]["attestation"] == "no attestation"
    assert data["source"]["path"].endswith("digits.h5")


def test_inspect_version_human_output(signed_repo):
    code, out, _ = run("inspect", signed_repo["repo"] / "digits" / "1")
    assert code == 0
    for text in ("digits version 1", "serving_default", "probabilities", "model.tflite", "model.onnx",
                 "signed, not verified (pass --public-key", "parity at export", "tflite:int8"):
        assert text in out


def test_inspect_version_says_what_changed_and_fails_verification(signed_repo, keys, tmp_path):
    version = tmp_path / "1"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", version)
    with (version / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    code, document = run_json("inspect", version, "--public-key", keys["public"])
    assert code == 5 and document["exit_code"] == 5
    data = document["data"]
    states = {e["path"]: e["state"] for a in data["artifacts"] for e in a["files"]}
    assert states["model.onnx"] == "changed" and states["model.tflite"] == "ok"
    assert data["signing"]["verified"] is False and "model.onnx" in data["signing"]["reason"]
    code, document = run_json("inspect", version, "--public-key", keys["other_public"])
    assert code == 5


def test_inspect_model_directory_lists_versions(signed_repo, keys):
    code, document = run_json("inspect", signed_repo["repo"] / "digits", "--public-key", keys["public"])
    assert code == 0
    data = document["data"]
    assert data["kind"] == "model" and data["name"] == "digits"
    assert [v["version"] for v in data["versions"]] == [1, 2]
    first, second = data["versions"]
    assert "onnx" in first["artifacts"] and second["artifacts"] == ["savedmodel"]
    assert second["parity"] == {"savedmodel": "pass"} and second["source"].endswith("digits.keras")
    assert first["signing"].startswith("verified") and first["bytes"] > 0 and first["created"]
    code, out, _ = run("inspect", signed_repo["repo"] / "digits")
    assert code == 0 and "2 versions" in out and "digits.keras" in out


# --- a TF1 SavedModel -----------------------------------------------------------------------------------

def build_tf1_savedmodel(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """y = x @ w + b written by the TF1 builder (no object graph), with a second, regress-style signature."""
    import tensorflow as tf

    v1 = tf.compat.v1
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    bias = np.array([0.5, -1.0, 2.0, 0.0], dtype=np.float32)
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        w = v1.get_variable("w", initializer=tf.constant(weights))
        b = v1.get_variable("b", initializer=tf.constant(bias))
        y = tf.add(tf.matmul(x, w), b, name="y")
        # A regress signature reads serialized tf.Example protos, as TF1 estimators exported them.
        examples = v1.placeholder(tf.string, [None], name="examples")
        parsed = v1.io.parse_example(examples, {"x": v1.io.FixedLenFeature([3], tf.float32)})["x"]
        total = tf.reduce_sum(tf.matmul(parsed, w) + b, axis=1, keepdims=True)
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(folder))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
            "total": v1.saved_model.regression_signature_def(examples, total),
        })
        builder.save()
    return folder, weights, bias


@pytest.fixture(scope="module")
def tf1_savedmodel(tmp_path_factory):
    return build_tf1_savedmodel(tmp_path_factory.mktemp("tf1") / "model")


def test_inspect_tf1_savedmodel_reads_signatures_without_loading(tf1_savedmodel):
    folder, _, _ = tf1_savedmodel
    code, document = run_json("inspect", folder)
    assert code == 0
    data = document["data"]
    assert data["kind"] == "source" and data["format"] == "savedmodel" and data["exportable"]
    assert data["savedmodel"]["tf2"] is False and data["savedmodel"]["tags"] == ["serve"]
    signatures = {s["key"]: s for s in data["savedmodel"]["signatures"]}
    assert signatures["serving_default"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 3]}]
    assert signatures["serving_default"]["outputs"] == [{"name": "y", "dtype": "float32", "shape": [None, 4]}]
    # The method names TF Serving dispatches on (tensorflow_serving/servables/tensorflow/regressor.cc checks
    # kRegressMethodName, "tensorflow/serving/regress").
    assert signatures["total"]["method_name"] == "tensorflow/serving/regress"
    assert signatures["total"]["inputs"][0]["dtype"] == "string"
    assert "TF1 SavedModel" in data["verdict"]
    code, out, _ = run("inspect", folder)
    assert code == 0 and "tensorflow/serving/regress" in out and "TF1" in out


# --- source files: read, never loaded -------------------------------------------------------------------

def write_lambda_h5(path: Path, marker: Path) -> None:
    """A tf_keras .h5 whose Lambda layer writes ``marker`` when the model is rebuilt (tf_keras ignores
    safe_mode for .h5: loading it runs the stored bytecode)."""
    import tf_keras

    inputs = tf_keras.Input((3,), name="x")
    hidden = tf_keras.layers.Dense(2, name="dense")(inputs)
    target = str(marker)
    outputs = tf_keras.layers.Lambda(lambda t: [__import__("pathlib").Path(target).write_text("ran"), t][1],
                                     name="writes_marker")(hidden)
    marker.unlink(missing_ok=True)  # building the model above ran the lambda once
    tf_keras.Model(inputs, outputs).save(path)


@pytest.fixture(scope="module")
def lambda_h5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lambda")
    marker = folder / "marker"
    write_lambda_h5(folder / "model.h5", marker)
    assert not marker.exists()
    return folder / "model.h5", marker


def test_inspect_refused_source_runs_no_loader(lambda_h5):
    path, marker = lambda_h5
    code, document = run_json("inspect", path)
    assert code == 0 and not marker.exists()
    data = document["data"]
    assert data["format"] == "h5" and data["exportable"] is False and "--trust-code" in data["needs"]
    (refused,) = data["refused"]
    assert (refused["layer"], refused["class_name"]) == ("writes_marker", "Lambda") and refused["reason"].startswith("stores Python")
    assert data["verdict"].startswith("refused: layer 'writes_marker' (Lambda)")
    assert data["writer"]["keras_version"].startswith("2.") and data["layers"]["Dense"] == 1
    code, out, _ = run("inspect", path)
    assert code == 0 and "writes_marker" in out and not marker.exists()


def test_the_marker_file_does_record_a_load(lambda_h5):
    """The oracle of the test above: loading the same file with tf_keras does write the marker."""
    import tf_keras

    path, marker = lambda_h5
    tf_keras.models.load_model(path, compile=False)
    assert marker.read_text() == "ran"
    marker.unlink()


def test_inspect_keras_file_that_exports(digits_model):
    code, document = run_json("inspect", digits_model["keras"])
    assert code == 0
    data = document["data"]
    assert data["format"] == "keras" and data["exportable"] and data["verdict"] == "exports: loads with Keras 3"
    assert data["writer"]["keras_version"].startswith("3.") and data["model_class"] == "Functional"
    assert data["layers"] == {"Conv2D": 1, "Dense": 1, "Flatten": 1, "InputLayer": 1}


def test_inspect_weights_only_and_architecture(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    model.save_weights(tmp_path / "w.weights.h5")
    (tmp_path / "arch.json").write_text(model.to_json())
    code, document = run_json("inspect", tmp_path / "w.weights.h5")
    assert code == 0 and document["data"]["format"] == "h5-weights" and document["data"]["needs"] == ["--architecture"]
    code, document = run_json("inspect", tmp_path / "arch.json")
    assert code == 0 and document["data"]["format"] == "architecture" and "--architecture" in document["data"]["verdict"]
    code, document = run_json("inspect", tmp_path / "nothing.h5")
    assert code == 2 and "no such file" in document["errors"][0]


# --- TF Hub layers: said for what they are, before any loader -----------------------------------------

HUB_HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"


def hub_config(module: bool, handle: str = HUB_HANDLE) -> dict:
    """The model config a tf_keras model with a hub.KerasLayer stores (the TF Hub transfer-learning guide's model)."""
    hub_layer = {"class_name": "KerasLayer", "config": {"name": "keras_layer", "trainable": False, "dtype": "float32",
                                                        "handle": handle, "output_shape": [1280]}}
    if module:  # the .keras format of Keras 2.13+ / tf_keras names the class's module
        hub_layer.update({"module": "tensorflow_hub.keras_layer", "registered_name": "KerasLayer"})
    dense = {"class_name": "Dense", "config": {"name": "dense", "units": 5, "activation": "linear", "dtype": "float32"}}
    if module:
        dense.update({"module": "keras.layers", "registered_name": None})
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 224, 224, 3], "dtype": "float32", "name": "input_1"}},
        hub_layer, dense]}}


def write_hub_h5(path: Path, handle: str = HUB_HANDLE) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(hub_config(False, handle))
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        f.create_group("model_weights")
    return path


def write_hub_keras(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(hub_config(True)))
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.15.0", "date_saved": "2024-01-01@00:00:00"}))
        archive.writestr("model.weights.h5", b"")
    return path


def test_inspect_names_tf_hub_layers(tmp_path):
    for path in (write_hub_h5(tmp_path / "hub.h5"), write_hub_keras(tmp_path / "hub.keras")):
        code, document = run_json("inspect", path)
        assert code == 0
        data = document["data"]
        assert data["tf_hub"] == [{"layer": "keras_layer", "handle": HUB_HANDLE, "remote": True}]
        assert not data["exportable"] and "--custom-objects tensorflow_hub" in data["needs"]
        assert "TF Hub layer" in data["verdict"] and HUB_HANDLE in data["verdict"] and "SavedModel" in data["verdict"]


def test_export_of_a_tf_hub_h5_says_what_to_do(tmp_path):
    path = write_hub_h5(tmp_path / "hub.h5")
    code, document = run_json("export", path, "--name", "hub", "--repo", tmp_path / "models", "--formats", "savedmodel")
    assert code == 1
    (message,) = document["errors"]
    assert "layer 'keras_layer' is a TF Hub layer (hub.KerasLayer, handle " + HUB_HANDLE + ")" in message
    assert "--custom-objects tensorflow_hub" in message and "Unknown layer" not in message
    assert not (tmp_path / "models" / "hub" / "1").exists()


def test_remote_hub_handle_needs_trust_code(tmp_path):
    from tfship.core.errors import UnsafeModelError
    from tfship.exporter.keras_loading import check_hub_layers

    config = hub_config(True)
    provided = {"KerasLayer": object}  # what --custom-objects tensorflow_hub provides
    with pytest.raises(UnsafeModelError) as info:
        check_hub_layers(tmp_path / "m.keras", config, provided, trust_code=False)
    assert "would be downloaded and run" in info.value.message and HUB_HANDLE in info.value.message
    check_hub_layers(tmp_path / "m.keras", config, provided, trust_code=True)
    check_hub_layers(tmp_path / "m.keras", hub_config(True, str(tmp_path / "local_module")), provided, trust_code=False)
