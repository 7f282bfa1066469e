"""The local engine as a drop-in ``tensorflow_model_server``: TF Serving's rules, checked on real servers.

Where a test states TF Serving's behaviour, the source is named next to it (tensorflow_serving/...).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import free_port, run_cli
from engine_helpers import wait_until

from tfship.serving.model_server import ConfigFilePoller, ServerFlags, build_engine


def _save_half_plus_two(path: Path) -> None:
    """An element-wise TF2 model (y = 0.5 x + 2) whose signature declares x as [-1, 1]."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 0.5 * x + 2.0}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _save_matmul(path: Path) -> None:
    """A model that needs x of [-1, 3]: its MatMul fails on any other inner size."""
    import tensorflow as tf

    class MatMul(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(x, tf.ones([3, 2]))}

    module = MatMul()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropin")
    _save_half_plus_two(root / "half" / "00000123")
    _save_matmul(root / "matmul" / "1")
    return root


def _config_text(entries: dict[str, Path]) -> str:
    body = "".join(f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }} ' for name, path in entries.items())
    return f"model_config_list {{ {body}}}\n"


def _predict(port: int, model: str, x: np.ndarray, *, target: str | None = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(target or f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return response, tf.make_ndarray(response.outputs["y"])


def _health(port: int, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _engine(tmp_path: Path, entries: dict[str, Path], **flags):
    config = tmp_path / "models.config"
    config.write_text(_config_text(entries))
    values = {"port": free_port(), "rest_api_port": free_port(), "model_config_file": config, "tfship_host": "127.0.0.1",
              "file_system_poll_wait_seconds": 0, "max_num_load_retries": 0, **flags}
    engine = build_engine(ServerFlags(**values).check())
    return engine.start(), config


def test_zero_padded_version_directories_load_and_report_their_number(models, tmp_path):
    # file_system_storage_path_source.cc ParseVersionNumber: strings::safe_strto64 on the directory name,
    # so "00000123" is version 123 and the path served is the directory as it is named.
    engine, _ = _engine(tmp_path, {"half": models / "half"})
    try:
        response, y = _predict(engine.grpc_port, "half", np.array([[2.0], [4.0]], np.float32))
        assert response.model_spec.version.value == 123
        np.testing.assert_allclose(y, [[3.0], [4.0]])
        status, body = _get(f"http://127.0.0.1:{engine.rest_port}/v1/models/half/versions/123")
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        engine.stop(grace=1)


def test_shapes_the_model_accepts_are_served_and_shapes_it_rejects_are_explained(models, tmp_path):
    engine, _ = _engine(tmp_path, {"half": models / "half", "matmul": models / "matmul"})
    try:
        # x of shape [2] against a signature of [-1, 1]: the graph is element-wise and TF Serving serves it
        # (its predict_util.cc feeds the tensor as sent; only the model's own kernels check shapes).
        _, y = _predict(engine.grpc_port, "half", np.array([2.0, 4.0], np.float32))
        np.testing.assert_allclose(y, [3.0, 4.0])
        # REST alike: a row format instance of one value each.
        request = urllib.request.Request(f"http://127.0.0.1:{engine.rest_port}/v1/models/half:predict",
                                         data=json.dumps({"instances": [2.0, 4.0]}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["predictions"] == [3.0, 4.0]
        # The MatMul cannot take [1, 2]: INVALID_ARGUMENT, in words that name the input and both shapes.
        with pytest.raises(grpc.RpcError) as caught:
            _predict(engine.grpc_port, "matmul", np.array([[1.0, 2.0]], np.float32))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "input 'x' has shape [1, 2] but the signature expects [-1, 3] (-1: any size)"
    finally:
        engine.stop(grace=1)


def test_health_and_ready_follow_a_load_a_failed_load_and_a_reload(models, tmp_path):
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    engine, config = _engine(tmp_path, {"half": models / "half", "broken": broken},
                             enable_grpc_healthcheck_service=True, model_config_file_poll_wait_seconds=1)
    poller = ConfigFilePoller(engine, config, 1).start()
    ready_url = f"http://127.0.0.1:{engine.rest_port}/v1/ready"
    try:
        # One model AVAILABLE, one whose only version failed: the server is not ready, and says why.
        assert _health(engine.grpc_port, "half") == "SERVING"
        assert _health(engine.grpc_port, "broken") == "NOT_SERVING"
        assert _health(engine.grpc_port) == "NOT_SERVING"
        assert _health(engine.grpc_port, "no-such-model") == "NOT_FOUND"
        status, body = _get(ready_url)
        assert status == 503 and body["ready"] is False
        assert body["models"]["half"] == {"ready": True}
        assert "version 1 is END" in body["models"]["broken"]["reason"]
        assert _get(f"http://127.0.0.1:{engine.rest_port}/v1/live")[0] == 200
        # The config file drops the broken model: the poller reloads, and everything is SERVING.
        config.write_text(_config_text({"half": models / "half"}))
        wait_until(lambda: _health(engine.grpc_port) == "SERVING", 30, "overall health SERVING after the reload")
        status, body = _get(ready_url)
        assert status == 200 and body == {"ready": True, "draining": False, "models": {"half": {"ready": True}}}
        assert _health(engine.grpc_port, "tensorflow.serving.PredictionService") == "SERVING"
        assert _health(engine.grpc_port, "broken") == "SERVICE_UNKNOWN"
    finally:
        poller.stop()
        engine.stop(grace=1)


def test_config_file_polling_adds_and_removes_models_and_zero_means_never(models, tmp_path):
    engine, config = _engine(tmp_path, {"half": models / "half"})
    poller = ConfigFilePoller(engine, config, 1).start()
    try:
        config.write_text(_config_text({"half": models / "half", "matmul": models / "matmul"}))
        wait_until(lambda: engine.core.manager.readiness().get("matmul", "missing") is None, 60, "matmul loaded from the changed file")
        _predict(engine.grpc_port, "matmul", np.ones((1, 3), np.float32))
        config.write_text(_config_text({"matmul": models / "matmul"}))
        wait_until(lambda: "half" not in engine.core.manager.model_names(), 30, "half removed")
        with pytest.raises(grpc.RpcError) as caught:
            _predict(engine.grpc_port, "half", np.ones((1, 1), np.float32))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # model_server_config.proto / main.cc: "Servable not found for request: Latest(NAME)"
        assert caught.value.details() == "Servable not found for request: Latest(half)"
        # A file that no longer parses is logged and the running models stay (server.cc keeps the old config).
        config.write_text("model_config_list { config { name: ")
        time.sleep(2.5)
        assert engine.core.manager.model_names() == ["matmul"]
    finally:
        poller.stop()
        engine.stop(grace=1)


@pytest.mark.slow
def test_the_command_takes_tf_serving_flags_and_serves_on_a_unix_socket(models, tmp_path):
    """One real ``tfship model-server`` process with TF Serving's flags; main.cc's semantics for each."""
    socket_path = tmp_path / "tfs.sock"
    config = tmp_path / "models.config"
    # model_config_file_poll_wait_seconds=0: read once; later edits are never applied (main.cc).
    config.write_text(_config_text({"half": models / "half"}))
    grpc_port, rest_port = free_port(), free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "tfship", "model-server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
               f"--grpc_socket_path={socket_path}", f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0",
               "--file_system_poll_wait_seconds=1", "--saved_model_tags=serve", "--rest_api_timeout_in_ms=20000",
               "--rest_api_num_threads=2", "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
               "--grpc_max_threads=16", "--enable_model_warmup=true", "--num_request_iterations_for_warmup=2",
               "--enable_grpc_healthcheck_service", "--enable_signature_method_name_check=false",
               "--max_num_load_retries=0", "--load_retry_interval_micros=0", "--tensorflow_intra_op_parallelism=1",
               # main.cc's flag is an int64 that TF Serving puts in the SessionConfig as is; negative: DirectSession
               # runs each call's ops on the calling thread.
               "--tensorflow_inter_op_parallelism=-1", "--xla_cpu_compilation_enabled=true",
               "--per_process_gpu_memory_fraction=0.5", "--tfship_drain_seconds=5"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "TFSHIP_PUBLIC_KEY": ""})
    try:
        wait_until(lambda: process.poll() is not None or _health(grpc_port) == "SERVING", 120,
                   "the server's health SERVING")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        _, y = _predict(0, "half", np.array([[6.0]], np.float32), target=f"unix:{socket_path}")
        np.testing.assert_allclose(y, [[5.0]])
        _, y = _predict(grpc_port, "half", np.array([[6.0]], np.float32))
        np.testing.assert_allclose(y, [[5.0]])
        config.write_text(_config_text({"half": models / "half", "matmul": models / "matmul"}))
        time.sleep(2.5)
        status, body = _get(f"http://127.0.0.1:{rest_port}/v1/ready")
        assert status == 200 and list(body["models"]) == ["half"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    for flag in ("--xla_cpu_compilation_enabled", "--per_process_gpu_memory_fraction"):
        assert text.count(f"{flag} has no meaning for tfship's engine") == 1, text[-3000:]


def test_version_and_tf_serving_words_for_bad_input(tmp_path):
    # main.cc --version: "TensorFlow ModelServer: ..." then "TensorFlow Library: ..."
    result = run_cli("model-server", "--version")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TensorFlow ModelServer: tfship ") and lines[1].startswith("TensorFlow Library: 2.")
    # A config file that does not parse: protobuf's text-format message as tensorflow_model_server logs it.
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { nme: 'x' } }\n")
    result = run_cli("model-server", f"--model_config_file={config}", f"--port={free_port()}")
    assert result.exit_code == 1
    assert result.stderr.count("\n") <= 2, result.stderr
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:30:" in result.stderr
    assert 'has no field named "nme"' in result.stderr and str(config) in result.stderr
    # --grpc_socket_path with --port=0: gRPC on the socket alone is allowed; neither is an error (server.cc).
    result = run_cli("model-server", "--port=0", "--model_base_path=/x")
    assert result.exit_code == 2
    assert "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set" in result.stderr


def test_rest_requests_that_outlast_rest_api_timeout_in_ms_get_deadline_exceeded(models, tmp_path):
    # A batch that waits 3 s for company (batch_timeout_micros) outlasts a 300 ms REST timeout; TF Serving
    # runs REST calls with RunOptions.timeout_in_ms = --rest_api_timeout_in_ms (http_rest_api_handler.cc).
    parameters = tmp_path / "batching.txt"
    parameters.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 3000000 }\nnum_batch_threads { value: 1 }\n")
    engine, _ = _engine(tmp_path, {"half": models / "half"}, enable_batching=True, batching_parameters_file=parameters,
                        rest_api_timeout_in_ms=300)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{engine.rest_port}/v1/models/half:predict",
                                         data=json.dumps({"instances": [[1.0]]}).encode(), method="POST")
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert time.monotonic() - started < 2.5
        assert caught.value.code == 504
        assert "--rest_api_timeout_in_ms (300 ms)" in json.loads(caught.value.read())["error"]
    finally:
        engine.stop(grace=1)


def test_per_model_batching_parameters_come_from_each_version_directory(models, tmp_path):
    import shutil

    # bundle_factory_util.cc GetPerModelBatchingParams: with the flag, a version's batching_params.pbtxt gives
    # its parameters; a version without one is not batched; the global file's parameters are ignored.
    half = tmp_path / "half"
    shutil.copytree(models / "half", half)
    (half / "00000123" / "batching_params.pbtxt").write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1500000 }\n")
    parameters = tmp_path / "global.txt"
    parameters.write_text("max_batch_size { value: 1 }\nbatch_timeout_micros { value: 0 }\n")
    engine, _ = _engine(tmp_path, {"half": half, "matmul": models / "matmul"}, enable_batching=True,
                        batching_parameters_file=parameters, enable_per_model_batching_parameters=True)
    try:
        started = time.monotonic()
        _predict(engine.grpc_port, "matmul", np.ones((2, 3), np.float32))  # not batched: no wait at all
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        # Two rows fit the per-model max_batch_size of 8 (the global 1 would refuse them) and wait for company.
        _, y = _predict(engine.grpc_port, "half", np.array([[2.0], [4.0]], np.float32))
        assert time.monotonic() - started >= 1.4
        np.testing.assert_allclose(y, [[3.0], [4.0]])
    finally:
        engine.stop(grace=1)


