"""``tfship predict``: inputs through every artifact of a version (and the served model), side by side."""

from __future__ import annotations

import json
import shutil

import click
import numpy as np
import pytest
from click.testing import CliRunner
from test_inspect import build_tf1_savedmodel, write_lambda_h5

from tfship.cli_inspect import COMMANDS
from tfship.core.errors import UsageError
from tfship.exporter.expressions import evaluate, parse_assignment


def run(*args: object) -> tuple[int, str, str]:
    group = click.Group("tfship", commands={c.name: c for c in COMMANDS})
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "300"})
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: object) -> tuple[int, dict]:
    code, out, _ = run(*args, "--json")
    return code, json.loads(out)


def outputs_of(data: dict, artifact: str, name: str) -> np.ndarray:
    (found,) = [r for r in data["runs"] if r["artifact"] == artifact]
    assert not found["error"], found["error"]
    return np.asarray(found["outputs"][name]["values"], dtype=np.float32)


# --- a real exported version ---------------------------------------------------------------------------

def test_predict_runs_every_artifact_and_compares(signed_repo, digits_model, keys):
    version = signed_repo["repo"] / "digits" / "1"
    code, document = run_json("predict", version, "--inputs", digits_model["samples"], "--public-key", keys["public"])
    assert code == 0, document["errors"]
    data = document["data"]
    assert [r["artifact"] for r in data["runs"]] == ["savedmodel", "tflite", "tflite:float16", "tflite:int8", "onnx"]
    assert data["reference"] == "savedmodel" and data["passed"] and data["signing"]["verified"] is True
    assert data["inputs"] == {"image": {"dtype": "float32", "shape": [128, 8, 8, 1]}}
    # The oracle is the Keras model the version was exported from, run by Keras itself.
    expected = digits_model["model"].predict(digits_model["images"], verbose=0)
    np.testing.assert_allclose(outputs_of(data, "savedmodel", "probabilities"), expected, atol=1e-5)
    np.testing.assert_allclose(outputs_of(data, "onnx", "probabilities"), expected, atol=1e-4)
    differences = {(d["artifact"], d["output"]): d for d in data["differences"]}
    assert set(differences) == {(a, "probabilities") for a in ("tflite", "tflite:float16", "tflite:int8", "onnx")}
    onnx = differences[("onnx", "probabilities")]
    actual = np.abs(outputs_of(data, "onnx", "probabilities").astype(np.float64) - outputs_of(data, "savedmodel", "probabilities"))
    assert onnx["max_abs"] == pytest.approx(float(actual.max()), abs=1e-7) and onnx["passed"]
    assert differences[("tflite:int8", "probabilities")]["tolerance"] == "atol=0.1 rtol=0.1 top1>=0.99"


def test_predict_with_an_expression_prints_outputs_side_by_side(signed_repo, digits_model):
    version = signed_repo["repo"] / "digits" / "1"
    code, out, err = run("predict", version, "--input", "image=np.random.rand(3, 8, 8, 1)", "--format", "savedmodel,onnx")
    assert code == 0, err
    assert "output 'probabilities' [3, 10]" in out and "max |diff| vs savedmodel" in out
    assert "differences from savedmodel" in out and "onnx" in out and "tflite" not in out
    code, document = run_json("predict", version, "--input", "image=np.random.rand(3, 8, 8, 1)", "--format", "savedmodel")
    # The same text is the same array (a fixed seed), so the output is Keras' output on that array.
    seeded = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    expected = digits_model["model"].predict(seeded, verbose=0)
    np.testing.assert_allclose(outputs_of(document["data"], "savedmodel", "probabilities"), expected, atol=1e-5)
    assert document["data"]["differences"] == []


def test_predict_checks_the_signature_before_running(signed_repo, keys, tmp_path):
    version = tmp_path / "1"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", version)
    with (version / "model.tflite").open("ab") as handle:
        handle.write(b"\0")
    code, document = run_json("predict", version, "--input", "image=np.zeros((1,8,8,1))", "--public-key", keys["public"])
    assert code == 5 and document["data"] is None
    assert "signature not verified" in document["errors"][0] and "nothing was run" in document["errors"][0]


def test_predict_usage_errors(signed_repo, tmp_path):
    version = signed_repo["repo"] / "digits" / "1"
    code, document = run_json("predict", version)
    assert code == 2 and "--inputs X.npz, or --input NAME=EXPR" in document["errors"][0]
    code, document = run_json("predict", version, "--input", "image=np.ones((2, 8))")
    assert code == 2 and "input 'image' has shape [2, 8], the model expects (None, 8, 8, 1)" in document["errors"][0]
    code, document = run_json("predict", version, "--input", "image=np.ones((1,8,8,1))", "--format", "coreml")
    assert code == 2 and "--format coreml: choose from" in document["errors"][0]
    code, document = run_json("predict", signed_repo["repo"] / "digits" / "2", "--input", "image=np.ones((1,8,8,1))", "--format", "onnx")
    assert code == 2 and "no such artifact (it has: savedmodel)" in document["errors"][0]
    code, document = run_json("predict", version, "--input", "image=np.ones((1,8,8,1))", "--target", "127.0.0.1:1")
    assert code == 2 and "--target needs --model" in document["errors"][0]


def test_predict_asks_the_served_model_too(signed_repo, digits_model, tmp_path):
    from engine_helpers import start_engine

    repo = tmp_path / "models"
    shutil.copytree(signed_repo["repo"] / "digits" / "1", repo / "digits" / "1")
    engine = start_engine(repo, models=["digits"])
    try:
        code, document = run_json("predict", repo / "digits" / "1", "--inputs", digits_model["samples"], "--format", "savedmodel",
                                  "--target", f"127.0.0.1:{engine.grpc_port}", "--model", "digits")
    finally:
        engine.stop(grace=0)
    assert code == 0, document["errors"]
    data = document["data"]
    assert [r["artifact"] for r in data["runs"]] == ["savedmodel", "served"]
    assert data["runs"][1]["path"].endswith("digits version 1")
    np.testing.assert_allclose(outputs_of(data, "served", "probabilities"), outputs_of(data, "savedmodel", "probabilities"), atol=1e-5)
    (difference,) = data["differences"]
    assert difference["artifact"] == "served" and difference["passed"]


