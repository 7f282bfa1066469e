"""tfship's ``tensorflow_model_server``: TF Serving's options, turned into one running local engine.

``tfship model-server`` (and the ``tfship-model-server`` script, and the server image) parse TF Serving's
flags into :class:`ServerFlags`; ``tfship serve up --engine local`` fills the same flags from its own
options. Both then go through :func:`build_engine` and :func:`serve`: one engine, one set of behaviours.

Semantics follow TF Serving's ``model_servers/main.cc``, ``server.cc`` and ``server_core.cc``; defaults are
TF Serving's (``Server::Options``) unless a comment says otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfship.core.errors import TfshipError, UsageError

if TYPE_CHECKING:
    from tfship.serving.local_engine import LocalEngine

log = logging.getLogger(__name__)

# TF Serving listens on every interface ("0.0.0.0" is the way to listen on localhost in gRPC: main.cc).
LISTEN_HOST = "0.0.0.0"
UNVERIFIED_WARNING = ("WARNING: no --tfship_public_key (or TFSHIP_PUBLIC_KEY): model signatures are NOT verified; "
                      "every version on disk is served as it is")


def use_standard_kernels() -> None:
    """TensorFlow's standard CPU kernels, as TF Serving's standard build runs, instead of oneDNN's.

    Call before TensorFlow is imported (it reads the variable once). oneDNN's kernels abort the process on
    some input shapes that the standard ones refuse with INVALID_ARGUMENT, and the server runs what any
    client sends. An explicit TF_ENABLE_ONEDNN_OPTS wins; the engine then refuses undeclared shapes instead.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


FEW_CORES = 2  # at most this many: TensorFlow's ops on the calling thread unless the flags say otherwise (auto_threads)


@dataclass(frozen=True)
class ServerFlags:
    """TF Serving's server options with its defaults, plus tfship's own (``tfship_*``)."""

    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 0  # 0: TF Serving's "4 * number of CPUs"
    rest_api_timeout_in_ms: int = 30000
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: float = 1  # an int in TF Serving; tfship serve up polls faster in tests
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    enable_per_model_batching_parameters: bool = False
    monitoring_config_file: Path | None = None
    ssl_config_file: Path | None = None
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    saved_model_tags: str = "serve"
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    prefer_tflite_model: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    enable_grpc_healthcheck_service: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    # tfship's own
    tfship_public_key: Path | None = None
    tfship_host: str = LISTEN_HOST
    tfship_drain_seconds: float = 30.0
    # REST limits (TF Serving's HTTP server has none of its own): raise them to take larger JSON bodies.
    tfship_rest_max_body_bytes: int = 64 << 20
    tfship_rest_max_json_values: int = 1 << 22
    require_golden: bool = False
    ignored: tuple[str, ...] = field(default=())  # flags given that have no meaning here

    def check(self) -> ServerFlags:
        """TF Serving's own refusals (server.cc), in its words where it has them."""
        if not self.model_config_file and not self.model_base_path:
            raise UsageError("Both server_options.model_base_path and server_options.model_config_file are empty! "
                             "Give --model_base_path (with --model_name) or --model_config_file")
        if self.port == 0 and not self.grpc_socket_path:
            raise UsageError("At least one of server_options.grpc_port or server_options.grpc_socket_path must be set: "
                             "give --port (TF Serving's default is 8500) or --grpc_socket_path")
        if self.batching_parameters_file and not self.enable_batching:
            raise UsageError(f"server_options.batching_parameters_file is set without setting server_options.enable_batching "
                             f"to true: add --enable_batching (or drop --batching_parameters_file={self.batching_parameters_file})")
        for flag, path in (("--model_config_file", self.model_config_file), ("--batching_parameters_file", self.batching_parameters_file),
                           ("--monitoring_config_file", self.monitoring_config_file), ("--ssl_config_file", self.ssl_config_file),
                           ("--tfship_public_key", self.tfship_public_key)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag}={path}: no such file")
        if self.model_config_file is None and not Path(self.model_base_path).is_dir():
            # TF Serving starts and logs "Could not find base path ..." forever; say it once, clearly.
            log.warning("Could not find base path %s for servable %s: nothing is served until it exists",
                        self.model_base_path, self.model_name)
        tags = self.tags()
        if not tags:
            raise UsageError(f"--saved_model_tags={self.saved_model_tags!r} names no tag (TF Serving's default: serve)")
        from tfship.serving.local_engine.server import parse_channel_arguments

        try:
            parse_channel_arguments(self.grpc_channel_arguments)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return self

    def tags(self) -> frozenset[str]:
        """server.cc: ``str_util::Split(saved_model_tags, ",")``."""
        return frozenset(t.strip() for t in self.saved_model_tags.split(",") if t.strip())

    def threads(self) -> tuple[int, int]:
        """(intra, inter): --tensorflow_session_parallelism sets both unless the specific flags do; neither set: auto_threads."""
        intra = self.tensorflow_intra_op_parallelism or self.tensorflow_session_parallelism
        inter = self.tensorflow_inter_op_parallelism or self.tensorflow_session_parallelism
        if not intra and not inter:
            return auto_threads()
        return intra, inter


