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

import numpy as np

from tfship.client.grpc_client import ServingClient
from tfship.core.errors import TfshipError


def _stats(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def closed_loop(call: Callable[[], None], concurrency: int, duration: float, max_requests: int | None = None) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration
    sent = [0]

    def worker():
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
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
            "throughput_rps": len(latencies) / elapsed if elapsed else 0.0, **_stats(latencies)}


def open_loop(call: Callable[[], None], rate: float, duration: float, max_in_flight: int = 256) -> dict:
    total = max(1, int(rate * duration))
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter()

    def one(planned: float):
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
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
            "throughput_rps": len(latencies) / elapsed if elapsed else 0.0, **_stats(latencies)}


def make_inputs(client: ServingClient, model: str, batch_size: int, *, version=None, label=None, golden=None) -> dict[str, np.ndarray]:
    if golden is not None:
        count = len(next(iter(golden.values())))
        index = np.arange(batch_size) % count
        return {k: v[index] for k, v in golden.items()}
    signature = client.metadata(model, version=version, label=label).get("serving_default")
    if signature is None:
        raise TfshipError(f"{model} has no serving_default signature; pass --inputs X.npz")
    rng = np.random.default_rng(0)
    inputs = {}
    for spec in signature.inputs:
        shape = [batch_size] + [8 if d is None else d for d in spec.shape[1:]]
        if spec.dtype == "string":
            inputs[spec.name] = np.full(shape, b"x", dtype=object)
        elif spec.dtype == "bool":
            inputs[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            inputs[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.random(size=shape).astype(spec.dtype)
    return inputs


def bench(client: ServingClient, model: str, *, concurrency: list[int], batch_sizes: list[int], duration: float,
          rate: float | None = None, version=None, label=None, golden=None) -> dict:
    runs = []
    for batch_size in batch_sizes:
        inputs = make_inputs(client, model, batch_size, version=version, label=label, golden=golden)
        call = lambda: client.predict(inputs, model, version=version, label=label)  # noqa: E731
        call()  # first request outside the measurement (connection set-up)
        if rate:
            runs.append({"mode": f"open@{rate:g}/s", "concurrency": 0, "batch_size": batch_size, **open_loop(call, rate, duration)})
        for level in concurrency:
            runs.append({"mode": "closed", "concurrency": level, "batch_size": batch_size, **closed_loop(call, level, duration)})
    return {"target": client.target, "model": model, "duration": duration, "runs": runs}
