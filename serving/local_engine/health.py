"""Readiness for orchestrators: the standard ``grpc.health.v1.Health`` service and what ``/v1/ready`` answers.

TF Serving has neither a health service that knows about models (tensorflow/serving#671) nor a readiness
URL without a model name (#1754). Here:
- ``""`` (the server as a whole) is SERVING only when every configured model has an AVAILABLE version;
- each configured model's name is a service of its own, SERVING while one of its versions is AVAILABLE;
- ``tensorflow.serving.PredictionService`` and ``tensorflow.serving.ModelService`` follow ``""``;
- while the server drains on SIGTERM, everything is NOT_SERVING, so load balancers stop sending.
The statuses are refreshed every ``interval`` seconds from the model manager (and at once after a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

API_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def readiness_report(manager: Any) -> tuple[bool, dict[str, str | None]]:
    """(ready, per-model reason or None): ready when every configured model has an AVAILABLE version."""
    models = manager.readiness()
    return bool(models) and all(reason is None for reason in models.values()), models


class HealthPublisher:
    """Keeps a ``grpc_health`` asyncio servicer in step with the models' states."""

    def __init__(self, manager: Any, interval: float = 0.5) -> None:
        from grpc_health.v1 import health

        self.servicer = health.aio.HealthServicer()
        self._manager = manager
        self._interval = interval
        self._known: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    def add_to_server(self, server: Any) -> None:
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:  # keep publishing whatever one refresh hit
                log.exception("health refresh failed")

    async def refresh(self) -> None:
        from grpc_health.v1 import health_pb2

        if self._draining:
            return
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        ready, models = readiness_report(self._manager)
        for name, reason in models.items():
            await self.servicer.set(name, serving if reason is None else not_serving)
        for gone in self._known - set(models):
            # A model removed from the config is no longer served: Check answers SERVICE_UNKNOWN for it.
            await self.servicer.set(gone, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self._known = set(models)
        for name in ("", *API_SERVICES):
            await self.servicer.set(name, serving if ready else not_serving)

    async def drain(self) -> None:
        """SIGTERM: every service NOT_SERVING from now on."""
        self._draining = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()
