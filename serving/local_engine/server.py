"""The local engine: TF Serving's gRPC and REST APIs over SavedModels, in one Python process."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from tfship.core.errors import ServingError
from tfship.serving.config import BatchingOptions
from tfship.serving.local_engine import v2
from tfship.serving.local_engine.core import EngineCore
from tfship.serving.local_engine.grpc_service import build_servicers, generic_handlers
from tfship.serving.local_engine.health import HealthPublisher
from tfship.serving.local_engine.models import LoadOptions, ModelConfig
from tfship.serving.local_engine.rest import RestLimits, RestServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = (1 << 31) - 1  # TF Serving's limit: about 2 GiB


@dataclass(frozen=True)
class GrpcOptions:
    """TF Serving's gRPC flags: --grpc_socket_path, --grpc_channel_arguments, --grpc_max_threads,
    --enable_grpc_healthcheck_service."""

    socket_path: str = ""
    channel_arguments: tuple[tuple[str, str | int], ...] = ()
    max_concurrent_rpcs: int | None = None
    health_service: bool = True


def parse_channel_arguments(text: str) -> tuple[tuple[str, str | int], ...]:
    """main.cc / server.cc: comma-separated ``key=value``; a value that parses as int32 is passed as an int."""
    result: list[tuple[str, str | int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: '{item}' is not key=value")
        try:
            number = int(value)
        except ValueError:
            result.append((key, value))
        else:
            result.append((key, number) if -(1 << 31) <= number < (1 << 31) else (key, value))
    return tuple(result)


@dataclass(frozen=True)
class TlsOptions:
    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False


def _set_tensorflow_threads(intra: int, inter: int) -> None:
    """TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism, for TensorFlow's eager
    context (each model's Session takes them from LoadOptions).

    For small models one thread each serves more requests: TensorFlow's pool threads spin while
    waiting and take CPU from the request handling. The eager context has no caller's-thread mode: a
    negative inter-op setting (a Session's) is one thread there.
    """
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(max(1, inter))
    except RuntimeError:  # TensorFlow already ran ops in this process; its pools are fixed now
        log.warning("TensorFlow thread settings not applied: set them before any model is loaded")


class LocalEngine:
    def __init__(self, configs: list[ModelConfig], *, host: str = "127.0.0.1", grpc_port: int | None = 8500,
                 rest_port: int | None = 8501, verifier: Callable[[Path], str | None] | None = None,
                 batching: BatchingOptions | None = None, poll_seconds: float = 1.0, tls: TlsOptions | None = None,
                 intra_op_threads: int = 0, inter_op_threads: int = 0, rest_limits: RestLimits | None = None,
                 load_options: LoadOptions | None = None, grpc_options: GrpcOptions | None = None) -> None:
        load_options = load_options or LoadOptions()
        if intra_op_threads or inter_op_threads:
            _set_tensorflow_threads(intra_op_threads, inter_op_threads)
            if not (load_options.intra_op_threads or load_options.inter_op_threads):  # each model's Session alike
                load_options = replace(load_options, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
        self.host = host
        self.core = EngineCore(configs, verifier=verifier, batching=batching, poll_seconds=poll_seconds, options=load_options)
        self._grpc_options = grpc_options or GrpcOptions()
        self.health: HealthPublisher | None = None
        self._grpc_port_requested = grpc_port
        self._rest_port_requested = rest_port
        self._tls = tls
        self._rest_limits = rest_limits or RestLimits()
        self.grpc_server = None  # grpc.aio.Server, living on self._loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.rest: RestServer | None = None
        self.grpc_port = 0
        self.rest_port = 0
        self._stopped = threading.Event()

    def start(self) -> LocalEngine:
        # Like tensorflow_model_server: load the initial models first, open the ports after.
        self.core.start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="tfship-grpc-loop", daemon=True)
        self._loop_thread.start()
        self.core.loop = self._loop
        try:
            asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result()
        except BaseException:
            self._stop_loop()
            self.core.stop()
            raise
        if self._rest_port_requested is not None:
            # TF Serving's REST port has no TLS (its ssl_config_file covers gRPC only); neither has this one.
            rest = RestServer(self.core, self.host, self._rest_port_requested, self._rest_limits)
            try:
                asyncio.run_coroutine_threadsafe(rest.start(), self._loop).result()
            except OSError as exc:
                self.stop(grace=0)
                raise ServingError(f"cannot listen on {self.host}:{self._rest_port_requested}: {exc.strerror} "
                                   f"(choose another with --rest-port)") from None
            self.rest = rest
            self.rest_port = rest.port
        log.info("local engine: gRPC on %s:%d, REST on %s", self.host, self.grpc_port,
                 f"{self.host}:{self.rest_port}" if self.rest else "off")
        return self

    async def _start_grpc(self) -> None:
        options = self._grpc_options
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                          ("grpc.so_reuseport", 0), *options.channel_arguments],
                                 maximum_concurrent_rpcs=options.max_concurrent_rpcs)
        server.add_generic_rpc_handlers(generic_handlers(*build_servicers(self.core)))
        # The Open Inference Protocol (KServe v2) beside TF Serving's services.
        server.add_generic_rpc_handlers((v2.build_servicer(self.core),))
        if options.health_service:
            self.health = HealthPublisher(self.core.manager)
            self.health.add_to_server(server)
        port = 0
        if self._grpc_port_requested is not None:  # None: the Unix socket only (0: a free port)
            address = f"{self.host}:{self._grpc_port_requested}"
            try:
                port = self._add_port(server, address)
            except RuntimeError as exc:
                raise ServingError(f"cannot listen on {address}: {exc}; is another server using the port? (--grpc-port)") from None
            if not port:
                raise ServingError(f"cannot listen on {address}: the port is in use (choose another with --grpc-port)")
        if options.socket_path:
            # server.cc: "unix:" + grpc_socket_path, alongside the TCP port (same services, same credentials).
            address = f"unix:{options.socket_path}"
            try:
                bound = self._add_port(server, address)
            except RuntimeError as exc:
                raise ServingError(f"cannot listen on {address}: {exc}") from None
            if not bound:
                raise ServingError(f"cannot listen on {address}: is the directory writable and the path free?")
        await server.start()
        if self.health is not None:
            await self.health.start()
        self.grpc_server = server
        self.grpc_port = port

    def _add_port(self, server: Any, address: str) -> int:
        if self._tls:
            credentials = grpc.ssl_server_credentials(
                [(self._tls.server_key, self._tls.server_cert)], root_certificates=self._tls.custom_ca,
                require_client_auth=self._tls.client_verify)
            return int(server.add_secure_port(address, credentials))
        return int(server.add_insecure_port(address))

    def refresh_health(self) -> None:
        """Publish the models' states now (after a config reload) instead of at the next tick."""
        if self.health is not None and self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.health.refresh(), self._loop).result(10)

    def _stop_loop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread:
                self._loop_thread.join(timeout=10)
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting requests, let in-flight ones finish (up to ``grace`` seconds), unload."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.health is not None and self._loop is not None and self._loop.is_running():
            # Health checks answer NOT_SERVING while in-flight requests drain.
            asyncio.run_coroutine_threadsafe(self.health.drain(), self._loop).result(10)
        if self.rest is not None and self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.rest.stop(min(grace, 5.0)), self._loop).result(grace + 10)
        if self.grpc_server is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.grpc_server.stop(grace), self._loop).result(grace + 5)
        self._stop_loop()
        self.core.stop()

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

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)