def auto_threads() -> tuple[int, int]:
    """TensorFlow's threads when no flag sets them: (intra-op, inter-op) for each model's Session.

    On FEW_CORES or fewer: one thread per op, and each call's ops on the thread that makes the call (inter-op
    -1: DirectSession's run_in_caller_thread), so no call waits for a pool thread to wake and TensorFlow's pool
    threads do not spin on the cores the request handling needs (measured: bench/serving.py). Elsewhere
    TensorFlow's own choice (0, 0).
    """
    if (os.cpu_count() or 1) > FEW_CORES:
        return 0, 0
    log.info("%d cores: TensorFlow runs each call's ops on the calling thread, one thread per op "
             "(--tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism choose otherwise)", os.cpu_count() or 1)
    return 1, -1


def model_server_config(flags: ServerFlags) -> Any:
    """The ``ModelServerConfig`` to serve: the file's, or TF Serving's single-model config (BuildSingleModelConfig)."""
    from tensorflow_serving.config import model_server_config_pb2

    from tfship.serving import config as cfg

    if flags.model_config_file:
        return cfg.read_model_server_config(flags.model_config_file)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = flags.model_name
    model.base_path = flags.model_base_path
    model.model_platform = "tensorflow"
    return config


def metrics_path(path: Path | None) -> str:
    """Where the REST port exports metrics: the MonitoringConfig's prometheus_config.path, or TF Serving's
    default. (The engine exports them even without the file, where TF Serving exports none.)"""
    from google.protobuf import text_format

    from tfship.serving.config import PROMETHEUS_PATH
    from tfship.serving.config_protos import MonitoringConfig

    if path is None:
        return PROMETHEUS_PATH
    try:
        config = text_format.Parse(path.read_text(encoding="utf-8"), MonitoringConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise UsageError(f"--monitoring_config_file={path}: not a readable MonitoringConfig text proto: {exc}") from None
    return config.prometheus_config.path or PROMETHEUS_PATH


def build_engine(flags: ServerFlags) -> LocalEngine:
    """(``flags`` checked.) The engine the flags describe; not started."""
    from tfship.serving import config as cfg
    from tfship.serving import gate
    from tfship.serving.local_engine import LocalEngine, TlsOptions
    from tfship.serving.local_engine.bounded_json import JsonLimits
    from tfship.serving.local_engine.models import LoadOptions, configs_from_proto
    from tfship.serving.local_engine.rest import RestLimits
    from tfship.serving.local_engine.server import GrpcOptions, parse_channel_arguments

    configs = configs_from_proto(model_server_config(flags))
    batching = None
    if flags.enable_batching:
        batching = cfg.BatchingOptions.from_file(flags.batching_parameters_file) if flags.batching_parameters_file else cfg.BatchingOptions()
    tls = None
    if flags.ssl_config_file:
        ssl = cfg.read_ssl_config(flags.ssl_config_file)
        tls = TlsOptions(server_key=ssl.server_key.encode(), server_cert=ssl.server_cert.encode(),
                         custom_ca=ssl.custom_ca.encode() if ssl.custom_ca else None, client_verify=ssl.client_verify)
    rest_port: int | None = flags.rest_api_port or None
    if rest_port is not None and rest_port == flags.port:
        # server.cc serves gRPC alone then: "server_options.http_port cannot be same as grpc_port. Please use a
        # different port for HTTP/REST API. Skipped exporting HTTP/REST API."
        log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for HTTP/REST API. "
                  "Skipped exporting HTTP/REST API.")
        rest_port = None
    intra, inter = flags.threads()
    load_options = LoadOptions(
        tags=flags.tags(), prefer_tflite=flags.prefer_tflite_model, warmup=flags.enable_model_warmup,
        warmup_iterations=max(1, flags.num_request_iterations_for_warmup),
        max_load_retries=max(0, flags.max_num_load_retries), retry_interval_seconds=max(0, flags.load_retry_interval_micros) / 1e6,
        intra_op_threads=intra, inter_op_threads=inter, method_name_check=flags.enable_signature_method_name_check,
        allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
        per_model_batching=flags.enable_batching and flags.enable_per_model_batching_parameters,
        require_golden=flags.require_golden)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rest_limits = RestLimits(parse_threads=flags.rest_api_num_threads or 4 * cpus, metrics_path=metrics_path(flags.monitoring_config_file),
                             max_body_bytes=flags.tfship_rest_max_body_bytes,
                             max_inflight_body_bytes=max(RestLimits.max_inflight_body_bytes, 4 * flags.tfship_rest_max_body_bytes),
                             json=JsonLimits(max_values=flags.tfship_rest_max_json_values),
                             request_timeout=flags.rest_api_timeout_in_ms / 1000 if flags.rest_api_timeout_in_ms > 0 else None)
    grpc_options = GrpcOptions(socket_path=flags.grpc_socket_path,
                               channel_arguments=parse_channel_arguments(flags.grpc_channel_arguments),
                               max_concurrent_rpcs=flags.grpc_max_threads or None,
                               health_service=flags.enable_grpc_healthcheck_service)
    return LocalEngine(configs, host=flags.tfship_host, grpc_port=flags.port or None, rest_port=rest_port,
                       verifier=gate.verifier_for(flags.tfship_public_key), batching=batching,
                       poll_seconds=float(flags.file_system_poll_wait_seconds), tls=tls,
                       intra_op_threads=intra, inter_op_threads=inter, rest_limits=rest_limits,
                       load_options=load_options, grpc_options=grpc_options)


