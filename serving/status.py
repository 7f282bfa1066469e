"""``tfship serve status``: which engine serves a repository, and the state of every model version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfship.core.errors import TfshipError
from tfship.serving.lifecycle import is_running
from tfship.serving.options import address
from tfship.serving.state import read_state


def status(repo: Path) -> dict[str, Any]:
    from tfship.client.grpc_client import ServingClient

    state = read_state(repo)
    if state is None:
        return {"running": False, "reason": f"no engine recorded for {repo}; start one with tfship serve up"}
    running = is_running(state)
    result: dict[str, Any] = {"running": running, "engine": state.engine, "host": state.host, "grpc_port": state.grpc_port,
                              "rest_port": state.rest_port, "models": {}}
    if not running:
        result["reason"] = f"the recorded {state.describe()} is not running (stale record; tfship serve down removes it)"
        return result
    if state.tls:
        result["models"] = {m: "TLS endpoint: query it with tfship validate --root-certificates" for m in state.models}
        return result
    with ServingClient(address(state.host, state.grpc_port), timeout=5, retries=2) as client:
        for model in state.models:
            try:
                result["models"][model] = [s.to_dict() for s in client.status(model)]
            except TfshipError as exc:
                result["models"][model] = exc.message
    return result
