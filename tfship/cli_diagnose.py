"""``tfship diagnose VERSION_DIR``: the first layer where a converted artifact diverges from the original model.

:func:`render_diagnoses` also prints the diagnoses ``tfship export --diagnose`` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tfship.command import command


def render_diagnoses(console: Any, diagnoses: list[dict[str, Any]]) -> None:
    """One paragraph per artifact: where it diverges, the error there and before it, the reproduction."""
    for entry in diagnoses:
        first, before = entry.get("first_divergent"), entry.get("before")
        if first is None:
            console.print(entry["summary"])
            continue
        console.print(f"{entry['artifact']}: first diverges at layer {first['index']} '{first['name']}' ({first['class_name']})")
        there = "-" if first.get("max_abs") is None else f"{first['max_abs']:.3g}"
        console.print(f"  error there:  max abs {there}" + (f" ({first['error']})" if first.get("error") else ""))
        if before is not None:
            value = "-" if before.get("max_abs") is None else f"{before['max_abs']:.3g}"
            console.print(f"  before it:    layer {before['index']} '{before['name']}' ({before['class_name']}), max abs {value}")
        else:
            console.print("  before it:    nothing (it is the first layer)")
        console.print(f"  layers cut:   {len(entry.get('checked', []))} of {entry['layers']} converted (bisection)")
        if entry.get("reproduction"):
            console.print(f"  reproduction: {entry['reproduction']} (truncated.keras, the converted file, inputs.npz, report.json)")


def _render(console: Any, data: dict[str, Any]) -> None:
    render_diagnoses(console, data["diagnoses"])


@click.command("diagnose")
@click.argument("version_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--source", type=click.Path(exists=True, path_type=Path),
              help="The model file the version was exported from [default: the path in its manifest].")
@click.option("--artifact", "artifacts", multiple=True,
              help="Artifact to diagnose (tflite, tflite:float16, onnx ...); repeatable [default: those that fail parity, else all].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the minimal reproductions [default: ./tfship-diagnose/NAME-VERSION].")
@click.option("--custom-objects", help="Python file or module defining the model's custom layers.")
@click.option("--trust-code", is_flag=True, help="Allow code-carrying layers (Lambda) in a model you trust.")
@command("diagnose", _render)
def diagnose_cmd(version_dir, source, artifacts, out, custom_objects, trust_code):
    """Find the first layer where a converted artifact of VERSION_DIR diverges from the original model.

    The original is cut after layer k, converted the same way, and compared on the version's golden
    samples; bisection finds the first k that fails. Exit 3 when an artifact diverges, 0 when none does.
    """
    from tfship.core.errors import EXIT_MISMATCH
    from tfship.exporter.diagnose import diagnose_version

    results = diagnose_version(version_dir, source=source, artifacts=tuple(artifacts), out=out,
                               custom_objects=custom_objects, trust_code=trust_code)
    data = {"version": str(version_dir), "diagnoses": [d.to_dict() for d in results]}
    return (data, EXIT_MISMATCH) if any(d.diverges for d in results) else data


COMMANDS = [diagnose_cmd]
