"""Containers for real: tfship's server image, the compose file and the verify-then-serve Dockerfile.

Every test runs against the Docker Engine and images built here by docker/build-test-images.sh (Debian's
packages and the package index, no registry): the first build takes minutes, later ones reuse the cache in
~/.cache/tfship-test and skip images whose inputs did not change. The container's own HEALTHCHECK is what
says "healthy" (it is run by the engine, not read from the Dockerfile), and ``tfship validate`` checks what
the container answers over gRPC through the mapped port.
"""

from __future__ import annotations

import calendar
import hashlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, copy_repo, free_port, run_cli

pytestmark = pytest.mark.docker

BUILDER = ROOT / "docker" / "build-test-images.sh"
BASE_IMAGE = "tfship-test-base"
SERVER_IMAGE = "tfship-model-server"
LABEL = "org.tfship.test"  # every container this module starts carries it; cleanup goes by it
UNREACHABLE = 75  # build-test-images.sh: Debian's packages or the package index could not be reached
HEALTHY_WITHIN = 240.0  # seconds: TensorFlow's import and the model load on 2 shared cores


def _sdk() -> Any:
    """The Docker SDK (a type checker run from the repository root takes its docker/ folder for the SDK)."""
    return importlib.import_module("docker")


def _builder(*args: str, log: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(BUILDER), *args], capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")})
    log.write_text(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test images, built (or found up to date) by the script; skips when nothing can be built from."""
    log = tmp_path_factory.mktemp("images") / "build.log"
    started = time.monotonic()
    result = _builder("all", log=log)
    if result.returncode == UNREACHABLE:
        pytest.skip(f"cannot build the test images: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"docker/build-test-images.sh failed:\n{result.stderr[-4000:]}"
    print(f"test images ready in {time.monotonic() - started:.0f}s")
    return {"base": BASE_IMAGE, "server": SERVER_IMAGE}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = _sdk().from_env(timeout=300)
    yield client
    client.close()


@pytest.fixture
def containers(docker_client: Any) -> Iterator[list[Any]]:
    """Containers a test starts; removed afterwards whatever happened."""
    started: list[Any] = []
    yield started
    for container in started:
        try:
            container.remove(force=True, v=True)
        except Exception as exc:  # gone already
            print(f"cleanup: {container.name}: {exc}")


def _readable(repo: Path) -> Path:
    """Let the image's non-root user read the repository (the exporter leaves version folders 0700)."""
    for path in [repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return repo


def _run_server(docker_client: Any, containers: list[Any], repo: Path, grpc_port: int, rest_port: int, *,
                env: dict[str, str], command: list[str] | None = None, image: str = SERVER_IMAGE) -> Any:
    container = docker_client.containers.run(
        image, command=command, detach=True, environment=env, name=f"tfship-test-{uuid.uuid4().hex[:10]}",
        labels={LABEL: "test_containers"}, volumes={str(repo): {"bind": "/models", "mode": "ro"}},
        ports={"8500/tcp": ("127.0.0.1", grpc_port), "8501/tcp": ("127.0.0.1", rest_port)})
    containers.append(container)
    return container


def _wait_healthy(docker_client: Any, container: Any, timeout: float = HEALTHY_WITHIN) -> None:
    """Wait for the engine's health_status event of the container's own HEALTHCHECK (or its death)."""
    since = time.time() - 600  # events since well before the container started: none is missed
    until = time.time() + timeout  # the engine ends the event stream here: the wait is bounded
    filters = {"container": container.id, "event": ["health_status", "die"]}
    for event in docker_client.events(since=since, until=until, filters=filters, decode=True):
        status = event.get("status", "")
        if status == "health_status: healthy":
            return
        if status == "die":
            pytest.fail(f"{container.name} exited:\n{_logs(container)}")
    container.reload()
    health = container.attrs["State"].get("Health") or {}
    pytest.fail(f"{container.name} is {health.get('Status', 'without health status')} after {timeout:.0f}s; "
                f"last probes: {health.get('Log', [])[-3:]}\n{_logs(container)}")


def _logs(container: Any) -> str:
    try:
        return container.logs(tail=40).decode("utf-8", "replace")
    except Exception as exc:
        return f"(no log: {exc})"


def _validate(grpc_port: int, model: str, golden: Path) -> None:
    result = run_cli("validate", "--target", f"127.0.0.1:{grpc_port}", "--model", model, "--golden", golden)
    assert result.exit_code == 0, result.stdout + result.stderr


def _uid_of_the_server(container: Any) -> int:
    code, output = container.exec_run(["cat", "/proc/1/status"])
    assert code == 0, output
    line = next(line for line in output.decode().splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def test_server_image_becomes_healthy_serves_the_golden_set_and_runs_as_non_root(images, signed_repo, tmp_path,
                                                                                 docker_client, containers):
    repo = _readable(copy_repo(signed_repo["repo"], tmp_path / "models"))
    grpc_port, rest_port = free_port(), free_port()
    # tensorflow/serving's contract: MODEL_NAME picks /models/$MODEL_NAME, ports 8500 and 8501.
    container = _run_server(docker_client, containers, repo, grpc_port, rest_port, env={"MODEL_NAME": "digits"})
    _wait_healthy(docker_client, container)
    _validate(grpc_port, "digits", repo / "digits" / "2" / "golden.npz")
    assert _uid_of_the_server(container) != 0
    assert container.attrs["Config"]["User"] not in ("", "0", "root")
    # No key was given: the image serves what is mounted, and says so.
    assert "model signatures are NOT verified" in _logs(container)


def test_server_image_passes_extra_flags_through(images, signed_repo, tmp_path, docker_client, containers):
    repo = _readable(copy_repo(signed_repo["repo"], tmp_path / "models"))
    # A model name that exists only in this config file: healthy and valid only if the flag reached the server
    # (the entry point's own --model_base_path=/models/mnist does not exist).
    (repo / "models.config").write_text('model_config_list { config { name: "mnist" base_path: "/models/digits" '
                                        'model_platform: "tensorflow" } }\n')
    grpc_port, rest_port = free_port(), free_port()
    container = _run_server(docker_client, containers, repo, grpc_port, rest_port, env={"MODEL_NAME": "mnist"},
                            command=["--model_config_file=/models/models.config", "--file_system_poll_wait_seconds=5"])
    _wait_healthy(docker_client, container)
    _validate(grpc_port, "mnist", repo / "digits" / "2" / "golden.npz")


def test_server_image_verifies_signatures_when_given_a_key(images, signed_repo, keys, tmp_path, docker_client, containers):
    from tfship.core.errors import ServerUnavailable
    from tfship.serving.readiness import wait_ready

    repo = _readable(copy_repo(signed_repo["repo"], tmp_path / "models"))
    (repo / "digits" / "2" / "manifest.json").write_text("{}")  # tampered after signing
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    shutil.copy(keys["public"], keys_dir / "signing_key.pub")
    (keys_dir / "signing_key.pub").chmod(0o644)
    grpc_port, rest_port = free_port(), free_port()
    container = docker_client.containers.run(
        SERVER_IMAGE, detach=True, name=f"tfship-test-{uuid.uuid4().hex[:10]}", labels={LABEL: "test_containers"},
        environment={"MODEL_NAME": "digits", "TFSHIP_PUBLIC_KEY": "/keys/signing_key.pub"},
        volumes={str(repo): {"bind": "/models", "mode": "ro"}, str(keys_dir): {"bind": "/keys", "mode": "ro"}},
        ports={"8500/tcp": ("127.0.0.1", grpc_port), "8501/tcp": ("127.0.0.1", rest_port)})
    containers.append(container)
    # Version 2 fails its signature check, so it never loads: readiness reports TF Serving's END with the reason.
    with pytest.raises(ServerUnavailable) as refused:
        wait_ready(f"127.0.0.1:{grpc_port}", {"digits": [2]}, timeout=HEALTHY_WITHIN)
    assert "signature" in refused.value.message, f"{refused.value.message}\n{_logs(container)}"
    assert "NOT verified" not in _logs(container)


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")


def test_compose_file_with_the_image_overridden(images, signed_repo, keys, tmp_path, docker_client):
    repo = _readable(copy_repo(signed_repo["repo"], tmp_path / "models"))
    config = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"])
    assert config.exit_code == 0, config.stderr
    grpc_port, rest_port = free_port(), free_port()
    project = f"tfship-test-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "TFSHIP_SERVING_IMAGE": SERVER_IMAGE, "TFSHIP_REPO": str(repo), "MODEL_NAME": "digits",
           "TFSHIP_GRPC_PORT": str(grpc_port), "TFSHIP_REST_PORT": str(rest_port)}
    compose = [*_compose_command(), "-f", str(ROOT / "docker" / "compose.yaml"), "-p", project]
    by_project = {"label": f"com.docker.compose.project={project}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, capture_output=True, text=True, timeout=300)

    try:
        up = run("up", "-d", "serving")
        assert up.returncode == 0, up.stdout + up.stderr
        (container,) = docker_client.containers.list(all=True, filters=by_project)
        assert container.image.tags == [f"{SERVER_IMAGE}:latest"]
        _wait_healthy(docker_client, container)
        _validate(grpc_port, "digits", repo / "digits" / "2" / "golden.npz")
        down = run("down", "--volumes", "--remove-orphans")
        assert down.returncode == 0, down.stdout + down.stderr
        assert docker_client.containers.list(all=True, filters=by_project) == []
        assert docker_client.networks.list(filters=by_project) == []
    finally:
        run("down", "--volumes", "--remove-orphans")


@pytest.fixture
def built_images(docker_client: Any) -> Iterator[Callable[[str], None]]:
    """Tags a test builds, and the dangling layers its builds leave; all removed afterwards."""
    errors = _sdk().errors
    before = {image.id for image in docker_client.images.list(filters={"dangling": True})}
    tags: list[str] = []
    yield tags.append
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except errors.ImageNotFound:
            pass
    for image in docker_client.images.list(filters={"dangling": True}):
        if image.id not in before:
            try:
                docker_client.images.remove(image.id, force=True)
            except errors.APIError:
                pass


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system
        shutil.copy2(source, destination)


def _verified_image_context(repo: Path, public_key: Path, destination: Path) -> Path:
    """What docker/Dockerfile copies from a checkout, with the wheels of the offline build."""
    wheelhouse = _builder("wheelhouse", log=destination.parent / "wheelhouse.log")
    assert wheelhouse.returncode == 0, wheelhouse.stderr
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, destination / name)
    for name in ("tfship", "exporter", "serving", "client"):
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(wheelhouse.stdout.strip(), destination / "docker" / "wheelhouse", copy_function=_link_or_copy)
    shutil.copytree(repo, destination / "models")
    (destination / "keys").mkdir()
    shutil.copy(public_key, destination / "keys" / "signing_key.pub")
    return destination


# The engine's own storage failing to record a finished image (seen once on a fuse-overlayfs engine, after every
# step of the Dockerfile had run: "failed to get digest sha256:...: open .../imagedb/content/sha256/...: no such file
# or directory"). Not the Dockerfile's doing; the same build run again succeeds (docker/buildx#101 reports the same).
ENGINE_STORAGE_ERRORS = ("failed to get digest sha256:",)


def _build_verified_image(context: Path, tag: str) -> subprocess.CompletedProcess[str]:
    for attempt in (1, 2):
        result = subprocess.run(
            ["docker", "build", "--force-rm", "-f", str(ROOT / "docker" / "Dockerfile"), "-t", tag,
             "--build-arg", f"VERIFY_IMAGE={BASE_IMAGE}", "--build-arg", f"SERVING_IMAGE={SERVER_IMAGE}",
             "--build-arg", "PIP_NO_INDEX=1", str(context)],
            capture_output=True, text=True, timeout=1200, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if result.returncode == 0 or not any(error in result.stdout + result.stderr for error in ENGINE_STORAGE_ERRORS):
            break
        print(f"docker build of {tag}: the engine's storage failed (attempt {attempt}); building again", file=sys.stderr)
    return result


def test_verify_then_serve_dockerfile_refuses_a_tampered_version_and_builds_a_signed_one(images, signed_repo, keys, tmp_path,
                                                                                          built_images):
    signed = copy_repo(signed_repo["repo"], tmp_path / "signed")
    assert run_cli("serve", "config", "--repo", signed, "--public-key", keys["public"]).exit_code == 0
    tampered = copy_repo(signed, tmp_path / "tampered")
    (tampered / "digits" / "1" / "golden.npz").write_bytes(b"not the signed file")

    tag = f"tfship-test/tampered:{uuid.uuid4().hex[:10]}"
    built_images(tag)
    context = tmp_path / "tampered-context"
    context.mkdir()
    refused = _build_verified_image(_verified_image_context(tampered, keys["public"], context), tag)
    assert refused.returncode != 0, refused.stdout[-3000:]
    assert "/models/digits/1: file changed since signing: golden.npz" in refused.stdout, refused.stdout[-3000:]

    tag = f"tfship-test/signed:{uuid.uuid4().hex[:10]}"
    built_images(tag)
    context = tmp_path / "signed-context"
    context.mkdir()
    accepted = _build_verified_image(_verified_image_context(signed, keys["public"], context), tag)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-2000:]


# --- tfship serve up --engine docker with tfship's own server image ----------------------------------------

SERVE_UP_TIMEOUT = "240"


@pytest.fixture
def served(docker_client: Any) -> Iterator[Callable[[Path], Path]]:
    """Repositories a test serves with ``tfship serve up --engine docker``: their containers are removed afterwards
    whatever happened (serve down in the test is what is tested; this is the safety net)."""
    from tfship.serving.docker_engine import container_name

    repos: list[Path] = []

    def serve(repo: Path) -> Path:
        repos.append(repo)
        return repo

    yield serve
    for repo in repos:
        for container in docker_client.containers.list(all=True, filters={"name": container_name(repo)}):
            print(f"cleanup: {container.name}")
            container.remove(force=True, v=True)


def _serve_up(repo: Path, grpc_port: int, rest_port: int, *args: Any) -> Any:
    return run_cli("serve", "up", "--repo", repo, "--engine", "docker", "--image", SERVER_IMAGE, "--grpc-port", grpc_port,
                   "--rest-port", rest_port, "--timeout", SERVE_UP_TIMEOUT, *args)


def _left_behind(docker_client: Any, repo: Path) -> list[str]:
    label = f"tfship.repository={repo.resolve()}"
    return [c.name for c in docker_client.containers.list(all=True, filters={"label": label})]


def _golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    return data["inputs/image"], data["outputs/probabilities"]


def _served_states(repo: Path) -> dict[int, str]:
    """What the server in the container reports (GetModelStatus, through ``serve status``)."""
    status = run_cli("serve", "status", "--repo", repo, "--json")
    assert status.exit_code == 0, status.stderr
    data = json.loads(status.stdout)["data"]
    assert data["running"], data
    return {s["version"]: s["state"] for s in data["models"]["digits"]}


def _pinned(repo: Path) -> list[int]:
    from tfship.serving.config import read_model_server_config

    (model,) = read_model_server_config(repo / "models.config").model_config_list.config
    return list(model.model_version_policy.specific.versions)


def test_server_image_is_healthy_only_when_every_configured_model_is_available(images, signed_repo, tmp_path,
                                                                                docker_client, containers):
    """The HEALTHCHECK asks /v1/ready, not MODEL_NAME's status alone: a second model that fails to load keeps it failing."""
    from tfship.serving.readiness import wait_ready

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    _readable(repo)
    (repo / "models.config").write_text(
        'model_config_list {\n'
        '  config { name: "mnist" base_path: "/models/digits" model_platform: "tensorflow" }\n'
        '  config { name: "broken" base_path: "/models/broken" model_platform: "tensorflow" }\n'
        '}\n')
    grpc_port, rest_port = free_port(), free_port()
    container = _run_server(docker_client, containers, repo, grpc_port, rest_port, env={"MODEL_NAME": "mnist"},
                            command=["--model_config_file=/models/models.config", "--max_num_load_retries=0"])
    # MODEL_NAME's model is served (the former check, GET /v1/models/$MODEL_NAME, would pass now) ...
    wait_ready(f"127.0.0.1:{grpc_port}", {"mnist": []}, timeout=HEALTHY_WITHIN)
    served_at = time.time()

    def probes_since_served() -> list[dict[str, Any]]:
        container.reload()
        log = (container.attrs["State"].get("Health") or {}).get("Log") or []
        # Docker's timestamps carry nanoseconds: seconds are enough here.
        return [p for p in log if calendar.timegm(time.strptime(p["Start"][:19], "%Y-%m-%dT%H:%M:%S")) > served_at]

    from engine_helpers import wait_until

    probes = wait_until(probes_since_served, 60, "a health probe after the model was AVAILABLE", poll=1)
    # ... but the image's own check fails, and says which model is not ready.
    assert probes[-1]["ExitCode"] == 1, probes
    assert "broken" in probes[-1]["Output"], probes


def test_serve_up_with_a_version_that_cannot_load_shows_the_log_and_leaves_nothing(images, signed_repo, keys, tmp_path,
                                                                                   docker_client, served):
    repo = served(copy_repo(signed_repo["repo"], tmp_path / "models"))
    broken = repo / "digits" / "3"
    shutil.copytree(repo / "digits" / "2", broken)
    (broken / "model.sig").unlink()
    garbage = b"\x08\x01 not a SavedModel protocol buffer"
    (broken / "saved_model.pb").write_bytes(garbage)
    # Its manifest lists the new digest and it is signed: the gate (and the server's own check with the mounted
    # key) let it through; only loading it fails.
    manifest = json.loads((broken / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        for entry in artifact["files"]:
            if entry["path"] == "saved_model.pb":
                entry.update(bytes=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    signed = run_cli("sign", broken, "--key", keys["private"])
    assert signed.exit_code == 0, signed.stderr
    _readable(repo)
    up = _serve_up(repo, free_port(), free_port(), "--public-key", keys["public"])  # latest:1 is version 3
    assert up.exit_code == 4, up.stdout + up.stderr
    assert "--- container log" in up.stderr, up.stderr
    # The container's own log, not only tfship's summary: the server's lines about loading version 3.
    log = up.stderr.split("--- container log", 1)[1]
    assert "digits" in log and "3" in log and "saved_model.pb" in log, up.stderr
    assert _left_behind(docker_client, repo) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_serve_up_on_a_taken_port_says_so_in_one_line_and_leaves_nothing(images, signed_repo, keys, tmp_path,
                                                                          docker_client, served):
    repo = served(_readable(copy_repo(signed_repo["repo"], tmp_path / "models")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = _serve_up(repo, free_port(), port, "--public-key", keys["public"])
    assert up.exit_code == 4, up.stdout + up.stderr
    assert up.stderr.strip().splitlines()[-1].endswith(
        f"127.0.0.1:{port} is already in use on this host (choose another with --rest-port)"), up.stderr
    assert "Traceback" not in up.stderr
    assert _left_behind(docker_client, repo) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_the_engines_own_refusal_of_a_taken_port_is_one_line_and_leaves_no_container(images, signed_repo, tmp_path,
                                                                                      docker_client):
    """When the engine is the one to find the port taken (a race with the check, or another container's port),
    its answer is read the same way: the real engine's message, not one this code made up."""
    from tfship.core.errors import ServerUnavailable
    from tfship.serving.docker_engine import DockerLauncher, container_spec

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = container_spec(repo, grpc_port=port, rest_port=free_port(), image=SERVER_IMAGE)
        with pytest.raises(ServerUnavailable) as refused:
            DockerLauncher(docker_client).start(spec)
    assert refused.value.message == (f"cannot start the container: 127.0.0.1:{port} is already in use on this host "
                                     f"(choose another with --grpc-port)")
    assert _left_behind(docker_client, repo) == []


def test_docker_restarts_a_killed_server_and_a_retrying_client_gets_every_answer(images, signed_repo, keys, tmp_path,
                                                                                  docker_client, served):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tfship.client.grpc_client import ServingClient
    from tfship.serving.docker_engine import container_name

    repo = served(_readable(copy_repo(signed_repo["repo"], tmp_path / "models")))
    grpc_port = free_port()
    up = _serve_up(repo, grpc_port, free_port(), "--public-key", keys["public"])
    assert up.exit_code == 0, up.stderr
    container = docker_client.containers.get(container_name(repo))
    # serve up knows the image is tfship's (its label) and turns grpc.health.v1 on, as for the local engine.
    assert {"--enable_grpc_healthcheck_service=true", "--max_num_load_retries=0"} <= set(container.attrs["Args"])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="digits"), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    inputs, expected = _golden(repo / "digits" / "2" / "golden.npz")

    answers: list[tuple[float, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def ask() -> None:  # a client calling all along, with tfship's retry policy and a deadline that spans a restart
        with ServingClient(f"127.0.0.1:{grpc_port}", timeout=float(SERVE_UP_TIMEOUT)) as client:
            while not stop.is_set():
                try:
                    answers.append((time.monotonic(), client.predict({"image": inputs}, "digits")["probabilities"]))
                except BaseException as exc:
                    errors.append(exc)
                    return
                stop.wait(0.05)

    caller = threading.Thread(target=ask, name="retrying-client")
    caller.start()
    try:
        from engine_helpers import wait_until

        wait_until(lambda: answers, 60, "a first answer")
        container.reload()
        assert container.attrs["RestartCount"] == 0
        # The server dies as on an OOM kill: SIGKILL from outside the container, not `docker kill` (which Docker
        # counts as a manual stop, so no restart policy applies) and not from inside (PID 1 of its own PID
        # namespace ignores a SIGKILL sent from within it).
        os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        def restarted() -> bool:
            container.reload()
            return container.attrs["RestartCount"] >= 1 and container.status == "running"

        wait_until(restarted, 60, "Docker to restart the container", poll=0.5)
        wait_until(lambda: errors or answers[-1][0] > killed_at + 5, HEALTHY_WITHIN, "an answer from the restarted server", poll=0.5)
    finally:
        stop.set()
        caller.join(timeout=float(SERVE_UP_TIMEOUT) + 30)
    assert errors == [], errors
    for _, probabilities in answers:
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # serve status still knows its engine: a container the restart policy brought back is running.
    assert _served_states(repo) == {2: "AVAILABLE"}
    down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0, down.stderr
    assert _left_behind(docker_client, repo) == []


def test_an_unsigned_version_copied_in_is_served_by_the_container_only_after_sign_and_reload(images, signed_repo, keys,
                                                                                             tmp_path, docker_client, served):
    repo = served(_readable(copy_repo(signed_repo["repo"], tmp_path / "models")))
    grpc_port = free_port()
    up = _serve_up(repo, grpc_port, free_port(), "--public-key", keys["public"], "--versions", "all")
    assert up.exit_code == 0, up.stderr
    try:
        assert _pinned(repo) == [1, 2]
        # An unsigned version 3 appears, then version 1 goes: once the server's directory poll has unloaded 1, the
        # same scan has seen 3, so its absence below is the server's decision, not a poll not yet run.
        shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
        (repo / "digits" / "3" / "model.sig").unlink()
        _readable(repo)
        shutil.rmtree(repo / "digits" / "1")
        from engine_helpers import wait_until

        wait_until(lambda: 1 not in _served_states(repo), 60, "the server to notice version 1 is gone", poll=1)
        assert _served_states(repo) == {2: "AVAILABLE"}

        refused = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"])
        assert refused.exit_code == 5 and "digits/3:" in refused.stderr, refused.stderr
        assert _pinned(repo) == [1, 2]

        signed = run_cli("sign", repo / "digits" / "3", "--key", keys["private"])
        assert signed.exit_code == 0, signed.stderr
        _readable(repo)  # the server's user (uid 10001) reads the new signature too: it verifies it again
        reloaded = run_cli("serve", "reload", "--repo", repo, "--public-key", keys["public"], "--json")
        assert reloaded.exit_code == 0, reloaded.stderr
        data = json.loads(reloaded.stdout)["data"]
        # Through HandleReloadConfigRequest at once, not the container's 60 s poll of models.config.
        assert data["engine"] == "docker" and data["reloaded"] and data["models"] == {"digits": [2, 3]}, data
        assert _served_states(repo) == {2: "AVAILABLE", 3: "AVAILABLE"}
        _validate(grpc_port, "digits", repo / "digits" / "3" / "golden.npz")
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0, down.stderr
    assert _left_behind(docker_client, repo) == []
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_rollout_on_the_container_promotes_a_matching_canary_and_rolls_back_one_that_disagrees(images, signed_repo, keys, tmp_path,
                                                                                              docker_client, served):
    """tfship rollout drives the engine serve up started, here tfship's image in a container (as on the local engine)."""
    from tfship.core.signing import sign

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    # Version 3 computes what 2 computes, but its golden set says otherwise (re-signed by the key's holder).
    shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
    golden = repo / "digits" / "3" / "golden.npz"
    arrays = dict(np.load(golden))
    arrays["outputs/probabilities"] = arrays["outputs/probabilities"][::-1].copy()
    np.savez(golden, **arrays)
    for name in ("model.sig", "attestation.intoto.jsonl"):
        (repo / "digits" / "3" / name).unlink(missing_ok=True)
    sign(repo / "digits" / "3", key=keys["private"])
    served(_readable(repo))
    up = _serve_up(repo, free_port(), free_port(), "--public-key", keys["public"], "--versions", "specific:1", "--label", "stable=1")
    assert up.exit_code == 0, up.stderr
    try:
        def rollout(version: int) -> tuple[int, dict[str, Any], str]:
            result = run_cli("rollout", "--repo", repo, "--model", "digits", "--version", version, "--public-key", keys["public"],
                             "--report-dir", tmp_path / "reports", "--latency-requests", 30, "--latency-factor", 50, "--json")
            return result.exit_code, json.loads(result.stdout)["data"], result.stderr

        code, data, stderr = rollout(3)
        assert code == 3, stderr
        assert data["decision"] == "rolled_back" and data["evidence"]["canary"]["parity"]["passed"] is False
        assert [v for v, s in _served_states(repo).items() if s == "AVAILABLE"] == [1]

        code, data, stderr = rollout(2)
        assert code == 0, stderr
        assert data["decision"] == "promoted" and data["stable"] == 1 and data["canary"] == 2
        assert [v for v, s in _served_states(repo).items() if s == "AVAILABLE"] == [2]
        state = json.loads((repo / ".tfship-run" / "engine.json").read_text())
        assert state["engine"] == "docker"
        validate = run_cli("validate", "--target", f"127.0.0.1:{state['grpc_port']}", "--model", "digits", "--label", "stable",
                           "--golden", repo / "digits" / "2" / "golden.npz", "--json")
        assert validate.exit_code == 0, validate.stderr
        assert json.loads(validate.stdout)["data"]["served_versions"] == [2]
    finally:
        down = run_cli("serve", "down", "--repo", repo)
    assert down.exit_code == 0, down.stderr
    assert _left_behind(docker_client, repo) == []
