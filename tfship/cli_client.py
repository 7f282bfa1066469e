"""``tfship validate``, ``tfship compare``, ``tfship bench``: client commands (no tensorflow unless --original)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tfship import render
from tfship.command import command
from tfship.core.errors import UsageError
from tfship.core.tolerance import FLOAT32

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


def _tolerance_options(where: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--rtol and --atol, defaulting to what the export proved (the manifest.json beside ``where``), else FLOAT32."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name, value, what in (("--rtol", FLOAT32.rtol, "Relative"), ("--atol", FLOAT32.atol, "Absolute")):
            fn = click.option(name, type=float, default=None, show_default=f"the manifest.json beside {where}, else {value:g}",
                              help=f"{what} tolerance: an element fails only beyond both atol and rtol*|expected|.")(fn)
        return fn

    return decorate


def _tolerance_line(data: dict[str, Any]) -> str:
    return f"tolerance: {data['tolerance']['description']}"


def _client(target: str, timeout: float, root_certificates: Path | None, private_key: Path | None,
            certificate_chain: Path | None, server_name: str | None) -> ServingClient:
    from tfship.client.grpc_client import ServingClient

    def read(path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    if bool(private_key) != bool(certificate_chain):
        raise UsageError("--private-key and --certificate-chain go together (the client certificate for mTLS)")
    client = ServingClient(target, timeout=timeout, root_certificates=read(root_certificates), private_key=read(private_key),
                           certificate_chain=read(certificate_chain), server_name=server_name)
    # A certificate problem is found in one handshake, before any call waits for its deadline.
    problem = client.tls_problem()
    if problem:
        from tfship.core.errors import ServerUnavailable

        client.close()
        raise ServerUnavailable(problem, code="UNAVAILABLE")
    return client


def _version_or_label(value: str | None) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    return (int(value), None) if value.isdigit() else (None, value)


def _render_validate(console: Any, data: dict[str, Any]) -> None:
    verdict = "PASS" if data["passed"] else "FAIL"
    console.print(f"{verdict}: {data['model']} at {data['target']} ({data['requested']}; served version(s) "
                  f"{', '.join(map(str, data['served_versions'])) or '-'}), {data['samples']} samples")
    if data.get("tolerance"):
        console.print(_tolerance_line(data))
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
    if data.get("junit"):
        console.print(f"junit: {data['junit']}")


@click.command("validate")
@_client_options
@click.option("--version", "version", type=int, help="Validate this version.")
@click.option("--label", help="Validate the version behind this label.")
@click.option("--golden", type=click.Path(path_type=Path), help="golden.npz of the exported version (or its directory): its inputs and the original's outputs.")
@click.option("--original", type=click.Path(path_type=Path), help="Original model file; predictions computed locally (needs TensorFlow).")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path), help="Inputs (.npz) to use with --original (not with --golden, which carries its own).")
@click.option("--architecture", help="With a weights-only --original: arch.json or module:build_fn.")
@_tolerance_options("--golden")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Samples per request.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Requests in flight.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Folder for report.html and report.json.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path, dir_okay=False), help="Write JUnit XML here (one test case per output) for CI.")
@command("validate", _render_validate)
def validate_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, version, label,
                 golden, original, inputs_path, architecture, rtol, atol, batch_size, concurrency, report_dir, junit_path):
    """Check that MODEL at TARGET serves the expected signature and predicts what the original predicts.

    Exit 0 pass, 3 mismatch (signature or values), 4 server or model unavailable, 1 error.
    """
    from tfship.client.golden import load_golden
    from tfship.client.junit import write_junit
    from tfship.client.report import write_validation_report
    from tfship.client.validate import choose_tolerance, raise_for, validate
    from tfship.core.errors import EXIT_MISMATCH, PredictionMismatch

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
    version_dir = None
    if golden:
        version_dir = Path(golden) if Path(golden).is_dir() else Path(golden).parent
    tolerance = choose_tolerance(atol, rtol, golden)
    with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
        report = validate(client, model, inputs, expected, signature, tolerance, version=version,
                          label=label, batch_size=batch_size, concurrency=concurrency)
    data = report.to_dict()
    if report_dir:
        paths = write_validation_report(report_dir, report, version_dir=version_dir)
        data["report"] = {k: str(v) for k, v in paths.items()}
    if junit_path:
        data["junit"] = str(write_junit(junit_path, [report]))
    try:
        raise_for(report)
    except PredictionMismatch as exc:
        click.echo(f"tfship validate: {exc.message}", err=True)
        return data, EXIT_MISMATCH
    return data


def _render_compare(console: Any, data: dict[str, Any]) -> None:
    console.print(f"{data['model']}: A = {data['a']} (version {data['a_version']}), B = {data['b']} (version {data['b_version']}), {data['samples']} samples")
    console.print(_tolerance_line(data))
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
@_tolerance_options("--inputs")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@command("compare", _render_compare)
def compare_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, a, b, inputs_path, rtol, atol, batch_size):
    """Send the same inputs to two versions or labels of MODEL and compare their answers (canary against stable)."""
    from tfship.client.compare import compare_outputs
    from tfship.client.latency import LatencyStats
    from tfship.client.validate import choose_tolerance, predict_all
    from tfship.core.samples import load_inputs

    inputs = load_inputs(inputs_path)
    tolerance = choose_tolerance(atol, rtol, inputs_path)
    a_version, a_label = _version_or_label(a)
    b_version, b_label = _version_or_label(b)
    with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
        a_out, a_lat, a_served = predict_all(client, model, inputs, version=a_version, label=a_label, batch_size=batch_size)
        b_out, b_lat, b_served = predict_all(client, model, inputs, version=b_version, label=b_label, batch_size=batch_size)
    comparison = compare_outputs(a_out, b_out, tolerance.tolerance)
    return {"model": model, "a": a, "b": b, "a_version": sorted(a_served)[0], "b_version": sorted(b_served)[0],
            "samples": len(next(iter(inputs.values()))), "agree": comparison.passed, "tolerance": tolerance.to_dict(),
            "outputs": [o.to_dict() for o in comparison.outputs],
            "a_latency": LatencyStats.of(a_lat).to_dict(), "b_latency": LatencyStats.of(b_lat).to_dict()}


def _render_bench(console: Any, data: dict[str, Any]) -> None:
    rows = [[r["mode"], r["concurrency"] or "-", r["batch_size"], r["requests"], r["errors"], f"{r['throughput_rps']:.1f}",
             f"{r['throughput_rps'] * r['batch_size']:.1f}", f"{r.get('payload_bytes_per_s', 0) / 1e6:.2f}",
             f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}"] for r in data["runs"]]
    console.print(render.table(f"{data['model']} at {data['target']}", ["mode", "concurrency", "batch", "requests", "errors",
                                                                       "req/s", "samples/s", "tensor MB/s", "p50 ms", "p90 ms",
                                                                       "p99 ms"], rows))
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


def _render_probe(console: Any, data: dict[str, Any]) -> None:
    console.print(f"{data['model']} at {data['target']}: {data['rounds']} rounds, {data['ok']} ok, {data['mismatches']} mismatched, "
                  f"{data['errors']} failed; versions seen {', '.join(map(str, data['versions_seen'])) or '-'}")
    console.print(_tolerance_line(data))
    if data["last_problem"]:
        console.print(f"last problem: {data['last_problem']}")


@click.command("probe")
@_client_options
@click.option("--golden", required=True, type=click.Path(path_type=Path), help="golden.npz of the expected version (or its directory).")
@click.option("--every", default="30s", show_default=True, help="Time between rounds: 30s, 5m, 500ms.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port (/metrics).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address for the metrics endpoint.")
@click.option("--rounds", type=click.IntRange(1), help="Stop after this many rounds (default: until SIGTERM or Ctrl-C).")
@click.option("--version", "version", type=int, help="Probe this version (default: what the server serves).")
@click.option("--label", help="Probe the version behind this label.")
@click.option("--max-samples", type=click.IntRange(1, 100_000), default=64, show_default=True, help="Golden samples per round (successive rounds take the next ones).")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Samples per request.")
@_tolerance_options("--golden")
@command("probe", _render_probe)
def probe_cmd(target, model, timeout, root_certificates, private_key, certificate_chain, server_name, golden, every,
              metrics_port, metrics_host, rounds, version, label, max_samples, batch_size, rtol, atol):
    """Replay the golden set against MODEL at TARGET on a schedule and export Prometheus metrics.

    tfship_probe_parity_ok{model,version} is 1 while the answers match, 0 once they do not. Runs until
    SIGTERM or Ctrl-C (exit 0), or for --rounds N (exit 0 if every round matched, 3 on a mismatch, 4 if
    the server failed to answer).
    """
    import signal
    import threading

    from prometheus_client import start_http_server

    from tfship.client.golden import load_golden
    from tfship.client.probe import ProbeMetrics, Prober, parse_duration, run_probe
    from tfship.client.validate import choose_tolerance
    from tfship.core.errors import EXIT_MISMATCH, EXIT_UNAVAILABLE

    if version is not None and label:
        raise UsageError("give --version or --label, not both")
    seconds = parse_duration(every)
    golden_set = load_golden(golden)
    tolerance = choose_tolerance(atol, rtol, golden)
    metrics = ProbeMetrics()
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    server = None
    try:
        if metrics_port is not None:
            server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
            click.echo(f"tfship probe: metrics on http://{metrics_host}:{server.server_port}/metrics", err=True)
        click.echo(f"tfship probe: tolerance {tolerance.describe()}", err=True)

        def on_round(number: int, results: Any, problem: str) -> None:
            verdict = "error" if results is None else ("ok" if not problem else "MISMATCH")
            versions = ",".join(map(str, sorted(results))) if results else "-"
            click.echo(f"tfship probe: round {number}: {verdict} (version {versions}){': ' + problem if problem else ''}", err=True)

        with _client(target, timeout, root_certificates, private_key, certificate_chain, server_name) as client:
            prober = Prober(client, model, golden_set, tolerance.tolerance, metrics, version=version, label=label,
                            max_samples=max_samples, batch_size=batch_size)
            summary = run_probe(prober, every=seconds, rounds=rounds, stop=stop, on_round=on_round)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    data = {"model": model, "target": target, **summary.to_dict(), "tolerance": tolerance.to_dict()}
    if stop.is_set() or rounds is None:
        return data
    if summary.errors:
        return data, EXIT_UNAVAILABLE
    return (data, EXIT_MISMATCH) if summary.mismatches else data


COMMANDS = [validate_cmd, compare_cmd, bench_cmd, probe_cmd]
