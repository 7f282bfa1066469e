"""Model files are attack input; bad files get one clear line; a killed export leaves nothing visible."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, shared_model

SM_ONLY = ("--formats", "savedmodel")


def _errors(result) -> list[str]:
    """The error lines (progress lines on stderr start with 'export:')."""
    return [line for line in result.stderr.strip().splitlines() if "error:" in line]


def _no_version(repo: Path, name: str) -> bool:
    folder = repo / name
    return not folder.exists() or not any(p.name.isdigit() for p in folder.iterdir())


def test_lambda_in_keras_file_is_refused(tmp_path):
    import keras

    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2, name="doubler")(x))
    model.save(tmp_path / "lam.keras")
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "lam.keras", "--name", "lam", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 1
    assert "doubler" in result.stderr and "Lambda" in result.stderr
    assert "--trust-code" in result.stderr and "--architecture" in result.stderr
    assert len(_errors(result)) == 1
    assert _no_version(repo, "lam")
    trusted = run_cli("export", tmp_path / "lam.keras", "--name", "lam", "--repo", repo, "--trust-code", *SM_ONLY)
    assert trusted.exit_code == 0, trusted.stderr
    golden = np.load(repo / "lam" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/doubler"], golden["inputs/x"] * 2, atol=1e-6)


def test_lambda_in_h5_never_runs_without_trust_code(tmp_path):
    import tf_keras

    marker = tmp_path / "code-ran"
    # The Lambda's body writes a file: proof of whether the file's code ran.
    body = eval(f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]")
    model = tf_keras.Sequential([tf_keras.layers.Lambda(body, input_shape=(2,), name="evil")])
    model.save(tmp_path / "evil.h5", save_format="h5")
    marker.unlink()
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "evil.h5", "--name", "evil", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 1
    assert "evil" in result.stderr and "--trust-code" in result.stderr
    assert not marker.exists(), "the Lambda's code ran although the file was refused"
    assert _no_version(repo, "evil")
    # The same file trusted, loaded in-process (the export worker would confine the write): the code runs,
    # so the marker above would have caught a check that let it through.
    from tfship.exporter.sources import load_source

    load_source(tmp_path / "evil.h5", trust_code=True)  # tf_keras calls the Lambda while it rebuilds the model
    assert marker.exists()


@pytest.mark.parametrize("case", ["truncated_h5", "text_as_h5", "missing", "bad_zip", "not_a_model_json"])
def test_bad_files_get_one_clear_line_and_nothing_written(case, digits_model, tmp_path):
    source = tmp_path / {"truncated_h5": "m.h5", "text_as_h5": "notes.h5", "missing": "nope.h5",
                         "bad_zip": "m.keras", "not_a_model_json": "m.keras"}[case]
    if case == "truncated_h5":
        data = digits_model["h5"].read_bytes()
        source.write_bytes(data[: len(data) // 3])
    elif case == "text_as_h5":
        source.write_text("these are my notes, not a model\n")
    elif case == "bad_zip":
        data = digits_model["keras"].read_bytes()
        source.write_bytes(data[: len(data) // 2])
    elif case == "not_a_model_json":
        import zipfile

        with zipfile.ZipFile(source, "w") as archive:
            archive.writestr("config.json", json.dumps({"hello": "world"}))
    repo = tmp_path / "models"
    result = run_cli("export", source, "--name", "m", "--repo", repo)
    assert result.exit_code == 1, result.stderr
    lines = _errors(result)
    assert len(lines) == 1 and str(source) in lines[0] and "Traceback" not in result.stderr
    assert _no_version(repo, "m")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    import keras

    small = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    big = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(7)])
    (tmp_path / "arch.json").write_text(big.to_json())
    small.save_weights(tmp_path / "small.weights.h5")
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "small.weights.h5", "--architecture", tmp_path / "arch.json", "--name", "w", "--repo", repo)
    assert result.exit_code == 1
    assert "do not fit the architecture" in result.stderr and len(_errors(result)) == 1
    assert _no_version(repo, "w")


def test_weights_only_h5_without_architecture_says_what_to_do(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    model.save_weights(tmp_path / "w.weights.h5")
    result = run_cli("export", tmp_path / "w.weights.h5", "--name", "w", "--repo", tmp_path / "models")
    assert result.exit_code == 2 and "--architecture" in result.stderr


def test_kill_9_during_export_leaves_no_version(digits_model, tmp_path):
    repo = tmp_path / "models"
    process = subprocess.Popen([sys.executable, "-m", "tfship", "export", str(digits_model["h5"]), "--name", "k",
                                "--repo", str(repo)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        written = []
        while time.monotonic() < deadline and not written and process.poll() is None:
            if (repo / "k").exists():  # wait until the export is in the middle of writing artifacts
                written = [p for p in (repo / "k").glob(".tfship-tmp-*/saved_model.pb")]
            time.sleep(0.05)  # polling interval of a bounded wait on a file appearing
        assert written, "the export never started writing artifacts"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert _no_version(repo, "k")
    result = run_cli("export", digits_model["keras"], "--name", "k", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 0
    assert sorted(p.name for p in (repo / "k").iterdir()) == ["1"]  # the killed export's leftovers are gone


# --- the real-world files in ../shared/models -----------------------------------------------------

def test_shared_carnd_lambda_h5_is_refused_and_exports_from_code(tmp_path):
    source = shared_model("carnd_lambda_h5", "model.h5")
    repo = tmp_path / "models"
    refused = run_cli("export", source, "--name", "carnd", "--repo", repo)
    assert refused.exit_code == 1
    assert "lambda_1" in refused.stderr and "--architecture" in refused.stderr
    trusted = run_cli("export", source, "--name", "carnd", "--repo", repo, "--trust-code")
    assert trusted.exit_code == 1
    assert "written by another Python version" in trusted.stderr and "Traceback" not in trusted.stderr
    assert _no_version(repo, "carnd")
    rebuilt = run_cli("export", source, "--architecture", f"{ROOT / 'examples' / 'pilotnet_architecture.py'}:build",
                      "--name", "carnd", "--repo", repo, "--json")
    assert rebuilt.exit_code == 0, rebuilt.stderr
    data = json.loads(rebuilt.stdout)["data"]
    assert {p["artifact"]: p["status"] for p in data["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}
    # The weights came from the file: the rebuilt model computes the original's x/127.5-1 normalization.
    import h5py

    golden = np.load(repo / "carnd" / "1" / "golden.npz")
    with h5py.File(source) as f:
        bias = f["model_weights"]["dense_4"]["dense_4"]["bias:0"][()]
    assert golden["outputs/steering"].shape == (32, 1)
    assert not np.allclose(golden["outputs/steering"], bias)  # not an untrained head


def test_shared_creditcard_weights_and_pre_2_2_json(tmp_path):
    folder = shared_model("creditcard_weights_json")
    result = run_cli("export", folder / "model.h5", "--architecture", folder / "model.json", "--name", "fraud",
                     "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert all(p["status"] == "pass" for p in data["parity"])
    golden = np.load(tmp_path / "models" / "fraud" / "1" / "golden.npz")
    outputs = next(golden[k] for k in golden.files if k.startswith("outputs/"))
    assert outputs.shape == (32, 1) and ((outputs >= 0) & (outputs <= 1)).all()  # sigmoid


def test_shared_retail_transformer_keras(tmp_path):
    source = shared_model("retail_transformer_keras", "transformer_model.keras")
    result = run_cli("export", source, "--name", "retail", "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    assert {p["artifact"]: p["status"] for p in data["parity"]} == {"savedmodel": "pass", "tflite": "pass", "onnx": "pass"}


def test_shared_cloudml_legacy_savedmodel(tmp_path):
    source = shared_model("cloudml_multi_savedmodel", "saved_model")
    result = run_cli("export", source, "--name", "cloudml", "--repo", tmp_path / "models", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "models" / "cloudml" / "1" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["signature"]["inputs"]] == ["input1", "input2"]
    assert [s["name"] for s in manifest["signature"]["outputs"]] == ["output1", "output2"]
    golden = np.load(tmp_path / "models" / "cloudml" / "1" / "golden.npz")
    np.testing.assert_allclose(golden["outputs/output1"], golden["inputs/input1"] + golden["inputs/input2"], rtol=1e-6)


def test_savedmodel_that_writes_files_is_refused(tmp_path):
    import tensorflow as tf

    marker = tmp_path / "written-by-the-model"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
            return {"y": x * 2}

    module = Writer()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    repo = tmp_path / "models"
    result = run_cli("export", tmp_path / "sm", "--name", "w", "--repo", repo, *SM_ONLY)
    assert result.exit_code == 1
    assert "WriteFile" in result.stderr and "--trust-code" in result.stderr
    assert not marker.exists() and _no_version(repo, "w")
    from tfship.exporter.sources import load_source

    trusted = load_source(tmp_path / "sm", trust_code=True)  # in-process: no export worker confines it
    trusted.predict({"x": np.ones(3, "float32")})
    assert marker.exists()  # what the refusal prevented


def test_tf_op_lambda_reaching_files_is_refused(tmp_path):
    import tf_keras

    inputs = tf_keras.Input((2,), name="x")
    outputs = tf_keras.layers.Dense(1)(inputs)
    model = tf_keras.Model(inputs, outputs)
    model.save(tmp_path / "ok.h5", save_format="h5")
    import h5py

    with h5py.File(tmp_path / "ok.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"].append({"class_name": "TFOpLambda", "name": "tf.io.write_file",
                                           "config": {"name": "tf.io.write_file", "function": "io.write_file"},
                                           "inbound_nodes": []})
        f.attrs["model_config"] = json.dumps(config)
    result = run_cli("export", tmp_path / "ok.h5", "--name", "t", "--repo", tmp_path / "models")
    assert result.exit_code == 1 and "tf.io.write_file" in result.stderr and "--trust-code" in result.stderr
