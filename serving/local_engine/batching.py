"""Dynamic batching: concurrent requests for one model version and signature become one model call.

Like TF Serving's batching session: tasks queue per (servable, signature, input shapes); a batch closes
when it reaches ``max_batch_size`` or ``batch_timeout_micros`` after its first task; it is padded up to the
next ``allowed_batch_sizes`` entry; the results are split back, each caller getting its own rows.
A queue lives only while it holds tasks: its runner holds the model version's function, so a queue
kept after the last task would keep an unloaded version in memory (one per hot reload).

With ``metrics`` the batcher records TF Serving's batching_session metrics (input_batch_size,
queuing_latency, processed_batch_size, padding_size) and tfship_batch_queue_depth per model.

The batcher lives on the engine's asyncio loop (the gRPC server's): queueing, merging and splitting
are plain callbacks on that loop, with no thread hand-off per request; only the model call runs on one
of ``num_batch_threads`` threads (TensorFlow releases the GIL while it computes), and its end comes back
to the loop as one callback per batch (no task, no extra wake-up). When no batch thread is busy and the
model's last call for that queue and batch size was short (under 0.5 ms), the batch runs on the loop itself:
the result is the same as from a batch thread, without the two thread hand-offs, and the loop is held no
longer than a thread hand-off would cost. A batch that is due
while every batch thread is busy keeps taking tasks until a thread frees up, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from tfship.serving.config import BatchingOptions
from tfship.serving.local_engine.errors import EngineError, invalid

if TYPE_CHECKING:
    from tfship.serving.local_engine.metrics import Metrics

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# A lone batch runs on the loop when its model's last call took less than this (a longer call would hold up
# the loop: health checks, the metrics page, new requests).
INLINE_SECONDS = 0.0005

# TensorFlow takes a host array's memory as the tensor's own when its data is aligned as Eigen wants it
# (EIGEN_MAX_ALIGN_BYTES, 64 at most) and copies it otherwise; numpy aligns its arrays to 16 bytes only.
TENSOR_ALIGNMENT = 64
# Batches smaller than this are merged by numpy as they come: TensorFlow's copy of a small array costs less
# than setting up the aligned one.
ALIGNED_MERGE_BYTES = 64 * 1024


@dataclass
class _Task:
    arrays: dict[str, np.ndarray]
    size: int
    future: asyncio.Future
    enqueued: float = 0.0  # time.perf_counter() when the task entered its queue


@dataclass
class _Queue:
    run: Runner
    model_name: str
    runner_key: tuple  # the servable and signature
    options: BatchingOptions
    key: tuple = ()  # runner_key and the inputs' shapes: this queue's place in Batcher._queues
    tasks: deque[_Task] = field(default_factory=deque)
    pending_rows: int = 0
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # the oldest task has waited batch_timeout_micros


def merge_rows(values: list[np.ndarray], rows: int, target: int) -> np.ndarray:
    """The tasks' arrays one after the other, padded up to ``target`` rows with copies of the last row.

    From ALIGNED_MERGE_BYTES on, written once into a buffer aligned to TENSOR_ALIGNMENT bytes, which TensorFlow
    then uses as the tensor's own memory: the batch is copied once on its way to the model, where numpy's merge,
    its padding and TensorFlow's copy of the unaligned result made up to three copies."""
    last = values[-1]
    shape = (target, *last.shape[1:])
    size = math.prod(shape) * last.dtype.itemsize
    if last.dtype.hasobject or not rows or size < ALIGNED_MERGE_BYTES:  # strings, nothing to pad with, or small
        merged = np.concatenate(values) if len(values) > 1 else last
        return np.concatenate([merged, np.repeat(merged[-1:], target - rows, axis=0)]) if target > rows else merged
    buffer = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TENSOR_ALIGNMENT
    merged = buffer[start:start + size].view(last.dtype).reshape(shape)
    np.concatenate(values, out=merged[:rows])
    merged[rows:] = last[-1:]
    return merged


