"""Readiness: ask ``ModelService.GetModelStatus`` until every expected version is AVAILABLE.

One loop for both engines, deciding on TF Serving's version states (``ModelVersionStatus.State`` in
tensorflow_serving/apis/get_model_status.proto: UNKNOWN 0, START 10, LOADING 20, AVAILABLE 30,
UNLOADING 40, END 50) and on the status code that comes with END: END with an error is a failed load,
END with OK is a version that was unloaded.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tfship.core.errors import RpcError, ServerUnavailable

log = logging.getLogger(__name__)


class VersionState(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50

    @classmethod
    def named(cls, name: str) -> VersionState:
        return cls.__members__.get(name, cls.UNKNOWN)


@dataclass(frozen=True)
class ReportedVersion:
    version: int
    state: VersionState
    error_code: str  # "OK" or the gRPC status name
    error_message: str = ""

    @property
    def failed(self) -> bool:
        return self.state is VersionState.END and self.error_code != "OK"

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "state": self.state.name, "error_code": self.error_code,
                "error_message": self.error_message}


class Readiness(enum.Enum):
    WAITING = "waiting"
    READY = "ready"
    FAILED = "failed"


def assess(expected: Iterable[int], reported: Iterable[ReportedVersion]) -> tuple[Readiness, ReportedVersion | None]:
    """Where one model stands: FAILED (with the version that failed), READY, or still WAITING.

    Ready means every expected version is AVAILABLE; an expected version that was unloaded (END, OK)
    while another is AVAILABLE was superseded by a newer one, which TF Serving's policy allows.
    """
    by_version = {r.version: r for r in reported}
    wanted = sorted(set(expected)) or sorted(by_version)
    for version in wanted:
        found = by_version.get(version)
        if found is not None and found.failed:
            return Readiness.FAILED, found
    if not wanted or not any(r.state is VersionState.AVAILABLE for r in by_version.values()):
        return Readiness.WAITING, None
    for version in wanted:
        found = by_version.get(version)
        if found is None or found.state not in (VersionState.AVAILABLE, VersionState.END):
            return Readiness.WAITING, None
    return Readiness.READY, None


def wait_ready(target: str, expected: dict[str, list[int]], *, timeout: float, alive: Callable[[], bool] = lambda: True,
               tls_root: bytes | None = None, poll: float = 0.25) -> dict[str, list[dict[str, object]]]:
    """Poll until every model in ``expected`` is ready; returns each model's reported versions.

    Raises ServerUnavailable when a version fails to load (with TF Serving's message), when the server
    process ends first (``alive`` turns False), or at the deadline (with the last thing seen).
    """
    from tfship.client.grpc_client import ServingClient

    deadline = time.monotonic() + timeout
    pending = {name: list(versions) for name, versions in expected.items()}
    ready: dict[str, list[dict[str, object]]] = {}
    last: dict[str, str] = {name: "no answer yet" for name in pending}
    with ServingClient(target, timeout=5, root_certificates=tls_root, retries=2) as client:
        while pending:
            if not alive():
                raise ServerUnavailable("the server exited before the models were available")
            for name in sorted(pending):
                remaining = deadline - time.monotonic()
                try:
                    answer = client.status(name, timeout=min(2.0, max(remaining, 0.1)))
                except ServerUnavailable as exc:  # not listening yet: it opens its ports once the models loaded
                    last[name] = exc.message
                    break
                except RpcError as exc:  # NOT_FOUND until the model's first version is being loaded
                    last[name] = exc.message
                    continue
                reported = [ReportedVersion(s.version, VersionState.named(s.state), s.error_code, s.error_message) for s in answer]
                verdict, culprit = assess(pending[name], reported)
                if verdict is Readiness.FAILED and culprit is not None:
                    raise ServerUnavailable(f"{name} version {culprit.version} failed to load: {culprit.error_message}")
                if verdict is Readiness.READY:
                    ready[name] = [r.to_dict() for r in reported]
                    del pending[name]
                    log.info("%s is AVAILABLE", name)
                else:
                    last[name] = ", ".join(f"version {r.version} {r.state.name}" for r in reported) or "no versions yet"
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = "; ".join(f"{name}: {last[name]}" for name in sorted(pending))
                raise ServerUnavailable(f"not AVAILABLE after {timeout:g}s (--timeout): {waiting}")
            time.sleep(min(poll, remaining))
    return ready
