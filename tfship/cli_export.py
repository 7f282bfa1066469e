"""``tfship export``: a model file in, a signed, checked version out."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click

from tfship import render
from tfship.command import command, log, parse_tolerances, split_list

if TYPE_CHECKING:
    from rich.console import Console


def _render_export(console: Console, data: dict[str, Any]) -> None:
    rows = []
    for p in data["parity"]:
        rows.append([p["artifact"], p["status"], render.fmt_float(p["max_abs"]),
                     "-" if p["top1_agreement"] is None else f"{p['top1_agreement']:.4f}", p["error"][:120]])
    console.print(render.table(f"{data['name']} version {data['version']} -> {data['directory']}",
                               ["artifact", "parity", "max abs err", "top-1", "detail"], rows))
    for p in data["parity"]:
        if p["status"] == "failed":
            console.print(f"[yellow]warning[/yellow]: {p['artifact']} was not produced: {p['error']}", markup=True, highlight=False, soft_wrap=True)
    for notice in data["notices"]:
        if " could not be produced: " not in notice:  # the failed formats were just listed
            console.print(f"notice: {notice}", markup=False, highlight=False, soft_wrap=True)
    for entry in data.get("diagnoses", []):
        console.print(f"diagnose: {entry['summary']}", markup=False, highlight=False, soft_wrap=True)
    console.print("signed: yes (model.sig)" if data["signed"] else "signed: no (pass --sign-key to sign)")


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name in the repository (models/NAME/VERSION).")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository folder.")
@click.option("--version", "version", type=int, help="Version number to write (default: the next one). Never overwrites.")
@click.option("--formats", default="savedmodel,tflite,onnx", show_default=True, help="Comma-separated artifacts to produce.")
@click.option("--tflite-quantize", default="", help="Extra TFLite variants: float16,dynamic,int8.")
@click.option("--calibration", type=click.Path(path_type=Path), help="Inputs (.npz) to calibrate int8 quantization.")
@click.option("--samples", type=click.Path(path_type=Path), help="Inputs (.npz, keys = input names) for the parity check.")
@click.option("--num-samples", type=click.IntRange(1, 100_000), default=32, show_default=True, help="Generated samples when --samples is not given.")
@click.option("--architecture", help="With a weights-only SOURCE: arch.json (model.to_json()) or module:build_fn.")
@click.option("--custom-objects", help="module.py or pkg.module defining the model's custom layers.")
@click.option("--trust-code", is_flag=True, help="Allow code stored in the model file (Lambda layers) to run (still inside the confined export worker).")
@click.option("--signature", default="serving_default", show_default=True, help="Signature of a SavedModel SOURCE to export.")
@click.option("--sign-key", type=click.Path(path_type=Path), envvar="TFSHIP_SIGN_KEY", help="Private key to sign the version [env TFSHIP_SIGN_KEY].")
@click.option("--sign-key-password", envvar="TFSHIP_SIGN_KEY_PASSWORD", help="Password of the signing key [env TFSHIP_SIGN_KEY_PASSWORD].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (9-18).")
@click.option("--atol", multiple=True, help="Absolute tolerance: VALUE for every artifact, or FORMAT=VALUE (repeatable).")
@click.option("--rtol", multiple=True, help="Relative tolerance: VALUE for every artifact, or FORMAT=VALUE (repeatable).")
@click.option("--strict", is_flag=True, help="Fail when any requested format cannot be produced.")
@click.option("--allow-mismatch", is_flag=True, help="Keep the version even when an artifact does not match the original.")
@click.option("--diagnose", "diagnose_all", is_flag=True,
              help="Find the first layer where each converted artifact diverges (always done for one that fails parity).")
@click.option("--diagnose-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the diagnoses' minimal reproductions [default: ./tfship-diagnose/NAME-VERSION].")
@command("export", _render_export)
def export_cmd(source, name, repo, version, formats, tflite_quantize, calibration, samples, num_samples, architecture,
               custom_objects, trust_code, signature, sign_key, sign_key_password, opset, atol, rtol, strict, allow_mismatch,
               diagnose_all, diagnose_dir):
    """Export SOURCE (.keras, .h5, SavedModel directory, or weights with --architecture) as a new version."""
    from tfship.exporter import ExportOptions, export

    options = ExportOptions(
        source=source, name=name, repo=repo, version=version, formats=split_list(formats),
        tflite_quantize=split_list(tflite_quantize), calibration=calibration, samples=samples, num_samples=num_samples,
        architecture=architecture, custom_objects=custom_objects, trust_code=trust_code, sign_key=sign_key,
        sign_key_password=sign_key_password, opset=opset, strict=strict, allow_mismatch=allow_mismatch,
        atol=parse_tolerances(atol, "--atol"), rtol=parse_tolerances(rtol, "--rtol"), signature=signature,
        diagnose=diagnose_all, diagnose_dir=diagnose_dir,
    )
    with StageProgress() as progress:
        result = export(options, progress=progress)
    return result.to_dict()


class StageProgress:
    """What the export is doing, on stderr: a ``rich`` spinner per stage (each finished stage ticked with its
    time) on a terminal, plain ``export: ...`` lines otherwise. Warnings always get a line of their own;
    ``-q`` shows neither (the result table names what failed), ``-v``/``-vv`` keep the plain lines too."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        level = log.getEffectiveLevel()
        self.quiet = level > logging.INFO
        self.live = self.console.is_terminal and not self.quiet and level == logging.INFO
        self.status: Any = None
        self.current: tuple[str, float] | None = None

    def __enter__(self) -> StageProgress:
        self.saved_handlers: list[logging.Handler] | None = None
        if self.live:
            self.status = self.console.status("starting the export worker", spinner="dots")
            self.status.start()
            # tfship's own log lines go through the console too, above the spinner.
            root = logging.getLogger()
            self.saved_handlers = root.handlers[:]
            root.handlers[:] = [_ConsoleHandler(self.console)]
        return self

    def __call__(self, message: str) -> None:
        if message.startswith(("warning: ", "notice: ")):
            kind, _, text = message.partition(": ")
            if kind == "warning" and not self.quiet:
                self.console.print(f"[yellow]warning[/yellow]: {text}", markup=True, highlight=False, soft_wrap=True) if self.live \
                    else log.warning("export: warning: %s", text)
            elif kind == "notice":
                log.info("export: %s", message)
            return
        if not self.live:
            log.info("export: %s", message)
            return
        self._finish()
        self.current = (message, time.perf_counter())
        self.status.update(f"{message}...")

    def _finish(self) -> None:
        if self.current is not None:
            text, started = self.current
            self.console.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - started:.1f}s)[/dim]", markup=True, highlight=False, soft_wrap=True)
            self.current = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.status is not None:
            if kind is None:
                self._finish()
            self.status.stop()
        if self.saved_handlers is not None:
            logging.getLogger().handlers[:] = self.saved_handlers
        sys.stderr.flush()


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(record.getMessage(), markup=False, highlight=False)
        except Exception:
            self.handleError(record)


COMMANDS = [export_cmd]
