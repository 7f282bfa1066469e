"""``tfship serve ...`` commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tfship import render
from tfship.command import command

if TYPE_CHECKING:
    from rich.console import Console

    from tfship.serving.options import ServeOptions


def _serve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository."),
        click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY", help="Verify every version with this key [env TFSHIP_PUBLIC_KEY]."),
        click.option("--allow-unsigned", is_flag=True, help="Serve without verifying signatures (development only)."),
        click.option("--skip-invalid", is_flag=True, help="Leave versions that fail verification out instead of refusing."),
        click.option("--versions", "versions", default="latest:1", show_default=True, help="Version policy: latest:N, all, or specific:1,2."),
        click.option("--label", "labels", multiple=True, help="Version label LABEL=VERSION or MODEL:LABEL=VERSION (repeatable)."),
        click.option("--batching", is_flag=True, help="Enable dynamic batching."),
        click.option("--batching-parameters-file", type=click.Path(path_type=Path), help="BatchingParameters text proto (implies --batching)."),
        # Unset batching parameters take BatchingOptions' defaults (one place for them; serve config shows them).
        click.option("--max-batch-size", type=int, help="Largest batch one model call gets."),
        click.option("--batch-timeout-micros", type=int, help="How long a batch waits to fill up."),
        click.option("--num-batch-threads", type=int, help="Batches run at the same time."),
        click.option("--max-enqueued-batches", type=int, help="Queued batches before requests are refused."),
        click.option("--allowed-batch-sizes", default="", help="Comma-separated, increasing, ending with --max-batch-size."),
        click.option("--ssl-key", type=click.Path(path_type=Path), help="Server private key (PEM) for gRPC TLS."),
        click.option("--ssl-cert", type=click.Path(path_type=Path), help="Server certificate (PEM) for gRPC TLS."),
        click.option("--ssl-ca", type=click.Path(path_type=Path), help="CA of client certificates (mTLS)."),
        click.option("--ssl-client-verify", is_flag=True, help="Require client certificates."),
        click.option("--tensorflow-intra-op-parallelism", "intra_op_threads", type=click.IntRange(0), default=0,
                     help="Threads per TensorFlow op (0: auto, 1 on 2 cores or fewer, else TensorFlow's default)."),
        click.option("--tensorflow-inter-op-parallelism", "inter_op_threads", type=int, default=0,
                     help="Ops run in parallel (0: auto, -1 on 2 cores or fewer, else TensorFlow's default; "
                          "-1: each call's ops on the calling thread)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _options(repo: Path, public_key: Path | None, allow_unsigned: bool, skip_invalid: bool, versions: str,
             labels: tuple[str, ...], batching: bool, batching_parameters_file: Path | None, max_batch_size: int | None,
             batch_timeout_micros: int | None, num_batch_threads: int | None, max_enqueued_batches: int | None,
             allowed_batch_sizes: str, ssl_key: Path | None, ssl_cert: Path | None, ssl_ca: Path | None,
             ssl_client_verify: bool, **extra: Any) -> ServeOptions:
    from tfship.core.errors import UsageError
    from tfship.serving.config import BatchingOptions, VersionPolicy, parse_labels
    from tfship.serving.options import ServeOptions

    batching_options = None
    if batching_parameters_file:
        batching_options = BatchingOptions.from_file(batching_parameters_file)
    elif batching:
        try:
            sizes = tuple(int(s) for s in allowed_batch_sizes.split(",") if s.strip())
        except ValueError:
            raise UsageError(f"--allowed-batch-sizes {allowed_batch_sizes!r}: expected increasing integers, e.g. 8,16,32") from None
        given = {"max_batch_size": max_batch_size, "batch_timeout_micros": batch_timeout_micros,
                 "num_batch_threads": num_batch_threads, "max_enqueued_batches": max_enqueued_batches}
        batching_options = BatchingOptions(**{k: v for k, v in given.items() if v is not None},
                                           allowed_batch_sizes=sizes).check()
    return ServeOptions(repo=repo, public_key=public_key, allow_unsigned=allow_unsigned, skip_invalid=skip_invalid,
                        policy=VersionPolicy.parse(versions), labels=parse_labels(labels), batching=batching_options,
                        ssl_key=ssl_key, ssl_cert=ssl_cert, ssl_ca=ssl_ca, ssl_client_verify=ssl_client_verify, **extra)


@click.group("serve")
def serve_group() -> None:
    """Serve the model repository with TensorFlow Serving (container) or the local engine."""


def _render_serving(data: dict[str, Any]) -> None:
    """The foreground engine is up: say where, before it blocks (on stderr: stdout holds the result)."""
    click.echo(f"serving {', '.join(data['models'])}: gRPC {data['grpc']}, REST {data['rest']} (Ctrl-C stops)", err=True)


def _render_up(console: Console, data: dict[str, Any]) -> None:
    if data.get("stopped"):
        console.print("stopped")
        return
    console.print(f"engine: {data['engine']}" + (f" (container {data['container']}, image {data['image']})" if data["engine"] == "docker" else f" (pid {data['pid']}, log {data['log']})"))
    console.print(f"gRPC: {data['grpc']}   REST: {data['rest']}")
    rows = [[name, s["version"], s["state"]] for name, states in data["models"].items() for s in states]
    console.print(render.table("models", ["model", "version", "state"], rows))
    for name, version in data["config"].get("skipped", []):
        console.print(f"skipped (failed verification): {name}/{version}")


@serve_group.command("up")
@_serve_options
@click.option("--engine", type=click.Choice(["auto", "docker", "local"]), default="auto", show_default=True,
              help="docker: the official TF Serving container; local: the embedded engine; auto: docker when an engine answers.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8500, show_default=True)
@click.option("--rest-port", type=click.IntRange(0, 65535), default=8501, show_default=True)
@click.option("--detach", is_flag=True, help="Run the local engine in the background (the container always is).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the models to be AVAILABLE.")
@click.option("--gpu", is_flag=True, help="Docker: the -gpu image with every GPU attached.")
@click.option("--image", help="Docker: image to run (default tensorflow/serving:<exporting TF version>).")
@command("serve up", _render_up)
def serve_up(engine: str, host: str, grpc_port: int, rest_port: int, detach: bool, timeout: float, gpu: bool,
             image: str | None, **kwargs: Any) -> dict[str, Any]:
    """Verify every version, write the configs, start an engine and wait until the models are AVAILABLE."""
    from tfship.serving.lifecycle import up

    options = _options(**kwargs, engine=engine, host=host, grpc_port=grpc_port, rest_port=rest_port, timeout=timeout, gpu=gpu, image=image)
    return up(options, detach=detach, on_serving=_render_serving)


def _render_config(console: Console, data: dict[str, Any]) -> None:
    for key in ("models_config", "local_config", "batching_config", "monitoring_config", "ssl_config"):
        if data.get(key):
            console.print(f"{key.replace('_', ' ')}: {data[key]}")
    for name, versions in data["models"].items():
        console.print(f"{name}: versions {', '.join(map(str, versions))}")
    for name, version in data.get("skipped", []):
        console.print(f"skipped (failed verification): {name}/{version}")


@serve_group.command("config")
@_serve_options
@command("serve config", _render_config)
def serve_config(**kwargs: Any) -> dict[str, Any]:
    """Verify every version and write models.config (and batching, monitoring, SSL configs) into the repository."""
    from tfship.serving.config_writer import write_configs

    return write_configs(_options(**kwargs)).to_dict()


def _render_down(console: Console, data: dict[str, Any]) -> None:
    console.print(f"stopped the {data['engine']} engine" if data.get("stopped") else data.get("reason", "nothing was running"))


@serve_group.command("down")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to let in-flight requests finish.")
@command("serve down", _render_down)
def serve_down(repo: Path, timeout: float) -> dict[str, Any]:
    """Stop the engine serving the repository (gracefully: in-flight requests finish)."""
    from tfship.serving.lifecycle import down

    return down(repo, timeout)


def _render_reload(console: Console, data: dict[str, Any]) -> None:
    console.print(f"models.config: {data['models_config']} (pinned, --versions {data['versions']})")
    for name, versions in data["models"].items():
        console.print(f"{name}: versions {', '.join(map(str, versions))}")
    for name, version in data.get("skipped", []):
        console.print(f"skipped (failed verification): {name}/{version}")
    if data.get("reloaded"):
        console.print(f"the {data['engine']} engine reloaded its config; every pinned version is AVAILABLE")
    if data.get("note"):
        console.print(data["note"])


@serve_group.command("reload")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository.")
@click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY", help="Verify every version with this key [env TFSHIP_PUBLIC_KEY].")
@click.option("--allow-unsigned", is_flag=True, help="Serve without verifying signatures (development only).")
@click.option("--skip-invalid", is_flag=True, help="Leave versions that fail verification out instead of refusing.")
@click.option("--versions", "versions", default=None, help="Version policy: latest:N, all, or specific:1,2 [default: what serve up used].")
@click.option("--label", "labels", multiple=True, help="Version label LABEL=VERSION or MODEL:LABEL=VERSION [default: what serve up used].")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the engine to serve the new versions.")
@command("serve reload", _render_reload)
def serve_reload(repo: Path, public_key: Path | None, allow_unsigned: bool, skip_invalid: bool, versions: str | None,
                 labels: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """Verify what is on disk now, pin it in models.config (atomically) and have the running engine serve it."""
    from tfship.serving.config import parse_labels
    from tfship.serving.reload import reload

    return reload(repo, public_key=public_key, allow_unsigned=allow_unsigned, skip_invalid=skip_invalid,
                  versions=versions, labels=parse_labels(labels), timeout=timeout)


def _render_status(console: Console, data: dict[str, Any]) -> None:
    if not data.get("running"):
        console.print(data.get("reason") or f"the {data.get('engine')} engine is not running")
        return
    console.print(f"{data['engine']} engine: gRPC {data['host']}:{data['grpc_port']}, REST {data['host']}:{data['rest_port']}")
    rows: list[list[Any]] = []
    for name, states in data["models"].items():
        if isinstance(states, str):
            rows.append([name, "-", states])
        else:
            rows.extend([name, s["version"], s["state"] + (f" ({s['error_message']})" if s["error_message"] else "")] for s in states)
    console.print(render.table("models", ["model", "version", "state"], rows))


@serve_group.command("status")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@command("serve status", _render_status)
def serve_status(repo: Path) -> tuple[dict[str, Any], int]:
    """Which engine serves the repository, and the state of every model version."""
    from tfship.core.errors import EXIT_UNAVAILABLE
    from tfship.serving.status import status

    data = status(repo)
    return data, (0 if data.get("running") else EXIT_UNAVAILABLE)


@serve_group.command("run-local", hidden=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--host", default="127.0.0.1")
@click.option("--grpc-port", type=int, default=8500)
@click.option("--rest-port", type=int, default=8501)
@click.option("--public-key", type=click.Path(path_type=Path))
@click.option("--batching-parameters-file", type=click.Path(path_type=Path))
@click.option("--ssl-config-file", type=click.Path(path_type=Path))
@click.option("--poll-seconds", type=float, default=1.0)
@click.option("--tensorflow-intra-op-parallelism", "intra_op_threads", type=int, default=0)
@click.option("--tensorflow-inter-op-parallelism", "inter_op_threads", type=int, default=0)
@click.option("--log-file", type=click.Path(path_type=Path), help="Log here, rotating at a size cap, instead of on stderr.")
@command("serve run-local")
def serve_run_local(config_file: Path, host: str, grpc_port: int, rest_port: int, public_key: Path | None,
                    batching_parameters_file: Path | None, ssl_config_file: Path | None, poll_seconds: float,
                    intra_op_threads: int, inter_op_threads: int, log_file: Path | None) -> dict[str, Any]:
    """The local engine process (started by 'serve up --detach'); reads a ModelServerConfig like tensorflow_model_server."""
    import logging

    from tfship.serving.local_process import build_local_engine, engine_log_handler
    from tfship.serving.model_server import use_standard_kernels

    use_standard_kernels()
    if log_file:
        logging.getLogger().handlers[:] = [engine_log_handler(log_file)]
    engine = build_local_engine(config_file, host=host, grpc_port=grpc_port, rest_port=rest_port, public_key=public_key,
                                batching_file=batching_parameters_file, ssl_config_file=ssl_config_file, poll_seconds=poll_seconds,
                                intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    engine.start()
    engine.serve_until_signal()
    return {"stopped": True}


COMMANDS = [serve_group]
