"""Errors that carry the exit code of the command-line contract (DESIGN.md section 4).

Library code raises these with a message a person can act on; the CLI prints the message on one line
and exits with ``exit_code``.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
EXIT_UNAVAILABLE = 4
EXIT_SIGNATURE = 5


class TfshipError(Exception):
    """Base of every error tfship reports to a user."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(TfshipError):
    exit_code = EXIT_USAGE


class ExportError(TfshipError):
    exit_code = EXIT_ERROR


class UnsafeModelError(ExportError):
    """The model file carries code and the user did not pass --trust-code."""


class ServingError(TfshipError):
    exit_code = EXIT_ERROR


class PredictionMismatch(TfshipError):
    exit_code = EXIT_MISMATCH


class ServerUnavailable(TfshipError):
    """The server could not be reached, or the model is not available on it.

    ``code`` is the gRPC status code name when a call produced this error (``UNAVAILABLE``,
    ``DEADLINE_EXCEEDED``), empty otherwise.
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class SignatureError(TfshipError):
    exit_code = EXIT_SIGNATURE


class RpcError(TfshipError):
    """A gRPC call failed; keeps the gRPC status code name and the server's message."""

    def __init__(self, code: str, details: str, *, method: str = "") -> None:
        exit_code = EXIT_UNAVAILABLE if code in {"UNAVAILABLE", "NOT_FOUND", "DEADLINE_EXCEEDED"} else EXIT_ERROR
        where = f" calling {method}" if method else ""
        super().__init__(f"{code}{where}: {details}", exit_code=exit_code)
        self.code = code
        self.details = details
        self.method = method


def first_line(error: BaseException | str, limit: int = 300, *, prefer: str | None = None) -> str:
    """The first non-empty line of an exception's text (or of a string), at most ``limit`` characters.

    With ``prefer``, the first line containing that text wins (converters print pages of context before the
    line that says what failed). An exception without text is named by its class, so the result is never
    empty for an exception.
    """
    text = error if isinstance(error, str) else str(error)
    lines = [part.strip() for part in text.strip().splitlines() if part.strip()]
    line = next((part for part in lines if prefer and prefer in part), lines[0] if lines else "")
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    return line[:limit]


def describe_exception(error: BaseException, limit: int = 300) -> str:
    """``TypeName: first line``: for messages about a library's failure, where the type tells what kind it was."""
    return f"{type(error).__name__}: {first_line(error, limit)}"