def test_metrics_are_served_at_the_monitoring_config_path(models, tmp_path):
    # monitoring_config.proto: prometheus_config { enable: true path: "..." }; the exporter serves there.
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics/tfs" }\n')
    engine, _ = _engine(tmp_path, {"half": models / "half"}, monitoring_config_file=monitoring)
    try:
        _predict(engine.grpc_port, "half", np.array([[1.0]], np.float32))
        with urllib.request.urlopen(f"http://127.0.0.1:{engine.rest_port}/metrics/tfs", timeout=10) as response:
            text = response.read().decode()
        assert ':tensorflow:serving:request_count{model_name="half",status="OK"} 1.0' in text
    finally:
        engine.stop(grace=1)


def test_require_golden_keeps_a_version_that_disagrees_with_its_golden_set_out_of_service(signed_repo, keys, tmp_path):
    """--require_golden: a re-signed version whose golden outputs disagree with what the model computes passes the
    signature gate, yet never becomes AVAILABLE: no health SERVING, no /v1/ready, no Predict."""
    import shutil

    from tfship.core.signing import sign

    repo = tmp_path / "models"
    shutil.copytree(signed_repo["repo"] / "digits" / "2", repo / "digits" / "2")
    shutil.copytree(signed_repo["repo"] / "digits" / "2", repo / "altered" / "2")
    golden = repo / "altered" / "2" / "golden.npz"
    arrays = dict(np.load(golden))
    arrays["outputs/probabilities"] = arrays["outputs/probabilities"][::-1].copy()  # the samples' answers, shuffled
    np.savez(golden, **arrays)
    # Re-signed by the key's holder without the export's attestation (which names the old golden set's digest).
    (repo / "altered" / "2" / "model.sig").unlink()
    (repo / "altered" / "2" / "attestation.intoto.jsonl").unlink()
    sign(repo / "altered" / "2", key=keys["private"])
    engine, _ = _engine(tmp_path, {"digits": repo / "digits", "altered": repo / "altered"}, require_golden=True,
                        tfship_public_key=keys["public"], enable_grpc_healthcheck_service=True)
    try:
        (digits,) = engine.core.manager.status("digits")
        assert digits.state == "AVAILABLE"
        (altered,) = engine.core.manager.status("altered")
        assert altered.state == "END" and altered.error_code == grpc.StatusCode.FAILED_PRECONDITION
        assert altered.error_message.startswith(f"--require_golden: the served model does not reproduce {golden}: "
                                                "output 'probabilities': ")
        assert _health(engine.grpc_port, "digits") == "SERVING"
        assert _health(engine.grpc_port, "altered") == "NOT_SERVING"
        status, body = _get(f"http://127.0.0.1:{engine.rest_port}/v1/ready")
        assert status == 503 and "does not reproduce" in body["models"]["altered"]["reason"]
    finally:
        engine.stop(grace=1)