class Batcher:
    def __init__(self, options: BatchingOptions, on_batch: Callable[[str, int, int], None] | None = None,
                 metrics: Metrics | None = None) -> None:
        """``on_batch(model_name, padded_size, tasks)`` is called after each successful batch; ``metrics``
        records the batching metrics (give one or the other for processed_batch_size, not both bound to
        ``metrics.batch``, or batches count twice)."""
        self.options = options.check()
        self._metrics = metrics
        self._waiting: dict[str, int] = {}  # tasks queued per model name, for tfship_batch_queue_depth
        self._queues: dict[tuple, _Queue] = {}
        self._pool = ThreadPoolExecutor(max_workers=options.num_batch_threads, thread_name_prefix="tfship-batch")
        self._free_threads = options.num_batch_threads
        self._on_batch = on_batch
        self._enqueued = 0
        # The last model call per queue key (servable, signature, input shapes): its seconds and rows.
        self._last_runtime: dict[tuple, tuple[float, int]] = {}

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    @property
    def queue_count(self) -> int:
        """Queues holding tasks now (each for one model version, signature and input shapes)."""
        return len(self._queues)

    async def submit(self, key: tuple, model_name: str, arrays: dict[str, np.ndarray], size: int, run: Runner,
                     options: BatchingOptions | None = None) -> dict[str, np.ndarray]:
        """Queue one task; ``options``: the servable's own batching parameters (--enable_per_model_batching_parameters:
        batching_params.pbtxt), whose threads are still this batcher's shared ones (bundle_factory_util.cc)."""
        opts = options or self.options
        if self._metrics is not None:
            # batching_session.cc ComputeInputSize records each input tensor's 0th dimension before
            # the scheduler checks the task's size.
            self._metrics.input_batches([value.shape[0] if value.ndim else 0 for value in arrays.values()])
        if size > opts.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}")
        if self._enqueued >= opts.max_enqueued_batches * opts.max_batch_size:
            raise EngineError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
        loop = asyncio.get_running_loop()
        if len(arrays) == 1:
            (name, value), = arrays.items()
            shapes: tuple = ((name, value.shape[1:], value.dtype.str),)
        else:
            shapes = tuple((name, arrays[name].shape[1:], arrays[name].dtype.str) for name in sorted(arrays))
        queue_key = key + (shapes,)
        queue = self._queues.get(queue_key)
        if queue is None:
            queue = self._queues[queue_key] = _Queue(run, model_name, key, opts)
            queue.key = queue_key
        task = _Task(arrays, size, loop.create_future(), time.perf_counter())
        queue.tasks.append(task)
        queue.pending_rows += size
        self._enqueued += 1
        self._count_waiting(model_name, 1)
        if queue.pending_rows >= opts.max_batch_size:
            self._dispatch(queue, loop)
        elif queue.timer is None and not queue.due:
            queue.timer = loop.call_later(opts.batch_timeout_micros / 1e6, self._timeout, queue)
        return await task.future

    def _count_waiting(self, model_name: str, change: int) -> None:
        waiting = self._waiting.get(model_name, 0) + change
        if waiting:
            self._waiting[model_name] = waiting
        else:
            self._waiting.pop(model_name, None)
        if self._metrics is not None:
            self._metrics.queue_depth(model_name, waiting)

    def queue_depth(self, model_name: str) -> int:
        """Tasks for ``model_name`` waiting in the batch queues now."""
        return self._waiting.get(model_name, 0)

    def _timeout(self, queue: _Queue) -> None:
        queue.timer = None
        queue.due = True
        self._dispatch(queue, asyncio.get_running_loop())

    def _dispatch(self, queue: _Queue, loop: asyncio.AbstractEventLoop) -> None:
        """Start batches from ``queue`` while a batch thread is free and a batch is full or due."""
        while self._free_threads > 0 and queue.tasks and (queue.due or queue.pending_rows >= queue.options.max_batch_size):
            batch, rows = [], 0
            while queue.tasks and rows + queue.tasks[0].size <= queue.options.max_batch_size:
                task = queue.tasks.popleft()
                batch.append(task)
                rows += task.size
            queue.pending_rows -= rows
            self._enqueued -= len(batch)
            self._free_threads -= 1
            self._count_waiting(queue.model_name, -len(batch))
            if self._metrics is not None:
                # batching_session.cc ProcessBatch: queuing_latency per task, enqueue to the batch starting.
                now = time.perf_counter()
                self._metrics.queuing_many([(now - task.enqueued) * 1e6 for task in batch])
            self._start(queue, batch, rows, loop)
        if not queue.tasks:
            queue.due = False
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            # Batches already taken keep their own reference; the next task for this key opens a new queue.
            if self._queues.get(queue.key) is queue:
                del self._queues[queue.key]

    def _start(self, queue: _Queue, batch: list[_Task], rows: int, loop: asyncio.AbstractEventLoop) -> None:
        """Merge and pad the batch here, run it on a batch thread; :meth:`_finished` runs on the loop after."""
        target = next((s for s in queue.options.allowed_batch_sizes if s >= rows), rows)
        try:
            first = batch[0].arrays
            merged = first if len(batch) == 1 and target == rows else \
                {name: merge_rows([t.arrays[name] for t in batch], rows, target) for name in first}
            if self._metrics is not None:
                # batching_session.cc MergeInputTensors: padding_size and processed_batch_size, before the run.
                self._metrics.batch(queue.model_name, target, len(batch), rows=rows)
            if self._free_threads == self.options.num_batch_threads - 1 and self._inline(queue.key, target):
                self._finished(queue, batch, target, self._timed(queue, merged, target), None)
                return
            running = self._pool.submit(self._timed, queue, merged, target)
        except BaseException as exc:
            self._finished(queue, batch, target, None, exc)
            return

        def done(future: concurrent.futures.Future) -> None:  # on the batch thread
            error = future.exception()
            try:
                loop.call_soon_threadsafe(self._finished, queue, batch, target, None if error else future.result(), error)
            except RuntimeError:  # the loop closed while the batch ran (the engine stopped): nobody waits for it
                pass

        running.add_done_callback(done)

    def _inline(self, key: tuple, rows: int) -> bool:
        """Whether a call of ``rows`` rows is known to be short: one as large for these shapes took under INLINE_SECONDS."""
        last = self._last_runtime.get(key)
        return last is not None and last[0] < INLINE_SECONDS and rows <= last[1]

    def _timed(self, queue: _Queue, merged: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = queue.run(merged)
        if len(self._last_runtime) > 1024:  # keys of unloaded versions: forget them all now and then
            self._last_runtime.clear()
        self._last_runtime[queue.key] = (time.perf_counter() - started, rows)
        return outputs

    def _finished(self, queue: _Queue, batch: list[_Task], target: int, outputs: dict[str, np.ndarray] | None,
                  error: BaseException | None) -> None:
        self._free_threads += 1
        loop = asyncio.get_running_loop()
        for waiting in list(self._queues.values()):
            if waiting.tasks and (waiting.due or waiting.pending_rows >= waiting.options.max_batch_size):
                self._dispatch(waiting, loop)
        if error is not None or outputs is None:  # every caller in the batch gets the error
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(error if error is not None else RuntimeError("batch produced no outputs"))
            return
        if self._on_batch:
            self._on_batch(queue.model_name, target, len(batch))
        offset = 0
        for task in batch:
            if task.future.done():  # the caller went away (deadline, cancellation)
                offset += task.size
                continue
            try:
                task.future.set_result({name: value[offset:offset + task.size] for name, value in outputs.items()})
            except (IndexError, TypeError):
                task.future.set_exception(EngineError(grpc.StatusCode.INTERNAL, "batched output has no batch dimension"))
            offset += task.size
