"""``tfship inspect`` and ``tfship predict``: ``saved_model_cli show`` and ``run`` for tfship versions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tfship import render
from tfship.command import command, split_list
from tfship.core.errors import EXIT_ERROR, EXIT_MISMATCH, UsageError

if TYPE_CHECKING:
    from rich.console import Console

SHOWN_SAMPLES = 8
SHOWN_VALUES = 6


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _signature_rows(signatures: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for sig in signatures:
        for kind in ("inputs", "outputs"):
            for spec in sig[kind]:
                shape = "(" + ", ".join("None" if d is None else str(d) for d in spec["shape"]) + ")"
                rows.append([sig["key"], sig.get("method_name", ""), kind[:-1], spec["name"], spec["dtype"], shape])
    return rows


SIGNATURE_COLUMNS = ["signature", "method", "", "name", "dtype", "shape"]


def _render_version(console: Console, data: dict[str, Any]) -> None:
    source = data["source"]
    console.print(f"{data['name']} version {data['version']} ({data['directory']}), exported {data['created']} "
                  f"by tfship {data['tfship_version']}")
    console.print(f"source: {source.get('path', '')} ({source.get('kind', '')}, sha256 {str(source.get('sha256', ''))[:16]})")
    console.print(f"signature: {data['signing']['status']}")
    console.print(render.table("signatures", SIGNATURE_COLUMNS, _signature_rows(data["signatures"])))
    rows = []
    for artifact in data["artifacts"]:
        label = artifact["format"] if artifact["variant"] == "float32" else f"{artifact['format']}:{artifact['variant']}"
        for entry in artifact["files"]:
            rows.append([label, entry["path"], _size(entry["bytes"]), entry["sha256"][:16], entry["state"]])
    console.print(render.table("artifacts", ["artifact", "file", "size", "sha256", "now"], rows))
    rows = []
    for parity in data["parity"]:
        tolerance = parity["tolerance"]
        bound = f"atol={tolerance.get('atol')} rtol={tolerance.get('rtol')}" if tolerance else "-"
        if not parity["outputs"]:
            rows.append([parity["artifact"], "-", parity["status"], "-", "-", bound, parity["error"][:100]])
        for output in parity["outputs"]:
            top1 = "-" if output["top1_agreement"] is None else f"{output['top1_agreement']:.4f}"
            rows.append([parity["artifact"], output["name"], parity["status"] if output["passed"] else "mismatch",
                         render.fmt_float(output["max_abs"]), top1, bound, (output["reason"] or "")[:100]])
    console.print(render.table(f"parity at export ({data['samples'].get('count', '?')} samples, {data['samples'].get('source', '')})",
                               ["artifact", "output", "status", "max abs err", "top-1", "tolerance", "detail"], rows))
    for notice in data["notices"]:
        console.print(f"notice: {notice}")


def _render_model(console: Console, data: dict[str, Any]) -> None:
    rows = []
    for v in data["versions"]:
        if not v.get("tfship"):
            rows.append([v["version"], "-", "not a tfship version" + (" (SavedModel)" if v.get("savedmodel") else ""), "-", "-", v.get("signing", "")])
            continue
        if "error" in v:
            rows.append([v["version"], "-", v["error"][:80], "-", "-", "-"])
            continue
        parity = ", ".join(f"{k} {s}" for k, s in v["parity"].items())
        rows.append([v["version"], v["created"], f"{v['source']} ({v['source_kind']})", _size(v["bytes"]), parity, v["signing"]])
    count = len(data["versions"])
    console.print(render.table(f"{data['name']} ({data['directory']}): {count} version{'' if count == 1 else 's'}",
                               ["version", "created", "source", "size", "parity", "signature"], rows))


def _render_source(console: Console, data: dict[str, Any]) -> None:
    names = {"keras_version": "Keras", "backend": "backend", "tensorflow": "TensorFlow", "date_saved": "saved"}
    writer = ", ".join(f"{names.get(k, k)} {v}" for k, v in data["writer"].items())
    console.print(f"{data['path']}: {data['format']}" + (f" (written by {writer})" if writer else "")
                  + (f", {data['model_class']}" if data["model_class"] else ""))
    console.print(f"{'exports' if data['exportable'] else 'as it stands'}: {data['verdict']}")
    if data["layers"]:
        console.print("layers: " + ", ".join(f"{name} x{count}" if count > 1 else name for name, count in data["layers"].items()))
    if data["refused"]:
        console.print(render.table("refused without --trust-code", ["layer", "class", "why"],
                                   [[r["layer"], r["class_name"], r["reason"]] for r in data["refused"]]))
    for hub in data["tf_hub"]:
        console.print(f"TF Hub layer '{hub['layer']}': handle {hub['handle']}" + (" (remote: fetched only with --trust-code)" if hub["remote"] else ""))
    if data["custom_objects"]:
        console.print("needs --custom-objects for: " + ", ".join(data["custom_objects"]))
    if data["savedmodel"]:
        sm = data["savedmodel"]
        console.print(f"SavedModel: tags {', '.join(sm['tags'])}; {'TF2' if sm['tf2'] else 'TF1'}"
                      + ("; Keras metadata" if sm["keras_metadata"] else ""))
        console.print(render.table("signatures", SIGNATURE_COLUMNS, _signature_rows(sm["signatures"])))
    if data["checkpoint"]:
        console.print("checkpoint objects: " + ", ".join(f"{k} ({n})" for k, n in sorted(data["checkpoint"].items())))


def _render_inspect(console: Console, data: dict[str, Any]) -> None:
    {"version": _render_version, "model": _render_model, "source": _render_source}[data["kind"]](console, data)


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY",
              help="Check each version's signature and attestation with this key [env TFSHIP_PUBLIC_KEY].")
@command("inspect", _render_inspect)
def inspect_cmd(path: Path, public_key: Path | None) -> Any:
    """What PATH holds: a version (signatures, artifacts and hashes, parity, signature), a model directory
    (its versions), or a source file (.keras, .h5, SavedModel, weights, checkpoint: what export would do,
    read without loading the model)."""
    from tfship.exporter.inspection import VersionReport, inspect_path

    if public_key is not None and not Path(public_key).is_file():
        raise UsageError(f"--public-key {public_key}: file not found")
    report = inspect_path(path, public_key)
    data = report.to_dict()
    if isinstance(report, VersionReport) and (report.signing.verified is False and public_key is not None):
        from tfship.core.errors import EXIT_SIGNATURE

        return data, EXIT_SIGNATURE
    return data


def _cell(array: Any, index: int) -> str:
    import numpy as np

    row = np.asarray(array[index]).reshape(-1) if array.ndim else np.asarray(array).reshape(-1)
    shown = ", ".join(f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(v) for v in row[:SHOWN_VALUES].tolist())
    return f"[{shown}{', ...' if row.size > SHOWN_VALUES else ''}]"


def _render_predict(console: Console, data: dict[str, Any]) -> None:
    import numpy as np

    arrays = {r["artifact"]: {name: np.asarray(o["values"]) for name, o in r["outputs"].items() if o["values"] is not None}
              for r in data["runs"]}

    what = f"{data['name']} version {data['version']}" if data["version"] is not None else data["name"]
    console.print(f"{what} ({data['directory']})" + (f"; signature {data['signing']['status']}" if data["signing"] else ""))
    console.print("inputs: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in data["inputs"].items()))
    runs = [r for r in data["runs"] if not r["error"]]
    for run in data["runs"]:
        if run["error"]:
            console.print(f"{run['artifact']} ({run['path']}): FAILED: {run['error']}")
    if runs:
        for output in sorted(runs[0]["outputs"]):
            reference = arrays[runs[0]["artifact"]][output]
            count = len(reference) if reference.ndim else 1
            rows = []
            for i in range(min(count, SHOWN_SAMPLES)):
                cells = [_cell(arrays[r["artifact"]][output], i) if output in arrays[r["artifact"]] else "-" for r in runs]
                diffs = [float(np.max(np.abs(arrays[r["artifact"]][output][i].astype(np.float64) - reference[i].astype(np.float64))))
                         for r in runs[1:] if output in arrays[r["artifact"]] and arrays[r["artifact"]][output].shape == reference.shape
                         and reference.dtype.kind in "biuf"] if reference.ndim else []
                rows.append([str(i), *cells, render.fmt_float(max(diffs)) if diffs else "-"])
            more = f", first {SHOWN_SAMPLES} of {count} samples" if count > SHOWN_SAMPLES else ""
            console.print(render.table(f"output '{output}' {list(reference.shape)}{more}",
                                       ["sample", *[r["artifact"] for r in runs], f"max |diff| vs {runs[0]['artifact']}"], rows))
    if data["differences"]:
        rows = [[d["artifact"], d["output"], render.fmt_float(d["max_abs"]), render.fmt_float(d["max_rel"]),
                 "-" if d["top1_agreement"] is None else f"{d['top1_agreement']:.4f}", d["tolerance"],
                 "yes" if d["passed"] else f"NO: {d['reason'][:80]}"] for d in data["differences"]]
        console.print(render.table(f"differences from {data['reference']}",
                                   ["artifact", "output", "max abs diff", "max rel diff", "top-1 agreement", "tolerance", "within"], rows))


def _read_inputs(inputs: Path | None, input_exprs: tuple[str, ...]) -> dict[str, Any]:
    from tfship.core.samples import load_inputs
    from tfship.exporter.expressions import parse_assignment

    if inputs is None and not input_exprs:
        raise UsageError("give the inputs: --inputs X.npz, or --input NAME=EXPR (repeatable), e.g. --input 'x=np.ones((2,8))'")
    arrays: dict[str, Any] = dict(load_inputs(inputs, "--inputs")) if inputs is not None else {}
    for text in input_exprs:
        name, value = parse_assignment(text)
        arrays[name] = value
    return arrays


@click.command("predict")
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs", type=click.Path(path_type=Path), help="Inputs (.npz, keys = input names; a golden.npz works too).")
@click.option("--input", "input_exprs", multiple=True, metavar="NAME=EXPR",
              help="One input as a literal or numpy constructor, e.g. 'x=np.ones((2,8))', 'x=[[1,2,3]]', "
                   "'x=np.random.rand(2,8)' (seeded). Repeatable; never eval'd.")
@click.option("--format", "formats", default="all", show_default=True,
              help="Artifacts to run: all, savedmodel, tflite, onnx, or a variant like tflite:float16 (comma-separated).")
@click.option("--target", help="Also ask this TF Serving gRPC endpoint (HOST:PORT) ...")
@click.option("--model", help="... for this model name.")
@click.option("--model-version", type=int, help="Version the server should answer with (default: the server's choice).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="Deadline of the served call (seconds).")
@click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY",
              help="Verify the version's signature before running anything [env TFSHIP_PUBLIC_KEY].")
@click.option("--signature", default="serving_default", show_default=True, help="Signature of a plain SavedModel to run.")
@click.option("--trust-code", is_flag=True, help="Run a plain SavedModel (not a tfship version) even with ops outside tfship's allow-list.")
@command("predict", _render_predict)
def predict_cmd(version_dir: Path, inputs: Path | None, input_exprs: tuple[str, ...], formats: str, target: str | None,
                model: str | None, model_version: int | None, timeout: float, public_key: Path | None, signature: str,
                trust_code: bool) -> Any:
    """Run inputs through a version's artifacts (and the served model); print the outputs side by side
    with their differences. Exit 3 when an artifact differs beyond the tolerance recorded at export."""
    from tfship.exporter.inspection import predict_version

    if public_key is not None and not Path(public_key).is_file():
        raise UsageError(f"--public-key {public_key}: file not found")
    result = predict_version(version_dir, _read_inputs(inputs, input_exprs), formats=split_list(formats) or ("all",),
                             public_key=public_key, trust_code=trust_code, signature_key=signature, target=target,
                             model=model, model_version=model_version, timeout=timeout)
    code = EXIT_MISMATCH if result.mismatched else EXIT_ERROR if result.failed_runs else 0
    return result.to_dict(), code


COMMANDS = [inspect_cmd, predict_cmd]
