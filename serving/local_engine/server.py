"""The local engine: TF Serving's gRPC and REST APIs over SavedModels, in one Python process."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

from client.errors import ServingError
from serving.config import BatchingOptions
from serving.local_engine.core import EngineCore
from serving.local_engine.grpc_service import build_servicers
from serving.local_engine.models import ModelConfig
from serving.local_engine.rest import RestServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = (1 << 31) - 1  # TF Serving's limit: about 2 GiB


@dataclass(frozen=True)
class TlsOptions:
    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False


class LocalEngine:
    def __init__(self, configs: list[ModelConfig], *, host: str = "127.0.0.1", grpc_port: int = 8500,
                 rest_port: int | None = 8501, verifier: Callable[[Path], str | None] | None = None,
                 batching: BatchingOptions | None = None, poll_seconds: float = 1.0, tls: TlsOptions | None = None,
                 max_workers: int = 64) -> None:
        self.host = host
        self.core = EngineCore(configs, verifier=verifier, batching=batching, poll_seconds=poll_seconds)
        self._grpc_port_requested = grpc_port
        self._rest_port_requested = rest_port
        self._tls = tls
        self._max_workers = max_workers
        self.grpc_server: grpc.Server | None = None
        self.rest: RestServer | None = None
        self.grpc_port = 0
        self.rest_port = 0
        self._stopped = threading.Event()

    def start(self) -> "LocalEngine":
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        # Like tensorflow_model_server: load the initial models first, open the ports after.
        self.core.start()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="tfship-grpc"),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)],
        )
        prediction, model = build_servicers(self.core)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
        address = f"{self.host}:{self._grpc_port_requested}"
        try:
            if self._tls:
                credentials = grpc.ssl_server_credentials(
                    [(self._tls.server_key, self._tls.server_cert)], root_certificates=self._tls.custom_ca,
                    require_client_auth=self._tls.client_verify)
                self.grpc_port = server.add_secure_port(address, credentials)
            else:
                self.grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            self.core.stop()
            raise ServingError(f"cannot listen on {address}: {exc}; is another server using the port? (--grpc-port)") from None
        if not self.grpc_port:
            self.core.stop()
            raise ServingError(f"cannot listen on {address}: the port is in use (choose another with --grpc-port)")
        server.start()
        self.grpc_server = server
        if self._rest_port_requested is not None:
            try:
                self.rest = RestServer(self.core, self.host, self._rest_port_requested)
            except OSError as exc:
                self.stop(grace=0)
                raise ServingError(f"cannot listen on {self.host}:{self._rest_port_requested}: {exc.strerror} (choose another with --rest-port)") from None
            self.rest.start()
            self.rest_port = self.rest.port
        log.info("local engine: gRPC on %s:%d, REST on %s", self.host, self.grpc_port,
                 f"{self.host}:{self.rest_port}" if self.rest else "off")
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` seconds), unload."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.rest:
            self.rest.stop()
        if self.grpc_server:
            self.grpc_server.stop(grace).wait(grace + 1)
        self.core.stop()

    def wait(self) -> None:
        self._stopped.wait()

    def serve_until_signal(self, grace: float = 10.0) -> None:
        """Block until SIGTERM or SIGINT, then drain and stop."""
        done = threading.Event()

        def handler(signum, frame):
            log.info("local engine: signal %d, draining in-flight requests", signum)
            done.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not done.wait(0.5):
                pass
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop(grace)

    def __enter__(self) -> "LocalEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)
