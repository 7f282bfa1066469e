"""The export worker: the child process that loads an untrusted model file and converts it.

The parent (:func:`tfship.exporter.pipeline.export`) prepares the staging directory, then calls
:func:`build_in_child`, which starts ``python -m tfship.exporter.worker`` with

- its working directory an empty temporary folder and ``TMPDIR`` a private temporary folder, both
  writable by it and removed afterwards (a relative path never reaches the caller's directory);
- the request (export options, staging path, version) as JSON on stdin; the signing key and its
  password are never sent, and ``TFSHIP_SIGN_KEY*`` variables are removed from its environment;
- a pipe on which the worker sends JSON lines: ``confinement``, ``progress``, ``log``, then one
  ``result`` (the manifest) or ``error`` (the TfshipError subclass, message and exit code, re-raised
  here as the same class);
- its stdout and stderr in a file (a model's code printing must not corrupt ``--json`` output),
  shown at debug level, and its last line quoted if the worker dies.

The worker first asks for SIGKILL when its parent dies, drops core dumps and confines its writes to
the staging directory and those two folders (:mod:`tfship.exporter.sandbox`), all before it imports
numpy, TensorFlow or the model's custom objects. ``--trust-code`` lets a model's code run, inside it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tfship.core import errors
from tfship.exporter import sandbox

if TYPE_CHECKING:
    from tfship.exporter.manifest import Manifest
    from tfship.exporter.pipeline import ExportOptions

log = logging.getLogger(__name__)

_FD_ENV = "TFSHIP_WORKER_FD"
_PARENT_ENV = "TFSHIP_WORKER_PARENT"
MAX_REQUEST = 1 << 20
MAX_MESSAGE = 64 << 20  # a manifest with many files and outputs stays far below this
_STDERR_TAIL = 64 << 10
_PATH_OPTIONS = ("source", "repo", "calibration", "samples", "sign_key")
# Errors the worker may report, by class name: the parent re-raises the same class.
_ERRORS: dict[str, type[errors.TfshipError]] = {
    cls.__name__: cls for cls in (errors.TfshipError, errors.UsageError, errors.ExportError, errors.UnsafeModelError,
                                  errors.PredictionMismatch, errors.SignatureError)
}


# --- parent side ----------------------------------------------------------------------------------

def build_in_child(options: ExportOptions, staging: Path, version: int,
                   progress: Callable[[str], None]) -> tuple[Manifest, dict[str, float]]:
    """Run :func:`tfship.exporter.pipeline.build_version` in the confined worker; its manifest and timings."""
    from tfship.exporter.manifest import Manifest

    request = {
        "options": _options_to_json(options), "source_label": str(options.source), "staging": str(staging.resolve()),
        "version": version, "sys_path": [os.path.abspath(p) for p in sys.path],
        "log_level": logging.getLogger("tfship.exporter").getEffectiveLevel(),
    }
    with tempfile.TemporaryDirectory(prefix="tfship-export-") as work:
        cwd, tmp = Path(work) / "cwd", Path(work) / "tmp"
        cwd.mkdir(mode=0o700)
        tmp.mkdir(mode=0o700)
        request["tmpdir"] = str(tmp)
        outcome = _run(request, cwd, tmp, Path(work) / "worker.log", progress)
    if outcome.get("type") == "error":
        raise _rebuild_error(outcome)
    try:
        manifest = Manifest.from_dict(outcome["manifest"])
        timings = {str(k): float(v) for k, v in outcome.get("timings", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.ExportError(f"the export worker sent an unreadable result ({type(exc).__name__}: {exc}); nothing was written") from exc
    return manifest, timings


def check_staging(staging: Path) -> None:
    """Only regular files and directories may be published (the worker could have made anything else)."""
    for folder, dirnames, filenames in os.walk(staging):  # never follows symlinks
        for name in dirnames + filenames:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise errors.ExportError(f"the export produced {path.relative_to(staging)}, which is not a regular file "
                                         f"or directory; nothing was written")


def _run(request: dict[str, Any], cwd: Path, tmp: Path, log_path: Path,
         progress: Callable[[str], None]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFSHIP_SIGN_KEY")}
    read_fd, write_fd = os.pipe()
    env.update({"TMPDIR": str(tmp), _FD_ENV: str(write_fd), _PARENT_ENV: str(os.getpid())})
    try:
        with log_path.open("wb") as output:
            # start_new_session: a Ctrl-C reaches only this process, which then stops the worker.
            child = subprocess.Popen([sys.executable, "-m", "tfship.exporter.worker"], stdin=subprocess.PIPE,
                                     stdout=output, stderr=output, cwd=cwd, env=env, pass_fds=(write_fd,),
                                     start_new_session=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    last_progress = "starting"
    try:
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps(request).encode())
            child.stdin.close()
        except BrokenPipeError:
            pass
        outcome: dict[str, Any] | None = None
        with os.fdopen(read_fd, "rb") as channel:
            read_fd = -1
            for message in _messages(channel):
                kind = message.get("type")
                if kind == "progress":
                    last_progress = str(message.get("message", ""))
                    progress(last_progress)
                elif kind == "log":
                    _relay_log(message)
                elif kind == "confinement":
                    log.info("export worker: %s", message.get("text", ""))
                elif kind in ("result", "error"):
                    outcome = message
                    break
        try:
            code = child.wait(timeout=120)
        except subprocess.TimeoutExpired:  # the answer is in; a worker that does not end is stopped
            child.kill()
            code = child.wait()
    finally:
        if read_fd >= 0:
            os.close(read_fd)
        if child.poll() is None:
            child.kill()
            child.wait()
        try:  # anything the worker started (trusted code may fork) goes with it
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    tail = _tail(log_path)
    if tail.strip():
        log.debug("export worker output:\n%s", tail.rstrip())
    if outcome is None:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        last = [line for line in tail.splitlines() if line.strip()]
        said = f": {last[-1].strip()[:300]}" if last else ""
        raise errors.ExportError(f"the export worker {how} while {last_progress}{said}; nothing was written")
    return outcome


def _messages(channel: IO[bytes]) -> Any:
    while True:
        line = channel.readline(MAX_MESSAGE + 1)
        if not line:
            return
        if len(line) > MAX_MESSAGE:
            raise errors.ExportError(f"the export worker sent a message over {MAX_MESSAGE >> 20} MiB; nothing was written")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise errors.ExportError(f"the export worker sent an unreadable message ({exc}); nothing was written") from exc
        if isinstance(message, dict):
            yield message


def _relay_log(message: dict[str, Any]) -> None:
    name, level = message.get("name"), message.get("level")
    if isinstance(name, str) and name.startswith("tfship") and isinstance(level, int):
        logging.getLogger(name).log(min(max(level, logging.DEBUG), logging.CRITICAL), "%s", message.get("message", ""))


def _rebuild_error(message: dict[str, Any]) -> errors.TfshipError:
    cls = _ERRORS.get(str(message.get("class")), errors.ExportError)
    error = cls(str(message.get("message", "")))
    code = message.get("exit_code")
    if isinstance(code, int) and 1 <= code <= 5:
        error.exit_code = code
    child_traceback = message.get("traceback")
    if child_traceback:
        error.add_note(f"in the export worker:\n{child_traceback}")
    return error


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(path.stat().st_size - _STDERR_TAIL, 0))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _options_to_json(options: ExportOptions) -> dict[str, Any]:
    data = asdict(options)
    data["sign_key"] = data["sign_key_password"] = None  # the private key never enters the worker
    for key in ("source", "calibration", "samples"):
        if data[key] is not None:
            data[key] = os.path.abspath(data[key])
    data["repo"] = str(data["repo"])
    if options.custom_objects and (options.custom_objects.endswith(".py") or Path(options.custom_objects).exists()):
        data["custom_objects"] = os.path.abspath(options.custom_objects)
    arch = options.architecture
    if arch:
        module, _, function = arch.rpartition(":")
        if Path(arch).suffix.lower() == ".json" or Path(arch).is_file():
            data["architecture"] = os.path.abspath(arch)
        elif module.endswith(".py"):
            data["architecture"] = f"{os.path.abspath(module)}:{function}"
    return data


def _options_from_json(data: dict[str, Any]) -> ExportOptions:
    from tfship.exporter.pipeline import ExportOptions

    known = {f.name for f in fields(ExportOptions)}
    values = {k: v for k, v in data.items() if k in known}
    for key in _PATH_OPTIONS:
        if values.get(key) is not None:
            values[key] = Path(values[key])
    for key in ("formats", "tflite_quantize"):
        values[key] = tuple(values.get(key, ()))
    return ExportOptions(**values)


# --- worker side ----------------------------------------------------------------------------------

class _Channel:
    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)
        self._stream = os.fdopen(fd, "wb", buffering=0)

    def send(self, message: dict[str, Any]) -> None:
        self._stream.write(json.dumps(message, default=str).encode() + b"\n")


class _Forward(logging.Handler):
    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send({"type": "log", "name": record.name, "level": record.levelno, "message": record.getMessage()})
        except Exception:  # logging must never break the export
            self.handleError(record)


def main() -> int:
    sandbox.die_with_parent(int(os.environ[_PARENT_ENV]))
    sandbox.limit_resources()
    channel = _Channel(int(os.environ[_FD_ENV]))
    request = json.loads(sys.stdin.buffer.read(MAX_REQUEST))
    staging, tmp = Path(request["staging"]), Path(request["tmpdir"])
    confinement = sandbox.confine([staging, tmp, Path.cwd()])
    channel.send({"type": "confinement", "confined": confinement.writes_confined, "abi": confinement.landlock_abi,
                  "text": f"{confinement.describe()}; working directory {os.getcwd()} (empty, temporary)"})
    sys.path[:0] = [p for p in request["sys_path"] if p not in sys.path]
    handler = _Forward(channel)
    handler.setLevel(int(request["log_level"]))
    root = logging.getLogger("tfship")
    root.addHandler(handler)
    root.setLevel(int(request["log_level"]))
    try:
        from tfship.exporter import pipeline

        options = _options_from_json(request["options"])
        manifest, timings = pipeline.build_version(
            options, staging, int(request["version"]), lambda text: channel.send({"type": "progress", "message": text}),
            source_label=request.get("source_label"))
        channel.send({"type": "result", "manifest": manifest.to_dict(), "timings": timings})
        return 0
    except errors.TfshipError as exc:
        channel.send({"type": "error", "class": type(exc).__name__, "message": exc.message, "exit_code": exc.exit_code,
                      "traceback": traceback.format_exc()})
    except BaseException as exc:  # a bug or an unexpected library failure: still one line for the user
        text = str(exc).strip().splitlines()
        channel.send({"type": "error", "class": "ExportError", "exit_code": errors.EXIT_ERROR,
                      "message": f"unexpected {type(exc).__name__} in the export worker: {(text[0] if text else '')[:300]} "
                                 f"(rerun with --debug for the traceback)",
                      "traceback": traceback.format_exc()})
    return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow's can hang or crash after the work is done
