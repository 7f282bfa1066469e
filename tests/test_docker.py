"""The TF Serving container path: generated configs, the container spec, Dockerfile and compose file.

Tests marked ``docker`` use the real Docker Engine. No registry is reachable, so the images they need are
built locally from ``scratch``; the official TF Serving image is used only when it is already there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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
    # --versions all: every verified version, pinned (TF Serving never loads an unverified one copied in later).
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(model.model_version_policy.specific.versions) == [1, 2]
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


@pytest.mark.parametrize("policy, expected", [("latest:1", [2]), ("latest:2", [1, 2]), ("all", [1, 2]), ("specific:1", [1])])
def test_version_policies_pin_the_verified_versions(policy, expected, signed_repo, tmp_path):
    """Every policy is written as ``specific``: TF Serving's ``latest``/``all`` would load any version directory
    that appears later, unverified (model_servers/server_core.cc polls the base path for new versions)."""
    from tfship.serving.config import read_model_server_config

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    assert run_cli("serve", "config", "--repo", repo, "--allow-unsigned", "--versions", policy).exit_code == 0
    model = read_model_server_config(repo / "models.config").model_config_list.config[0]
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(model.model_version_policy.specific.versions) == expected


def test_skip_invalid_pins_only_the_verified_versions(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    (repo / "digits" / "2" / "saved_model.pb").write_bytes(b"tampered")
    result = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"], "--versions", "all", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    from tfship.serving.config import read_model_server_config

    model = read_model_server_config(repo / "models.config").model_config_list.config[0]
    assert list(model.model_version_policy.specific.versions) == [1]


@pytest.mark.parametrize("args, message", [
    (("--label", "bad-label=1"), "letters, digits and '_'"),
    (("--label", "stable=1"), "not served"),  # latest:1 serves only version 2
    (("--versions", "newest"), "latest:N, all, or specific"),
    (("--versions", "specific:7"), "digits has no version 7"),
    (("--batching", "--allowed-batch-sizes", "4,8"), "end with max_batch_size"),
])
def test_bad_serving_options_are_usage_errors(args, message, signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    result = run_cli("serve", "config", "--repo", repo, "--allow-unsigned", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (repo / "models.config").exists()


def test_container_spec_mounts_the_repository_read_only_on_loopback_ports(signed_repo):
    from tfship.serving.docker_engine import container_spec

    spec = container_spec(signed_repo["repo"], grpc_port=9500, rest_port=9501)
    kwargs = spec.run_kwargs()
    # The image is the TF Serving release of the TensorFlow that exported the models (their manifests say 2.21.x).
    assert kwargs["image"] == "tensorflow/serving:2.21.0"
    # The container can read the models, never change them; by default only this machine reaches it.
    assert kwargs["volumes"] == {str(signed_repo["repo"].resolve()): {"bind": "/models", "mode": "ro"}}
    assert kwargs["ports"] == {"8500/tcp": ("127.0.0.1", 9500), "8501/tcp": ("127.0.0.1", 9501)}


def test_docker_gpu_spec(signed_repo, tmp_path):
    from tfship.serving.docker_engine import container_spec

    spec = container_spec(signed_repo["repo"], gpu=True, grpc_port=9500, rest_port=9501, host="0.0.0.0", intra_op_threads=1)
    kwargs = spec.run_kwargs()
    assert "--tensorflow_intra_op_parallelism=1" in kwargs["command"]
    assert kwargs["image"] == "tensorflow/serving:2.21.0-gpu"
    (request,) = kwargs["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert kwargs["ports"]["8500/tcp"] == ("0.0.0.0", 9500)


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


def test_compose_file_is_valid_for_the_compose_tool(tmp_path):
    """The compose file parses with the Compose tool itself (its run is tested in test_containers.py)."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("the docker-compose tool is not installed")
    result = subprocess.run([compose, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True,
                            env={**os.environ, "MODEL_NAME": "digits"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "model-server.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed")
    lint = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKER / dockerfile)], capture_output=True, text=True)
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


