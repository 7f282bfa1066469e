"""Dynamic batching: concurrent requests for one model version and signature become one model call.

Like TF Serving's batching session: tasks queue per (servable, signature, input shapes); a batch
closes when it reaches ``max_batch_size`` or ``batch_timeout_micros`` after its first task; it is padded
up to the next ``allowed_batch_sizes`` entry; the results are split back, each caller getting its rows.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np

from serving.config import BatchingOptions
from serving.local_engine.errors import EngineError, invalid


@dataclass
class _Task:
    arrays: dict[str, np.ndarray]
    size: int
    future: Future = field(default_factory=Future)


class _Queue:
    def __init__(self, key: tuple, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], options: BatchingOptions,
                 on_batch: Callable[[int, int], None] | None) -> None:
        self.key = key
        self.run = run
        self.options = options
        self.on_batch = on_batch
        self.tasks: queue.Queue[_Task] = queue.Queue(maxsize=options.max_enqueued_batches * options.max_batch_size)
        self.leftover: _Task | None = None
        self.lock = threading.Lock()


class Batcher:
    def __init__(self, options: BatchingOptions, on_batch: Callable[[str, int, int], None] | None = None) -> None:
        self.options = options.check()
        self._queues: dict[tuple, _Queue] = {}
        self._lock = threading.Lock()
        self._work: queue.Queue[_Queue | None] = queue.Queue()
        self._on_batch = on_batch
        self._threads = [threading.Thread(target=self._worker, name=f"tfship-batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        self._stopped = False
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def submit(self, key: tuple, model_name: str, arrays: dict[str, np.ndarray], size: int,
               run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], timeout: float | None = None) -> dict[str, np.ndarray]:
        if size > self.options.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}")
        shapes = tuple((name, arrays[name].shape[1:], arrays[name].dtype.str) for name in sorted(arrays))
        full_key = key + (shapes,)
        with self._lock:
            q = self._queues.get(full_key)
            if q is None:
                q = self._queues[full_key] = _Queue(full_key, run, self.options,
                                                    (lambda s, n, m=model_name: self._on_batch(m, s, n)) if self._on_batch else None)
        task = _Task(arrays, size)
        try:
            q.tasks.put_nowait(task)
        except queue.Full:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full") from None
        self._work.put(q)
        return task.future.result(timeout=timeout)

    def _worker(self) -> None:
        while True:
            q = self._work.get()
            if q is None:
                return
            while True:
                # Form under the queue's lock, run outside it: another thread forms the next batch meanwhile.
                with q.lock:
                    batch = self._form_batch(q)
                if not batch:
                    break
                self._execute(q, batch)

    def _form_batch(self, q: _Queue) -> list[_Task]:
        batch: list[_Task] = []
        total = 0
        if q.leftover is not None:
            batch.append(q.leftover)
            total = q.leftover.size
            q.leftover = None
        else:
            try:
                first = q.tasks.get_nowait()
            except queue.Empty:
                return []
            batch.append(first)
            total = first.size
        deadline = time.monotonic() + self.options.batch_timeout_micros / 1e6
        while total < self.options.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                task = q.tasks.get(timeout=remaining) if remaining > 0 else q.tasks.get_nowait()
            except queue.Empty:
                break
            if total + task.size > self.options.max_batch_size:
                q.leftover = task
                break
            batch.append(task)
            total += task.size
        return batch

    def _execute(self, q: _Queue, batch: list[_Task]) -> None:
        total = sum(t.size for t in batch)
        target = next((s for s in self.options.allowed_batch_sizes if s >= total), total)
        merged = {name: np.concatenate([t.arrays[name] for t in batch]) for name in batch[0].arrays}
        if target > total:
            merged = {name: np.concatenate([value, np.repeat(value[-1:], target - total, axis=0)]) for name, value in merged.items()}
        try:
            outputs = q.run(merged)
        except BaseException as exc:  # every caller in the batch gets the error
            for task in batch:
                task.future.set_exception(exc)
            return
        if q.on_batch:
            q.on_batch(target, len(batch))
        offset = 0
        for task in batch:
            try:
                part = {name: value[offset:offset + task.size] for name, value in outputs.items()}
            except (IndexError, TypeError):
                task.future.set_exception(EngineError(grpc.StatusCode.INTERNAL, "batched output has no batch dimension"))
                continue
            task.future.set_result(part)
            offset += task.size
