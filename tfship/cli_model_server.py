"""``tfship model-server`` (also ``tfship-model-server``): the local engine with TF Serving's own flags.

Flags are spelled as ``tensorflow_model_server`` spells them (``--port=8500``, ``--rest_api_port``,
``--model_name``, ...), in ``--flag=value`` or ``--flag value`` form (booleans also bare: ``--enable_batching``),
so the command drops in where TF Serving runs: tfship's server image starts it exactly as the official image
starts ``tensorflow_model_server``. Two modes, as in TF Serving's ``main.cc``: one model from ``--model_name``
and ``--model_base_path``, or every model of ``--model_config_file`` (which then makes the other two ignored).
Flags TF Serving has that mean nothing here (TPU, XLA, GPU memory, ALTS, profiler, ...) are accepted and
reported once as ignored; an unknown flag is an error naming it (exit 2).

Beyond TF Serving: ``--tfship_public_key`` (or ``TFSHIP_PUBLIC_KEY``) verifies every version's signature
before it is loaded (without a key the server serves what is on disk, unverified, and says so loudly), and
``--tfship_drain_seconds`` bounds the drain of in-flight requests on SIGTERM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from tfship.command import State, command, configure_logging, quiet_tensorflow
from tfship.serving.model_server import UNVERIFIED_WARNING, ServerFlags, serve, use_standard_kernels

_BOOL = {"type": click.BOOL, "is_flag": False, "flag_value": True}  # --flag, --flag=true, --flag=false

# (flag, click settings, help). Help texts follow TF Serving's main.cc.
SERVED_FLAGS: list[tuple[str, dict[str, Any], str]] = [
    ("port", {"type": click.IntRange(0, 65535), "default": 8500}, "TCP port to listen on for gRPC API (0: only --grpc_socket_path)."),
    ("grpc_socket_path", {"default": ""}, "If non-empty, listen to a UNIX socket for gRPC API on the given path."),
    ("rest_api_port", {"type": click.IntRange(0, 65535), "default": 0},
     "Port to listen on for HTTP/REST API (0: not exported). Must differ from --port."),
    ("rest_api_num_threads", {"type": click.IntRange(0), "default": 0}, "Threads for HTTP/REST API processing (0: 4 per CPU)."),
    ("rest_api_timeout_in_ms", {"type": click.IntRange(0), "default": 30000}, "Timeout for HTTP/REST API calls."),
    ("enable_batching", {**_BOOL, "default": False}, "Enable batching."),
    ("allow_version_labels_for_unavailable_models", {**_BOOL, "default": False},
     "Allow assigning unused version labels to models that are not available yet."),
    ("batching_parameters_file", {"default": ""}, "A text BatchingParameters (needs --enable_batching)."),
    ("enable_per_model_batching_parameters", {**_BOOL, "default": False},
     "Read batching_params.pbtxt from each SavedModel directory (needs --enable_batching)."),
    ("model_config_file", {"default": ""}, "A text ModelServerConfig: serve the models it lists (--model_name, --model_base_path ignored)."),
    ("model_config_file_poll_wait_seconds", {"type": click.IntRange(0), "default": 0},
     "Seconds between reads of --model_config_file (0: read once)."),
    ("model_name", {"default": "default"}, "Name of the model (ignored if --model_config_file is set)."),
    ("model_base_path", {"default": ""}, "Path to the model's versions (ignored if --model_config_file is set, otherwise required)."),
    ("max_num_load_retries", {"type": click.IntRange(0), "default": 5}, "Times a failed load is retried (0: tried once)."),
    ("load_retry_interval_micros", {"type": int, "default": 60_000_000}, "Microseconds between load retries (negative: no wait)."),
    ("file_system_poll_wait_seconds", {"type": click.IntRange(0), "default": 1},
     "Seconds between polls of the file system for new model versions (0: once)."),
    ("tensorflow_session_parallelism", {"type": click.IntRange(0), "default": 0},
     "Threads for TensorFlow (both pools unless set below; 0: auto)."),
    ("tensorflow_intra_op_parallelism", {"type": click.IntRange(0), "default": 0}, "Threads per TensorFlow op (0: auto)."),
    ("tensorflow_inter_op_parallelism", {"type": int, "default": 0},
     "TensorFlow ops run at once (0: auto; negative: each call's ops on the calling thread)."),
    ("ssl_config_file", {"default": ""}, "A text SSLConfig: TLS on the gRPC port."),
    ("saved_model_tags", {"default": "serve"}, "Comma-separated tags of the MetaGraph to load."),
    ("grpc_channel_arguments", {"default": ""}, "Comma-separated key=value gRPC server arguments (e.g. grpc.max_connection_age_ms=2000)."),
    ("grpc_max_threads", {"type": click.IntRange(0), "default": 0},
     "Most gRPC requests handled at once (more get RESOURCE_EXHAUSTED; 0: no limit)."),
    ("enable_model_warmup", {**_BOOL, "default": True}, "Replay assets.extra/tf_serving_warmup_requests at load."),
    ("num_request_iterations_for_warmup", {"type": click.IntRange(0), "default": 0},
     "Times each warmup request runs (used when > 0)."),
    ("monitoring_config_file", {"default": ""}, "A text MonitoringConfig (metrics are on the REST port)."),
    ("prefer_tflite_model", {**_BOOL, "default": False}, "Serve model.tflite when a version has both it and saved_model.pb."),
    ("enable_signature_method_name_check", {**_BOOL, "default": False},
     "Classify/Regress/MultiInference only on signatures with the matching method name."),
    ("enable_grpc_healthcheck_service", {**_BOOL, "default": False},
     "Serve grpc.health.v1.Health: SERVING when every model has an AVAILABLE version."),
]

# Flags of TF Serving with no meaning for a CPU engine running TensorFlow in Python: accepted, reported once.
IGNORED_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("rest_api_enable_cors_support", _BOOL), ("num_load_threads", {"type": int}), ("num_unload_threads", {"type": int}),
    ("flush_filesystem_caches", _BOOL), ("tensorflow_session_config_file", {}), ("use_alts_credentials", _BOOL),
    ("platform_config_file", {}), ("per_process_gpu_memory_fraction", {"type": float}),
    ("remove_unused_fields_from_bundle_metagraph", _BOOL), ("num_tflite_pools", {"type": int}),
    ("num_tflite_interpreters_per_pool", {"type": int}), ("xla_cpu_compilation_enabled", _BOOL),
    ("xla_gpu_compilation_enabled", _BOOL), ("enable_profiler", _BOOL), ("thread_pool_factory_config_file", {}),
    ("mixed_precision", {}), ("skip_initialize_tpu", _BOOL), ("enable_serialization_as_tensor_content", _BOOL),
]

_PATH_FLAGS = {"model_config_file", "batching_parameters_file", "monitoring_config_file", "ssl_config_file", "tfship_public_key"}


class TfServingFlags(click.Command):
    """Reports an unknown flag in TF Serving's words (main.cc: ``unknown argument: <flag>``), exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise click.UsageError(f"unknown argument: {exc.option_name} (tfship model-server takes "
                                   f"tensorflow_model_server's flags; --help lists them)", ctx) from exc


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """main.cc --version: "TensorFlow ModelServer: <version>" and "TensorFlow Library: <version>"."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"TensorFlow ModelServer: tfship {version('tfship')}")
    click.echo(f"TensorFlow Library: {version('tensorflow')}")
    ctx.exit(0)


def _with_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    for name, settings, help_text in reversed(SERVED_FLAGS):
        fn = click.option(f"--{name}", show_default=True, help=help_text, **settings)(fn)
    for name, settings in reversed(IGNORED_FLAGS):
        fn = click.option(f"--{name}", hidden=True, default=None, **settings)(fn)
    return fn


@click.command("model-server", cls=TfServingFlags, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version, help="Display version.")
@_with_flags
@click.option("--tfship_public_key", envvar="TFSHIP_PUBLIC_KEY", default="",
              help="tfship's own: verify every version's signature with this key before loading it [env TFSHIP_PUBLIC_KEY].")
@click.option("--require_golden", type=click.BOOL, is_flag=False, flag_value=True, default=False, show_default=True,
              help="tfship's own: a version is AVAILABLE (healthy, ready) only after its golden.npz, replayed through the "
                   "server, matches the original outputs within the manifest's tolerance; otherwise it ends with the mismatch.")
@click.option("--tfship_drain_seconds", type=click.FloatRange(0), default=30.0, show_default=True,
              help="tfship's own: on SIGTERM, seconds in-flight requests get to finish (health says NOT_SERVING meanwhile).")
@click.option("--tfship_rest_max_body_bytes", type=click.IntRange(1024), default=64 << 20, show_default=True,
              help="tfship's own: the largest REST request body (larger: 413). TF Serving sets no limit; raise it for large JSON.")
@click.option("--tfship_rest_max_json_values", type=click.IntRange(1), default=1 << 22, show_default=True,
              help="tfship's own: the most values a REST JSON body may hold (each costs up to ~70 bytes parsed; more: 400). "
                   "A batch of 32 224x224x3 images holds 4.8M: raise it, or send large tensors over gRPC.")
@command("model-server")
def model_server(**values: Any) -> dict[str, Any]:
    """TF Serving's tensorflow_model_server, flag for flag, on tfship's local engine."""
    use_standard_kernels()
    ignored = tuple(f"--{name}" for name, _ in IGNORED_FLAGS if values.get(name) is not None)
    known = {f.name for f in fields(ServerFlags)}
    converted: dict[str, Any] = {key: (Path(value) if value else None) if key in _PATH_FLAGS else value
                                 for key, value in values.items() if key in known}
    flags = ServerFlags(**converted, ignored=ignored).check()
    if flags.tfship_public_key is None:
        click.echo(UNVERIFIED_WARNING, err=True)
    return serve(flags)


COMMANDS = [model_server]


def main() -> None:
    """The ``tfship-model-server`` console script: the command alone, as TF Serving's binary is."""
    State.debug = False
    use_standard_kernels()
    quiet_tensorflow()
    configure_logging(0, False)
    model_server.main(prog_name="tfship-model-server")


if __name__ == "__main__":
    main()
