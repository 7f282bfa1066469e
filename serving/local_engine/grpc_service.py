"""gRPC services of TF Serving (PredictionService, ModelService) on the official generated stubs.

The handlers are coroutines on the engine's asyncio loop (grpc.aio): checks and encoding run inline,
model calls go to threads; a request costs no thread hand-off of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2

from tfship.core.codec import split_tensor_contents, to_tensor_proto
from tfship.serving.local_engine.errors import EngineError, clipped, invalid
from tfship.serving.local_engine.repeated_errors import RepeatedErrors

log = logging.getLogger(__name__)
errors_log = RepeatedErrors(log)

# Requests from this size on are parsed without their tensors' tensor_content, which are decoded as views
# into the request's bytes: no copy of the payload between the wire and the model, not even into the
# parsed message.
ZERO_COPY_BYTES = 64 * 1024
PREDICT_INPUTS_FIELD = 2  # predict.proto: map<string, TensorProto> inputs = 2;


async def _abort(context: Any, exc: EngineError) -> None:
    await context.abort(exc.code, clipped(exc.message))


def build_servicers(core: Any) -> tuple[Any, Any]:
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def spec_args(spec: Any) -> dict[str, Any]:
        choice = spec.WhichOneof("version_choice")
        return {"version": spec.version.value if choice == "version" else None,
                "label": spec.version_label if choice == "version_label" else None}

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def _timed(self, api: str, model: str, coroutine: Awaitable[Any], context: Any) -> Any:
            started = time.perf_counter()
            try:
                with core.metrics.inflight(model):
                    result = await coroutine
                core.metrics.request(model, api, "GRPC", "OK", (time.perf_counter() - started) * 1e6)
                return result
            except EngineError as exc:
                core.metrics.request(model, api, "GRPC", exc.code.name, (time.perf_counter() - started) * 1e6)
                await _abort(context, exc)
            except Exception as exc:  # a bug of ours: one log line per kind and interval, no traceback to the client
                core.metrics.request(model, api, "GRPC", "INTERNAL", (time.perf_counter() - started) * 1e6)
                errors_log.error(f"grpc:{api}:{type(exc).__name__}", f"gRPC {api} failed: {type(exc).__name__}: {str(exc)[:200]}", exc)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

        async def Predict(self, request, context):
            contents = None
            if isinstance(request, WithWire):  # a large request: its tensors are read from the wire bytes, not copied
                contents = request.views
                request = request.message

            async def run():
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                spec = request.model_spec
                servable, entry, outputs = await core.predict_tensors_async(spec.name, spec.signature_name, dict(request.inputs),
                                                                            list(request.output_filter), **spec_args(spec),
                                                                            contents=contents)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = entry.key
                for name, value in outputs.items():
                    to_tensor_proto(value, response.outputs[name])
                return response

            return await self._timed("Predict", request.model_spec.name, run(), context)

        async def GetModelMetadata(self, request, context):
            async def run():
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                if not request.metadata_field:
                    raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
                for field_name in request.metadata_field:
                    if field_name != "signature_def":
                        raise invalid(f"Metadata field {field_name} is not supported")
                servable = core.manager.resolve(request.model_spec.name, **spec_args(request.model_spec))
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for key, entry in servable.signatures.items():
                    signature_map.signature_def[key].CopyFrom(entry.proto)
                packed = any_pb2.Any()
                packed.Pack(signature_map)
                response.metadata["signature_def"].CopyFrom(packed)
                return response

            return await self._timed("GetModelMetadata", request.model_spec.name, run(), context)

        async def Classify(self, request, context):
            run = lambda: core.classify(request, **spec_args(request.model_spec))  # noqa: E731
            return await self._timed("Classify", request.model_spec.name,
                                     asyncio.get_running_loop().run_in_executor(core.model_pool, run), context)

        async def Regress(self, request, context):
            run = lambda: core.regress(request, **spec_args(request.model_spec))  # noqa: E731
            return await self._timed("Regress", request.model_spec.name,
                                     asyncio.get_running_loop().run_in_executor(core.model_pool, run), context)

        async def MultiInference(self, request, context):
            run = lambda: core.multi_inference(request)  # noqa: E731
            model = request.tasks[0].model_spec.name if request.tasks else ""
            return await self._timed("MultiInference", model,
                                     asyncio.get_running_loop().run_in_executor(core.model_pool, run), context)

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        async def GetModelStatus(self, request, context):
            try:
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                states = core.manager.status(request.model_spec.name, **spec_args(request.model_spec))
            except EngineError as exc:
                await _abort(context, exc)
            response = get_model_status_pb2.GetModelStatusResponse()
            for state in states:
                entry = response.model_version_status.add()
                entry.version = state.version
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
                entry.status.error_code = state.error_code.value[0]
                entry.status.error_message = state.error_message
            return response

        async def HandleReloadConfigRequest(self, request, context):
            response = model_management_pb2.ReloadConfigResponse()
            try:
                await asyncio.get_running_loop().run_in_executor(None, core.reload_config, request.config)
            except EngineError as exc:
                response.status.error_code = exc.code.value[0]
                response.status.error_message = exc.message
            return response

    return PredictionService(), ModelService()


class _Unparsable:
    """What a request that is not a valid protobuf of the method's type decodes to."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error


