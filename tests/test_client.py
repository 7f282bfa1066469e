"""The TF-free client: wire compatibility, codec, validate/compare/bench against a real local engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ROOT, copy_repo, free_port, run_cli
from engine_helpers import self_signed, start_engine

# --- wire compatibility ---------------------------------------------------------------------------

def _official(full_name: str) -> Any:
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
    assert "<title>tfship validate digits: PASS</title>" in html and 'data-output="probabilities"' in html
    # Served bit for bit as the original computed (this machine) or within tolerance (another TF build):
    # either way the report says which, and lists worst elements only when there are errors.
    if envelope["data"]["outputs"][0]["max_abs"] == 0:
        assert "Exact match" in html and "Worst elements" not in html
    else:
        assert "<svg" in html and "Worst elements" in html
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
    # The tensor bytes per request (one 8x8x1 float32 digit a sample) and per second, as bench/serving.py reports them.
    assert all(r["payload_bytes"] == 8 * 8 * 4 * r["batch_size"] for r in runs)
    assert all(r["payload_bytes_per_s"] == pytest.approx(r["payload_bytes"] * r["throughput_rps"]) for r in runs)
    assert "<svg" in (tmp_path / "b" / "bench.html").read_text()
    table = run_cli("bench", "--target", engine_repo["target"], "--model", "digits", "--concurrency", "1", "--duration", "0.3")
    assert table.exit_code == 0 and "digits at" in table.stdout, table.stderr


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a state with a deadline (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:g}s"
        pause.wait(0.02)


def test_retries_survive_a_server_restart(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    port = free_port()
    first = LocalEngine([ModelConfig("digits", repo / "digits")], grpc_port=port, rest_port=None).start()
    images = np.load(repo / "digits" / "1" / "golden.npz")["inputs/image"][:1]
    client = ServingClient(f"127.0.0.1:{port}", timeout=30)
    second = None
    try:
        assert client.predict({"image": images}, "digits")["probabilities"].shape == (1, 10)
        first.stop(grace=0)
        with futures.ThreadPoolExecutor(1) as pool:
            # Issued while the server is down: the call waits for a connection within its deadline...
            pending = pool.submit(client.predict, {"image": images}, "digits")
            _wait_until(lambda: client.connectivity is grpc.ChannelConnectivity.TRANSIENT_FAILURE, 20,
                        "the client trying to reconnect to the stopped server")
            assert not pending.done()
            # ...and is answered once the server is back on the same port.
            second = LocalEngine([ModelConfig("digits", repo / "digits")], grpc_port=port, rest_port=None).start()
            assert pending.result(timeout=30)["probabilities"].shape == (1, 10)
    finally:
        client.close()
        if second is not None:
            second.stop(grace=0)


class CountingPredictionService:
    """A real gRPC PredictionService on loopback (TF Serving's official stubs) that records every call
    and answers each one with UNAVAILABLE, or with a fixed output and version."""

    def __init__(self, *, unavailable: bool) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.unavailable = unavailable
        self.requests: list = []
        self._lock = threading.Lock()
        servicer = type("Servicer", (prediction_service_pb2_grpc.PredictionServiceServicer,), {"Predict": self._predict})()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _predict(self, request, context):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        with self._lock:
            self.requests.append(request)
        if self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining for a restart")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        for name in list(request.output_filter) or ["y", "z"]:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(np.array([[1.5, 2.5]], dtype=np.float32)))
        return response

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def counting_service():
    services = []

    def make(*, unavailable: bool) -> CountingPredictionService:
        services.append(CountingPredictionService(unavailable=unavailable))
        return services[-1]

    yield make
    for service in services:
        service.stop()


@pytest.mark.parametrize("retries", [0, 1, 4])
def test_unavailable_is_tried_exactly_retries_plus_one_times(counting_service, retries):
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable

    service = counting_service(unavailable=True)
    with ServingClient(f"127.0.0.1:{service.port}", timeout=20, retries=retries) as client, \
            pytest.raises(ServerUnavailable) as raised:
        client.predict({"x": np.zeros((1, 2), np.float32)}, "m")
    assert service.calls == retries + 1
    assert raised.value.code == "UNAVAILABLE" and raised.value.exit_code == 4
    assert "draining for a restart" in raised.value.message


def test_retries_are_bounded_by_what_grpc_allows():
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import UsageError

    with pytest.raises(UsageError, match=r"retries=5: expected 0 to 4"):
        ServingClient("127.0.0.1:1", retries=5)


def test_retries_zero_fails_at_once_when_nothing_listens():
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable

    began = time.monotonic()
    with ServingClient(f"127.0.0.1:{free_port()}", timeout=20, retries=0) as client, pytest.raises(ServerUnavailable) as raised:
        client.status("digits")
    assert time.monotonic() - began < 10  # one attempt, not a wait for the 20 s deadline
    assert raised.value.code == "UNAVAILABLE" and "Connection refused" in raised.value.message


def test_predict_sends_output_filter_and_reports_the_answering_version(counting_service):
    from tfship.client.grpc_client import ServingClient

    service = counting_service(unavailable=False)
    with ServingClient(f"127.0.0.1:{service.port}", timeout=20) as client:
        prediction = client.predict({"x": np.zeros((1, 2), np.float32)}, "m", label="stable", output_filter=["y"])
    assert list(service.requests[0].output_filter) == ["y"] and service.requests[0].model_spec.version_label == "stable"
    assert prediction.version == 7 and list(prediction) == ["y"]
    np.testing.assert_array_equal(prediction["y"], [[1.5, 2.5]])


def test_client_tls_and_mtls(signed_repo, tmp_path):
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable
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
        # Without a client certificate the server refuses the TLS handshake: no connection is ever made.
        with ServingClient(f"localhost:{engine.grpc_port}", root_certificates=cert.read_bytes(), timeout=3, retries=0) as no_cert, \
                pytest.raises(ServerUnavailable) as refused:
            no_cert.status("digits")
        assert refused.value.code == "UNAVAILABLE" and refused.value.exit_code == 4, refused.value.message
        # gRPC says only "handshake failed" (or, while retrying, that the deadline passed): the client names the cause.
        cause = "the server closed the connection after the handshake: it requires a client certificate (mTLS)"
        assert cause in refused.value.message
        with ServingClient(f"localhost:{engine.grpc_port}", root_certificates=cert.read_bytes(), timeout=3) as no_cert, \
                pytest.raises(ServerUnavailable) as unreachable:
            no_cert.status("digits")
        assert unreachable.value.code == "DEADLINE_EXCEEDED" and cause in unreachable.value.message
    finally:
        engine.stop(grace=0)


def test_validate_refuses_golden_outputs_with_other_inputs(signed_repo, tmp_path):
    # The golden outputs were computed from the golden inputs: with other inputs they are not the expected answers.
    golden = signed_repo["repo"] / "digits" / "1" / "golden.npz"
    other = tmp_path / "other.npz"
    np.savez(other, image=np.ones((4, 8, 8, 1), np.float32))
    result = run_cli("validate", "--target", f"127.0.0.1:{free_port()}", "--model", "digits", "--golden", golden,
                     "--inputs", other, "--report", tmp_path / "report")
    assert result.exit_code == 2, result.stderr
    assert "--inputs goes with --original" in result.stderr and "--golden carries its own inputs" in result.stderr
    assert not (tmp_path / "report").exists()


def test_bad_inputs_files_are_refused_in_one_line(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    missing = run_cli("compare", "--target", target, "--model", "m", "--a", "1", "--b", "2", "--inputs", tmp_path / "nope.npz")
    assert missing.exit_code == 2 and f"--inputs {tmp_path / 'nope.npz'}: file not found" in missing.stderr
    (tmp_path / "text.npz").write_text("not numpy")
    unreadable = run_cli("bench", "--target", target, "--model", "m", "--inputs", tmp_path / "text.npz")
    assert unreadable.exit_code == 1 and "not a readable .npz file" in unreadable.stderr
    assert len(unreadable.stderr.strip().splitlines()) == 1
    np.savez(tmp_path / "ragged.npz", a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    ragged = run_cli("compare", "--target", target, "--model", "m", "--a", "1", "--b", "2", "--inputs", tmp_path / "ragged.npz")
    assert ragged.exit_code == 2 and "leading sample dimension of the same size" in ragged.stderr
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    pickled = run_cli("compare", "--target", target, "--model", "m", "--a", "1", "--b", "2", "--inputs", tmp_path / "objects.npz")
    assert pickled.exit_code == 1 and "not a readable .npz file" in pickled.stderr


def test_the_client_imports_without_tensorflow_or_ml_dtypes():
    """A release pipeline's small image: `import tfship.client` loads neither TensorFlow nor ml_dtypes (which alone
    takes most of a second); bfloat16 tensors still decode, ml_dtypes being imported when the first one comes."""
    import subprocess
    import sys

    probe = ("import sys, tfship.client; "
             "print(sorted(m for m in ('tensorflow', 'ml_dtypes') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
