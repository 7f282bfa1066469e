"""The official tensorflow/serving container, started with the Docker SDK.

The container sees the repository read-only at /models, reads the generated models.config from there,
and polls it (and the version directories) for changes. Its entrypoint already passes --port=8500
--rest_api_port=8501 --model_name --model_base_path; the flags below are appended after the image.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tfship.core.errors import ServerUnavailable, ServingError, first_line
from tfship.serving.config import BATCHING_CONFIG, CONTAINER_ROOT, MODELS_CONFIG, MONITORING_CONFIG, SSL_CONFIG, write_text_file
from tfship.serving.config_writer import GeneratedConfig
from tfship.serving.options import ServeOptions, address
from tfship.serving.readiness import wait_ready
from tfship.serving.state import EngineState, remove_state, run_dir, write_state

log = logging.getLogger(__name__)

IMAGE = "tensorflow/serving"
CONFIG_POLL_SECONDS = 60
CONTAINER_KEY_FILE = "container-public-key.pem"
CONTAINER_KEY_PATH = "/etc/tfship/public_key.pem"
MAX_PUBLIC_KEY_BYTES = 1 << 16


def default_image_tag(repo: Path | None = None, gpu: bool = False) -> str:
    """The TF Serving release matching the TensorFlow that exported the models."""
    version = None
    if repo is not None:
        import json

        for manifest in sorted(Path(repo).glob("*/*/manifest.json")):
            try:
                version = json.loads(manifest.read_text())["libraries"].get("tensorflow")
            except (OSError, ValueError, KeyError):
                continue
            if version:
                break
    if not version:
        try:
            version = metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            version = "latest"
    tag = ".".join(version.split(".")[:3]) if version != "latest" else version
    return f"{IMAGE}:{tag}{'-gpu' if gpu else ''}"


def container_name(repo: Path) -> str:
    return "tfship-serving-" + hashlib.sha256(str(Path(repo).resolve()).encode()).hexdigest()[:10]


def server_flags(*, batching: bool, ssl: bool, monitoring: bool = True, intra_op_threads: int = 0,
                 inter_op_threads: int = 0) -> list[str]:
    flags = [f"--model_config_file={CONTAINER_ROOT}/{MODELS_CONFIG}",
             f"--model_config_file_poll_wait_seconds={CONFIG_POLL_SECONDS}"]
    if batching:
        flags += ["--enable_batching=true", f"--batching_parameters_file={CONTAINER_ROOT}/{BATCHING_CONFIG}"]
    if monitoring:
        flags.append(f"--monitoring_config_file={CONTAINER_ROOT}/{MONITORING_CONFIG}")
    if ssl:
        flags.append(f"--ssl_config_file={CONTAINER_ROOT}/{SSL_CONFIG}")
    if intra_op_threads:
        flags.append(f"--tensorflow_intra_op_parallelism={intra_op_threads}")
    if inter_op_threads:
        flags.append(f"--tensorflow_inter_op_parallelism={inter_op_threads}")
    return flags


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    name: str
    command: list[str]
    ports: dict[str, tuple[str, int]]
    volumes: dict[str, dict[str, str]]
    environment: dict[str, str]
    labels: dict[str, str]
    gpu: bool = False
    restart_policy: dict[str, Any] = field(default_factory=lambda: {"Name": "unless-stopped"})

    def run_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "image": self.image, "name": self.name, "command": self.command, "ports": self.ports,
            "volumes": self.volumes, "environment": self.environment, "labels": self.labels,
            "detach": True, "restart_policy": self.restart_policy,
        }
        if self.gpu:
            docker = _sdk()
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return kwargs


def container_key_copy(repo: Path, public_key: Path) -> Path:
    """A world-readable copy of the public key beside the state file, for the container's server user.

    A public key is no secret, but the user's own file may be 0600 and owned by another uid than the
    image's non-root user; the copy (0644) is what gets mounted.
    """
    try:
        data = Path(public_key).read_bytes()
    except OSError as exc:
        raise ServingError(f"{public_key}: cannot read the public key to mount it into the container: {exc}") from exc
    if len(data) > MAX_PUBLIC_KEY_BYTES:
        raise ServingError(f"{public_key}: larger than {MAX_PUBLIC_KEY_BYTES} bytes; not a PEM public key")
    return write_text_file(run_dir(repo) / CONTAINER_KEY_FILE, data.decode("ascii", "replace"), mode=0o644)


def container_spec(repo: Path, *, grpc_port: int = 8500, rest_port: int = 8501, batching: bool = False,
                   ssl: bool = False, gpu: bool = False, image: str | None = None, host: str = "127.0.0.1",
                   intra_op_threads: int = 0, inter_op_threads: int = 0, model_name: str | None = None,
                   public_key: Path | None = None) -> ContainerSpec:
    """What to run. ``model_name``: a served model, for the image's MODEL_NAME (tfship-model-server's
    HEALTHCHECK asks for /v1/models/$MODEL_NAME; with --model_config_file TF Serving ignores the entrypoint's
    --model_name). ``public_key``: mounted read-only and named by TFSHIP_PUBLIC_KEY, so tfship's image
    verifies every version again when it loads it (the official image ignores both)."""
    repo = Path(repo).resolve()
    volumes = {str(repo): {"bind": CONTAINER_ROOT, "mode": "ro"}}
    environment = {"MODEL_BASE_PATH": CONTAINER_ROOT}
    if model_name:
        environment["MODEL_NAME"] = model_name
    if public_key is not None:
        volumes[str(Path(public_key).resolve())] = {"bind": CONTAINER_KEY_PATH, "mode": "ro"}
        environment["TFSHIP_PUBLIC_KEY"] = CONTAINER_KEY_PATH
    return ContainerSpec(
        image=image or default_image_tag(repo, gpu),
        name=container_name(repo),
        command=server_flags(batching=batching, ssl=ssl, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads),
        ports={"8500/tcp": (host, grpc_port), "8501/tcp": (host, rest_port)},
        volumes=volumes,
        environment=environment,
        labels={"tfship.repository": str(repo)},
        gpu=gpu,
    )


def _sdk() -> Any:
    """The Docker SDK, imported when needed (the repository's own docker/ folder shadows it for type checkers)."""
    return importlib.import_module("docker")


def docker_client(timeout: float = 3.0) -> Any:
    """A Docker client whose engine answered a ping, or None (with the reason logged)."""
    try:
        docker = _sdk()
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # no socket, no daemon, permission denied, SDK missing
        log.debug("no Docker engine: %s", exc)
        return None


def engine_problem() -> str | None:
    try:
        _sdk().from_env(timeout=3).ping()
        return None
    except Exception as exc:
        text = first_line(exc)
        return text[:200]


class DockerLauncher:
    def __init__(self, client: Any) -> None:
        self.client = client

    def start(self, spec: ContainerSpec) -> Any:
        docker = _sdk()
        try:
            existing = self.client.containers.get(spec.name)
        except docker.errors.NotFound:
            existing = None
        except docker.errors.APIError as exc:
            raise ServingError(f"Docker engine error: {exc}") from exc
        if existing is not None:
            existing.remove(force=True)
        try:
            self.client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            log.info("pulling %s (first run only)", spec.image)
            try:
                self.client.images.pull(spec.image)
            except docker.errors.APIError as exc:
                raise ServerUnavailable(f"cannot pull {spec.image}: {exc}") from exc
        try:
            return self.client.containers.run(**spec.run_kwargs())
        except docker.errors.APIError as exc:
            # docker run = create + start: a failed start leaves a created container behind.
            self.remove(spec.name)
            raise ServerUnavailable(f"cannot start {spec.image}: {exc.explanation or exc}") from exc

    def logs(self, name: str, tail: int = 60) -> str:
        try:
            return self.client.containers.get(name).logs(tail=tail).decode("utf-8", "replace")
        except Exception as exc:  # the container may already be gone
            return f"(no log: {exc})"

    def stop(self, name: str, timeout: int = 30) -> bool:
        docker = _sdk()
        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return False
        container.stop(timeout=timeout)
        container.remove()
        return True

    def remove(self, name: str) -> bool:
        """Remove the container whatever its state (running, restarting, created); False if there was none."""
        docker = _sdk()
        try:
            self.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            log.warning("could not remove container %s: %s", name, exc)
            return False
        return True

    def running(self, name: str) -> bool:
        """Up and never restarted: TF Serving exits when its models fail to load, and the restart
        policy would bring it back, so a restart means it failed."""
        docker = _sdk()
        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return False
        return container.status == "running" and not container.attrs.get("RestartCount", 0)


def serve_in_container(options: ServeOptions, generated: GeneratedConfig) -> dict[str, Any]:
    """Start the TF Serving container, record it, wait until its models are AVAILABLE.

    A failed start leaves nothing behind: the container (with its restart policy) is removed and
    nothing is recorded, as for the local engine.
    """
    client = docker_client()
    if client is None:
        raise ServerUnavailable(f"--engine docker: no Docker engine answered ({engine_problem()}); "
                                f"start Docker, or use --engine local")
    launcher = DockerLauncher(client)
    spec = container_spec(options.repo, grpc_port=options.grpc_port, rest_port=options.rest_port,
                          batching=generated.batching_config is not None, ssl=generated.ssl_config is not None,
                          gpu=options.gpu, image=options.image, host=options.host,
                          intra_op_threads=options.intra_op_threads, inter_op_threads=options.inter_op_threads,
                          model_name=min(generated.models),
                          public_key=(container_key_copy(options.repo, options.public_key)
                                      if options.public_key is not None and not options.allow_unsigned else None))
    launcher.start(spec)
    try:
        write_state(options.repo, EngineState(engine="docker", container=spec.name, image=spec.image, host=options.host,
                                              grpc_port=options.grpc_port, rest_port=options.rest_port,
                                              models=generated.models, tls=bool(generated.ssl_config)))
        statuses = wait_ready(address(options.host, options.grpc_port), generated.models, timeout=options.timeout,
                              alive=lambda: launcher.running(spec.name), tls_root=options.tls_root())
    except (ServerUnavailable, KeyboardInterrupt) as exc:
        logs = launcher.logs(spec.name)
        launcher.remove(spec.name)
        remove_state(options.repo)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ServerUnavailable(f"{exc.message}\n--- container log ({spec.name}) ---\n{logs}") from exc
    return {"engine": "docker", "container": spec.name, "image": spec.image, "grpc": address(options.host, options.grpc_port),
            "rest": f"http://{address(options.host, options.rest_port)}", "models": statuses, "config": generated.to_dict()}
