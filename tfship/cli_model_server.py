"""``tfship model-server`` (also ``tfship-model-server``): the local engine with TF Serving's own flags.

Flags are spelled as ``tensorflow_model_server`` spells them (``--port=8500``, ``--rest_api_port``,
``--model_name``, ...), in either ``--flag=value`` or ``--flag value`` form, so the command drops in where
TF Serving runs: tfship's server image starts it exactly as the official image starts
``tensorflow_model_server``. Two modes, as in TF Serving's ``main.cc``: one model from ``--model_name`` and
``--model_base_path``, or every model of ``--model_config_file`` (which then makes the other two ignored).

Beyond TF Serving: ``--tfship_public_key`` (or ``TFSHIP_PUBLIC_KEY``) verifies every version's signature
before it is loaded. Without a key the server serves what is on disk, unverified, and says so loudly.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tfship.command import State, command, configure_logging, quiet_tensorflow
from tfship.core.errors import UsageError

if TYPE_CHECKING:
    from tfship.serving.local_engine import LocalEngine

log = logging.getLogger(__name__)

# TF Serving listens on every interface ("0.0.0.0" is the way to listen on localhost in gRPC: main.cc).
LISTEN_HOST = "0.0.0.0"
UNVERIFIED_WARNING = ("WARNING: no --tfship_public_key (or TFSHIP_PUBLIC_KEY): model signatures are NOT verified; "
                      "every version on disk is served as it is")


class TfServingFlags(click.Command):
    """Reports an unknown flag in TF Serving's words (main.cc: ``unknown argument: <flag>``), exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise click.UsageError(f"unknown argument: {exc.option_name} (tfship model-server takes "
                                   f"tensorflow_model_server's flags; --help lists them)", ctx) from exc


@dataclass(frozen=True)
class ServerFlags:
    port: int = 8500
    rest_api_port: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: Path | None = None
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    monitoring_config_file: Path | None = None
    ssl_config_file: Path | None = None
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tfship_public_key: Path | None = None

    def check(self) -> ServerFlags:
        """TF Serving's own refusals, in its words where it has them."""
        if not self.model_config_file and not self.model_base_path:
            # server.cc: "Both server_options.model_base_path and server_options.model_config_file are empty!"
            raise UsageError("both --model_base_path and --model_config_file are empty: give a model's base path "
                             "(with --model_name) or a ModelServerConfig file")
        if self.port == 0:
            # server.cc: "server_options.grpc_port is not set."
            raise UsageError("--port is not set: give the gRPC port (TF Serving's default is 8500)")
        if self.batching_parameters_file and not self.enable_batching:
            # server.cc: "server_options.batching_parameters_file is set without setting
            # server_options.enable_batching to true."
            raise UsageError(f"--batching_parameters_file={self.batching_parameters_file} is set without setting "
                             "--enable_batching to true")
        for flag, path in (("--model_config_file", self.model_config_file), ("--batching_parameters_file", self.batching_parameters_file),
                           ("--monitoring_config_file", self.monitoring_config_file), ("--ssl_config_file", self.ssl_config_file),
                           ("--tfship_public_key", self.tfship_public_key)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag}={path}: no such file")
        return self


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