class ConfigFilePoller:
    """Re-reads ``--model_config_file`` every ``--model_config_file_poll_wait_seconds`` and applies changes.

    As TF Serving does (server.cc PollFilesystemAndReloadConfig): a file that no longer parses is logged and
    the running config is kept; models added are loaded, models removed are unloaded.
    """

    def __init__(self, engine: LocalEngine, path: Path, seconds: float) -> None:
        self._engine, self._path, self._seconds = engine, path, seconds
        self._stop = threading.Event()
        self._last = self._read_text()
        self._thread = threading.Thread(target=self._run, name="tfship-config-poll", daemon=True)

    def _read_text(self) -> str | None:
        try:
            return self._path.read_text(encoding="utf-8")
        except OSError:
            return None

    def start(self) -> ConfigFilePoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._seconds + 5)

    def _run(self) -> None:
        from tfship.serving import config as cfg

        while not self._stop.wait(self._seconds):
            text = self._read_text()
            if text is None or text == self._last:
                continue
            self._last = text
            try:
                self._engine.core.reload_config(cfg.read_model_server_config(self._path))
            except TfshipError as exc:
                log.error("%s changed but was not applied: %s", self._path, exc.message)
            except Exception as exc:  # an engine refusal (a label on a version that is not available)
                log.error("%s changed but was not applied: %s", self._path, getattr(exc, "message", exc))
            else:
                log.info("%s changed: models reloaded", self._path)
            self._engine.refresh_health()


def serve(flags: ServerFlags, on_serving: Any = None) -> dict[str, Any]:
    """(``flags`` checked.) Load the models, open the ports, serve until SIGTERM or SIGINT.

    On the signal, health checks and /v1/ready answer "not serving" at once and in-flight requests get up
    to ``--tfship_drain_seconds`` to finish (TF Serving exits without draining: tensorflow/serving#1853).
    """
    for flag in flags.ignored:
        log.warning("%s has no meaning for tfship's engine (CPU, TensorFlow runtime in Python): ignored", flag)
    engine = build_engine(flags)
    engine.start()
    poller = None
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        poller = ConfigFilePoller(engine, flags.model_config_file, flags.model_config_file_poll_wait_seconds).start()
    try:
        if on_serving is not None:
            on_serving(engine)
        engine.serve_until_signal(grace=flags.tfship_drain_seconds)
    finally:
        if poller is not None:
            poller.stop()
    return {"stopped": True}
