"""Verify the repository (the gate), then write every TF Serving config file the engines read.

``models.config`` (paths as the container sees them), the local engine's copy with host paths, and
the monitoring, batching and SSL files. Each file is replaced atomically (TF Serving polls them).
"""

from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import ServingError, UsageError
from tfship.serving import config as cfg
from tfship.serving import gate
from tfship.serving.options import ServeOptions
from tfship.serving.state import run_dir

LOCAL_CONFIG = "local-models.config"
MAX_RECORD_BYTES = 1 << 16  # the recorded --versions/--label: a few hundred bytes


@dataclass(frozen=True)
class GeneratedConfig:
    models_config: Path
    local_config: Path
    batching_config: Path | None
    monitoring_config: Path
    ssl_config: Path | None
    models: dict[str, list[int]]
    skipped: list[tuple[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


SERVED_OPTIONS = "served-options.json"


@dataclass(frozen=True)
class ModelConfigs:
    """The two model configs (container paths, host paths) and what they pin."""

    models_config: Path
    local_config: Path
    models: dict[str, list[int]]
    container_proto: Any
    local_proto: Any


def write_model_configs(repo: Path, *, policy: cfg.VersionPolicy, labels: dict[str, dict[str, int]],
                        exclude: Set[tuple[str, int]], versions_text: str | None = None) -> ModelConfigs:
    """Pin the verified versions the policy selects in models.config and the local engine's copy.

    Both files are checked before either is written, then each is replaced atomically. The policy and
    labels are recorded next to the state file so that ``serve reload`` applies the same ones by default.
    """
    repo = Path(repo)
    container_entries = cfg.build_entries(repo, base_root=cfg.CONTAINER_ROOT, policy=policy, labels=labels, exclude=exclude)
    if not container_entries:
        raise ServingError(f"{repo}: no model version to serve" + (" (every version failed verification)" if exclude else
                                                                    "; export one first: tfship export MODEL --name NAME"))
    local_entries = cfg.build_entries(repo, base_root=None, policy=policy, labels=labels, exclude=exclude)
    container_proto = cfg.model_server_config(container_entries)
    local_proto = cfg.model_server_config(local_entries)
    models_config = cfg.write_text_proto(repo / cfg.MODELS_CONFIG, container_proto)
    local_config = cfg.write_text_proto(run_dir(repo) / LOCAL_CONFIG, local_proto)
    if versions_text is not None:
        record = json.dumps({"versions": versions_text, "labels": labels}, sort_keys=True)
        cfg.write_text_file(run_dir(repo) / SERVED_OPTIONS, record)
    return ModelConfigs(models_config, local_config, {e.name: list(e.versions) for e in container_entries},
                        container_proto, local_proto)


def recorded_options(repo: Path) -> tuple[str | None, dict[str, dict[str, int]]]:
    """The --versions and --label values the last ``serve up``/``serve config`` used (None, {}: none recorded)."""
    path = run_dir(repo) / SERVED_OPTIONS
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ServingError(f"{path}: larger than {MAX_RECORD_BYTES} bytes; not written by tfship (delete it)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError) as exc:
        raise ServingError(f"{path}: unreadable ({exc}); delete it and pass --versions/--label") from exc
    versions = data.get("versions") if isinstance(data, dict) else None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(versions, str) or not isinstance(labels, dict) or not all(
            isinstance(m, str) and isinstance(ls, dict) and all(isinstance(k, str) and type(v) is int for k, v in ls.items())
            for m, ls in labels.items()):
        raise ServingError(f"{path}: not a record tfship wrote; delete it and pass --versions/--label")
    return versions, labels


def write_configs(options: ServeOptions) -> GeneratedConfig:
    """Verify (the gate), then write models.config and friends into the repository."""
    repo = Path(options.repo)
    if (options.ssl_key or options.ssl_cert) and not (options.ssl_key and options.ssl_cert):
        raise UsageError("TLS needs both --ssl-key and --ssl-cert")
    exclude = gate.gate(repo, public_key=options.public_key, allow_unsigned=options.allow_unsigned,
                        skip_invalid=options.skip_invalid)
    # Checked before anything is written: a bad label or policy leaves the repository as it was.
    cfg.build_entries(repo, base_root=cfg.CONTAINER_ROOT, policy=options.policy, labels=options.labels, exclude=exclude)
    ssl_proto = (cfg.ssl_config(options.ssl_key, options.ssl_cert, options.ssl_ca, options.ssl_client_verify)
                 if options.ssl_key and options.ssl_cert else None)
    written = write_model_configs(repo, policy=options.policy, labels=options.labels, exclude=exclude,
                                  versions_text=options.policy.text())
    monitoring = cfg.write_text_proto(repo / cfg.MONITORING_CONFIG, cfg.monitoring_config())
    batching = cfg.write_text_proto(repo / cfg.BATCHING_CONFIG, options.batching.to_proto()) if options.batching else None
    ssl = None
    if ssl_proto is not None:
        ssl = cfg.write_text_proto(repo / cfg.SSL_CONFIG, ssl_proto, mode=0o600)
    return GeneratedConfig(written.models_config, written.local_config, batching, monitoring, ssl, written.models, sorted(exclude))


__all__ = ["LOCAL_CONFIG", "SERVED_OPTIONS", "GeneratedConfig", "ModelConfigs", "recorded_options", "write_configs",
           "write_model_configs"]
