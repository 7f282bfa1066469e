"""tfship export on every kind of source a user has, and what lands in the repository."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from conftest import listing, run_cli

SM_ONLY = ("--formats", "savedmodel")


def _served_signature(version_dir: Path):
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return sorted(fn.structured_input_signature[1]), sorted(fn.structured_outputs)


def test_keras_file_exports_every_artifact_with_parity(signed_repo, digits_model):
    version = signed_repo["repo"] / "digits" / "1"
    names = set(listing(version))
    for expected in ("saved_model.pb", "fingerprint.pb", "model.tflite", "model.float16.tflite", "model.int8.tflite",
                     "model.onnx", "golden.npz", "manifest.json", "model.sig",
                     "assets.extra/tf_serving_warmup_requests"):
        assert expected in names
    assert any(n.startswith("variables/variables.data") for n in names)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 8, 8, 1]}]
    assert manifest["signature"]["outputs"][0]["name"] == "probabilities"
    assert manifest["source"]["sha256"] and manifest["libraries"]["tensorflow"]
    statuses = {(p["format"], p["variant"]): p["status"] for p in manifest["parity"]}
    assert statuses == {("savedmodel", "float32"): "pass", ("tflite", "float32"): "pass", ("tflite", "float16"): "pass",
                        ("tflite", "int8"): "pass", ("onnx", "float32"): "pass"}
    int8 = next(p for p in manifest["parity"] if p["variant"] == "int8")
    assert int8["outputs"][0]["top1_agreement"] >= 0.99
    for artifact in manifest["artifacts"]:
        for entry in artifact["files"]:
            assert (version / entry["path"]).stat().st_size == entry["bytes"]
    golden = np.load(version / "golden.npz")
    np.testing.assert_array_equal(golden["inputs/image"], digits_model["images"])
    np.testing.assert_allclose(golden["outputs/probabilities"], digits_model["model"].predict(digits_model["images"], verbose=0), atol=1e-5)
    assert _served_signature(version) == (["image"], ["probabilities"])


def test_warmup_records_are_prediction_logs(signed_repo):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = signed_repo["repo"] / "digits" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert 1 <= len(records) <= 1000
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["image"]).shape == (1, 8, 8, 1)


def test_versions_increment_and_are_never_overwritten(signed_repo, digits_model, tmp_path):
    assert sorted(p.name for p in (signed_repo["repo"] / "digits").iterdir() if p.name.isdigit()) == ["1", "2"]
    repo = tmp_path / "models"
    assert run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, "--version", "5", *SM_ONLY).exit_code == 0
    before = listing(repo)
    result = run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, "--version", "5", *SM_ONLY)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "never overwritten" in result.stderr
    assert listing(repo) == before
    assert run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, *SM_ONLY).exit_code == 0
    assert (repo / "d" / "6").is_dir()


def test_published_version_is_readable_by_a_server_running_as_another_user(signed_repo):
    """A version folder gets a plain mkdir's mode (umask 022 here), not the 0700 of its staging folder:
    tfship's server image runs as a non-root user and must read the repository it is given."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    version = signed_repo["repo"] / "digits" / "1"
    assert stat.S_IMODE(version.stat().st_mode) == 0o777 & ~umask
    assert all(os.stat(path).st_mode & stat.S_IROTH for path in version.rglob("*")), "every file is readable by others"


def test_multi_input_multi_output_and_dict_outputs(tmp_path):
    import keras

    a = keras.Input((4,), name="features")
    b = keras.Input((2,), dtype="int32", name="category")
    emb = keras.layers.Flatten()(keras.layers.Embedding(5, 3)(b))
    x = keras.layers.Concatenate()([a, emb])
    model = keras.Model([a, b], {"score": keras.layers.Dense(1)(x), "logits": keras.layers.Dense(3)(x)})
    model.save(tmp_path / "multi.keras")
    result = run_cli("export", tmp_path / "multi.keras", "--name", "multi", "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert {p["artifact"]: p["status"] for p in data["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}
    version = tmp_path / "models" / "multi" / "1"
    assert _served_signature(version) == (["category", "features"], ["logits", "score"])
    golden = np.load(version / "golden.npz")
    assert golden["inputs/category"].max() < 5  # integer inputs stay inside the Embedding's vocabulary
    import onnxruntime

    session = onnxruntime.InferenceSession(str(version / "model.onnx"))
    assert sorted(i.name for i in session.get_inputs()) == ["category", "features"]
    assert sorted(o.name for o in session.get_outputs()) == ["logits", "score"]


