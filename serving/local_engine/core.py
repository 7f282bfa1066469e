"""The engine's request logic, shared by the gRPC and REST front ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tfship.serving.config import BatchingOptions
from tfship.serving.local_engine import predict
from tfship.serving.local_engine.batching import Batcher
from tfship.serving.local_engine.errors import EngineError, invalid
from tfship.serving.local_engine.metrics import Metrics
from tfship.serving.local_engine.models import ModelConfig, ModelManager, Servable, SignatureEntry, configs_from_proto

log = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, configs: list[ModelConfig], *, verifier: Callable[[Path], str | None] | None = None,
                 batching: BatchingOptions | None = None, poll_seconds: float = 1.0, model_threads: int = 4) -> None:
        self.metrics = Metrics()
        # Model calls without batching run here (TensorFlow releases the GIL while computing).
        self.model_pool = ThreadPoolExecutor(max_workers=model_threads, thread_name_prefix="tfship-model")
        self.loop: asyncio.AbstractEventLoop | None = None  # the gRPC server's loop, set by LocalEngine
        self.batcher = Batcher(batching, on_batch=lambda m, s, n: self.metrics.batch(m, s, n)) if batching else None
        self.manager = ModelManager(configs, verifier=verifier, poll_seconds=poll_seconds,
                                    warmup_runner=self._warmup_record, metrics=self.metrics)

    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()
        if self.batcher:
            self.batcher.stop()
        self.model_pool.shutdown(wait=True)

    def reload_config(self, config_proto: Any) -> None:
        self.manager.reload_config(configs_from_proto(config_proto))

    # -- predict ----------------------------------------------------------------------------------

    async def run_async(self, servable: Servable, entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = predict.batch_size(arrays)
        if self.batcher is not None and size is not None:
            # id(entry): the queue's runner holds ``entry``, so the id cannot be reused by another servable's
            # signature while a queue for it exists (a reloaded version is a new entry, hence a new queue).
            return await self.batcher.submit((servable.name, servable.version, entry.key, id(entry)), servable.name,
                                             arrays, size, lambda merged: predict.run_signature(entry, merged))
        return await asyncio.get_running_loop().run_in_executor(self.model_pool, predict.run_signature, entry, arrays)

    def _run(self, servable: Servable, entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """From a thread that is not the loop's (REST): the same path, batching included."""
        if self.loop is None or not self.loop.is_running():
            return predict.run_signature(entry, arrays)
        return asyncio.run_coroutine_threadsafe(self.run_async(servable, entry, arrays), self.loop).result()

    def prepare_tensors(self, name: str, signature: str, tensors: dict[str, Any], output_filter: list[str],
                        version: int | None = None, label: str | None = None
                        ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray], list[str]]:
        servable = self.manager.resolve(name, version, label)
        entry = predict.signature_of(servable, signature)
        arrays = predict.decode_inputs(entry, tensors)
        wanted = predict.check_output_filter(entry, output_filter)
        return servable, entry, arrays, wanted

    async def predict_tensors_async(self, name: str, signature: str, tensors: dict[str, Any], output_filter: list[str],
                                    version: int | None = None, label: str | None = None
                                    ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray]]:
        servable, entry, arrays, wanted = self.prepare_tensors(name, signature, tensors, output_filter, version, label)
        outputs = await self.run_async(servable, entry, arrays)
        if wanted:
            outputs = {k: outputs[k] for k in wanted}
        return servable, entry, outputs

    def predict_arrays(self, name: str, signature: str, arrays: dict[str, np.ndarray],
                       version: int | None = None, label: str | None = None
                       ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray]]:
        servable = self.manager.resolve(name, version, label)
        entry = predict.signature_of(servable, signature)
        checked = predict.check_arrays(entry, arrays)
        return servable, entry, self._run(servable, entry, checked)

    def run_examples(self, request: Any, method: str, api: str, version: int | None = None, label: str | None = None
                     ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray], int]:
        """Classify / Regress: serialized tf.Examples into a classify or regress signature."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        servable = self.manager.resolve(request.model_spec.name, version, label)
        entry = predict.signature_of(servable, request.model_spec.signature_name)
        if entry.method_name != method:
            raise EngineError(grpc.StatusCode.UNIMPLEMENTED,
                              f"{api} needs a signature with method {method}; signature '{entry.key}' has method "
                              f"{entry.method_name}: call Predict instead")
        kind = request.input.WhichOneof("kind")
        if kind != "example_list":
            raise invalid(f"{api}: only example_list inputs are supported (got {kind or 'no input'})")
        examples = [e.SerializeToString() for e in request.input.example_list.examples]
        if not examples:
            raise invalid(f"{api}: the request has no examples")
        if len(entry.inputs) != 1:
            raise invalid(f"{api}: signature '{entry.key}' must have exactly one input")
        input_name = next(iter(entry.inputs))
        array = np.empty(len(examples), dtype=object)
        array[:] = examples
        outputs = predict.run_signature(entry, {input_name: array})
        return servable, entry, outputs, len(examples)

    def classify(self, request: Any, version: int | None = None, label: str | None = None) -> Any:
        from tensorflow_serving.apis import classification_pb2

        servable, entry, outputs, count = self.run_examples(request, "tensorflow/serving/classify", "Classify", version, label)
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name, response.model_spec.version.value = servable.name, servable.version
        response.model_spec.signature_name = entry.key
        classes, scores = outputs.get("classes"), outputs.get("scores")
        shaped = classes if classes is not None else scores
        if shaped is None:
            raise EngineError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"Classify: signature '{entry.key}' has neither a 'classes' nor a 'scores' output")
        width = shaped.shape[-1]
        for row in range(count):
            result = response.result.classifications.add()
            for k in range(width):
                item = result.classes.add()
                if classes is not None:
                    value = classes[row][k]
                    item.label = value.decode() if isinstance(value, bytes) else str(value)
                if scores is not None:
                    item.score = float(scores[row][k])
        return response

    def regress(self, request: Any, version: int | None = None, label: str | None = None) -> Any:
        from tensorflow_serving.apis import regression_pb2

        servable, entry, outputs, count = self.run_examples(request, "tensorflow/serving/regress", "Regress", version, label)
        response = regression_pb2.RegressionResponse()
        response.model_spec.name, response.model_spec.version.value = servable.name, servable.version
        response.model_spec.signature_name = entry.key
        values = outputs.get("outputs", next(iter(outputs.values()))).reshape(count, -1)
        for row in range(count):
            response.result.regressions.add(value=float(values[row][0]))
        return response

    def _warmup_record(self, servable: Servable, record: bytes) -> None:
        from tensorflow_serving.apis import prediction_log_pb2

        try:
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception:
            raise invalid("not a PredictionLog") from None
        kind = log_entry.WhichOneof("log_type")
        if kind != "predict_log":
            raise invalid(f"warmup record type {kind} is not supported by the local engine (only predict_log)")
        request = log_entry.predict_log.request
        entry = predict.signature_of(servable, request.model_spec.signature_name)
        arrays = predict.decode_inputs(entry, dict(request.inputs))
        predict.run_signature(entry, arrays)
