"""What ``tfship serve up`` was asked to do, and where a client reaches the engine it starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from tfship.serving import config as cfg

# Listening on a wildcard address means "every interface"; a client on this machine reaches it on loopback.
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class ServeOptions:
    repo: Path = Path("models")
    engine: str = "auto"  # auto, docker, local
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    public_key: Path | None = None
    allow_unsigned: bool = False
    skip_invalid: bool = False
    policy: cfg.VersionPolicy = field(default_factory=cfg.VersionPolicy)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    batching: cfg.BatchingOptions | None = None
    ssl_key: Path | None = None
    ssl_cert: Path | None = None
    ssl_ca: Path | None = None
    ssl_client_verify: bool = False
    gpu: bool = False
    image: str | None = None
    timeout: float = 120.0
    poll_seconds: float = 1.0
    # TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism (0: TensorFlow's default).
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    def tls_root(self) -> bytes | None:
        """The certificate a local client trusts to reach the engine over TLS (None: plain gRPC)."""
        source = self.ssl_ca or self.ssl_cert
        return Path(source).read_bytes() if source and self.ssl_key else None


def connect_host(listen_host: str | None) -> str:
    """The address a client on this machine uses to reach a server listening on ``listen_host``."""
    host = (listen_host or "").strip()
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


def address(listen_host: str | None, port: int) -> str:
    """``HOST:PORT`` for a client, with an IPv6 literal in brackets (gRPC's and URLs' spelling)."""
    host = connect_host(listen_host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:  # a host name, or already bracketed
        pass
    return f"{host}:{port}"
