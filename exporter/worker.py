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
the staging directory and its private folders (:mod:`tfship.exporter.sandbox`), all before it imports
numpy, TensorFlow or the model's custom objects. ``--trust-code`` lets a model's code run, inside it.

Its reads are confined as well (:func:`read_rules`, computed here in the parent): the Python
installation and the ``sys.path`` entries it needs, tfship's own package folders, system library and
configuration locations (in ``/proc`` only its own entries and system-wide ones, never another
process's environment), the model, the files named on the command line, and its own folders. A
folder that holds the model, the signing key, the caller's working directory or the home directory is
never opened to it whole, so ``keys/signing_key.pem`` next to the model and ``~/.ssh`` stay out of
reach. ``HOME`` points at a private folder (``~/.keras/keras.json`` is copied there when it exists).
"""

from __future__ import annotations

import collections
import errno
import importlib.util
import json
import logging
import os
import re
import shutil
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
_KERAS_CONFIG_MAX = 64 << 10
EXPORT_LOG = "export.log"  # what the worker and the libraries printed, kept in the version (signed with it)
_EXPORT_LOG_MAX = 16 << 20
# Libraries' own log levels, set in the worker's environment before anything imports them. What they
# print goes to the worker's output file (its fds 1 and 2), which becomes the version's export.log;
# warnings are kept there, their INFO chatter only with -vv.
_QUIET_LIBRARIES = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_CPP_MIN_VLOG_LEVEL": "0", "GLOG_minloglevel": "1",
                    "ABSL_MIN_LOG_LEVEL": "1", "GRPC_VERBOSITY": "ERROR"}
_LIBRARY_LOGGERS = ("tensorflow", "absl", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "h5py", "ai_edge_litert")
# System library and configuration locations every export reads (TensorFlow, LiteRT, onnxruntime, tf2onnx).
SYSTEM_READABLE = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/sys", "/dev",
                   # /proc: the worker's own entries and the system-wide ones libraries read, never other processes'
                   # (/proc/<parent>/environ would hand it the variables kept out of its environment).
                   "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/loadavg", "/proc/uptime",
                   "/proc/version", "/proc/filesystems", "/proc/sys", "/proc/driver")
_OPTIONAL_READABLE = ("/opt",)  # software lives there, and sometimes projects: not opened when it holds the model
_TFSHIP_PACKAGES = ("tfship", "tfship.exporter", "tfship.serving", "tfship.client")
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

    data = _options_to_json(options)
    readable, listable = read_rules(data, options.sign_key)
    request = {
        "options": data, "source_label": str(options.source), "staging": str(staging.resolve()),
        "version": version, "sys_path": [os.path.abspath(p) for p in sys.path],
        "log_level": logging.getLogger("tfship.exporter").getEffectiveLevel(),
        "readable": readable, "listable": listable,
    }
    with tempfile.TemporaryDirectory(prefix="tfship-export-") as work:
        cwd, tmp, home = Path(work) / "cwd", Path(work) / "tmp", Path(work) / "home"
        for folder in (cwd, tmp, home):
            folder.mkdir(mode=0o700)
        _copy_keras_config(home)
        request.update(tmpdir=str(tmp), home=str(home))
        log_path = Path(work) / "worker.log"
        outcome = _run(request, cwd, tmp, home, log_path, progress)
        if outcome.get("type") != "error":
            _keep_log(log_path, staging / EXPORT_LOG)
    if outcome.get("type") == "error":
        raise _rebuild_error(outcome)
    try:
        manifest = Manifest.from_dict(outcome["manifest"])
        timings = {str(k): float(v) for k, v in outcome.get("timings", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.ExportError(f"the export worker sent an unreadable result ({type(exc).__name__}: {exc}); nothing was written") from exc
    return manifest, timings


def _keep_log(log_path: Path, target: Path) -> None:
    """The worker's output (libraries' warnings, converters' diagnostics, tfship's stages) beside the manifest."""
    try:
        size = log_path.stat().st_size
        with log_path.open("rb") as source, target.open("wb") as out:
            if size > _EXPORT_LOG_MAX:
                source.seek(size - _EXPORT_LOG_MAX)
                out.write(f"[export.log: the first {size - _EXPORT_LOG_MAX} bytes were cut]\n".encode())
            shutil.copyfileobj(source, out)
    except OSError as exc:
        log.warning("the export log could not be kept in the version: %s", exc)


def check_staging(staging: Path) -> None:
    """Only regular files and directories may be published (the worker could have made anything else)."""
    for folder, dirnames, filenames in os.walk(staging):  # never follows symlinks
        for name in dirnames + filenames:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise errors.ExportError(f"the export produced {path.relative_to(staging)}, which is not a regular file "
                                         f"or directory; nothing was written")


def read_rules(data: dict[str, Any], sign_key: Path | None = None) -> tuple[list[str], list[str]]:
    """What the worker may read (and execute) beneath, and the folders it may only list.

    ``data`` is the request's options (absolute paths). Folders that hold the model, the signing
    key, the caller's working directory or the home directory are never readable whole: a module
    named on the command line that lives in one gets its own file readable and the folder listable
    (the import system lists a folder to find a module in it).
    """
    protected = [_real(p) for p in (os.getcwd(), Path.home(), data.get("source"), sign_key) if p]

    def open_whole(path: str) -> bool:
        return not any(_is_within(p, path) for p in protected)

    packages = [_real(p) for p in _package_folders()]
    readable: list[str] = [p for p in SYSTEM_READABLE if os.path.exists(p)]
    listable: list[str] = []
    if sign_key is not None:
        exposed = [p for p in readable if _is_within(_real(sign_key), p)]
        if exposed:
            log.warning("the signing key %s lies under %s, which the export worker may read; keep the key elsewhere "
                        "(in a folder of its own, next to the model or in your home directory)", sign_key, exposed[0])
    for entry in (*_OPTIONAL_READABLE, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path):
        path = _real(entry or os.getcwd())
        # The checkout that holds tfship's own folders is not opened whole: its package folders are.
        if os.path.exists(path) and open_whole(path) and not any(_is_within(p, path) for p in packages):
            readable.append(path)
    readable += packages
    source = data.get("source")
    if source:
        readable.append(_real(source))
        readable += _checkpoint_files(Path(source))
    readable += [_real(data[key]) for key in ("samples", "calibration") if data.get(key)]
    architecture = data.get("architecture") or ""
    for module in (data.get("custom_objects"), architecture.rpartition(":")[0] or architecture):
        if not module:
            continue
        if os.path.isabs(module):  # a file the user named: module.py, arch.json or module.py:build_fn
            readable.append(_real(module))
        else:  # pkg.module: import it from where the import system would find it
            _module_rules(module, open_whole, readable, listable)
    return list(dict.fromkeys(readable)), list(dict.fromkeys(listable))


def _checkpoint_files(prefix: Path) -> list[str]:
    """The index and data shards of a TensorFlow checkpoint named by its prefix (``ckpt/weights``)."""
    try:
        with os.scandir(prefix.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(f"{prefix.name}.")]
    except OSError:
        return []
    return sorted(_real(prefix.parent / n) for n in names if n == f"{prefix.name}.index" or n.startswith(f"{prefix.name}.data-"))


def _module_rules(name: str, open_whole: Callable[[str], bool], readable: list[str], listable: list[str]) -> None:
    try:  # a top-level name: finding it runs no code of the user's
        spec = importlib.util.find_spec(name.partition(".")[0])
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    if spec.submodule_search_locations:  # a package: its folder, and the folder it is found in listable
        for location in spec.submodule_search_locations:
            folder = _real(location)
            (readable if open_whole(folder) else listable).append(folder)
            listable.append(os.path.dirname(folder))
    elif spec.origin and os.path.isfile(spec.origin):  # module.py: its folder, or the file alone in a protected one
        folder = os.path.dirname(_real(spec.origin))
        if open_whole(folder):
            readable.append(folder)
        else:
            readable.append(_real(spec.origin))
            listable.append(folder)


def _package_folders() -> list[str]:
    folders: list[str] = []
    for name in _TFSHIP_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        folders += list(spec.submodule_search_locations or []) if spec else []
    return folders


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(path))


def _is_within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _copy_keras_config(home: Path) -> None:
    """Keras and tf_keras read ``~/.keras/keras.json`` (or ``$KERAS_HOME``); the worker's home gets a copy."""
    config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        if config.is_file() and config.stat().st_size <= _KERAS_CONFIG_MAX:
            (home / ".keras").mkdir(mode=0o700)
            shutil.copyfile(config, home / ".keras" / "keras.json")
    except OSError as exc:
        log.debug("the Keras configuration %s is not copied to the export worker: %s", config, exc)