def test_unnamed_inputs_never_serve_as_keras_tensor(tmp_path, monkeypatch):
    import keras

    # From a file: the InputLayer's stored name, the same on every export.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "seq.keras")
    for _ in range(2):
        assert run_cli("export", tmp_path / "seq.keras", "--name", "seq", "--repo", tmp_path / "models", *SM_ONLY).exit_code == 0
    first, _ = _served_signature(tmp_path / "models" / "seq" / "1")
    assert first == _served_signature(tmp_path / "models" / "seq" / "2")[0]
    assert not first[0].startswith("keras_tensor")

    # Built in code (in memory, process-dependent keras_tensor_N): served as "input", with a notice.
    (tmp_path / "unnamed_arch.py").write_text("import keras\n"
                                              "def build():\n"
                                              "    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model.save_weights(tmp_path / "seq.weights.h5")
    result = run_cli("export", tmp_path / "seq.weights.h5", "--architecture", "unnamed_arch:build", "--name", "built",
                     "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    assert "name your keras.Input" in result.stdout
    assert _served_signature(tmp_path / "models" / "built" / "1")[0] == ["input"]


def test_keras2_h5_compiled_with_metrics(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(4, activation="relu", input_shape=(5,), name="hidden"),
                                 tf_keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer=tf_keras.optimizers.Adam(), loss="categorical_crossentropy",
                  metrics=[tf_keras.metrics.AUC(), "accuracy"])
    model.fit(np.random.rand(16, 5), np.eye(2)[np.random.randint(0, 2, 16)], epochs=1, verbose=0)
    model.save(tmp_path / "k2.h5", save_format="h5")
    result = run_cli("export", tmp_path / "k2.h5", "--name", "k2", "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    inputs = np.random.default_rng(0).random((4, 5)).astype("float32")
    import tensorflow as tf

    served = tf.saved_model.load(str(tmp_path / "models" / "k2" / "1")).signatures["serving_default"]
    (name,) = served.structured_input_signature[1]
    out = served(**{name: tf.constant(inputs)})
    np.testing.assert_allclose(next(iter(out.values())).numpy(), model.predict(inputs, verbose=0), atol=1e-5)


def test_legacy_savedmodel_without_keras_metadata(tmp_path):
    import tensorflow as tf

    class Adder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"), tf.TensorSpec([None, 2], tf.float32, name="y")])
        def serve(self, x, y):
            return {"sum": x + y, "product": x * y}

    module = Adder()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    result = run_cli("export", tmp_path / "sm", "--name", "adder", "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert all(p["status"] == "pass" for p in data["parity"])
    assert any("without Keras metadata" in n for n in data["notices"])
    assert _served_signature(tmp_path / "models" / "adder" / "1") == (["x", "y"], ["product", "sum"])


def test_weights_with_json_architecture_keras3_and_tf_keras(tmp_path):
    import keras
    import tf_keras

    model = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(3, name="d")])
    (tmp_path / "arch.json").write_text(model.to_json())
    model.save_weights(tmp_path / "m.weights.h5")
    result = run_cli("export", tmp_path / "m.weights.h5", "--architecture", tmp_path / "arch.json", "--name", "w3",
                     "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr

    old = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(6,), name="d")])
    (tmp_path / "old.json").write_text(old.to_json())
    old.save_weights(str(tmp_path / "old_weights.h5"))
    old.save_weights(str(tmp_path / "ckpt" / "weights"))
    for source, name in ((tmp_path / "old_weights.h5", "legacy"), (tmp_path / "ckpt" / "weights", "ckpt")):
        result = run_cli("export", source, "--architecture", tmp_path / "old.json", "--name", name,
                         "--repo", tmp_path / "models", *SM_ONLY)
        assert result.exit_code == 0, (name, result.stderr)
        golden = np.load(tmp_path / "models" / name / "1" / "golden.npz")
        np.testing.assert_allclose(next(golden[k] for k in golden.files if k.startswith("outputs/")),
                                   old.predict(next(golden[k] for k in golden.files if k.startswith("inputs/")), verbose=0), atol=1e-5)


