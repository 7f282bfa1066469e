"""The local engine as a process: started detached or in the foreground, identified, stopped.

A pid alone does not identify a process: once the engine has exited, the kernel may give its pid to
anything else. The state file records the engine's start time too, and nothing is signalled unless
the process behind the pid started at that very time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tfship.core.errors import ServerUnavailable
from tfship.serving.config_writer import GeneratedConfig
from tfship.serving.model_server import ServerFlags, build_engine
from tfship.serving.options import ServeOptions, address
from tfship.serving.readiness import wait_ready
from tfship.serving.state import EngineState, remove_state, run_dir, write_state

if TYPE_CHECKING:
    from tfship.serving.local_engine import LocalEngine

log = logging.getLogger(__name__)

LOG_FILE = "local-engine.log"  # the engine's own log, rotated at LOG_MAX_BYTES
OUTPUT_FILE = "local-engine.out"  # whatever writes to the process's stdout/stderr (native libraries, a crash)
LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 3
# The start time psutil reports is derived from clock ticks since boot: equal readings for one process.
START_TIME_TOLERANCE = 0.05


# -- which process is it ----------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def started_at(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None when no such process runs."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_recorded_process(pid: int | None, recorded_start: float | None) -> bool:
    """Whether ``pid`` is still the very process that was recorded (same pid, same start time)."""
    if not pid:
        return False
    if recorded_start is None:  # a record written before start times were kept: go by the command line
        return pid_alive(pid) and _is_engine_command(pid)
    actual = started_at(pid)
    return actual is not None and abs(actual - recorded_start) <= START_TIME_TOLERANCE


def _is_engine_command(pid: int) -> bool:
    try:
        command = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "tfship" in " ".join(command) and "serve" in command


class StopOutcome(Enum):
    STOPPED = "stopped"  # it was our engine, and it has exited
    GONE = "gone"  # no process has the pid any more
    NOT_OURS = "not ours"  # the pid now belongs to another process, which was left alone


def stop_recorded_process(pid: int, recorded_start: float | None, timeout: float) -> StopOutcome:
    """SIGTERM (the engine drains in-flight requests), SIGKILL after ``timeout``; only if it is still ours."""
    if not pid_alive(pid):
        return StopOutcome.GONE
    if not is_recorded_process(pid, recorded_start):
        return StopOutcome.NOT_OURS
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)  # psutil checks again that the pid was not reused
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            log.warning("pid %d did not stop within %gs; killing it", pid, timeout)
            process.kill()
            process.wait(10)
    except psutil.NoSuchProcess:
        pass
    return StopOutcome.STOPPED


def describe_process(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return " ".join(process.cmdline())[:120] or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "unknown"


# -- the engine's log -------------------------------------------------------------------------------

def engine_log_handler(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> logging.Handler:
    """The detached engine's log: a file that rotates at ``max_bytes``, keeping ``backups`` old ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _rotate_at_start(path: Path) -> None:
    """Stdout/stderr of the process cannot rotate while it writes; keep one previous file instead."""
    try:
        if path.stat().st_size > 0:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _tail(path: Path, lines: int = 30, max_bytes: int = 64 << 10) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
            return "\n".join(handle.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- running the engine -----------------------------------------------------------------------------

def build_local_engine(config_file: Path, *, host: str, grpc_port: int, rest_port: int | None, public_key: Path | None,
                       batching_file: Path | None = None, ssl_config_file: Path | None = None, poll_seconds: float = 1.0,
                       intra_op_threads: int = 0, inter_op_threads: int = 0) -> LocalEngine:
    """The engine ``tfship model-server`` builds, from serve up's options (health service on, no load retries)."""
    return build_engine(local_server_flags(config_file, host=host, grpc_port=grpc_port, rest_port=rest_port,
                                           public_key=public_key, batching_file=batching_file, ssl_config_file=ssl_config_file,
                                           poll_seconds=poll_seconds, intra_op_threads=intra_op_threads,
                                           inter_op_threads=inter_op_threads))


def local_server_flags(config_file: Path, *, host: str, grpc_port: int, rest_port: int | None, public_key: Path | None,
                       batching_file: Path | None = None, ssl_config_file: Path | None = None, poll_seconds: float = 1.0,
                       intra_op_threads: int = 0, inter_op_threads: int = 0) -> ServerFlags:
    """serve up's options as ``tfship model-server`` flags: --model_config_file, ports, key, batching, TLS."""
    return ServerFlags(port=grpc_port, rest_api_port=rest_port or 0, model_config_file=config_file,
                       file_system_poll_wait_seconds=poll_seconds, enable_batching=batching_file is not None,
                       batching_parameters_file=batching_file, ssl_config_file=ssl_config_file,
                       tensorflow_intra_op_parallelism=intra_op_threads, tensorflow_inter_op_parallelism=inter_op_threads,
                       enable_grpc_healthcheck_service=True, max_num_load_retries=0, tfship_public_key=public_key,
                       tfship_host=host).check()


def engine_args(options: ServeOptions, generated: GeneratedConfig, log_file: Path) -> list[str]:
    args = ["--config", str(generated.local_config), "--host", options.host, "--grpc-port", str(options.grpc_port),
            "--rest-port", str(options.rest_port), "--poll-seconds", str(options.poll_seconds),
            "--tensorflow-intra-op-parallelism", str(options.intra_op_threads),
            "--tensorflow-inter-op-parallelism", str(options.inter_op_threads), "--log-file", str(log_file)]
    if options.public_key and not options.allow_unsigned:
        args += ["--public-key", str(options.public_key)]
    if generated.batching_config:
        args += ["--batching-parameters-file", str(generated.batching_config)]
    if generated.ssl_config:
        args += ["--ssl-config-file", str(generated.ssl_config)]
    return args


def start_detached(options: ServeOptions, generated: GeneratedConfig) -> dict[str, Any]:
    """Start ``tfship serve run-local`` in its own session, record it, wait until its models are AVAILABLE.

    On any failure the process is stopped and nothing is left recorded.
    """
    repo = Path(options.repo)
    run = run_dir(repo)
    run.mkdir(parents=True, exist_ok=True)
    log_path, output_path = run / LOG_FILE, run / OUTPUT_FILE
    _rotate_at_start(output_path)
    command = [sys.executable, "-m", "tfship", "serve", "run-local", *engine_args(options, generated, log_path)]
    with output_path.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        state = EngineState(engine="local", host=options.host, grpc_port=options.grpc_port, rest_port=options.rest_port,
                            models=generated.models, pid=process.pid, started_at=psutil.Process(process.pid).create_time(),
                            log=str(log_path), tls=bool(generated.ssl_config))
        write_state(repo, state)
        log.info("local engine starting (pid %d), log: %s", process.pid, log_path)
        statuses = wait_ready(address(options.host, options.grpc_port), generated.models, timeout=options.timeout,
                              alive=lambda: process.poll() is None, tls_root=options.tls_root())
    except (ServerUnavailable, psutil.NoSuchProcess, KeyboardInterrupt) as exc:
        _end(process)
        remove_state(repo)
        if isinstance(exc, KeyboardInterrupt):
            raise
        reason = exc.message if isinstance(exc, ServerUnavailable) else "the engine exited at once"
        raise ServerUnavailable(f"{reason}\n--- last lines of {log_path} ---\n{_tail(log_path)}"
                                f"\n--- last lines of {output_path} ---\n{_tail(output_path)}") from exc
    return {"engine": "local", "pid": process.pid, "grpc": address(options.host, options.grpc_port),
            "rest": f"http://{address(options.host, options.rest_port)}", "log": str(log_path), "models": statuses,
            "config": generated.to_dict()}


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run_foreground(options: ServeOptions, generated: GeneratedConfig,
                   on_serving: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Serve in this process until SIGTERM or SIGINT; ``on_serving`` hears where, once the ports are open."""
    engine = build_local_engine(generated.local_config, host=options.host, grpc_port=options.grpc_port,
                                rest_port=options.rest_port, public_key=None if options.allow_unsigned else options.public_key,
                                batching_file=generated.batching_config, ssl_config_file=generated.ssl_config,
                                poll_seconds=options.poll_seconds, intra_op_threads=options.intra_op_threads,
                                inter_op_threads=options.inter_op_threads)
    engine.start()
    me = psutil.Process()
    write_state(options.repo, EngineState(engine="local", host=options.host, grpc_port=engine.grpc_port,
                                          rest_port=engine.rest_port, models=generated.models, pid=me.pid,
                                          started_at=me.create_time(), tls=bool(generated.ssl_config)))
    try:
        if on_serving is not None:
            on_serving({"engine": "local", "models": sorted(generated.models),
                        "grpc": address(options.host, engine.grpc_port),
                        "rest": f"http://{address(options.host, engine.rest_port)}"})
        engine.serve_until_signal()
    finally:
        remove_state(options.repo)
    return {"engine": "local", "stopped": True}
