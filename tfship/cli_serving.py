"""``tfship serve ...`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from tfship import render
from tfship.command import command


def _serve_options(fn):
    options = [
        click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository."),
        click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY", help="Verify every version with this key [env TFSHIP_PUBLIC_KEY]."),
        click.option("--allow-unsigned", is_flag=True, help="Serve without verifying signatures (development only)."),
        click.option("--skip-invalid", is_flag=True, help="Leave versions that fail verification out instead of refusing."),
        click.option("--versions", "versions", default="latest:1", show_default=True, help="Version policy: latest:N, all, or specific:1,2."),
        click.option("--label", "labels", multiple=True, help="Version label LABEL=VERSION or MODEL:LABEL=VERSION (repeatable)."),
        click.option("--batching", is_flag=True, help="Enable dynamic batching."),
        click.option("--batching-parameters-file", type=click.Path(path_type=Path), help="BatchingParameters text proto (implies --batching)."),
        click.option("--max-batch-size", type=int, default=32, show_default=True),
        click.option("--batch-timeout-micros", type=int, default=1000, show_default=True),
        click.option("--num-batch-threads", type=int, default=2, show_default=True),
        click.option("--max-enqueued-batches", type=int, default=100, show_default=True),
        click.option("--allowed-batch-sizes", default="", help="Comma-separated, increasing, ending with --max-batch-size."),
        click.option("--ssl-key", type=click.Path(path_type=Path), help="Server private key (PEM) for gRPC TLS."),
        click.option("--ssl-cert", type=click.Path(path_type=Path), help="Server certificate (PEM) for gRPC TLS."),
        click.option("--ssl-ca", type=click.Path(path_type=Path), help="CA of client certificates (mTLS)."),
        click.option("--ssl-client-verify", is_flag=True, help="Require client certificates."),
        click.option("--tensorflow-intra-op-parallelism", "intra_op_threads", type=click.IntRange(0), default=0,
                     help="Threads per TensorFlow op (0: TensorFlow's default; 1 often serves small models faster)."),
        click.option("--tensorflow-inter-op-parallelism", "inter_op_threads", type=click.IntRange(0), default=0,
                     help="Ops run in parallel (0: TensorFlow's default)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _options(repo, public_key, allow_unsigned, skip_invalid, versions, labels, batching, batching_parameters_file,
             max_batch_size, batch_timeout_micros, num_batch_threads, max_enqueued_batches, allowed_batch_sizes,
             ssl_key, ssl_cert, ssl_ca, ssl_client_verify, **extra):
    from tfship.serving.config import BatchingOptions, VersionPolicy, parse_labels
    from tfship.serving.lifecycle import ServeOptions

    batching_options = None
    if batching_parameters_file:
        batching_options = BatchingOptions.from_file(batching_parameters_file)
    elif batching:
        sizes = tuple(int(s) for s in allowed_batch_sizes.split(",") if s.strip())
        batching_options = BatchingOptions(max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros,
                                           num_batch_threads=num_batch_threads, max_enqueued_batches=max_enqueued_batches,
                                           allowed_batch_sizes=sizes).check()
    return ServeOptions(repo=repo, public_key=public_key, allow_unsigned=allow_unsigned, skip_invalid=skip_invalid,
                        policy=VersionPolicy.parse(versions), labels=parse_labels(labels), batching=batching_options,
                        ssl_key=ssl_key, ssl_cert=ssl_cert, ssl_ca=ssl_ca, ssl_client_verify=ssl_client_verify, **extra)


@click.group("serve")
def serve_group() -> None:
    """Serve the model repository with TensorFlow Serving (container) or the local engine."""


def _render_up(console, data) -> None:
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
def serve_up(engine, host, grpc_port, rest_port, detach, timeout, gpu, image, **kwargs):
    """Verify every version, write the configs, start an engine and wait until the models are AVAILABLE."""
    from tfship.serving.lifecycle import up

    options = _options(**kwargs, engine=engine, host=host, grpc_port=grpc_port, rest_port=rest_port, timeout=timeout, gpu=gpu, image=image)
    return up(options, detach=detach)


def _render_config(console, data) -> None:
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
def serve_config(**kwargs):
    """Verify every version and write models.config (and batching, monitoring, SSL configs) into the repository."""
    from tfship.serving.lifecycle import write_configs

    return write_configs(_options(**kwargs)).to_dict()


@serve_group.command("down")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to let in-flight requests finish.")
@command("serve down", lambda console, data: console.print(f"stopped the {data['engine']} engine" if data.get("stopped") else data.get("reason", "nothing was running")))
def serve_down(repo, timeout):
    """Stop the engine serving the repository (gracefully: in-flight requests finish)."""
    from tfship.serving.lifecycle import down

    return down(repo, timeout)


def _render_status(console, data) -> None:
    if not data.get("running"):
        console.print(data.get("reason") or f"the {data.get('engine')} engine is not running")
        return
    console.print(f"{data['engine']} engine: gRPC {data['host']}:{data['grpc_port']}, REST {data['host']}:{data['rest_port']}")
    rows = []
    for name, states in data["models"].items():
        if isinstance(states, str):
            rows.append([name, "-", states])
        else:
            rows.extend([name, s["version"], s["state"] + (f" ({s['error_message']})" if s["error_message"] else "")] for s in states)
    console.print(render.table("models", ["model", "version", "state"], rows))


@serve_group.command("status")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@command("serve status", _render_status)
def serve_status(repo):
    """Which engine serves the repository, and the state of every model version."""
    from tfship.core.errors import EXIT_UNAVAILABLE
    from tfship.serving.lifecycle import status

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
@command("serve run-local")
def serve_run_local(config_file, host, grpc_port, rest_port, public_key, batching_parameters_file, ssl_config_file, poll_seconds,
                    intra_op_threads, inter_op_threads):
    """The local engine process (started by 'serve up --detach'); reads a ModelServerConfig like tensorflow_model_server."""
    from tfship.serving.lifecycle import build_local_engine

    engine = build_local_engine(config_file, host=host, grpc_port=grpc_port, rest_port=rest_port, public_key=public_key,
                                batching_file=batching_parameters_file, ssl_config_file=ssl_config_file, poll_seconds=poll_seconds,
                                intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    engine.start()
    engine.serve_until_signal()
    return {"stopped": True}


COMMANDS = [serve_group]
