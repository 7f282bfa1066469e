"""``tfship validate``, ``tfship compare``, ``tfship bench``: client commands (no tensorflow unless --original)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tfship import render
from tfship.command import command
from tfship.core.errors import UsageError

if TYPE_CHECKING:
    from tfship.client.grpc_client import ServingClient


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--target", required=True, help="TF Serving gRPC endpoint, HOST:PORT."),
        click.option("--model", required=True, help="Model name on the server."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="Deadline of each call (seconds)."),
        click.option("--root-certificates", type=click.Path(exists=True, path_type=Path), help="CA certificate (PEM): use TLS."),
        click.option("--private-key", type=click.Path(exists=True, path_type=Path), help="Client key (PEM) for mTLS."),
        click.option("--certificate-chain", type=click.Path(exists=True, path_type=Path), help="Client certificate (PEM) for mTLS."),
        click.option("--server-name", help="Expected name in the server certificate (TLS)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client(target: str, timeout: float, root_certificates: Path | None, private_key: Path | None,
            certificate_chain: Path | None, server_name: str | None) -> ServingClient:
    from tfship.client.grpc_client import ServingClient

    def read(path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return ServingClient(target, timeout=timeout, root_certificates=read(root_certificates), private_key=read(private_key),
                         certificate_chain=read(certificate_chain), server_name=server_name)


def _version_or_label(value: str | None) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    return (int(value), None) if value.isdigit() else (None, value)


def _render_validate(console: Any, data: dict[str, Any]) -> None:
    verdict = "PASS" if data["passed"] else "FAIL"
    console.print(f"{verdict}: {data['model']} at {data['target']} ({data['requested']}; served version(s) "
                  f"{', '.join(map(str, data['served_versions'])) or '-'}), {data['samples']} samples")
    for problem in data["signature_problems"]:
        console.print(f"signature: {problem}")
    rows = [[o["name"], "pass" if o["passed"] else "FAIL", render.fmt_float(o["max_abs"]), render.fmt_float(o["p99_abs"]),
             render.fmt_float(o["max_rel"]), "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.4f}",
             f"{o['nan_count']}/{o['inf_count']}", o["reason"][:100]] for o in data["outputs"]]
    if rows:
        console.print(render.table("outputs", ["output", "result", "max abs", "p99 abs", "max rel", "top-1", "NaN/Inf", "detail"], rows))
    lat = data["latency"]
    if lat["count"]:
        console.print(f"latency per request: p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms; "
                      f"{data['throughput_samples_per_s']:.1f} samples/s")
    if data.get("report"):
        console.print(f"report: {data['report']['html']}")


@click.command("validate")
@_client_options
@click.option("--version", "version", type=int, help="Validate this version.")
@click.option("--label", help="Validate the version behind this label.")
@click.option("--golden", type=click.Path(path_type=Path), help="golden.npz of the exported version (or its directory): its inputs and the original's outputs.")
@click.option("--original", type=click.Path(path_type=Path), help="Original model file; predictions computed locally (needs TensorFlow).")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Inputs (.npz) to use with --original (not with --golden, which carries its own).")
@click.option("--architecture", help="With a weights-only --original: arch.json or module:build_fn.")
@click.option("--rtol", type=float, default=1e-5, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Samples per request.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Requests in flight.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Folder for report.html and report.json.")
@command("validate", _render_validate)
def validate_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, version, label,
                 golden, original, inputs_path, architecture, rtol, atol, batch_size, concurrency, report_dir):
    """Check that MODEL at TARGET serves the expected signature and predicts what the original predicts.

    Exit 0 pass, 3 mismatch (signature or values), 4 server or model unavailable, 1 error.
    """
    from tfship.client.golden import load_golden
    from tfship.client.report import write_validation_report
    from tfship.client.validate import raise_for, validate
    from tfship.core.errors import EXIT_MISMATCH, PredictionMismatch
    from tfship.core.tolerance import Tolerance

    if version is not None and label:
        raise UsageError("give --version or --label, not both")
    if golden and original:
        raise UsageError("give --golden, or --original with --inputs, not both")
    if golden and inputs_path:
        # The golden outputs belong to the golden inputs: other inputs need their expected outputs computed.
        raise UsageError("--inputs goes with --original (the expected outputs are computed from it); "
                         "--golden carries its own inputs and outputs: drop --inputs, or give --original SOURCE instead of --golden")
    if original:
        if not inputs_path:
            raise UsageError("--original needs --inputs X.npz")
        from tfship.core.samples import load_npz_inputs
        from tfship.exporter.sources import load_source

        loaded = load_source(original, architecture=architecture)
        inputs = load_npz_inputs(inputs_path, loaded.signature, "--inputs")
        expected = loaded.predict(inputs)
        signature = loaded.signature
    elif golden:
        golden_set = load_golden(golden)
        inputs, expected = golden_set.inputs, golden_set.outputs
        signature = golden_set.signature
    else:
        raise UsageError("give --golden models/NAME/VERSION/golden.npz, or --original SOURCE --inputs X.npz")
    with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
        report = validate(client, model, inputs, expected, signature, Tolerance(atol=atol, rtol=rtol), version=version,
                          label=label, batch_size=batch_size, concurrency=concurrency)
    data = report.to_dict()
    if report_dir:
        paths = write_validation_report(report_dir, report)
        data["report"] = {k: str(v) for k, v in paths.items()}
    try:
        raise_for(report)
    except PredictionMismatch as exc:
        click.echo(f"tfship validate: {exc.message}", err=True)
        return data, EXIT_MISMATCH
    return data


def _render_compare(console: Any, data: dict[str, Any]) -> None:
    console.print(f"{data['model']}: A = {data['a']} (version {data['a_version']}), B = {data['b']} (version {data['b_version']}), {data['samples']} samples")
    rows = [[o["name"], "agree" if o["passed"] else "DIFFER", render.fmt_float(o["max_abs"]), render.fmt_float(o["max_rel"]),
             "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.4f}"] for o in data["outputs"]]
    console.print(render.table("B against A", ["output", "result", "max abs", "max rel", "top-1 agreement"], rows))
    console.print(f"latency p50/p99: A {data['a_latency']['p50_ms']:.2f}/{data['a_latency']['p99_ms']:.2f} ms, "
                  f"B {data['b_latency']['p50_ms']:.2f}/{data['b_latency']['p99_ms']:.2f} ms")


@click.command("compare")
@_client_options
@click.option("--a", "a", required=True, help="Version number or label (the reference, e.g. stable).")
@click.option("--b", "b", required=True, help="Version number or label (the candidate, e.g. canary).")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), required=True, help="Inputs (.npz, or a golden.npz).")
@click.option("--rtol", type=float, default=1e-5, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@command("compare", _render_compare)
def compare_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, a, b, inputs_path, rtol, atol, batch_size):
    """Send the same inputs to two versions or labels of MODEL and compare their answers (canary against stable)."""
    from tfship.client.compare import compare_outputs
    from tfship.client.latency import LatencyStats
    from tfship.client.validate import predict_all
    from tfship.core.samples import load_inputs
    from tfship.core.tolerance import Tolerance

    inputs = load_inputs(inputs_path)
    a_version, a_label = _version_or_label(a)
    b_version, b_label = _version_or_label(b)
    with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
        a_out, a_lat, a_served = predict_all(client, model, inputs, version=a_version, label=a_label, batch_size=batch_size)
        b_out, b_lat, b_served = predict_all(client, model, inputs, version=b_version, label=b_label, batch_size=batch_size)
    comparison = compare_outputs(a_out, b_out, Tolerance(atol=atol, rtol=rtol))
    return {"model": model, "a": a, "b": b, "a_version": sorted(a_served)[0], "b_version": sorted(b_served)[0],
            "samples": len(next(iter(inputs.values()))), "agree": comparison.passed,
            "outputs": [o.to_dict() for o in comparison.outputs],
            "a_latency": LatencyStats.of(a_lat).to_dict(), "b_latency": LatencyStats.of(b_lat).to_dict()}


def _render_bench(console: Any, data: dict[str, Any]) -> None:
    rows = [[r["mode"], r["concurrency"] or "-", r["batch_size"], r["requests"], r["errors"], f"{r['throughput_rps']:.1f}",
             f"{r['throughput_rps'] * r['batch_size']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}"] for r in data["runs"]]
    console.print(render.table(f"{data['model']} at {data['target']}", ["mode", "concurrency", "batch", "requests", "errors",
                                                                       "req/s", "samples/s", "p50 ms", "p90 ms", "p99 ms"], rows))
    if data.get("report"):
        console.print(f"report: {data['report']['html']}")


@click.command("bench")
@_client_options
@click.option("--version", "version", type=int)
@click.option("--label")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated concurrency levels (closed loop).")
@click.option("--batch-size", "batch_sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per run.")
@click.option("--rate", type=float, help="Also run open loop at this many requests per second.")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Inputs (.npz or golden.npz); default: random from the signature.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Folder for bench.json and bench.html.")
@command("bench", _render_bench)
def bench_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, version, label,
              concurrency, batch_sizes, duration, rate, inputs_path, report_dir):
    """Latency percentiles and throughput of MODEL at TARGET per concurrency level and batch size."""
    from tfship.client.bench import bench
    from tfship.client.report import write_bench_report
    from tfship.core.samples import load_inputs

    try:
        levels = [int(v) for v in concurrency.split(",") if v.strip()]
        sizes = [int(v) for v in batch_sizes.split(",") if v.strip()]
    except ValueError:
        raise UsageError("--concurrency and --batch-size take comma-separated integers") from None
    if not levels or not sizes or min(levels + sizes) < 1:
        raise UsageError("--concurrency and --batch-size need positive integers")
    inputs = load_inputs(inputs_path) if inputs_path else None
    with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
        data = bench(client, model, concurrency=levels, batch_sizes=sizes, duration=duration, rate=rate,
                     version=version, label=label, inputs=inputs)
    if report_dir:
        data["report"] = {k: str(v) for k, v in write_bench_report(report_dir, data).items()}
    return data


COMMANDS = [validate_cmd, compare_cmd, bench_cmd]
