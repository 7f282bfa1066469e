"""The engine's request logic, shared by the gRPC and REST front ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tfship.serving.config import BatchingOptions
from tfship.serving.local_engine import predict
from tfship.serving.local_engine.batching import Batcher
from tfship.serving.local_engine.errors import invalid
from tfship.serving.local_engine.metrics import Metrics
from tfship.serving.local_engine.models import LoadOptions, ModelConfig, ModelManager, Servable, SignatureEntry, configs_from_proto

log = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, configs: list[ModelConfig], *, verifier: Callable[[Path], str | None] | None = None,
                 batching: BatchingOptions | None = None, poll_seconds: float = 1.0, model_threads: int = 4,
                 options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()
        self.metrics = Metrics()
        # Model calls without batching run here (TensorFlow releases the GIL while computing).
        self.model_pool = ThreadPoolExecutor(max_workers=model_threads, thread_name_prefix="tfship-model")
        self.loop: asyncio.AbstractEventLoop | None = None  # the gRPC server's loop, set by LocalEngine
        self.batcher = Batcher(batching, metrics=self.metrics) if batching else None
        self.manager = ModelManager(configs, verifier=verifier, poll_seconds=poll_seconds,
                                    warmup_runner=self._warmup_record, metrics=self.metrics, options=self.options)

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
        if self.batcher is not None and size is not None and servable.batched:
            # id(entry): the queue's runner holds ``entry``, so the id cannot be reused by another servable's
            # signature while a queue for it exists (a reloaded version is a new entry, hence a new queue).
            return await self.batcher.submit((servable.name, servable.version, entry.key, id(entry)), servable.name,
                                             arrays, size, lambda merged: self.run_timed(servable, entry, merged, "Predict"),
                                             options=servable.batching)
        return await asyncio.get_running_loop().run_in_executor(self.model_pool, self.run_timed, servable, entry, arrays, "Predict")

    def run_timed(self, servable: Servable, entry: SignatureEntry, arrays: dict[str, np.ndarray], api: str) -> dict[str, np.ndarray]:
        """The model call, recorded as TF Serving's runtime_latency (predict_util.cc, classifier.cc: runtime "TF1")."""
        started = time.perf_counter()
        outputs = predict.run_signature(entry, arrays)
        self.metrics.runtime(servable.name, api, "TF1", (time.perf_counter() - started) * 1e6)
        return outputs

    def _run(self, servable: Servable, entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """From a thread that is not the loop's (REST): the same path, batching included."""
        if self.loop is None or not self.loop.is_running():
            return predict.run_signature(entry, arrays)
        return asyncio.run_coroutine_threadsafe(self.run_async(servable, entry, arrays), self.loop).result()

    def prepare_tensors(self, name: str, signature: str, tensors: dict[str, Any], output_filter: list[str],
                        version: int | None = None, label: str | None = None, contents: dict[str, Any] | None = None
                        ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray], list[str]]:
        servable = self.manager.resolve(name, version, label)
        entry = predict.signature_of(servable, signature)
        arrays = predict.decode_inputs(entry, tensors, contents)
        wanted = predict.check_output_filter(entry, output_filter)
        return servable, entry, arrays, wanted

    async def predict_tensors_async(self, name: str, signature: str, tensors: dict[str, Any], output_filter: list[str],
                                    version: int | None = None, label: str | None = None, contents: dict[str, Any] | None = None
                                    ) -> tuple[Servable, SignatureEntry, dict[str, np.ndarray]]:
        """``contents``: tensor_content views into the request's bytes (codec.split_tensor_contents), decoded without a copy."""
        servable, entry, arrays, wanted = self.prepare_tensors(name, signature, tensors, output_filter, version, label, contents)
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

    def classify(self, request: Any, version: int | None = None, label: str | None = None) -> Any:
        from tfship.serving.local_engine import inference

        servable = self._resolve_spec(request, version, label)
        self._count_examples(servable, request)
        return inference.classify(servable, request, self._runner(servable, "Classify"), method_check=self.options.method_name_check)

    def regress(self, request: Any, version: int | None = None, label: str | None = None) -> Any:
        from tfship.serving.local_engine import inference

        servable = self._resolve_spec(request, version, label)
        self._count_examples(servable, request)
        return inference.regress(servable, request, self._runner(servable, "Regress"), method_check=self.options.method_name_check)

    def multi_inference(self, request: Any) -> Any:
        """MultiInference (multi_inference_helper.cc): every task names one model; its version spec picks the servable."""
        from tfship.serving.local_engine import inference

        spec = inference.multi_inference_model_spec(request)
        choice = spec.WhichOneof("version_choice")
        servable = self.manager.resolve(spec.name, spec.version.value if choice == "version" else None,
                                        spec.version_label if choice == "version_label" else None)
        return inference.multi_inference(servable, request, self._runner(servable, "MultiInference"),
                                         method_check=self.options.method_name_check)

    def _runner(self, servable: Servable, api: str) -> Callable[[SignatureEntry, dict[str, np.ndarray]], dict[str, np.ndarray]]:
        return lambda entry, arrays: self.run_timed(servable, entry, arrays, api)

    def _count_examples(self, servable: Servable, request: Any) -> None:
        """util.cc RecordRequestExampleCount: the examples of a Classify/Regress request."""
        from tfship.serving.local_engine import inference

        try:
            count = len(inference.serialized_examples(request.input))
        except Exception:  # the request is refused below, with TF Serving's message
            return
        self.metrics.examples(servable.name, count)

    def _resolve_spec(self, request: Any, version: int | None, label: str | None) -> Servable:
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        return self.manager.resolve(request.model_spec.name, version, label)

    def _warmup_record(self, servable: Servable, record: bytes) -> None:
        """saved_model_warmup.cc RunWarmupRequest: predict, classify, regress and multi_inference logs replay."""
        from tensorflow_serving.apis import prediction_log_pb2

        from tfship.serving.local_engine import inference

        try:
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception:
            raise invalid(f"Failed to parse warmup record from {servable.path}") from None
        kind = log_entry.WhichOneof("log_type")
        check = self.options.method_name_check
        # The replay goes through the same calls as requests (saved_model_warmup.cc calls RunPredict,
        # RunClassify, ...), so runtime_latency counts it as TF Serving's does.
        if kind == "predict_log":
            request = log_entry.predict_log.request
            entry = predict.signature_of(servable, request.model_spec.signature_name)
            arrays = predict.decode_inputs(entry, dict(request.inputs))
            self.run_timed(servable, entry, arrays, "Predict")
        elif kind == "classify_log":
            inference.classify(servable, log_entry.classify_log.request, self._runner(servable, "Classify"), method_check=check)
        elif kind == "regress_log":
            inference.regress(servable, log_entry.regress_log.request, self._runner(servable, "Regress"), method_check=check)
        elif kind == "multi_inference_log":
            inference.multi_inference(servable, log_entry.multi_inference_log.request, self._runner(servable, "MultiInference"),
                                      method_check=check)
        else:
            raise invalid(f"Unsupported log_type for warmup: {kind}")