def _run(request: dict[str, Any], cwd: Path, tmp: Path, home: Path, log_path: Path,
         progress: Callable[[str], None]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFSHIP_SIGN_KEY")}
    read_fd, write_fd = os.pipe()
    verbose = int(request.get("log_level", logging.INFO)) <= logging.DEBUG
    for name, value in _QUIET_LIBRARIES.items():
        env[name] = "0" if verbose and name != "GRPC_VERBOSITY" else value
    env.update({"TMPDIR": str(tmp), "HOME": str(home), "KERAS_HOME": str(home / ".keras"),
                _FD_ENV: str(write_fd), _PARENT_ENV: str(os.getpid())})
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
    data["diagnose_dir"] = None  # the parent moves the reproductions out of the staging folder
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
    staging, tmp, home = Path(request["staging"]), Path(request["tmpdir"]), Path(request["home"])
    confinement = sandbox.confine([staging, tmp, home, Path.cwd()], readable=[Path(p) for p in request["readable"]],
                                  listable=[Path(p) for p in request["listable"]])
    channel.send({"type": "confinement", "confined": confinement.writes_confined, "abi": confinement.landlock_abi,
                  "text": f"{confinement.describe()}; working directory {os.getcwd()} (empty, temporary)"})
    reads = _ReadAttempts()
    if confinement.reads_confined:
        sys.addaudithook(reads.hook)
    sys.path[:0] = [p for p in request["sys_path"] if p not in sys.path]
    handler = _Forward(channel)
    handler.setLevel(int(request["log_level"]))
    root = logging.getLogger("tfship")
    root.addHandler(handler)
    root.setLevel(min(int(request["log_level"]), logging.INFO))
    handler.setLevel(int(request["log_level"]))
    _log_to_file(int(request["log_level"]))

    def stage(text: str) -> None:
        _mark(text)
        channel.send({"type": "progress", "message": text})

    try:
        from tfship.exporter import pipeline

        options = _options_from_json(request["options"])
        manifest, timings = pipeline.build_version(
            options, staging, int(request["version"]), stage, source_label=request.get("source_label"))
        channel.send({"type": "result", "manifest": manifest.to_dict(), "timings": timings})
        return 0
    except errors.TfshipError as exc:
        channel.send({"type": "error", "class": type(exc).__name__, "exit_code": exc.exit_code,
                      "message": _refusal(exc, exc.message, reads) if confinement.writes_confined else exc.message,
                      "traceback": traceback.format_exc()})
    except BaseException as exc:  # a bug or an unexpected library failure: still one line for the user
        text = str(exc).strip().splitlines()
        message = (f"unexpected {type(exc).__name__} in the export worker: {(text[0] if text else '')[:300]} "
                   f"(rerun with --debug for the traceback)")
        channel.send({"type": "error", "class": "ExportError", "exit_code": errors.EXIT_ERROR,
                      "message": _refusal(exc, message, reads) if confinement.writes_confined else message,
                      "traceback": traceback.format_exc()})
    return 1


def _log_to_file(level: int) -> None:
    """tfship's records and the libraries' Python loggers into the worker's stderr (the export log)."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(stream)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("tfship").addHandler(stream)
    logging.getLogger("tfship").propagate = False
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG else logging.WARNING)


def _mark(text: str) -> None:
    import time

    sys.stdout.flush()
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} == {text}\n")
    sys.stderr.flush()


_QUOTED_PATH = re.compile(r"""(?:name = |: )['"](/[^'"]+)['"]""")


class _ReadAttempts:
    """The files Python code last opened for reading (an audit hook), to name a refused one when the export fails.

    Libraries do not always keep the ``PermissionError`` that made them fail (Keras 3 turns one raised
    in a Lambda into a ``StagingError``, then tfship tries tf_keras); the kernel's answer does not
    change, so a recorded file the worker still may not open is one it was refused. Symbolic links
    are refused everywhere, so a recorded attempt to make one was refused.
    """

    def __init__(self) -> None:
        self.attempts: collections.deque[tuple[str, str]] = collections.deque(maxlen=256)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "os.symlink" and isinstance(args[1], str):
            self.attempts.append(("symlink", f"{args[0]} -> {os.path.abspath(args[1])}"))
        if event != "open" or not isinstance(args[0], str) or args[0].endswith(".pyc"):
            return
        mode, flags = args[1], args[2]
        if (mode is None and isinstance(flags, int) and flags & os.O_ACCMODE == os.O_RDONLY) or (
                isinstance(mode, str) and "r" in mode and "+" not in mode):
            self.attempts.append(("read", os.path.abspath(args[0])))

    def refused(self) -> str | None:
        """The last recorded access the worker is refused, None if none."""
        for kind, path in dict.fromkeys(reversed(self.attempts)):
            if kind == "symlink":
                return path
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    continue
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
            except PermissionError:
                return path
            except OSError:
                continue
        return None


def _refusal(exc: BaseException, message: str, reads: _ReadAttempts) -> str:
    """``message``, led by what the confinement refused when an access refusal caused it."""
    denied = _denied(exc)
    if not denied:
        denied = reads.refused() or denied
    if denied is None:
        return message
    what = denied or "a file"
    return (f"{what}: access refused: the export worker is confined (Landlock) and may read only Python, system "
            f"libraries, the model and the files named on the command line, and write only its staging directory; "
            f"{' '.join(message.split())[:400]}")


def _denied(exc: BaseException) -> str | None:
    """The path whose access was refused (``""`` when unknown) somewhere in ``exc``'s chain, None if none was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    found: str | None = None
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        text = str(current)
        if isinstance(current, OSError) and current.errno in (errno.EACCES, errno.EPERM):
            if current.filename2:  # symlink, rename, link: the pair, as the error itself names them
                return f"{current.filename} -> {current.filename2}"
            return str(current.filename or _path_in(text))
        if type(current).__name__ == "PermissionDeniedError" or "Permission denied" in text or "errno = 13" in text:
            found = found or _path_in(text)
        current = current.__cause__ or current.__context__
    return found


def _path_in(text: str) -> str:
    match = _QUOTED_PATH.search(text)
    return match.group(1) if match else ""


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow's can hang or crash after the work is done