# --- a TF1 SavedModel, run directly ------------------------------------------------------------------------

def test_predict_on_a_tf1_savedmodel(tmp_path):
    folder, weights, bias = build_tf1_savedmodel(tmp_path / "tf1")
    code, document = run_json("predict", folder, "--input", "x=[[1, 2, 3], [0, -1, 0.5]]")
    assert code == 0, document["errors"]
    data = document["data"]
    assert data["version"] is None and [r["artifact"] for r in data["runs"]] == ["savedmodel"]
    x = np.array([[1, 2, 3], [0, -1, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(outputs_of(data, "savedmodel", "y"), x @ weights + bias, rtol=1e-6)
    code, document = run_json("predict", folder, "--input", "x=[[1, 2, 3]]", "--signature", "nope")
    assert code == 2 and "no signature 'nope'" in document["errors"][0] and "serving_default" in document["errors"][0]


# --- nothing runs from a source file or an expression -------------------------------------------------------

def test_predict_refuses_a_model_file_without_loading_it(tmp_path):
    marker = tmp_path / "marker"
    write_lambda_h5(tmp_path / "model.h5", marker)
    code, document = run_json("predict", tmp_path / "model.h5", "--input", "x=[[1.0, 2.0, 3.0]]")
    assert code == 2 and "export it first" in document["errors"][0]
    assert not marker.exists()


def test_predict_refuses_code_in_an_expression(signed_repo, tmp_path):
    marker = tmp_path / "marker"
    version = signed_repo["repo"] / "digits" / "1"
    code, document = run_json("predict", version, "--input", f"image=__import__('os').system('touch {marker}')")
    assert code == 2 and "not allowed here: \"__import__('os').system\"" in document["errors"][0] and not marker.exists()


@pytest.mark.parametrize("text, refused", [
    ("__import__('os')", "'__import__'"),
    ("np.load('/etc/passwd')", "'np.load'"),
    ("np.ones.__globals__", "np.ones.__globals__"),
    ("np.ones(2).tofile('x')", "np.ones(2).tofile"),
    ("lambda: 1", "lambda: 1"),
    ("[x for x in (1, 2)]", "[x for x in (1, 2)]"),
    ("open('x')", "'open'"),
    ("x", "the name 'x'"),
    ("np.random.seed(1)", "np.random.seed"),
    ("(1).__class__", "__class__"),
    ("[0] * 10", "[0] * 10"),
    ("2 ** 10", "2 ** 10"),
    ("{'a': 1}", "{'a': 1}"),
    ("np.ones((2,2))[0]", "np.ones((2,2))[0]"),
    ("np.array([1], dtype=float)", "the name 'float'"),
])
def test_expressions_refuse_everything_but_literals_and_constructors(text, refused):
    with pytest.raises(UsageError) as info:
        evaluate(text)
    assert refused in info.value.message and "not allowed" in info.value.message


def test_expressions_build_what_numpy_builds():
    assert evaluate("[[1, 2, 3]]").tolist() == [[1, 2, 3]]
    np.testing.assert_array_equal(evaluate("np.ones((2, 8))"), np.ones((2, 8)))
    np.testing.assert_array_equal(evaluate("numpy.zeros((2,), dtype='int32')"), np.zeros(2, np.int32))
    assert evaluate("numpy.zeros((2,), dtype='int32')").dtype == np.int32
    np.testing.assert_array_equal(evaluate("np.full((2, 2), 7.5)"), np.full((2, 2), 7.5))
    np.testing.assert_array_equal(evaluate("np.arange(6).reshape(2, 3).astype(np.float32)"),
                                  np.arange(6).reshape(2, 3).astype(np.float32))
    np.testing.assert_array_equal(evaluate("np.linspace(0, 1, 5)"), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(evaluate("-2 * np.eye(3) + 1"), -2 * np.eye(3) + 1)
    np.testing.assert_array_equal(evaluate("np.random.randn(2, 3)"), np.random.default_rng(0).standard_normal((2, 3)))
    np.testing.assert_array_equal(evaluate("np.random.randint(0, 10, size=(4,))"), np.random.default_rng(0).integers(0, 10, size=(4,)))
    np.testing.assert_array_equal(evaluate("np.random.rand(2, 2)"), evaluate("np.random.rand(2, 2)"))
    np.testing.assert_array_equal(evaluate("np.ones((2, 3)).T"), np.ones((3, 2)))
    assert evaluate("np.array([b'a', b'bc'])").tolist() == [b"a", b"bc"]
    assert parse_assignment(" image = np.ones((1, 2)) ")[0] == "image"


def test_expressions_bound_sizes_before_allocating():
    for text in ("np.ones((100000, 100000))", "np.arange(0, 1e12)", "np.linspace(0, 1, 10**3 * 10**9)",
                 "np.random.rand(100000, 100000)", "np.ones((1000, 1000)) * np.ones((1000, 1, 1000))"):
        with pytest.raises(UsageError) as info:
            evaluate(text)
        assert "more than" in info.value.message or "not allowed" in info.value.message
    with pytest.raises(UsageError, match="over 10000"):
        evaluate("[" + "1," * 6000 + "]")
    with pytest.raises(UsageError, match="expected NAME=EXPR"):
        parse_assignment("np.ones(3)")