def check_monitoring_config(path: Path) -> None:
    """The local engine always exports TF Serving's metrics on the REST port; the file must still parse."""
    from google.protobuf import text_format

    from tfship.serving.config_protos import MonitoringConfig

    try:
        text_format.Parse(path.read_text(encoding="utf-8"), MonitoringConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise UsageError(f"--monitoring_config_file={path}: not a readable MonitoringConfig text proto: {exc}") from None


def build_engine(flags: ServerFlags) -> LocalEngine:
    """The local engine, built as ``tfship serve run-local`` builds it (serving.local_process.build_local_engine)."""
    from tfship.serving import config as cfg
    from tfship.serving import gate
    from tfship.serving.local_engine import LocalEngine, TlsOptions
    from tfship.serving.local_engine.models import configs_from_proto

    configs = configs_from_proto(model_server_config(flags))
    if flags.monitoring_config_file:
        check_monitoring_config(flags.monitoring_config_file)
    batching = None
    if flags.enable_batching:
        batching = cfg.BatchingOptions.from_file(flags.batching_parameters_file) if flags.batching_parameters_file else cfg.BatchingOptions()
    tls = None
    if flags.ssl_config_file:
        ssl = cfg.read_ssl_config(flags.ssl_config_file)
        tls = TlsOptions(server_key=ssl.server_key.encode(), server_cert=ssl.server_cert.encode(),
                         custom_ca=ssl.custom_ca.encode() if ssl.custom_ca else None, client_verify=ssl.client_verify)
    rest_port: int | None = flags.rest_api_port or None
    if rest_port == flags.port:
        # TF Serving serves gRPC alone then (server.cc): "server_options.http_port cannot be same as grpc_port.
        # Please use a different port for HTTP/REST API. Skipped exporting HTTP/REST API."
        log.error("--rest_api_port cannot be same as --port (%d): skipped exporting the HTTP/REST API", flags.port)
        rest_port = None
    return LocalEngine(configs, host=LISTEN_HOST, grpc_port=flags.port, rest_port=rest_port,
                       verifier=gate.verifier_for(flags.tfship_public_key), batching=batching,
                       poll_seconds=float(flags.file_system_poll_wait_seconds), tls=tls,
                       intra_op_threads=flags.tensorflow_intra_op_parallelism,
                       inter_op_threads=flags.tensorflow_inter_op_parallelism)


class ConfigFilePoller:
    """Re-reads ``--model_config_file`` every ``--model_config_file_poll_wait_seconds`` and applies changes.

    As TF Serving does: a file that no longer parses is logged and the running config is kept.
    """

    def __init__(self, engine: LocalEngine, path: Path, seconds: int) -> None:
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
        from tfship.core.errors import TfshipError
        from tfship.serving import config as cfg

        while not self._stop.wait(self._seconds):
            text = self._read_text()
            if text is None or text == self._last:
                continue
            try:
                self._engine.core.reload_config(cfg.read_model_server_config(self._path))
            except TfshipError as exc:
                log.error("%s changed but was not applied: %s", self._path, exc.message)
            else:
                log.info("%s changed: models reloaded", self._path)
            self._last = text


def serve(flags: ServerFlags) -> dict[str, Any]:
    """(``flags`` checked.) Load the models, open the ports, serve until SIGTERM or SIGINT (in-flight requests drain)."""
    engine = build_engine(flags)
    engine.start()
    poller = None
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        poller = ConfigFilePoller(engine, flags.model_config_file, flags.model_config_file_poll_wait_seconds).start()
    try:
        engine.serve_until_signal()
    finally:
        if poller is not None:
            poller.stop()
    return {"stopped": True}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@click.command("model-server", cls=TfServingFlags, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--port", type=click.IntRange(0, 65535), default=8500, show_default=True, help="Port to listen on for gRPC API.")
@click.option("--rest_api_port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on for HTTP/REST API (0: not exported). Must differ from --port.")
@click.option("--model_name", default="default", show_default=True, help="Name of the model (ignored if --model_config_file is set).")
@click.option("--model_base_path", default="", help="Path to the model's versions (ignored if --model_config_file is set, otherwise required).")
@click.option("--model_config_file", default="", help="A text ModelServerConfig: serve the models it lists.")
@click.option("--model_config_file_poll_wait_seconds", type=click.IntRange(0), default=0, show_default=True,
              help="Re-read --model_config_file this often (0: read once).")
@click.option("--file_system_poll_wait_seconds", type=click.IntRange(0), default=1, show_default=True,
              help="Seconds between polls of the file system for new model versions.")
@click.option("--enable_batching", type=click.BOOL, is_flag=False, flag_value=True, default=False, help="Enable batching.")
@click.option("--batching_parameters_file", default="", help="A text BatchingParameters (needs --enable_batching).")
@click.option("--monitoring_config_file", default="", help="A text MonitoringConfig (metrics are on the REST port).")
@click.option("--ssl_config_file", default="", help="A text SSLConfig for the gRPC port.")
@click.option("--tensorflow_intra_op_parallelism", type=click.IntRange(0), default=0, show_default=True,
              help="Threads per TensorFlow op (0: TensorFlow's default).")
@click.option("--tensorflow_inter_op_parallelism", type=click.IntRange(0), default=0, show_default=True,
              help="TensorFlow ops run in parallel (0: TensorFlow's default).")
@click.option("--tfship_public_key", envvar="TFSHIP_PUBLIC_KEY", default="",
              help="tfship's own: verify every version's signature with this key before loading it [env TFSHIP_PUBLIC_KEY].")
@command("model-server")
def model_server(**values: Any) -> dict[str, Any]:
    """TF Serving's tensorflow_model_server, flag for flag, on tfship's local engine."""
    paths = ("model_config_file", "batching_parameters_file", "monitoring_config_file", "ssl_config_file", "tfship_public_key")
    converted: dict[str, Any] = {key: _path(value) if key in paths else value for key, value in values.items()}
    flags = ServerFlags(**converted).check()
    if flags.tfship_public_key is None:
        click.echo(UNVERIFIED_WARNING, err=True)
    return serve(flags)


COMMANDS = [model_server]


def main() -> None:
    """The ``tfship-model-server`` console script: the command alone, as TF Serving's binary is."""
    State.debug = False
    quiet_tensorflow()
    configure_logging(0, False)
    model_server.main(prog_name="tfship-model-server")