def test_weights_with_builder_function(tmp_path, monkeypatch):

    (tmp_path / "arch_mod.py").write_text(textwrap.dedent("""
        import keras
        def build():
            return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, name="out")])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    model = importlib.import_module("arch_mod").build()
    model.save_weights(tmp_path / "w.weights.h5")
    result = run_cli("export", tmp_path / "w.weights.h5", "--architecture", "arch_mod:build", "--name", "built",
                     "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    golden = np.load(tmp_path / "models" / "built" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/out"], model.predict(golden["inputs/x"], verbose=0), atol=1e-5)


CUSTOM_LAYER = """
import keras

@keras.saving.register_keras_serializable(package="tfshiptest")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
    def call(self, x):
        return x * self.factor
    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_custom_layer_needs_custom_objects(tmp_path):
    import importlib.util

    import keras

    (tmp_path / "my_layers.py").write_text(CUSTOM_LAYER)
    spec = importlib.util.spec_from_file_location("my_layers_for_saving", tmp_path / "my_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = keras.Input((3,), name="x")
    model = keras.Model(x, module.Scale(3.0, name="scale")(keras.layers.Dense(2)(x)))
    model.save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().clear()  # a fresh process would not know the class either

    repo = tmp_path / "models"
    refused = run_cli("export", tmp_path / "custom.keras", "--name", "c", "--repo", repo, *SM_ONLY)
    assert refused.exit_code == 1
    assert "tfshiptest>Scale" in refused.stderr and "--custom-objects" in refused.stderr
    assert listing(repo) == [] or not any(p.name.isdigit() for p in (repo / "c").iterdir())

    ok = run_cli("export", tmp_path / "custom.keras", "--name", "c", "--repo", repo, "--custom-objects",
                 tmp_path / "my_layers.py", *SM_ONLY)
    assert ok.exit_code == 0, ok.stderr
    golden = np.load(repo / "c" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/scale"], model.predict(golden["inputs/x"], verbose=0), atol=1e-5)


def test_tflite_quantize_needs_known_variants(digits_model, tmp_path):
    result = run_cli("export", digits_model["keras"], "--name", "d", "--repo", tmp_path / "m", "--tflite-quantize", "int4")
    assert result.exit_code == 2 and "int4" in result.stderr
    assert listing(tmp_path / "m") == []


def test_format_that_cannot_convert_does_not_sink_the_others(tmp_path):
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(tf.strings.upper(text))}

    module = Strings()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "sm", "--name", "s", "--repo", repo, "--json")
    assert result.exit_code == 0, result.stderr
    parity = {p["artifact"]: p for p in json.loads(result.stdout)["data"]["parity"]}
    assert parity["savedmodel"]["status"] == "pass"
    assert parity["tflite"]["status"] == "failed" and "TFLite conversion failed" in parity["tflite"]["error"]
    manifest = json.loads((repo / "s" / "1" / "manifest.json").read_text())
    assert any(p["format"] == "tflite" and p["status"] == "failed" for p in manifest["parity"])
    assert not (repo / "s" / "1" / "model.tflite").exists()

    strict = run_cli("export", tmp_path / "sm", "--name", "s", "--repo", repo, "--strict")
    assert strict.exit_code == 1 and "--strict" in strict.stderr
    assert sorted(p.name for p in (repo / "s").iterdir()) == ["1"]


def test_mismatch_exits_3_and_writes_nothing(digits_model, tmp_path):
    repo = tmp_path / "models"
    # A tolerance no float16 conversion can meet.
    result = run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, "--formats", "savedmodel,tflite",
                     "--tflite-quantize", "float16", "--atol", "tflite:float16=1e-9", "--rtol", "tflite:float16=1e-9",
                     "--diagnose-dir", tmp_path / "diagnosed")
    assert result.exit_code == 3
    assert "tflite:float16 does not predict what the original predicts" in result.stderr
    assert not any(p.name.isdigit() for p in (repo / "d").iterdir())
    kept = run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, "--formats", "savedmodel,tflite",
                   "--tflite-quantize", "float16", "--atol", "tflite:float16=1e-9", "--rtol", "tflite:float16=1e-9", "--allow-mismatch",
                   "--diagnose-dir", tmp_path / "diagnosed")
    assert kept.exit_code == 0 and (repo / "d" / "1" / "manifest.json").exists()
    # The mismatch was bisected on the way: the diagnosis is in the manifest, its reproduction out of the version.
    (diagnosis,) = json.loads((repo / "d" / "1" / "manifest.json").read_text())["diagnoses"]
    assert diagnosis["artifact"] == "tflite:float16" and Path(diagnosis["reproduction"]).parent == tmp_path / "diagnosed"
    assert Path(diagnosis["reproduction"]).is_dir()


