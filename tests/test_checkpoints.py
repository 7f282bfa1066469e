"""Object-based checkpoints (``tf.train.Checkpoint(model=model).save(...)``) with ``--architecture``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from tfship.cli_export import COMMANDS as EXPORT_COMMANDS
from tfship.cli_inspect import COMMANDS as INSPECT_COMMANDS
from tfship.core.errors import ExportError


def run_json(*args: object) -> tuple[int, dict]:
    group = click.Group("tfship", commands={c.name: c for c in [*EXPORT_COMMANDS, *INSPECT_COMMANDS]})
    result = CliRunner().invoke(group, [str(a) for a in args] + ["--json"], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def keras3_model(units: int = 5):
    import keras

    keras.utils.set_random_seed(7)
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(units, activation="relu", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(3, name="scores")(hidden))


def tf_keras_model():
    import tf_keras

    tf_keras.utils.set_random_seed(7)
    return tf_keras.Sequential([tf_keras.Input((4,), name="x"), tf_keras.layers.Dense(6, activation="tanh"),
                                tf_keras.layers.Dense(2, name="scores")])


def save_checkpoint(model, folder: Path, saves: int = 1) -> tuple[str, Path]:
    """The guides' way: a Checkpoint that holds the model, saved (``saves`` times: ckpt-1, ckpt-2, ...)."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "arch.json").write_text(model.to_json())
    checkpoint = tf.train.Checkpoint(model=model)
    prefix = ""
    for _ in range(saves):
        prefix = checkpoint.save(str(folder / "ckpt"))
    return prefix, folder.parent / "arch.json"


def served_outputs(version: Path, inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    (value,) = signature(x=tf.constant(inputs)).values()
    return value.numpy()


INPUTS = np.random.default_rng(1).random((6, 4)).astype(np.float32)


@pytest.mark.slow  # two exports through the confined worker: about 20 s each here
@pytest.mark.parametrize("build", [keras3_model, tf_keras_model], ids=["keras3", "tf_keras"])
def test_export_a_checkpoint_prefix(build, tmp_path):
    model = build()
    prefix, arch = save_checkpoint(model, tmp_path / "ckpt")
    code, document = run_json("export", prefix, "--architecture", arch, "--name", "ck", "--repo", tmp_path / "models",
                              "--formats", "savedmodel")
    assert code == 0, document["errors"]
    version = tmp_path / "models" / "ck" / "1"
    # The oracle: the model the checkpoint was saved from, run by its own Keras.
    np.testing.assert_allclose(served_outputs(version, INPUTS), model.predict(INPUTS, verbose=0), atol=1e-6)


def test_a_checkpoint_directory_gives_its_latest_checkpoint(tmp_path):
    from tfship.exporter.architecture import load_weights_with_architecture, resolve_checkpoint

    model = keras3_model()
    folder = tmp_path / "ckpt"
    _, arch = save_checkpoint(model, folder, saves=2)
    assert resolve_checkpoint(folder) == folder / "ckpt-2"
    loaded = load_weights_with_architecture(folder, str(arch), {}, trust_code=False)
    assert "restored the latest checkpoint of" in loaded.notices[-1] and loaded.notices[-1].endswith("ckpt-2")
    np.testing.assert_allclose(loaded.predict({"x": INPUTS})["scores"], model.predict(INPUTS, verbose=0), atol=1e-6)
    code, document = run_json("inspect", folder)
    assert code == 0
    data = document["data"]
    assert data["format"] == "checkpoint" and "ckpt-2" in data["verdict"] and data["needs"] == ["--architecture"]
    assert data["checkpoint"]["model"] > 0


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    prefix, _ = save_checkpoint(keras3_model(units=5), tmp_path / "ckpt")
    other = tmp_path / "other.json"
    other.write_text(keras3_model(units=9).to_json())
    code, document = run_json("export", prefix, "--architecture", other, "--name", "ck", "--repo", tmp_path / "models",
                              "--formats", "savedmodel")
    assert code == 1
    (message,) = document["errors"]
    assert "the checkpoint does not fit the architecture" in message and "(4, 5)" in message and "(4, 9)" in message
    assert not (tmp_path / "models" / "ck" / "1").exists()


def test_a_checkpoint_without_the_models_objects_is_refused(tmp_path):
    import tensorflow as tf

    from tfship.exporter.architecture import load_weights_with_architecture

    model = keras3_model()
    (tmp_path / "arch.json").write_text(model.to_json())
    # A checkpoint of something else entirely: a counter and a lone variable.
    prefix = tf.train.Checkpoint(step=tf.Variable(3), table=tf.Variable(np.ones((2, 2), np.float32))).save(str(tmp_path / "c" / "x"))
    with pytest.raises(ExportError) as info:
        load_weights_with_architecture(Path(prefix), str(tmp_path / "arch.json"), {}, trust_code=False)
    assert "do not match the architecture" in info.value.message and "it was saved from another model" in info.value.message


def test_a_tf_keras_checkpoint_into_a_keras3_architecture_is_refused(tmp_path):
    from tfship.exporter.architecture import load_weights_with_architecture

    prefix, _ = save_checkpoint(tf_keras_model(), tmp_path / "ckpt")
    (tmp_path / "k3.json").write_text(keras3_model().to_json())
    with pytest.raises(ExportError) as info:
        load_weights_with_architecture(Path(prefix), str(tmp_path / "k3.json"), {}, trust_code=False)
    assert "do not match the architecture" in info.value.message


def test_a_directory_without_a_checkpoint_file(tmp_path):
    from tfship.exporter.architecture import resolve_checkpoint

    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="without a 'checkpoint' file"):
        resolve_checkpoint(tmp_path / "empty")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "checkpoint").write_text('model_checkpoint_path: "../elsewhere/ckpt-1"\n')
    with pytest.raises(ExportError, match="lies outside"):
        resolve_checkpoint(tmp_path / "escape")


@pytest.mark.slow  # one export through the confined worker
def test_export_a_checkpoint_directory_takes_its_latest_checkpoint(tmp_path):
    model = keras3_model()
    folder = tmp_path / "ckpt"
    _, arch = save_checkpoint(model, folder, saves=2)
    code, document = run_json("export", folder, "--architecture", arch, "--name", "ck", "--repo", tmp_path / "models",
                              "--formats", "savedmodel")
    assert code == 0, document["errors"]
    assert any("ckpt-2" in notice for notice in document["data"]["notices"])
    np.testing.assert_allclose(served_outputs(tmp_path / "models" / "ck" / "1", INPUTS), model.predict(INPUTS, verbose=0), atol=1e-6)


def test_a_checkpoint_directory_without_an_architecture_says_what_to_pass(tmp_path):
    save_checkpoint(keras3_model(), tmp_path / "ckpt")
    code, document = run_json("export", tmp_path / "ckpt", "--name", "ck", "--repo", tmp_path / "models")
    assert code == 2
    (message,) = document["errors"]
    assert "holds only weights" in message and "--architecture" in message
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("saved_model.pb"))
