"""What every tfship command shares: run it, render its result (table or JSON envelope), map errors to exit codes.

Command modules import this; ``tfship.cli`` imports the command modules and adds their commands. Nothing
here imports a command module, so registration runs one way.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from tfship import render
from tfship.core.errors import EXIT_ERROR, TfshipError, UsageError, first_line

log = logging.getLogger("tfship")


class State:
    debug = False


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tfship").setLevel(level)
    for noisy in ("tensorflow", "absl", "tf2onnx", "h5py", "keras"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 2 else logging.INFO)


def command(name: str, human: Callable[[Any, Any], None] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a command: run it, render its result (table or JSON envelope), map errors to exit codes.

    The wrapped function returns ``(data, exit_code)`` or ``data`` (exit code 0).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, json_output: bool = False, **kwargs: Any) -> NoReturn:
            try:
                outcome = fn(*args, **kwargs)
            except TfshipError as exc:
                fail(name, exc.message, exc.exit_code, json_output)
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except KeyboardInterrupt:
                fail(name, "interrupted", 130, json_output)
            except Exception as exc:  # a bug or an unexpected library failure
                if State.debug:
                    traceback.print_exc()
                fail(name, f"unexpected {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)", EXIT_ERROR, json_output)
            data, code = outcome if isinstance(outcome, tuple) else (outcome, 0)
            if json_output:
                render.print_json(render.envelope(name, code == 0, code, data))
            elif human is not None:
                human(render.stdout_console(), data)
            sys.exit(code)

        return click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")(wrapper)

    return decorate


def fail(name: str, message: str, code: int, json_output: bool) -> NoReturn:
    if State.debug and sys.exc_info()[0] is not None and code != 130:
        traceback.print_exc()
    if json_output:
        render.print_json(render.envelope(name, False, code, None, [message]))
    else:
        click.echo(f"tfship {name}: error: {message}", err=True)
    sys.exit(code)


def split_list(values: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (values or "").split(",") if v.strip())


def parse_tolerances(values: tuple[str, ...], flag: str) -> dict[str, float]:
    result = {}
    for value in values:
        label, _, number = value.rpartition("=") if "=" in value else ("*", "", value)
        try:
            result[label or "*"] = float(number)
        except ValueError:
            raise UsageError(f"{flag} {value!r}: expected a number, or FORMAT=number (e.g. tflite:float16=1e-2)") from None
    return result
