"""``tfship serve reload``: verify what is on disk now, pin it in models.config, tell the running engine.

models.config always pins verified versions (``specific``), so a version copied into a served repository is
never loaded on its own. ``reload`` runs the gate again (refusing, with every failing version named, unless
--skip-invalid), replaces both model configs atomically, and, when ``serve up`` recorded an engine, sends it
the new config through ModelService.HandleReloadConfigRequest and waits until the pinned versions are
AVAILABLE. TF Serving in a container also re-reads models.config every --model_config_file_poll_wait_seconds.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tfship.core.errors import ServerUnavailable, ServingError
from tfship.serving import config as cfg
from tfship.serving import gate
from tfship.serving.config_writer import recorded_options, write_model_configs
from tfship.serving.options import address
from tfship.serving.readiness import wait_ready
from tfship.serving.state import EngineState, read_state, write_state

log = logging.getLogger(__name__)

RELOAD_RPC_TIMEOUT = 120.0  # TF Serving answers once the new config is applied (loads included)


def _send_reload(target: str, config_proto: Any, timeout: float) -> str | None:
    """Ask the server to apply ``config_proto``; None when it did, else the reason it did not."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config_proto)
    with grpc.insecure_channel(target) as channel:
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    if response.status.error_code:
        return f"error {response.status.error_code}: {response.status.error_message}"
    return None


def reload(repo: Path, *, public_key: Path | None, allow_unsigned: bool, skip_invalid: bool,
           versions: str | None = None, labels: dict[str, dict[str, int]] | None = None,
           timeout: float = RELOAD_RPC_TIMEOUT) -> dict[str, Any]:
    """Verify, rewrite the model configs, and have the recorded engine (if any) serve them.

    ``versions``/``labels`` default to what the last ``serve up``/``serve config`` recorded. Raises
    SignatureError (nothing written) when a version fails verification and ``skip_invalid`` is False.
    """
    repo = Path(repo)
    recorded_versions, recorded_labels = recorded_options(repo)
    versions_text = versions or recorded_versions or "latest:1"
    policy = cfg.VersionPolicy.parse(versions_text)
    chosen_labels = labels if labels else recorded_labels
    exclude = gate.gate(repo, public_key=public_key, allow_unsigned=allow_unsigned, skip_invalid=skip_invalid)
    written = write_model_configs(repo, policy=policy, labels=chosen_labels, exclude=exclude, versions_text=policy.text())
    result: dict[str, Any] = {"models_config": str(written.models_config), "models": written.models,
                              "skipped": sorted(exclude), "versions": policy.text(), "engine": None, "reloaded": False}
    state = read_state(repo)
    if state is None:
        result["note"] = f"no engine recorded for {repo}: the next 'tfship serve up' serves these versions"
        return result
    result["engine"] = state.engine
    from tfship.serving.lifecycle import is_running

    if not is_running(state):
        result["note"] = f"the recorded {state.describe()} is not running: the next 'tfship serve up' serves these versions"
        return result
    proto = written.container_proto if state.engine == "docker" else written.local_proto
    target = address(state.host, state.grpc_port)
    problem = ("its gRPC port uses TLS (reload does not hold a client certificate)" if state.tls
               else _send_reload(target, proto, timeout))
    if problem is None:
        result["models_status"] = wait_ready(target, written.models, timeout=timeout, alive=lambda: is_running(state))
        result["reloaded"] = True
    elif state.engine == "docker":
        from tfship.serving.docker_engine import CONFIG_POLL_SECONDS

        log.warning("HandleReloadConfigRequest to %s failed: %s", target, problem)
        result["note"] = (f"the server did not take the config over gRPC ({problem}); TF Serving re-reads models.config "
                          f"within {CONFIG_POLL_SECONDS} s (--model_config_file_poll_wait_seconds)")
    else:
        raise ServerUnavailable(f"{written.models_config} was rewritten, but the local engine at {target} did not reload it "
                                f"({problem}); restart it: tfship serve down --repo {repo}, then tfship serve up")
    _record_models(repo, state, written.models)
    return result


def _record_models(repo: Path, state: EngineState, models: dict[str, list[int]]) -> None:
    """``serve status`` asks the recorded engine about the recorded models: record the new ones."""
    try:
        write_state(repo, dataclasses.replace(state, models=models))
    except OSError as exc:
        raise ServingError(f"the engine reloaded, but its state file could not be updated: {exc}") from exc
