"""Diagnose names the first layer where a converted artifact diverges from the original.

The fault is injected for real: model A' is A with one layer's kernel perturbed, and the "artifact
route" converts A' (cut at the same layer) with the exporter's own TFLite/ONNX conversion, while the
reference is A. Only layers from the perturbed one on can differ, so diagnose must name it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner


def _build(keras):
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(image)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_c")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(image, out, name="chain")


@pytest.fixture(scope="module")
def chain():
    import keras

    keras.utils.set_random_seed(5)
    original = _build(keras)
    rng = np.random.default_rng(0)
    norm = original.get_layer("norm")
    norm.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype("float32") for w in norm.get_weights()])
    inputs = {"image": rng.uniform(0, 1, (16, 8, 8, 1)).astype("float32")}
    return original, inputs


def _faulty(keras, original, layer_name: str, delta: float):
    """A copy of ``original`` whose ``layer_name`` kernel is off by ``delta`` in one element."""
    copy = _build(keras)
    copy.set_weights(original.get_weights())
    layer = copy.get_layer(layer_name)
    kernel, *rest = layer.get_weights()
    kernel = kernel.copy()
    kernel.flat[0] += delta
    layer.set_weights([kernel, *rest])
    return copy


def _inject(route, faulty):
    """The artifact route, converting the faulty copy cut at the same layer as the model it is given."""
    from tfship.exporter.diagnose import Route, truncate

    def convert(model, workdir: Path) -> Path:
        cut_at = model.layers[-1].name
        return route.convert(faulty if cut_at == faulty.layers[-1].name else truncate(faulty, cut_at), workdir)

    return Route(route.label, convert, route.run)


@pytest.mark.parametrize("label, layer", [("tflite", "conv_c"), ("onnx", "conv_b")])
def test_diagnose_names_the_layer_with_the_injected_fault(chain, label, layer, tmp_path):
    import keras

    from tfship.core.tolerance import Tolerance
    from tfship.exporter.diagnose import diagnose, route_for

    original, inputs = chain
    route = _inject(route_for(label), _faulty(keras, original, layer, 0.5))
    result = diagnose(original, route, inputs, Tolerance(atol=1e-5, rtol=1e-5), tmp_path / "repro")
    assert not result.full.passed
    assert result.first_divergent is not None and result.first_divergent.name == layer, result.summary()
    assert result.first_divergent.class_name == "Conv2D" and result.first_divergent.max_abs > 1e-3
    assert result.before is not None and result.before.passed and result.before.max_abs < 1e-5
    names = [layer_.name for layer_ in original.layers]
    assert result.before.name == names[names.index(layer) - 1]
    assert len(result.checked) <= 5  # bisection over 7 layers, not one conversion per layer
    repro = result.reproduction
    assert repro is not None and (repro / "inputs.npz").exists() and (repro / "report.json").exists()
    converted = next(p for p in repro.iterdir() if p.name.startswith("truncated.") and p.suffix in (".tflite", ".onnx"))
    # The reproduction is minimal and standalone: the truncated original ends at the layer, and its file still fails.
    import keras as k

    truncated = k.saving.load_model(repro / "truncated.keras")
    assert truncated.layers[-1].name == layer
    with np.load(repro / "inputs.npz") as saved:
        feed = {name: saved[name] for name in saved.files}
    expected = np.asarray(truncated([feed["image"]]))
    actual = next(iter(route.run(converted, feed).values()))
    assert np.max(np.abs(actual - expected)) > 1e-3
    assert json.loads((repro / "report.json").read_text())["first_divergent"]["name"] == layer


def test_diagnose_of_an_honest_conversion_finds_nothing(chain, tmp_path):
    from tfship.core.tolerance import Tolerance
    from tfship.exporter.diagnose import diagnose, route_for

    original, inputs = chain
    result = diagnose(original, route_for("tflite"), inputs, Tolerance(atol=1e-5, rtol=1e-5), tmp_path / "repro")
    assert result.full.passed and result.first_divergent is None and result.reproduction is None
    assert "matches the original" in result.summary()
    assert not (tmp_path / "repro").exists()


@pytest.mark.slow
def test_diagnose_command_on_an_exported_version(digits_model, tmp_path):
    """A real export whose TFLite fails a (deliberately tight) tolerance: the command names where the error appears."""
    import click
    from rich.console import Console

    from tfship.cli_diagnose import COMMANDS, render_diagnoses
    from tfship.exporter import ExportOptions, export

    export(ExportOptions(source=digits_model["h5"], name="digits", repo=tmp_path / "models", formats=("savedmodel", "tflite"),
                         samples=digits_model["samples"], atol={"tflite": 0.0}, rtol={"tflite": 0.0}, allow_mismatch=True,
                         diagnose_dir=tmp_path / "at-export"))
    version = tmp_path / "models" / "digits" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert next(p for p in manifest["parity"] if p["format"] == "tflite")["status"] == "mismatch"
    group = click.Group("tfship", commands={c.name: c for c in COMMANDS})
    result = CliRunner().invoke(group, ["diagnose", str(version), "--out", str(tmp_path / "out"), "--json"], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    diagnosis = json.loads(result.stdout)["data"]["diagnoses"][0]
    assert diagnosis["artifact"] == "tflite" and diagnosis["first_divergent"]["class_name"] in {"Conv2D", "Flatten", "Dense"}
    assert Path(diagnosis["reproduction"], "truncated.tflite").exists()
    console = Console(record=True, width=100)
    render_diagnoses(console, [diagnosis])
    text = console.export_text()
    assert f"tflite: first diverges at layer {diagnosis['first_divergent']['index']} '{diagnosis['first_divergent']['name']}'" in text
    assert "error there:" in text and "before it:" in text and f"reproduction: {diagnosis['reproduction']}" in text

    missing = CliRunner().invoke(group, ["diagnose", str(version), "--artifact", "onnx"])
    assert missing.exit_code == 2 and "this version has tflite" in missing.output


def test_export_diagnoses_failing_artifacts_in_staging_and_moves_the_reproduction_out(chain, tmp_path):
    """What the export worker runs after parity (it may write only its staging folder), and what the parent moves out."""
    from tfship.exporter import manifest as mf
    from tfship.exporter.diagnose import STAGING_DIR, diagnose_export, move_reproductions

    original, inputs = chain
    staging = tmp_path / "staging"
    staging.mkdir()
    exact = {"atol": 0.0, "rtol": 0.0, "min_top1": None}
    parity = [mf.ArtifactParity("savedmodel", "float32", ".", "mismatch", tolerance=exact),
              mf.ArtifactParity("onnx", "float32", "model.onnx", "pass", tolerance=exact),
              mf.ArtifactParity("tflite", "float32", "model.tflite", "mismatch", "output 'probabilities': 1 element beyond", tolerance=exact)]
    results = diagnose_export(original, parity, inputs, staging)
    assert [d.artifact for d in results] == ["tflite"]  # only the converted artifact that failed
    found = results[0]
    assert found.first_divergent is not None and not found.first_divergent.passed
    assert found.first_divergent.max_abs > 0.0 and found.reproduction == Path("tflite")
    assert sorted(p.name for p in (staging / STAGING_DIR).iterdir()) == ["tflite"]  # no scratch left behind
    moved = move_reproductions(staging, tmp_path / "tfship-diagnose" / "chain-1")
    assert moved == tmp_path / "tfship-diagnose" / "chain-1" and not (staging / STAGING_DIR).exists()
    assert (moved / "tflite" / "truncated.tflite").exists() and (moved / "tflite" / "truncated.keras").exists()
    assert json.loads((moved / "tflite" / "report.json").read_text())["reproduction"] == "tflite"
    assert move_reproductions(staging, tmp_path / "elsewhere") is None and not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_export_that_fails_parity_names_where_it_diverges(digits_model, tmp_path):
    """tfship export bisects an artifact that fails parity on its own, and keeps the reproduction out of the version."""
    from tfship.cli_export import COMMANDS

    group = click_group(COMMANDS)
    base = ["export", str(digits_model["h5"]), "--name", "digits", "--repo", str(tmp_path / "models"), "--formats", "savedmodel,tflite",
            "--samples", str(digits_model["samples"]), "--atol", "tflite=0", "--rtol", "tflite=0", "--json"]
    refused = CliRunner().invoke(group, [*base, "--diagnose-dir", str(tmp_path / "refused")], catch_exceptions=False)
    assert refused.exit_code == 3, refused.output
    (message,) = json.loads(refused.stdout)["errors"]
    assert "tflite: first diverges at layer" in message and f"reproduction in {tmp_path / 'refused' / 'tflite'}" in message
    assert (tmp_path / "refused" / "tflite" / "truncated.tflite").exists()
    assert not (tmp_path / "models" / "digits" / "1").exists()

    kept = CliRunner().invoke(group, [*base, "--allow-mismatch", "--diagnose-dir", str(tmp_path / "kept")], catch_exceptions=False)
    assert kept.exit_code == 0, kept.output
    (entry,) = json.loads(kept.stdout)["data"]["diagnoses"]
    assert entry["artifact"] == "tflite" and entry["reproduction"] == str(tmp_path / "kept" / "tflite")
    version = tmp_path / "models" / "digits" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["diagnoses"][0]["first_divergent"]["class_name"] and manifest["diagnoses"][0]["reproduction"] == entry["reproduction"]
    assert not any(p.name == ".diagnose" for p in version.rglob("*"))


def click_group(commands):
    import click

    return click.Group("tfship", commands={c.name: c for c in commands})
