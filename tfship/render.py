"""Rendering of command results: a human table on stdout, or the JSON envelope of DESIGN.md section 4."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

SCHEMA = 1


def envelope(command: str, ok: bool, exit_code: int, data: Any = None, errors: Iterable[str] = ()) -> dict:
    return {"schema": SCHEMA, "command": command, "ok": ok, "exit_code": exit_code, "data": data, "errors": list(errors)}


def print_json(document: dict) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*["" if v is None else str(v) for v in row])
    return result


def fmt_float(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}"


