"""``tfship bench``: latency percentiles and throughput per concurrency level and batch size.

Closed loop: N workers each send the next request when the previous answer arrives. Open loop: requests
start at a fixed rate whatever the answers do, and latency counts from the planned start, so a server
that falls behind shows it (no coordinated omission).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tfship.client.grpc_client import ServingClient
from tfship.client.latency import LatencyStats
from tfship.core.errors import TfshipError
from tfship.core.samples import generate_inputs


def _run_stats(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    stats = LatencyStats.of(latencies).to_dict()
    stats.pop("count")  # the run's "requests"
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "throughput_rps": len(latencies) / elapsed if elapsed else 0.0, **stats}


def closed_loop(call: Callable[[], None], concurrency: int, duration: float, max_requests: int | None = None) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration
    sent = [0]

    def worker() -> None:
        local = []
        while time.perf_counter() < stop_at:
            with lock:
                if max_requests is not None and sent[0] >= max_requests:
                    break
                sent[0] += 1
            began = time.perf_counter()
            try:
                call()
                local.append(time.perf_counter() - began)
            except TfshipError:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(local)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return _run_stats(latencies, errors[0], elapsed)


def open_loop(call: Callable[[], None], rate: float, duration: float, max_in_flight: int = 256) -> dict[str, Any]:
    total = max(1, int(rate * duration))
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter()

    def one(planned: float) -> None:
        try:
            call()
            with lock:
                latencies.append(time.perf_counter() - planned)
        except TfshipError:
            with lock:
                errors[0] += 1

    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        for i in range(total):
            planned = start + i / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, planned)
    elapsed = time.perf_counter() - start
    return _run_stats(latencies, errors[0], elapsed)


def make_inputs(client: ServingClient, model: str, batch_size: int, *, version: int | None = None, label: str | None = None,
                inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A batch of ``batch_size`` samples: cycled from ``inputs`` when given, else generated from the served signature."""
    if inputs is not None:
        count = len(next(iter(inputs.values())))
        index = np.arange(batch_size) % count
        return {k: v[index] for k, v in inputs.items()}
    signature = client.metadata(model, version=version, label=label).get("serving_default")
    if signature is None:
        raise TfshipError(f"{model} has no serving_default signature; pass --inputs X.npz")
    return generate_inputs(signature, batch_size)


def bench(client: ServingClient, model: str, *, concurrency: list[int], batch_sizes: list[int], duration: float,
          rate: float | None = None, version: int | None = None, label: str | None = None,
          inputs: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """One run per batch size and concurrency level (closed loop), plus an open-loop run per batch size at ``rate``."""
    runs: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        batch = make_inputs(client, model, batch_size, version=version, label=label, inputs=inputs)

        def call(batch: dict[str, np.ndarray] = batch) -> None:
            client.predict(batch, model, version=version, label=label)

        call()  # first request outside the measurement (connection set-up)
        payload = sum(int(np.asarray(v).nbytes) for v in batch.values())
        measured: list[dict[str, Any]] = []
        if rate:
            measured.append({"mode": f"open@{rate:g}/s", "concurrency": 0, "batch_size": batch_size, **open_loop(call, rate, duration)})
        for level in concurrency:
            measured.append({"mode": "closed", "concurrency": level, "batch_size": batch_size, **closed_loop(call, level, duration)})
        # The tensor bytes sent per second: bench/serving.py's figure for large requests.
        runs.extend({**run, "payload_bytes": payload, "payload_bytes_per_s": payload * run["throughput_rps"]} for run in measured)
    return {"target": client.target, "model": model, "duration": duration, "runs": runs}
