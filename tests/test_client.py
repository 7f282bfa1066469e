"""The TF-free client: wire compatibility, codec, validate/compare/bench against a real local engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, copy_repo, free_port, run_cli
from engine_helpers import self_signed, start_engine

# --- wire compatibility ---------------------------------------------------------------------------

def _official(full_name: str):
    from google.protobuf import descriptor_pool
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2  # noqa: F401 (registers)

    return descriptor_pool.Default().FindMessageTypeByName(full_name)


MESSAGES = ["tensorflow.TensorShapeProto", "tensorflow.TensorProto", "tensorflow.TensorInfo", "tensorflow.SignatureDef",
            "tensorflow.serving.ModelSpec", "tensorflow.serving.PredictRequest", "tensorflow.serving.PredictResponse",
            "tensorflow.serving.SignatureDefMap", "tensorflow.serving.GetModelMetadataRequest",
            "tensorflow.serving.GetModelMetadataResponse", "tensorflow.serving.GetModelStatusRequest",
            "tensorflow.serving.ModelVersionStatus", "tensorflow.serving.GetModelStatusResponse", "tensorflow.serving.StatusProto"]


@pytest.mark.parametrize("full_name", MESSAGES)
def test_our_messages_match_the_official_fields(full_name):
    from tfship.core.protos import POOL

    ours = POOL.FindMessageTypeByName(full_name)
    theirs = _official(full_name)
    for field in ours.fields:
        official = theirs.fields_by_name.get(field.name)
        assert official is not None, f"{full_name}.{field.name} does not exist upstream"
        assert (field.number, field.type, field.is_repeated) == (official.number, official.type, official.is_repeated), field.name
        if field.message_type is not None:
            assert field.message_type.full_name.split(".")[-1] == official.message_type.full_name.split(".")[-1]
        if field.enum_type is not None:
            assert {v.name: v.number for v in field.enum_type.values}.items() <= {v.name: v.number for v in official.enum_type.values}.items()


def test_messages_round_trip_with_tensorflow_serving_api():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from tfship.core import protos
    from tfship.core.codec import to_ndarray, to_tensor_proto

    ours = protos.PredictRequest()
    ours.model_spec.name = "m"
    ours.model_spec.version_label = "stable"
    to_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3), ours.inputs["x"])
    ours.output_filter.append("y")
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.version_label == "stable" and list(theirs.output_filter) == ["y"]
    np.testing.assert_array_equal(tf.make_ndarray(theirs.inputs["x"]), np.arange(6, dtype=np.float32).reshape(2, 3))
    theirs.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2]], dtype=np.int64)))
    back = protos.PredictRequest.FromString(theirs.SerializeToString())
    np.testing.assert_array_equal(to_ndarray(back.inputs["z"]), [[1, 2]])


DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.bool_, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", DTYPES + ["bfloat16", "string"])
def test_codec_agrees_with_tensorflow_both_ways(dtype):
    import tensorflow as tf

    from tfship.core import protos
    from tfship.core.codec import to_ndarray, to_tensor_proto

    rng = np.random.default_rng(1)
    if dtype == "string":
        value = np.array([[b"a", b"\xffbin"], [b"", b"text"]], dtype=object)
    elif dtype == "bfloat16":
        import ml_dtypes

        value = rng.random((3, 4)).astype(ml_dtypes.bfloat16)
    elif np.dtype(dtype).kind == "c":
        value = (rng.random((3, 2)) + 1j * rng.random((3, 2))).astype(dtype)
    elif np.dtype(dtype).kind == "b":
        value = rng.integers(0, 2, (3, 5)).astype(bool)
    else:
        value = (rng.random((2, 3, 4)) * 100).astype(dtype)
    ours = to_tensor_proto(value)
    from_tf = tf.make_ndarray(tf.make_tensor_proto(value))  # noqa: F841 (tensorflow accepts the same value)
    decoded_by_tf = tf.make_ndarray(type(tf.make_tensor_proto(value)).FromString(ours.SerializeToString()))
    their_proto = protos.TensorProto.FromString(tf.make_tensor_proto(value).SerializeToString())
    decoded_by_us = to_ndarray(their_proto)
    for decoded in (decoded_by_tf, decoded_by_us):
        assert decoded.shape == value.shape
        if dtype == "string":
            assert decoded.tolist() == value.tolist()
        else:
            np.testing.assert_array_equal(np.asarray(decoded).astype(value.dtype), value)


def test_codec_pads_short_value_lists_like_tensorflow():
    from tfship.core import protos
    from tfship.core.codec import to_ndarray

    tensor = protos.TensorProto(dtype=1)
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=2)
    tensor.float_val.append(7.0)
    np.testing.assert_array_equal(to_ndarray(tensor), np.full((2, 2), 7.0, dtype=np.float32))


def test_client_never_imports_tensorflow(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, models=["digits"])
    try:
        script = f"""
