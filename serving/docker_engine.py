"""The official tensorflow/serving container (or tfship's own server image), started with the Docker SDK.

The container sees the repository read-only at /models, reads the generated models.config from there,
and polls it (and the version directories) for changes. Its entrypoint already passes --port=8500
--rest_api_port=8501 --model_name --model_base_path; the flags below are appended after the image.
An image labelled ``org.tfship.model-server`` (docker/model-server.Dockerfile) runs tfship's server: it also
gets --enable_grpc_healthcheck_service and --max_num_load_retries=0 (``server_flags``), flags the official
image's older releases refuse as unknown.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import logging
import re
import socket
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
# docker/model-server.Dockerfile sets it: the image runs tfship-model-server (grpc.health.v1, /v1/ready).
TFSHIP_SERVER_LABEL = "org.tfship.model-server"
# What the engine answers when a host port is taken: by another process (the userland proxy cannot listen) or
# by another container ("port is already allocated"); both name the host address and port.
_PORT_IN_USE = re.compile(r"(?:listen tcp[46]? |Bind for )\[?([0-9a-fA-F.:]*?)\]?:(\d+)(?::| failed).*?"
                          r"(?:address already in use|port is already allocated)", re.DOTALL)


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
                 inter_op_threads: int = 0, tfship_server: bool = False) -> list[str]:
    """The server's flags. ``tfship_server``: the image runs tfship's server, which also gets what serve up
    gives the local engine: grpc.health.v1, and a failed load reported at once instead of retried 5 times a
    minute apart (TF Serving's --max_num_load_retries default), so that serve up shows the failure, not a
    timeout. Neither goes to the official image: its older releases know neither flag and exit on one."""
    flags = [f"--model_config_file={CONTAINER_ROOT}/{MODELS_CONFIG}",
             f"--model_config_file_poll_wait_seconds={CONFIG_POLL_SECONDS}"]
    if tfship_server:
        flags += ["--enable_grpc_healthcheck_service=true", "--max_num_load_retries=0"]
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
                   public_key: Path | None = None, tfship_server: bool = False) -> ContainerSpec:
    """What to run. ``model_name``: a served model, for the image's MODEL_NAME (the entrypoint passes it as
    --model_name, which --model_config_file overrides; the compose file's health check falls back to it on the
    official image). ``public_key``: mounted read-only and named by TFSHIP_PUBLIC_KEY, so tfship's image
    verifies every version again when it loads it (the official image ignores both). ``tfship_server``: the
    image runs tfship's server (its ``org.tfship.model-server`` label); see ``server_flags``."""
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
        command=server_flags(batching=batching, ssl=ssl, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                             tfship_server=tfship_server),
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

    def ensure_image(self, image: str) -> dict[str, str]:
        """The image's labels, pulling it first when the engine does not have it."""
        docker = _sdk()
        try:
            found = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            log.info("pulling %s (first run only)", image)
            try:
                found = self.client.images.pull(image)
            except docker.errors.APIError as exc:
                raise ServerUnavailable(f"cannot pull {image}: {exc}") from exc
        except docker.errors.APIError as exc:
            raise ServingError(f"Docker engine error: {exc}") from exc
        return dict(found.labels or {})

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
        self.ensure_image(spec.image)
        try:
            return self.client.containers.run(**spec.run_kwargs())
        except docker.errors.APIError as exc:
            # docker run = create + start: a failed start leaves a created container behind.
            self.remove(spec.name)
            explanation = str(exc.explanation or exc)
            raise ServerUnavailable(port_in_use(explanation, spec.ports)
                                    or f"cannot start {spec.image}: {first_line(explanation)}") from exc

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
        """Up now, restarts included: the engine that serves the repository (``serve status``, ``reload``).

        A container the restart policy brought back after its server died is running again; one between
        two attempts (``restarting``) is not."""
        container = self._container(name)
        return container is not None and container.status == "running"

    def started_cleanly(self, name: str) -> bool:
        """Up and never restarted, for ``serve up``'s wait: TF Serving exits when its models fail to load,
        and the restart policy would bring it back, so a restart during the wait means it failed."""
        container = self._container(name)
        return container is not None and container.status == "running" and not container.attrs.get("RestartCount", 0)

    def _container(self, name: str) -> Any:
        docker = _sdk()
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None


def port_in_use(explanation: str, ports: dict[str, tuple[str, int]]) -> str | None:
    """One line naming the taken host port and the option that chose it, when that is why a start failed."""
    match = _PORT_IN_USE.search(explanation)
    if match is None:
        return None
    port = int(match.group(2))
    options = {"8500/tcp": "--grpc-port", "8501/tcp": "--rest-port"}
    chosen = [(options.get(key, key), host) for key, (host, host_port) in ports.items() if host_port == port]
    option, host = chosen[0] if chosen else ("--grpc-port or --rest-port", match.group(1))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"cannot start the container: {where} is already in use on this host (choose another with {option})"


def check_ports_free(spec: ContainerSpec) -> None:
    """Refuse, in one line, a host port something already listens on, before a container is created.

    The engine refuses it too when its userland proxy binds the port (``port_in_use`` reads that answer);
    with the proxy turned off (``"userland-proxy": false``) it would start the container and the other
    listener would keep the port's local traffic, so the check is made here for both setups.
    """
    for key, (host, port) in spec.ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: a port left in TIME_WAIT is free for the engine too; a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]"), port))
            except OSError as exc:
                message = port_in_use(f"listen tcp {host}:{port}: bind: address already in use", {key: (host, port)})
                if exc.errno == errno.EADDRINUSE and message:
                    raise ServerUnavailable(message) from None
                log.debug("cannot probe %s:%d (%s); the engine decides", host, port, exc)


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
    image = options.image or default_image_tag(options.repo, options.gpu)
    tfship_server = TFSHIP_SERVER_LABEL in launcher.ensure_image(image)
    spec = container_spec(options.repo, grpc_port=options.grpc_port, rest_port=options.rest_port,
                          batching=generated.batching_config is not None, ssl=generated.ssl_config is not None,
                          gpu=options.gpu, image=image, host=options.host,
                          intra_op_threads=options.intra_op_threads, inter_op_threads=options.inter_op_threads,
                          model_name=min(generated.models), tfship_server=tfship_server,
                          public_key=(container_key_copy(options.repo, options.public_key)
                                      if options.public_key is not None and not options.allow_unsigned else None))
    check_ports_free(spec)
    launcher.start(spec)
    try:
        write_state(options.repo, EngineState(engine="docker", container=spec.name, image=spec.image, host=options.host,
                                              grpc_port=options.grpc_port, rest_port=options.rest_port,
                                              models=generated.models, tls=bool(generated.ssl_config)))
        statuses = wait_ready(address(options.host, options.grpc_port), generated.models, timeout=options.timeout,
                              alive=lambda: launcher.started_cleanly(spec.name), tls_root=options.tls_root())
    except (ServerUnavailable, KeyboardInterrupt) as exc:
        logs = launcher.logs(spec.name)
        launcher.remove(spec.name)
        remove_state(options.repo)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ServerUnavailable(f"{exc.message}\n--- container log ({spec.name}) ---\n{logs}") from exc
    return {"engine": "docker", "container": spec.name, "image": spec.image, "grpc": address(options.host, options.grpc_port),
            "rest": f"http://{address(options.host, options.rest_port)}", "models": statuses, "config": generated.to_dict()}