class WithWire:
    """A large request parsed without its tensor bytes (Predict's tensor_content, ModelInfer's
    raw_input_contents), and ``views`` of those in the request's bytes."""

    __slots__ = ("message", "views")

    def __init__(self, message: Any, views: Any) -> None:
        self.message = message
        self.views = views


def _safe_parser(message_cls: Any, keep_wire: bool = False) -> Callable[[bytes], Any]:
    """``keep_wire``: a PredictRequest of ZERO_COPY_BYTES or more parses into a WithWire."""
    def parse(data: bytes) -> Any:
        split = split_tensor_contents(data, PREDICT_INPUTS_FIELD) if keep_wire and len(data) >= ZERO_COPY_BYTES else None
        try:
            message = message_cls.FromString(data if split is None else split[0])
        except Exception as exc:  # DecodeError and friends: garbage on the wire
            return _Unparsable(message_cls.DESCRIPTOR.full_name, exc)
        return message if split is None else WithWire(message, split[1])

    return parse


def _guarded(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        if isinstance(request, _Unparsable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Could not parse the request as {request.type_name}: the wire format is corrupt")
        try:
            return await method(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug of ours: one log line per kind and interval, no traceback to the client
            name = getattr(method, "__name__", "method")
            errors_log.error(f"grpc:{name}:{type(exc).__name__}", f"gRPC {name} failed: {type(exc).__name__}: {str(exc)[:200]}", exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return handler


def generic_handlers(prediction: Any, model: Any) -> tuple[Any, Any]:
    """The two services' method handlers, like the generated add_*_to_server, but a request that does
    not parse gets INVALID_ARGUMENT instead of gRPC's UNKNOWN and a traceback in the log."""
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_management_pb2,
        predict_pb2,
        regression_pb2,
    )

    def unary(method, request_cls, response_cls, keep_wire=False):
        return grpc.unary_unary_rpc_method_handler(_guarded(method), request_deserializer=_safe_parser(request_cls, keep_wire),
                                                   response_serializer=response_cls.SerializeToString)

    prediction_methods = {
        "Classify": unary(prediction.Classify, classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
        "Regress": unary(prediction.Regress, regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        "Predict": unary(prediction.Predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse, keep_wire=True),
        "MultiInference": unary(prediction.MultiInference, inference_pb2.MultiInferenceRequest, inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": unary(prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest,
                                  get_model_metadata_pb2.GetModelMetadataResponse),
    }
    model_methods = {
        "GetModelStatus": unary(model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest, get_model_status_pb2.GetModelStatusResponse),
        "HandleReloadConfigRequest": unary(model.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest,
                                           model_management_pb2.ReloadConfigResponse),
    }
    return (grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", prediction_methods),
            grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", model_methods))