def test_require_golden_replays_through_the_models_own_signature_when_it_has_no_serving_default(tmp_path):
    """A TF2 SavedModel lists its init op among its SignatureDefs (as TF Serving's metadata shows it), before or
    after the others; a version whose one signature is not serving_default replays its golden set through that
    signature, never the init op."""
    import tensorflow as tf

    from tfship.serving.local_engine.models import Servable, check_golden
    from tfship.serving.local_engine.session import load_session

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * 2.0}

    module = Doubler()
    version = tmp_path / "models" / "doubler" / "1"
    tf.saved_model.save(module, str(version), signatures={"double": module.double})
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.savez(version / "golden.npz", **{"inputs/x": x, "outputs/y": x * 2.0})
    engine, _ = _engine(tmp_path, {"doubler": version.parent}, require_golden=True)
    try:
        (state,) = engine.core.manager.status("doubler")
        assert (state.state, state.error_message) == ("AVAILABLE", "")
        assert sorted(state.servable.signatures) == ["__saved_model_init_op", "double"]
    finally:
        engine.stop(grace=1)
    model, entries = load_session(version, {"serve"})
    try:
        for order in (["__saved_model_init_op", "double"], ["double", "__saved_model_init_op"]):
            check_golden(Servable("doubler", 1, version, model, {key: entries[key] for key in order}))
    finally:
        model.close()


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_before_the_process_exits(models, tmp_path):
    """tensorflow/serving#1853: TF Serving exits on SIGTERM with requests in flight. Here a request that waits
    2 s in a batch queue when SIGTERM arrives still gets its answer, and the process then exits 0."""
    import threading

    parameters = tmp_path / "batching.txt"
    parameters.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000000 }\n")
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "tfship", "model-server", f"--port={port}", "--model_name=half",
                                    f"--model_base_path={models / 'half'}", "--enable_batching",
                                    f"--batching_parameters_file={parameters}", "--enable_grpc_healthcheck_service",
                                    "--tfship_drain_seconds=20"],
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "TFSHIP_PUBLIC_KEY": ""})
    try:
        wait_until(lambda: process.poll() is not None or _health(port) == "SERVING", 120, "the server SERVING")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        answers: list = []
        caller = threading.Thread(target=lambda: answers.append(_predict(port, "half", np.array([[8.0]], np.float32))[1]))
        caller.start()
        time.sleep(0.7)  # the request now waits in the batch queue
        process.send_signal(signal.SIGTERM)
        caller.join(30)
        assert answers and np.allclose(answers[0], [[6.0]])
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_rest_limits_are_flags_and_their_refusals_name_them(models, tmp_path):
    """TF Serving's HTTP server sets no body or JSON limit of its own; tfship's are flags a refusal names."""

    def predict(port: int, rows: int) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/half:predict",
                                         data=json.dumps({"instances": [[1.0]] * rows}).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    engine, _ = _engine(tmp_path, {"half": models / "half"}, tfship_rest_max_json_values=500, tfship_rest_max_body_bytes=4096)
    try:
        code, answer = predict(engine.rest_port, 100)  # about 200 values, 700 bytes: served
        assert code == 200 and answer["predictions"][0] == pytest.approx([2.5])
        code, answer = predict(engine.rest_port, 300)  # about 600 values
        assert code == 400 and "the limit is 500 (the server's --tfship_rest_max_json_values" in answer["error"]
        code, answer = predict(engine.rest_port, 700)  # about 5 KB
        assert code == 413 and "larger than the limit of 4096 bytes (the server's --tfship_rest_max_body_bytes)" in answer["error"]
    finally:
        engine.stop(grace=1)
    raised, _ = _engine(tmp_path, {"half": models / "half"}, tfship_rest_max_json_values=5000, tfship_rest_max_body_bytes=1 << 20)
    try:
        code, answer = predict(raised.rest_port, 700)
        assert code == 200 and len(answer["predictions"]) == 700
    finally:
        raised.stop(grace=1)
