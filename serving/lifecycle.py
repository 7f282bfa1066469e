"""``tfship serve``: verify, write configs, start an engine, wait until the models are AVAILABLE."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfship.core.errors import ServerUnavailable, ServingError, UsageError
from tfship.exporter.repository import pid_alive
from tfship.serving import config as cfg
from tfship.serving import docker_engine, gate

log = logging.getLogger(__name__)

RUN_DIR = ".tfship-run"
STATE_FILE = "engine.json"
LOCAL_CONFIG = "local-models.config"
LOG_FILE = "local-engine.log"


@dataclass(frozen=True)
class ServeOptions:
    repo: Path = Path("models")
    engine: str = "auto"  # auto, docker, local
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    public_key: Path | None = None
    allow_unsigned: bool = False
    skip_invalid: bool = False
    policy: cfg.VersionPolicy = cfg.VersionPolicy()
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    batching: cfg.BatchingOptions | None = None
    ssl_key: Path | None = None
    ssl_cert: Path | None = None
    ssl_ca: Path | None = None
    ssl_client_verify: bool = False
    gpu: bool = False
    image: str | None = None
    timeout: float = 120.0
    poll_seconds: float = 1.0
    # TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (0: TensorFlow's default).
    intra_op_threads: int = 0
    inter_op_threads: int = 0


@dataclass(frozen=True)
class GeneratedConfig:
    models_config: Path
    local_config: Path
    batching_config: Path | None
    monitoring_config: Path
    ssl_config: Path | None
    models: dict[str, list[int]]
    skipped: list[tuple[str, int]]

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def run_dir(repo: Path) -> Path:
    return Path(repo) / RUN_DIR


def write_configs(options: ServeOptions) -> GeneratedConfig:
    """Verify (the gate), then write models.config and friends into the repository."""
    repo = Path(options.repo)
    exclude = gate.gate(repo, public_key=options.public_key, allow_unsigned=options.allow_unsigned,
                        skip_invalid=options.skip_invalid)
    container_entries = cfg.build_entries(repo, base_root=cfg.CONTAINER_ROOT, policy=options.policy,
                                          labels=options.labels, exclude=exclude)
    if not container_entries:
        raise ServingError(f"{repo}: no model version to serve" + (" (every version failed verification)" if exclude else
                                                                    "; export one first: tfship export MODEL --name NAME"))
    local_entries = cfg.build_entries(repo, base_root=None, policy=options.policy, labels=options.labels, exclude=exclude)
    models_config = cfg.write_text_proto(repo / cfg.MODELS_CONFIG, cfg.model_server_config(container_entries))
    local_config = cfg.write_text_proto(run_dir(repo) / LOCAL_CONFIG, cfg.model_server_config(local_entries))
    monitoring = cfg.write_text_proto(repo / cfg.MONITORING_CONFIG, cfg.monitoring_config())
    batching = cfg.write_text_proto(repo / cfg.BATCHING_CONFIG, options.batching.to_proto()) if options.batching else None
    ssl = None
    if options.ssl_key or options.ssl_cert:
        if not (options.ssl_key and options.ssl_cert):
            raise UsageError("TLS needs both --ssl-key and --ssl-cert")
        ssl = cfg.write_text_proto(repo / cfg.SSL_CONFIG, cfg.ssl_config(options.ssl_key, options.ssl_cert, options.ssl_ca, options.ssl_client_verify))
        os.chmod(ssl, 0o600)
    served = {e.name: list(e.only_versions or e.policy.select(cfg.scan(repo)[e.name])) for e in container_entries}
    return GeneratedConfig(models_config, local_config, batching, monitoring, ssl, served, sorted(exclude))


def choose_engine(requested: str) -> str:
    if requested in ("docker", "local"):
        return requested
    if requested != "auto":
        raise UsageError(f"--engine {requested!r}: choose auto, docker or local")
    problem = docker_engine.engine_problem()
    if problem is None:
        log.info("engine: docker (a Docker engine answered)")
        return "docker"
    log.info("engine: local (no Docker engine answered: %s)", problem)
    return "local"


def _write_state(repo: Path, state: dict) -> None:
    path = run_dir(repo) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def read_state(repo: Path) -> dict | None:
    try:
        return json.loads((run_dir(repo) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _client_target(options: ServeOptions) -> str:
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    return f"{host}:{options.grpc_port}"


def wait_ready(target: str, models: list[str], timeout: float, alive=lambda: True, tls_root: bytes | None = None) -> dict:
    """GetModelStatus until every model is AVAILABLE; raises ServerUnavailable with the reason otherwise."""
    from tfship.client.grpc_client import ServingClient

    deadline = time.monotonic() + timeout
    statuses = {}
    with ServingClient(target, timeout=5, root_certificates=tls_root, retries=2) as client:
        for model in models:
            while True:
                if not alive():
                    raise ServerUnavailable("the server exited before the models were available")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerUnavailable(f"{model} is not AVAILABLE after {timeout:g}s (--timeout)")
                try:
                    statuses[model] = [s.to_dict() for s in client.wait_until_available(model, timeout=min(remaining, 5))]
                    break
                except ServerUnavailable as exc:
                    if "failed to load" in exc.message:
                        raise
                    time.sleep(0.2)
    return statuses


def up(options: ServeOptions, *, detach: bool) -> dict:
    repo = Path(options.repo)
    generated = write_configs(options)
    engine = choose_engine(options.engine)
    previous = read_state(repo)
    if previous and _state_running(previous):
        raise ServingError(f"an engine is already serving {repo} ({previous['engine']}, pid/container {previous.get('pid') or previous.get('container')}); run 'tfship serve down --repo {repo}' first")
    if engine == "docker":
        return _up_docker(options, generated)
    if detach:
        return _up_local_detached(options, generated)
    return _up_local_foreground(options, generated)


def _state_running(state: dict) -> bool:
    if state.get("engine") == "local":
        return bool(state.get("pid")) and pid_alive(int(state["pid"]))
    if state.get("engine") == "docker":
        client = docker_engine.docker_client()
        return bool(client) and docker_engine.DockerLauncher(client).running(state["container"])
    return False


def engine_args(options: ServeOptions, generated: GeneratedConfig) -> list[str]:
    args = ["--config", str(generated.local_config), "--host", options.host, "--grpc-port", str(options.grpc_port),
            "--rest-port", str(options.rest_port), "--poll-seconds", str(options.poll_seconds),
            "--tensorflow-intra-op-parallelism", str(options.intra_op_threads),
            "--tensorflow-inter-op-parallelism", str(options.inter_op_threads)]
    if options.public_key and not options.allow_unsigned:
        args += ["--public-key", str(options.public_key)]
    if generated.batching_config:
        args += ["--batching-parameters-file", str(generated.batching_config)]
    if generated.ssl_config:
        args += ["--ssl-config-file", str(generated.ssl_config)]
    return args


def _up_local_detached(options: ServeOptions, generated: GeneratedConfig) -> dict:
    repo = Path(options.repo)
    run = run_dir(repo)
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / LOG_FILE
    command = [sys.executable, "-m", "tfship", "serve", "run-local", *engine_args(options, generated)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (run / "local-engine.pid").write_text(str(process.pid))
    state = {"engine": "local", "pid": process.pid, "host": options.host, "grpc_port": options.grpc_port,
             "rest_port": options.rest_port, "log": str(log_path), "models": generated.models,
             "tls": bool(generated.ssl_config)}
    _write_state(repo, state)
    log.info("local engine starting (pid %d), log: %s", process.pid, log_path)
    tls_root = Path(options.ssl_ca or options.ssl_cert).read_bytes() if generated.ssl_config else None
    try:
        statuses = wait_ready(_client_target(options), sorted(generated.models), options.timeout,
                              alive=lambda: process.poll() is None, tls_root=tls_root)
    except ServerUnavailable as exc:
        tail = _tail(log_path)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        (run / STATE_FILE).unlink(missing_ok=True)
        raise ServerUnavailable(f"{exc.message}\n--- last lines of {log_path} ---\n{tail}") from None
    return {"engine": "local", "pid": process.pid, "grpc": _client_target(options),
            "rest": f"http://{_client_target(options).rsplit(':', 1)[0]}:{options.rest_port}", "log": str(log_path),
            "models": statuses, "config": generated.to_dict()}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _up_local_foreground(options: ServeOptions, generated: GeneratedConfig) -> dict:
    engine = build_local_engine(generated.local_config, host=options.host, grpc_port=options.grpc_port,
                                rest_port=options.rest_port, public_key=None if options.allow_unsigned else options.public_key,
                                batching_file=generated.batching_config, ssl_config_file=generated.ssl_config,
                                poll_seconds=options.poll_seconds, intra_op_threads=options.intra_op_threads,
                                inter_op_threads=options.inter_op_threads)
    engine.start()
    _write_state(options.repo, {"engine": "local", "pid": os.getpid(), "host": options.host,
                                "grpc_port": engine.grpc_port, "rest_port": engine.rest_port, "models": generated.models})
    print(f"serving {', '.join(sorted(generated.models))}: gRPC {options.host}:{engine.grpc_port}, "
          f"REST http://{options.host}:{engine.rest_port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        engine.serve_until_signal()
    finally:
        (run_dir(options.repo) / STATE_FILE).unlink(missing_ok=True)
    return {"engine": "local", "stopped": True}


def build_local_engine(config_file: Path, *, host: str, grpc_port: int, rest_port: int | None, public_key: Path | None,
                       batching_file: Path | None = None, ssl_config_file: Path | None = None, poll_seconds: float = 1.0,
                       intra_op_threads: int = 0, inter_op_threads: int = 0):
    from tfship.serving.local_engine import LocalEngine, TlsOptions
    from tfship.serving.local_engine.models import configs_from_proto

    configs = configs_from_proto(cfg.read_model_server_config(config_file))
    batching = cfg.BatchingOptions.from_file(batching_file) if batching_file else None
    tls = None
    if ssl_config_file:
        ssl = cfg.read_ssl_config(ssl_config_file)
        tls = TlsOptions(server_key=ssl.server_key.encode(), server_cert=ssl.server_cert.encode(),
                         custom_ca=ssl.custom_ca.encode() if ssl.custom_ca else None, client_verify=ssl.client_verify)
    return LocalEngine(configs, host=host, grpc_port=grpc_port, rest_port=rest_port, verifier=gate.verifier_for(public_key),
                       batching=batching, poll_seconds=poll_seconds, tls=tls, intra_op_threads=intra_op_threads,
                       inter_op_threads=inter_op_threads)


def _up_docker(options: ServeOptions, generated: GeneratedConfig) -> dict:
    client = docker_engine.docker_client()
    if client is None:
        raise ServerUnavailable(f"--engine docker: no Docker engine answered ({docker_engine.engine_problem()}); "
                                f"start Docker, or use --engine local")
    launcher = docker_engine.DockerLauncher(client)
    spec = docker_engine.container_spec(options.repo, grpc_port=options.grpc_port, rest_port=options.rest_port,
                                        batching=generated.batching_config is not None, ssl=generated.ssl_config is not None,
                                        gpu=options.gpu, image=options.image, host=options.host,
                                        intra_op_threads=options.intra_op_threads, inter_op_threads=options.inter_op_threads)
    launcher.start(spec)
    _write_state(options.repo, {"engine": "docker", "container": spec.name, "image": spec.image, "host": options.host,
                                "grpc_port": options.grpc_port, "rest_port": options.rest_port, "models": generated.models})
    tls_root = Path(options.ssl_ca or options.ssl_cert).read_bytes() if generated.ssl_config else None
    try:
        statuses = wait_ready(_client_target(options), sorted(generated.models), options.timeout,
                              alive=lambda: launcher.running(spec.name), tls_root=tls_root)
    except ServerUnavailable as exc:
        logs = launcher.logs(spec.name)
        raise ServerUnavailable(f"{exc.message}\n--- container log ({spec.name}) ---\n{logs}") from None
    return {"engine": "docker", "container": spec.name, "image": spec.image, "grpc": _client_target(options),
            "rest": f"http://{_client_target(options).rsplit(':', 1)[0]}:{options.rest_port}", "models": statuses,
            "config": generated.to_dict()}


def down(repo: Path, timeout: float = 30.0) -> dict:
    state = read_state(repo)
    if not state:
        return {"stopped": False, "reason": f"no engine recorded for {repo}"}
    stopped = False
    if state["engine"] == "local":
        pid = int(state["pid"])
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)  # the engine drains in-flight requests, then exits
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped = True
        (run_dir(repo) / "local-engine.pid").unlink(missing_ok=True)
    else:
        client = docker_engine.docker_client()
        if client is None:
            raise ServerUnavailable(f"cannot stop container {state['container']}: no Docker engine answered")
        stopped = docker_engine.DockerLauncher(client).stop(state["container"], timeout=int(timeout))
    (run_dir(repo) / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "engine": state["engine"]}


def status(repo: Path) -> dict:
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import TfshipError

    state = read_state(repo)
    if not state:
        return {"running": False, "reason": f"no engine recorded for {repo}; start one with tfship serve up"}
    running = _state_running(state)
    result = {"running": running, **{k: state[k] for k in ("engine", "host", "grpc_port", "rest_port") if k in state}, "models": {}}
    if not running:
        return result
    host = "127.0.0.1" if state.get("host") in ("0.0.0.0", "::") else state.get("host", "127.0.0.1")
    if state.get("tls"):
        result["models"] = {m: "TLS endpoint: query it with tfship validate --root-certificates" for m in state.get("models", {})}
        return result
    with ServingClient(f"{host}:{state['grpc_port']}", timeout=5, retries=2) as client:
        for model in state.get("models", {}):
            try:
                result["models"][model] = [s.to_dict() for s in client.status(model)]
            except TfshipError as exc:
                result["models"][model] = exc.message
    return result
