"""The state file: which engine serves a repository (``<repo>/.tfship-run/engine.json``).

``serve up`` writes it once the engine has started, ``serve down`` and ``serve status`` read it. A local
engine is recorded with its pid *and* the process's start time, so that a pid the kernel has since
given to another process is never mistaken for the engine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_DIR = ".tfship-run"
STATE_FILE = "engine.json"
MAX_STATE_BYTES = 1 << 20  # a state file is a few hundred bytes; anything larger is not ours


@dataclass(frozen=True)
class EngineState:
    engine: str  # "local" or "docker"
    host: str
    grpc_port: int
    rest_port: int
    models: dict[str, list[int]] = field(default_factory=dict)
    pid: int | None = None
    started_at: float | None = None  # the process's start time (seconds since the epoch)
    container: str | None = None
    image: str | None = None
    log: str | None = None
    tls: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        return f"{self.engine} engine, " + (f"pid {self.pid}" if self.engine == "local" else f"container {self.container}")


def run_dir(repo: Path) -> Path:
    return Path(repo) / RUN_DIR


def state_path(repo: Path) -> Path:
    return run_dir(repo) / STATE_FILE


def write_state(repo: Path, state: EngineState) -> Path:
    path = state_path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2))
    tmp.replace(path)
    return path


def read_state(repo: Path) -> EngineState | None:
    """The recorded engine, or None when there is none (an unreadable file counts as none, and is logged)."""
    path = state_path(repo)
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("engine") not in ("local", "docker"):
            raise ValueError("not an engine record")
        return EngineState.from_dict(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: ignoring an unreadable engine state file (%s)", path, exc)
        return None


def remove_state(repo: Path) -> None:
    state_path(repo).unlink(missing_ok=True)
