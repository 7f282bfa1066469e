"""``tfship serve up`` / ``down``: refuse a second engine, choose one, start it, stop it.

The parts live in their own modules: ``config_writer`` (gate + config files), ``local_process`` (the
local engine as a process), ``docker_engine`` (the TF Serving container), ``readiness`` (waiting for
AVAILABLE), ``state`` (which engine serves a repository), ``status`` (asking it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfship.core.errors import ServerUnavailable, ServingError, UsageError
from tfship.serving import docker_engine, local_process
from tfship.serving.config_writer import write_configs
from tfship.serving.options import ServeOptions
from tfship.serving.state import EngineState, read_state, remove_state, state_path

log = logging.getLogger(__name__)


def choose_engine(requested: str) -> str:
    if requested in ("docker", "local"):
        return requested
    if requested != "auto":
        raise UsageError(f"--engine {requested!r}: choose auto, docker or local")
    problem = docker_engine.engine_problem()
    if problem is None:
        log.info("engine: docker (a Docker engine answered)")
        return "docker"
    log.info("engine: local (no Docker engine answered: %s)", problem)
    return "local"


def is_running(state: EngineState) -> bool:
    """Whether the recorded engine still runs (for a local one: the very process that was recorded).

    Raises ServerUnavailable when the recorded container cannot be asked about (no Docker engine answers):
    a record is never declared stale on a guess.
    """
    if state.engine == "local":
        return local_process.is_recorded_process(state.pid, state.started_at)
    client = docker_engine.docker_client()
    if client is None:
        raise ServerUnavailable(f"cannot tell whether container {state.container} still runs: no Docker engine answered "
                                f"({docker_engine.engine_problem()})")
    return bool(state.container) and docker_engine.DockerLauncher(client).running(str(state.container))


def _refuse_if_serving(repo: Path) -> None:
    """Before anything is written: a running engine polls models.config and would pick up a rewrite."""
    previous = read_state(repo)
    if previous is None:
        return
    if is_running(previous):
        raise ServingError(f"an engine is already serving {repo} ({previous.describe()}); "
                           f"run 'tfship serve down --repo {repo}' first")
    log.info("%s: the recorded %s is no longer running; replacing the stale record", state_path(repo), previous.describe())
    remove_state(repo)


def up(options: ServeOptions, *, detach: bool, on_serving: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Verify, write the configs, start an engine, wait until every model is AVAILABLE.

    The foreground local engine blocks until a signal; ``on_serving`` hears where it listens first.
    """
    repo = Path(options.repo)
    _refuse_if_serving(repo)
    engine = choose_engine(options.engine)
    generated = write_configs(options)
    if engine == "docker":
        return docker_engine.serve_in_container(options, generated)
    if detach:
        return local_process.start_detached(options, generated)
    return local_process.run_foreground(options, generated, on_serving)


def down(repo: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Stop the recorded engine (gracefully: in-flight requests finish), then forget it.

    A record whose process is gone, or whose pid now belongs to another process, is stale: it is
    reported and removed, and that other process is never signalled.
    """
    state = read_state(repo)
    if state is None:
        return {"stopped": False, "reason": f"no engine recorded for {repo}"}
    result: dict[str, Any] = {"stopped": False, "engine": state.engine}
    if state.engine == "local" and state.pid:
        outcome = local_process.stop_recorded_process(state.pid, state.started_at, timeout)
        result["stopped"] = outcome is local_process.StopOutcome.STOPPED
        if outcome is local_process.StopOutcome.GONE:
            result["reason"] = f"the recorded local engine (pid {state.pid}) is not running; removed the stale record"
        elif outcome is local_process.StopOutcome.NOT_OURS:
            result["reason"] = (f"pid {state.pid} now belongs to another process ({local_process.describe_process(state.pid)}), "
                                f"not the recorded engine: left it alone and removed the stale record")
        if not result["stopped"]:
            result["stale"] = True
            log.warning("%s: %s", state_path(repo), result["reason"])
    elif state.engine == "docker" and state.container:
        client = docker_engine.docker_client()
        if client is None:
            raise ServerUnavailable(f"cannot stop container {state.container}: no Docker engine answered")
        result["stopped"] = docker_engine.DockerLauncher(client).stop(state.container, timeout=int(timeout))
        if not result["stopped"]:
            result.update(stale=True, reason=f"container {state.container} is gone; removed the stale record")
    remove_state(repo)
    return result
