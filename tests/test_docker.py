"""The TF Serving container path: generated configs, the container spec, Dockerfile and compose file.

No container engine runs on the development machines, so the launcher is tested against a recording
fake Docker client (the only thing mocked); tests marked ``docker`` run the real image where an engine answers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, copy_repo, free_port, run_cli
from engine_helpers import self_signed
from google.protobuf import text_format

DOCKER = ROOT / "docker"


def test_generated_configs_parse_with_the_real_schemas(signed_repo, keys, tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    from tfship.serving.config_protos import BatchingParameters, MonitoringConfig, SSLConfig

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    key, cert = self_signed(tmp_path / "tls")
    result = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"], "--versions", "all",
                     "--label", "stable=1", "--label", "canary=2", "--batching", "--max-batch-size", "16",
                     "--allowed-batch-sizes", "4,16", "--ssl-key", key, "--ssl-cert", cert, "--json")
    assert result.exit_code == 0, result.stderr
    config = text_format.Parse((repo / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("digits", "/models/digits", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "all"
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    local = text_format.Parse((repo / ".tfship-run" / "local-models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert local.model_config_list.config[0].base_path == str((repo / "digits").resolve())
    batching = text_format.Parse((repo / "batching.config").read_text(), BatchingParameters())
    assert batching.max_batch_size.value == 16 and list(batching.allowed_batch_sizes) == [4, 16]
    monitoring = text_format.Parse((repo / "monitoring.config").read_text(), MonitoringConfig())
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    ssl = text_format.Parse((repo / "ssl.config").read_text(), SSLConfig())
    assert ssl.server_cert == cert.read_text() and ssl.server_key == key.read_text()
    assert (repo / "ssl.config").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("policy, expected", [("latest:1", ("latest", [2])), ("specific:1", ("specific", [1]))])
def test_version_policies(policy, expected, signed_repo, tmp_path):
    from tfship.serving.config import read_model_server_config

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    assert run_cli("serve", "config", "--repo", repo, "--allow-unsigned", "--versions", policy).exit_code == 0
    model = read_model_server_config(repo / "models.config").model_config_list.config[0]
    kind = model.model_version_policy.WhichOneof("policy_choice")
    assert kind == expected[0]
    if kind == "latest":
        assert model.model_version_policy.latest.num_versions == 1
    else:
        assert list(model.model_version_policy.specific.versions) == expected[1]


@pytest.mark.parametrize("args, message", [
    (("--label", "bad-label=1"), "letters, digits and '_'"),
    (("--label", "stable=1"), "not served"),  # latest:1 serves only version 2
    (("--versions", "newest"), "latest:N, all, or specific"),
    (("--batching", "--allowed-batch-sizes", "4,8"), "end with max_batch_size"),
])
def test_bad_serving_options_are_usage_errors(args, message, signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    result = run_cli("serve", "config", "--repo", repo, "--allow-unsigned", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (repo / "models.config").exists()


class _NotFound(Exception):
    pass


class FakeContainer:
    def __init__(self, fake, kwargs):
        self.fake, self.kwargs, self.status = fake, kwargs, "running"

    def logs(self, tail=None):
        return b"2026-01-01 tensorflow_model_server: Loading servable: {name: digits version: 1}\nfailed: something broke\n"

    def stop(self, timeout=None):
        self.fake.calls.append(("stop", self.kwargs["name"]))
        self.status = "exited"
        if self.fake.engine:
            self.fake.engine.stop(grace=0)

    def remove(self, force=False):
        self.fake.calls.append(("remove", self.kwargs["name"]))
        self.fake.containers_by_name.pop(self.kwargs["name"], None)


class FakeDocker:
    """Records what the launcher asks of Docker. ``serve_with`` makes 'the container' a real local engine."""

    def __init__(self, serve_with=None):
        import docker

        self.calls, self.containers_by_name, self.serve_with, self.engine = [], {}, serve_with, None
        self.errors = docker.errors
        fake = self

        class Containers:
            def get(self, name):
                if name not in fake.containers_by_name:
                    raise docker.errors.NotFound(f"no container {name}")
                return fake.containers_by_name[name]

            def run(self, **kwargs):
                fake.calls.append(("run", kwargs))
                container = FakeContainer(fake, kwargs)
                fake.containers_by_name[kwargs["name"]] = container
                if fake.serve_with:
                    fake.engine = fake.serve_with(kwargs)
                return container

        class Images:
            def get(self, image):
                fake.calls.append(("image", image))

            def pull(self, image):
                fake.calls.append(("pull", image))

        self.containers, self.images = Containers(), Images()

    def ping(self):
        return True


def _use_fake(monkeypatch, fake):
    from tfship.serving import docker_engine

    monkeypatch.setattr(docker_engine, "docker_client", lambda timeout=3.0: fake)
    monkeypatch.setattr(docker_engine, "engine_problem", lambda: None)


def test_docker_launcher_builds_the_container_tf_serving_needs(signed_repo, keys, tmp_path, monkeypatch):
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port, rest_port = free_port(), free_port()

    def container_stand_in(kwargs):
        # What the real image would do with the mount: serve /models (here: the host path) on the ports.
        host_repo = next(iter(kwargs["volumes"]))
        return LocalEngine([ModelConfig("digits", Path(host_repo) / "digits")], grpc_port=kwargs["ports"]["8500/tcp"][1],
                           rest_port=None).start()

    fake = FakeDocker(serve_with=container_stand_in)
    _use_fake(monkeypatch, fake)
    result = run_cli("serve", "up", "--repo", repo, "--public-key", keys["public"], "--grpc-port", grpc_port,
                     "--rest-port", rest_port, "--batching", "--json")
    try:
        assert result.exit_code == 0, result.stderr
        assert "engine: docker" in result.stderr
        run = next(kwargs for call, kwargs in fake.calls if call == "run")
        assert run["image"] == "tensorflow/serving:2.21.0"
        assert run["ports"] == {"8500/tcp": ("127.0.0.1", grpc_port), "8501/tcp": ("127.0.0.1", rest_port)}
        assert run["volumes"] == {str(repo.resolve()): {"bind": "/models", "mode": "ro"}}
        assert run["command"] == ["--model_config_file=/models/models.config", "--model_config_file_poll_wait_seconds=60",
                                  "--enable_batching=true", "--batching_parameters_file=/models/batching.config",
                                  "--monitoring_config_file=/models/monitoring.config"]
        assert run["environment"] == {"MODEL_BASE_PATH": "/models"}
        assert run["detach"] is True and run["restart_policy"] == {"Name": "unless-stopped"}
        assert "device_requests" not in run
        data = json.loads(result.stdout)["data"]
        assert data["models"]["digits"][0]["state"] == "AVAILABLE"
        status = run_cli("serve", "status", "--repo", repo)
        assert status.exit_code == 0 and "AVAILABLE" in status.stdout
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0 and ("stop", run["name"]) in fake.calls and ("remove", run["name"]) in fake.calls


def test_docker_gpu_spec(signed_repo, tmp_path):
    from tfship.serving.docker_engine import container_spec

    spec = container_spec(signed_repo["repo"], gpu=True, grpc_port=9500, rest_port=9501, host="0.0.0.0", intra_op_threads=1)
    kwargs = spec.run_kwargs()
    assert "--tensorflow_intra_op_parallelism=1" in kwargs["command"]
    assert kwargs["image"] == "tensorflow/serving:2.21.0-gpu"
    (request,) = kwargs["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert kwargs["ports"]["8500/tcp"] == ("0.0.0.0", 9500)


def test_docker_failure_prints_the_container_log_and_exits_4(signed_repo, tmp_path, monkeypatch):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    fake = FakeDocker()  # the container starts but never answers
    _use_fake(monkeypatch, fake)
    result = run_cli("serve", "up", "--repo", repo, "--allow-unsigned", "--engine", "docker", "--grpc-port", free_port(),
                     "--timeout", "2")
    assert result.exit_code == 4
    assert "container log" in result.stderr and "failed: something broke" in result.stderr


def test_auto_uses_the_local_engine_without_docker_and_says_so(monkeypatch):
    from tfship.serving import docker_engine, lifecycle

    monkeypatch.setattr(docker_engine, "engine_problem", lambda: "Error while fetching server API version: no such file")
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("tfship.serving.lifecycle").addHandler(handler)
    logging.getLogger("tfship.serving.lifecycle").setLevel(logging.INFO)
    try:
        assert lifecycle.choose_engine("auto") == "local"
    finally:
        logging.getLogger("tfship.serving.lifecycle").removeHandler(handler)
    assert any("no Docker engine answered" in r.getMessage() for r in records)


def test_compose_file(tmp_path):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    cpu, gpu = compose["services"]["serving"], compose["services"]["serving-gpu"]
    assert cpu["image"].startswith("tensorflow/serving:") and gpu["image"].endswith("-gpu")
    for service in (cpu, gpu):
        assert "127.0.0.1:8500:8500" in service["ports"] and "127.0.0.1:8501:8501" in service["ports"]
        (volume,) = service["volumes"]
        assert volume["target"] == "/models" and volume["read_only"] is True
        flags = service["command"]
        for flag in ("--model_config_file=/models/models.config", "--model_config_file_poll_wait_seconds=60",
                     "--monitoring_config_file=/models/monitoring.config", "--batching_parameters_file=/models/batching.config"):
            assert flag in flags
        assert any(f.startswith("--enable_batching=") for f in flags)
        assert "/v1/models/" in " ".join(service["healthcheck"]["test"])
        assert service["restart"] == "unless-stopped"
        assert service["deploy"]["resources"]["limits"]["memory"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in cpu
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"


def test_dockerfile_stages_and_flags():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, flags=re.MULTILINE)
    assert stages == [("python:3.11-slim", "verify"), ("tensorflow/serving:${TF_SERVING_VERSION}", "serving")]
    assert "ARG TF_SERVING_VERSION=2.21.0" in text
    assert re.search(r"tfship verify \"\$version\" --public-key", text)
    assert "COPY --from=verify /models /models" in text
    assert "--model_config_file=/models/models.config" in text and "HEALTHCHECK" in text
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed")
    lint = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.docker
def test_real_tf_serving_container_serves_the_golden_set(signed_repo, keys, tmp_path):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    import docker

    image = f"tensorflow/serving:{tf.__version__}"
    try:
        docker.from_env().images.get(image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the official {image} image is not on this engine and no registry is reachable to pull it")
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port, rest_port = free_port(), free_port()
    up = run_cli("serve", "up", "--repo", repo, "--engine", "docker", "--public-key", keys["public"],
                 "--grpc-port", grpc_port, "--rest-port", rest_port, "--timeout", "300")
    try:
        assert up.exit_code == 0, up.stderr
        golden = repo / "digits" / "2" / "golden.npz"
        result = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", golden)
        assert result.exit_code == 0, result.stderr
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        data = np.load(golden)
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(data["inputs/image"]))
        outputs = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probabilities"])
        np.testing.assert_allclose(outputs, data["outputs/probabilities"], atol=1e-5)
    finally:
        run_cli("serve", "down", "--repo", repo)


def test_batching_parameters_file(signed_repo, tmp_path):
    from tfship.serving.config_protos import BatchingParameters

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 1 }\n"
                      "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    result = run_cli("serve", "config", "--repo", repo, "--allow-unsigned", "--batching-parameters-file", params)
    assert result.exit_code == 0, result.stderr
    written = text_format.Parse((repo / "batching.config").read_text(), BatchingParameters())
    assert (written.max_batch_size.value, written.batch_timeout_micros.value, list(written.allowed_batch_sizes)) == (8, 500, [4, 8])
    params.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    bad = run_cli("serve", "config", "--repo", repo, "--allow-unsigned", "--batching-parameters-file", params)
    assert bad.exit_code == 2 and "end with max_batch_size" in bad.stderr