import sys
from click.testing import CliRunner
from tfship.cli import cli
result = CliRunner().invoke(cli, ["validate", "--target", "127.0.0.1:{engine.grpc_port}", "--model", "digits",
                                  "--golden", r"{repo / 'digits' / '1' / 'golden.npz'}", "--version", "1"])
assert result.exit_code == 0, result.output
import tfship.client
assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow"))
print("ok")
"""
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "ok"
    finally:
        engine.stop(grace=0)


# --- validate, compare, bench ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_repo(signed_repo, keys, tmp_path_factory, digits_model):
    import keras

    from tfship.exporter import ExportOptions, export

    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("client") / "models")
    # Another model under the name "other": same signature, different weights (a wrong deploy).
    other = keras.models.clone_model(digits_model["model"])
    other.set_weights([w * 0.5 for w in digits_model["model"].get_weights()])
    path = tmp_path_factory.mktemp("other") / "other.keras"
    other.save(path)
    export(ExportOptions(source=path, name="digits", repo=repo, version=3, formats=("savedmodel",), sign_key=keys["private"],
                         samples=digits_model["samples"]))
    engine = start_engine(repo, public_key=keys["public"], labels={"stable": 1, "canary": 3}, models=["digits"])
    yield {"engine": engine, "repo": repo, "target": f"127.0.0.1:{engine.grpc_port}"}
    engine.stop(grace=0)


def test_validate_passes_on_a_good_deploy_with_report(engine_repo, tmp_path):
    golden = engine_repo["repo"] / "digits" / "1" / "golden.npz"
    result = run_cli("validate", "--target", engine_repo["target"], "--model", "digits", "--version", "1",
                     "--golden", golden, "--report", tmp_path / "report", "--json")
    assert result.exit_code == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["ok"] and envelope["exit_code"] == 0 and envelope["command"] == "validate"
    assert envelope["data"]["served_versions"] == [1] and envelope["data"]["samples"] == 128
    html = (tmp_path / "report" / "report.html").read_text()
    assert "PASS" in html and "<svg" in html and "probabilities" in html and "Worst elements" in html
    assert json.loads((tmp_path / "report" / "report.json").read_text())["passed"] is True


def test_validate_catches_a_wrong_model_with_exit_3(engine_repo):
    golden = engine_repo["repo"] / "digits" / "1" / "golden.npz"
    result = run_cli("validate", "--target", engine_repo["target"], "--model", "digits", "--label", "canary", "--golden", golden)
    assert result.exit_code == 3
    assert "does not predict what the original predicts" in result.stderr and "FAIL" in result.stdout
    report = run_cli("validate", "--target", engine_repo["target"], "--model", "digits", "--label", "canary", "--golden", golden, "--json")
    worst = json.loads(report.stdout)["data"]["outputs"][0]["worst_cases"]
    assert len(worst) == 5 and worst[0]["abs_error"] >= worst[-1]["abs_error"] > 0


def test_validate_reports_signature_mismatch_before_predicting(engine_repo, tmp_path):
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(engine_repo["repo"] / "digits" / "1", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["signature"]["inputs"][0]["shape"] = [None, 28, 28, 1]
    manifest["signature"]["outputs"][0]["name"] = "logits"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("validate", "--target", engine_repo["target"], "--model", "digits", "--golden", folder / "golden.npz", "--json")
    assert result.exit_code == 3
    problems = json.loads(result.stdout)["data"]["signature_problems"]
    assert "input 'image': shape (None, 8, 8, 1) served, (None, 28, 28, 1) expected" in problems
    assert "output 'logits' is missing from the served signature" in problems


def test_an_unreachable_server_fails_at_the_deadline(engine_repo):
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable

    began = time.monotonic()
    with ServingClient(f"127.0.0.1:{free_port()}", timeout=1.5) as client, pytest.raises(ServerUnavailable):
        client.status("digits")
    assert 1.0 <= time.monotonic() - began < 5


def test_validate_exit_4_when_nothing_listens_or_model_missing(engine_repo):
    golden = engine_repo["repo"] / "digits" / "1" / "golden.npz"
    nobody = run_cli("validate", "--target", f"127.0.0.1:{free_port()}", "--model", "digits", "--golden", golden, "--timeout", "3")
    assert nobody.exit_code == 4 and "not reachable" in nobody.stderr
    missing = run_cli("validate", "--target", engine_repo["target"], "--model", "nope", "--golden", golden)
    assert missing.exit_code == 4 and "Servable not found" in missing.stderr


def test_validate_with_original_model_and_inputs(engine_repo, digits_model):
    result = run_cli("validate", "--target", engine_repo["target"], "--model", "digits", "--version", "1",
                     "--original", digits_model["h5"], "--inputs", digits_model["samples"])
    assert result.exit_code == 0, result.stderr


def test_compare_canary_against_stable(engine_repo):
    golden = engine_repo["repo"] / "digits" / "1" / "golden.npz"
    same = run_cli("compare", "--target", engine_repo["target"], "--model", "digits", "--a", "stable", "--b", "2", "--inputs", golden, "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["data"]["agree"] is True
    differ = run_cli("compare", "--target", engine_repo["target"], "--model", "digits", "--a", "stable", "--b", "canary", "--inputs", golden, "--json")
    data = json.loads(differ.stdout)["data"]
    assert data["agree"] is False and data["a_version"] == 1 and data["b_version"] == 3
    assert data["outputs"][0]["max_abs"] > 1e-3


def test_bench_closed_and_open_loop(engine_repo, tmp_path):
    result = run_cli("bench", "--target", engine_repo["target"], "--model", "digits", "--concurrency", "1,4",
                     "--batch-size", "1,4", "--duration", "0.5", "--rate", "50", "--report", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr
    runs = json.loads(result.stdout)["data"]["runs"]
    assert {(r["mode"], r["concurrency"], r["batch_size"]) for r in runs} >= {("closed", 1, 1), ("closed", 4, 4), ("open@50/s", 0, 1)}
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in runs)
    assert "<svg" in (tmp_path / "b" / "bench.html").read_text()


def test_retries_survive_a_server_restart(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    port = free_port()
    first = LocalEngine([ModelConfig("digits", repo / "digits")], grpc_port=port, rest_port=None).start()
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:1]
    client = ServingClient(f"127.0.0.1:{port}", timeout=20)
    assert client.predict({"image": images}, "digits")["probabilities"].shape == (1, 10)
    first.stop(grace=0)
    holder = {}

    def restart():
        time.sleep(1.0)
        holder["engine"] = LocalEngine([ModelConfig("digits", repo / "digits")], grpc_port=port, rest_port=None).start()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        # Issued while the server is down: retried with backoff within the deadline, answered after the restart.
        began = time.monotonic()
        assert client.predict({"image": images}, "digits")["probabilities"].shape == (1, 10)
        assert time.monotonic() - began >= 0.9  # it really waited for the restart
    finally:
        thread.join()
        client.close()
        if "engine" in holder:
            holder["engine"].stop(grace=0)


def test_client_tls_and_mtls(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.local_engine import TlsOptions

    key, cert = self_signed(tmp_path / "server")
    client_key, client_cert = self_signed(tmp_path / "client", name="client")
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = start_engine(repo, tls=TlsOptions(key.read_bytes(), cert.read_bytes(), custom_ca=client_cert.read_bytes(),
                                               client_verify=True), models=["digits"])
    try:
        golden = repo / "digits" / "1" / "golden.npz"
        result = run_cli("validate", "--target", f"localhost:{engine.grpc_port}", "--model", "digits", "--golden", golden,
                         "--version", "1", "--root-certificates", cert, "--private-key", client_key, "--certificate-chain", client_cert)
        assert result.exit_code == 0, result.stderr
        with ServingClient(f"localhost:{engine.grpc_port}", root_certificates=cert.read_bytes(), timeout=3, retries=2) as no_cert:
            with pytest.raises(Exception):
                no_cert.status("digits")
    finally:
        engine.stop(grace=0)