def _scratch_image(tag: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> str:
    """Build an image FROM scratch holding ``files`` (no registry needed); returns its tag."""
    import io
    import tarfile

    import docker

    dockerfile = "FROM scratch\n" + "".join(f"COPY {name} /{name}\n" for name in files) + f"ENTRYPOINT {json.dumps(entrypoint)}\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, (data, mode) in {"Dockerfile": (dockerfile.encode(), 0o644), **files}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker.from_env().images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


def _left_behind(repo: Path) -> list[str]:
    import docker

    label = f"tfship.repository={repo.resolve()}"
    return [c.name for c in docker.from_env().containers.list(all=True, filters={"label": label})]


@pytest.fixture
def scratch_images():
    import docker

    tags: list[str] = []
    yield tags
    client = docker.from_env()
    for tag in tags:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.mark.docker
def test_a_container_that_cannot_start_leaves_nothing_behind(signed_repo, tmp_path, scratch_images):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    image = _scratch_image("tfship-test/cannot-start:1", {"README": (b"no program here\n", 0o644)}, ["/nonexistent"])
    scratch_images.append(image)
    result = run_cli("serve", "up", "--repo", repo, "--engine", "docker", "--allow-unsigned", "--image", image,
                     "--grpc-port", free_port(), "--rest-port", free_port(), "--timeout", "30")
    assert result.exit_code == 4, result.stderr
    assert f"cannot start {image}" in result.stderr
    assert _left_behind(repo) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()


@pytest.mark.docker
def test_a_container_that_exits_is_removed_with_its_restart_policy(signed_repo, tmp_path, scratch_images):
    # docker-init (tini, statically linked) ships with the Docker Engine; given TF Serving's flags it prints
    # its usage and exits, like a server that dies at start. The restart policy would bring it back forever.
    init = Path(shutil.which("docker-init") or "/usr/bin/docker-init")
    if not init.is_file():
        pytest.skip("docker-init is not installed next to the Docker Engine")
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    image = _scratch_image("tfship-test/exits:1", {"init": (init.read_bytes(), 0o755)}, ["/init"])
    scratch_images.append(image)
    result = run_cli("serve", "up", "--repo", repo, "--engine", "docker", "--allow-unsigned", "--image", image,
                     "--grpc-port", free_port(), "--rest-port", free_port(), "--timeout", "60")
    assert result.exit_code == 4, result.stderr
    assert "exited before the models were available" in result.stderr and "container log" in result.stderr
    assert _left_behind(repo) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_container_spec_names_a_served_model_and_mounts_the_public_key_read_only(signed_repo, keys, tmp_path):
    from tfship.serving.docker_engine import CONTAINER_KEY_PATH, container_key_copy, container_spec

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    key = container_key_copy(repo, keys["public"])
    assert key.read_bytes() == keys["public"].read_bytes() and key.stat().st_mode & 0o777 == 0o644
    spec = container_spec(repo, image="tfship-model-server", model_name="digits", public_key=key, tfship_server=True).run_kwargs()
    # tfship's image verifies each version with the key, and serves grpc.health.v1 as serve up's local engine does.
    assert spec["environment"] == {"MODEL_BASE_PATH": "/models", "MODEL_NAME": "digits", "TFSHIP_PUBLIC_KEY": CONTAINER_KEY_PATH}
    assert spec["volumes"][str(key.resolve())] == {"bind": CONTAINER_KEY_PATH, "mode": "ro"}
    assert {"--enable_grpc_healthcheck_service=true", "--max_num_load_retries=0"} <= set(spec["command"])
    unsigned = container_spec(repo, model_name="digits").run_kwargs()
    assert "TFSHIP_PUBLIC_KEY" not in unsigned["environment"] and list(unsigned["volumes"]) == [str(repo.resolve())]
    # The official image gets no flag it may not know (releases before the health service refuse unknown flags).
    assert not any(flag.startswith(("--enable_grpc_healthcheck_service", "--max_num_load_retries")) for flag in unsigned["command"])


@pytest.mark.docker
@pytest.mark.slow
def test_serve_up_with_tfships_server_image_validate_status_down(signed_repo, keys, tmp_path):
    from test_containers import SERVER_IMAGE, _builder

    import docker
    from tfship.serving.docker_engine import container_name

    built = _builder("all", log=tmp_path / "build.log")  # cached: only what changed is rebuilt
    if built.returncode == 75:
        pytest.skip(f"cannot build the test images: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr[-4000:]
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    grpc_port, rest_port = free_port(), free_port()
    client = docker.from_env()
    up = run_cli("serve", "up", "--repo", repo, "--engine", "docker", "--image", SERVER_IMAGE, "--public-key", keys["public"],
                 "--grpc-port", grpc_port, "--rest-port", rest_port, "--timeout", "240", "--json")
    try:
        assert up.exit_code == 0, up.stderr
        container = client.containers.get(container_name(repo))
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert env["MODEL_NAME"] == "digits" and env["TFSHIP_PUBLIC_KEY"] == "/etc/tfship/public_key.pem"
        # The image's server verified with the mounted key (it says so when it does not).
        assert b"NOT verified" not in container.logs()
        golden = repo / "digits" / "2" / "golden.npz"
        valid = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", "digits", "--golden", golden)
        assert valid.exit_code == 0, valid.stderr
        status = run_cli("serve", "status", "--repo", repo, "--json")
        assert status.exit_code == 0, status.stderr
        data = json.loads(status.stdout)["data"]
        assert data["engine"] == "docker" and data["running"]
        assert [(s["version"], s["state"]) for s in data["models"]["digits"]] == [(2, "AVAILABLE")]
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0 and "stopped the docker engine" in down.stdout, down.stdout + down.stderr
    assert client.containers.list(all=True, filters={"name": container_name(repo)}) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()
