"""Verify the repository (the gate), then write every TF Serving config file the engines read.

``models.config`` (paths as the container sees them), the local engine's copy with host paths, and
the monitoring, batching and SSL files. Each file is replaced atomically (TF Serving polls them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import ServingError, UsageError
from tfship.serving import config as cfg
from tfship.serving import gate
from tfship.serving.options import ServeOptions
from tfship.serving.state import run_dir

LOCAL_CONFIG = "local-models.config"


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


def write_configs(options: ServeOptions) -> GeneratedConfig:
    """Verify (the gate), then write models.config and friends into the repository."""
    repo = Path(options.repo)
    if (options.ssl_key or options.ssl_cert) and not (options.ssl_key and options.ssl_cert):
        raise UsageError("TLS needs both --ssl-key and --ssl-cert")
    exclude = gate.gate(repo, public_key=options.public_key, allow_unsigned=options.allow_unsigned,
                        skip_invalid=options.skip_invalid)
    container_entries = cfg.build_entries(repo, base_root=cfg.CONTAINER_ROOT, policy=options.policy,
                                          labels=options.labels, exclude=exclude)
    if not container_entries:
        raise ServingError(f"{repo}: no model version to serve" + (" (every version failed verification)" if exclude else
                                                                    "; export one first: tfship export MODEL --name NAME"))
    local_entries = cfg.build_entries(repo, base_root=None, policy=options.policy, labels=options.labels, exclude=exclude)
    ssl_proto = (cfg.ssl_config(options.ssl_key, options.ssl_cert, options.ssl_ca, options.ssl_client_verify)
                 if options.ssl_key and options.ssl_cert else None)
    models_config = cfg.write_text_proto(repo / cfg.MODELS_CONFIG, cfg.model_server_config(container_entries))
    local_config = cfg.write_text_proto(run_dir(repo) / LOCAL_CONFIG, cfg.model_server_config(local_entries))
    monitoring = cfg.write_text_proto(repo / cfg.MONITORING_CONFIG, cfg.monitoring_config())
    batching = cfg.write_text_proto(repo / cfg.BATCHING_CONFIG, options.batching.to_proto()) if options.batching else None
    ssl = None
    if ssl_proto is not None:
        ssl = cfg.write_text_proto(repo / cfg.SSL_CONFIG, ssl_proto, mode=0o600)
    served = {e.name: list(e.versions) for e in container_entries}
    return GeneratedConfig(models_config, local_config, batching, monitoring, ssl, served, sorted(exclude))


__all__ = ["LOCAL_CONFIG", "GeneratedConfig", "write_configs"]