def test_keras2_keras_zip(tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(4,), name="d")])
    model.save(tmp_path / "k2.keras")
    result = run_cli("export", tmp_path / "k2.keras", "--name", "k2zip", "--repo", tmp_path / "models", *SM_ONLY)
    assert result.exit_code == 0, result.stderr
    golden = np.load(tmp_path / "models" / "k2zip" / "1" / "golden.npz")
    inputs = next(golden[k] for k in golden.files if k.startswith("inputs/"))
    outputs = next(golden[k] for k in golden.files if k.startswith("outputs/"))
    np.testing.assert_allclose(outputs, model.predict(inputs, verbose=0), atol=1e-5)


def test_gpu_only_cudnn_lstm_maps_to_lstm(tmp_path):
    """A Keras 2 file with CuDNNLSTM (GPU-only): exported on CPU as LSTM, same predictions."""
    import h5py
    import tf_keras
    from tf_keras.src.saving.legacy.hdf5_format import _convert_rnn_weights

    model = tf_keras.Sequential([tf_keras.layers.LSTM(4, input_shape=(5, 3), name="rnn"), tf_keras.layers.Dense(2, name="out")])
    path = tmp_path / "cudnn.h5"
    model.save(path, save_format="h5")
    cudnn_weights = _convert_rnn_weights(type("CuDNNLSTM", (), {})(), model.get_layer("rnn").get_weights())
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "LSTM":
                layer["class_name"] = "CuDNNLSTM"
                for key in ("activation", "recurrent_activation", "use_bias", "dropout", "recurrent_dropout",
                            "implementation", "unroll", "time_major", "zero_output_for_mask"):
                    layer["config"].pop(key, None)
        f.attrs["model_config"] = json.dumps(config)
        group = f["model_weights"]["rnn"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        for name, value in zip(names, cudnn_weights):
            del group[name]
            group.create_dataset(name, data=value)
    result = run_cli("export", path, "--name", "rnn", "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)["data"]
    assert any("CuDNNLSTM (GPU-only) was mapped to LSTM" in n for n in data["notices"])
    assert {p["artifact"]: p["status"] for p in data["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}, data["parity"]
    golden = np.load(tmp_path / "models" / "rnn" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/out"], model.predict(golden["inputs/" + data_input(golden)], verbose=0), atol=1e-5)


def data_input(golden) -> str:
    return next(k.split("/", 1)[1] for k in golden.files if k.startswith("inputs/"))


def test_converted_file_that_does_not_run_is_not_shipped(tmp_path, keys):
    import keras

    # A real case: a float64 GELU converts to ONNX, but tf2onnx emits an `Erfc` node, which is no ONNX
    # operator, so onnxruntime refuses to load the file ("INVALID_GRAPH ... Erfc").
    x = keras.Input((4,), name="x", dtype="float64")
    model = keras.Model(x, keras.layers.Dense(3, activation="gelu", dtype="float64", name="y")(x))
    model.save(tmp_path / "f64.keras")
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "f64.keras", "--name", "f64", "--repo", repo, "--formats", "savedmodel,onnx",
                     "--sign-key", keys["private"], "--json")
    assert result.exit_code == 0, result.stderr
    parity = {p["artifact"]: p for p in json.loads(result.stdout)["data"]["parity"]}
    assert parity["savedmodel"]["status"] == "pass"
    assert parity["onnx"]["status"] == "failed"
    assert "model.onnx converted but does not run" in parity["onnx"]["error"] and "Erfc" in parity["onnx"]["error"]
    version = repo / "f64" / "1"
    assert not (version / "model.onnx").exists()
    manifest = json.loads((version / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"] if a["format"] == "onnx"] == []
    assert not any(f["path"] == "model.onnx" for a in manifest["artifacts"] for f in a["files"])
    recorded = next(p for p in manifest["parity"] if p["format"] == "onnx")
    assert recorded["status"] == "failed" and "left out of the version" in recorded["error"]
    verified = run_cli("verify", version, "--public-key", keys["public"])
    assert verified.exit_code == 0, verified.stderr

    strict = run_cli("export", tmp_path / "f64.keras", "--name", "f64", "--repo", repo, "--formats", "savedmodel,onnx", "--strict")
    assert strict.exit_code == 1
    assert "onnx could not be produced" in strict.stderr and "--strict" in strict.stderr
    assert sorted(p.name for p in (repo / "f64").iterdir()) == ["1"]
