"""Helpers for tests that run a real local engine on loopback ports."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc


def start_engine(repo: Path, *, public_key: Path | None = None, policy=None, labels=None, batching=None,
                 tls=None, poll_seconds: float = 0.2, models: list[str] | None = None):
    from tfship.serving.config import VersionPolicy
    from tfship.serving.gate import verifier_for
    from tfship.serving.local_engine import LocalEngine, ModelConfig

    names = models or sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    configs = [ModelConfig(n, repo / n, policy or VersionPolicy("all"), dict(labels or {}) if n == names[0] else {}) for n in names]
    return LocalEngine(configs, grpc_port=0, rest_port=0, verifier=verifier_for(public_key), batching=batching,
                       poll_seconds=poll_seconds, tls=tls).start()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Wait for ``condition()`` to hold (returns its value); AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"still waiting after {timeout:g}s: {what}")
        pause.wait(poll)


def version_states(engine: Any, model: str) -> dict[int, str]:
    return {s.version: s.state for s in engine.core.manager.status(model)}


def official_stubs(port: int, credentials=None):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]) if credentials else grpc.insecure_channel(target)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel), channel


def self_signed(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class RequestLoad:
    """Threads sending Predict requests until the block ends: which version answered each, and every failure."""

    def __init__(self, port: int, inputs: dict[str, Any], model: str = "digits", threads: int = 1) -> None:
        self.versions: list[int] = []
        self.failures: list[Exception] = []
        self._target, self._inputs, self._model = f"127.0.0.1:{port}", inputs, model
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        from tfship.client.grpc_client import ServingClient

        with ServingClient(self._target, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    self.versions.append(client.predict(self._inputs, self._model).version)
                except Exception as exc:  # any failed request is a failure of the transition under test
                    self.failures.append(exc)

    def __enter__(self) -> RequestLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
