"""The Open Inference Protocol (KServe v2) beside TF Serving's API: gRPC ``inference.GRPCInferenceService``
and REST ``/v2/...``, over the same models, signatures, batching and errors (tensorflow/serving#2029).

A model's v2 view is its ``serving_default`` signature: its inputs and outputs by name, v2 datatypes, ``-1``
for a dimension of any size. Versions are strings ("" or absent: the latest AVAILABLE one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from tfship.core.codec import split_repeated_bytes
from tfship.serving.local_engine import predict
from tfship.serving.local_engine.errors import EngineError, invalid
from tfship.serving.local_engine.grpc_service import ZERO_COPY_BYTES, WithWire

RAW_INPUT_CONTENTS_FIELD = 7  # grpc_predict_v2.proto: repeated bytes raw_input_contents = 7;

# v2 datatype <-> numpy (the protocol's tensor data types).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16), "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64), "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# InferTensorContents' field per datatype (FP16 travels only as raw bytes).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def datatype_of(dtype: Any) -> str:
    """The v2 datatype of a tf.DType or numpy dtype."""
    name = getattr(dtype, "name", str(dtype))
    if name in ("string", "object") or getattr(dtype, "kind", None) in ("O", "S", "U"):
        return "BYTES"
    numpy_dtype = np.dtype(getattr(dtype, "as_numpy_dtype", dtype))
    for key, value in DATATYPES.items():
        if value == numpy_dtype:
            return key
    raise invalid(f"data type {name} has no Open Inference Protocol datatype")


def _version(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 19:
        raise invalid(f"model version '{text[:40]}' is not a number")
    return int(text)


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]


def model_metadata(core: Any, name: str, version: str) -> dict[str, Any]:
    servable = core.manager.resolve(name, _version(version))
    entry = predict.signature_of(servable, "")
    states = core.manager.status(name)
    available = [str(s.version) for s in states if s.state == "AVAILABLE"]
    platform = "tflite" if any(n.startswith("serving_default_") for n in entry.inputs) else "tensorflow_savedmodel"

    def tensors(specs: dict[str, Any]) -> list[TensorMeta]:
        return [TensorMeta(n, datatype_of(s.dtype), [-1 if d is None else int(d) for d in (s.shape or ())])
                for n, s in sorted(specs.items())]

    return {"name": name, "versions": available, "platform": platform,
            "inputs": tensors(entry.inputs), "outputs": tensors(entry.outputs)}


def model_ready(core: Any, name: str, version: str) -> bool:
    try:
        core.manager.resolve(name, _version(version))
    except EngineError:
        return False
    return True


def server_ready(core: Any) -> bool:
    models = core.manager.readiness()
    return bool(models) and all(reason is None for reason in models.values())


def _array(name: str, datatype: str, shape: list[int], values: Any) -> np.ndarray:
    if datatype not in DATATYPES:
        raise invalid(f"input '{name}': unknown datatype '{datatype}' (expected one of {', '.join(DATATYPES)})")
    if any(d < 0 for d in shape):
        raise invalid(f"input '{name}': shape {list(shape)} has a negative dimension")
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
        array = np.empty(len(items), dtype=object)
        array[:] = items
    else:
        array = np.asarray(values, dtype=DATATYPES[datatype])
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise invalid(f"input '{name}': {array.size} values for shape {list(shape)} ({int(np.prod(shape))} expected)")
    return array.reshape(shape)


def _split_bytes(raw: bytes | memoryview, name: str) -> list[bytes]:
    """BYTES raw contents: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid(f"input '{name}': raw BYTES contents are truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise invalid(f"input '{name}': raw BYTES contents are truncated")
        items.append(bytes(raw[offset:offset + length]))
        offset += length
    return items


def _join_bytes(array: np.ndarray) -> bytes:
    parts = []
    for value in array.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def grpc_inputs(request: Any, raw_contents: list[memoryview] | None = None) -> dict[str, np.ndarray]:
    """``raw_contents``: the request's raw_input_contents as views into its bytes (codec.split_repeated_bytes),
    read in place of the message's field: the arrays then share the request's memory."""
    raw = list(request.raw_input_contents) if raw_contents is None else raw_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays = {}
    for index, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if raw:
            if tensor.datatype == "BYTES":
                values: Any = _split_bytes(raw[index], tensor.name)
            elif tensor.datatype in DATATYPES:
                dtype = DATATYPES[tensor.datatype]
                if len(raw[index]) % dtype.itemsize:
                    raise invalid(f"input '{tensor.name}': {len(raw[index])} raw bytes is not a whole number of {tensor.datatype}")
                values = np.frombuffer(raw[index], dtype=dtype.newbyteorder("<"))
            else:
                values = []
        else:
            field = CONTENTS.get(tensor.datatype)
            if field is None and tensor.datatype in DATATYPES:
                raise invalid(f"input '{tensor.name}': {tensor.datatype} travels only in raw_input_contents")
            values = list(getattr(tensor.contents, field)) if field else []
        if tensor.name in arrays:
            raise invalid(f"input '{tensor.name}' is given twice")
        arrays[tensor.name] = _array(tensor.name, tensor.datatype, shape, values)
    return arrays


async def infer(core: Any, name: str, version: str, arrays: dict[str, np.ndarray], wanted: list[str]
                ) -> tuple[Any, dict[str, np.ndarray]]:
    """Run the inputs through the model's serving_default signature (batching included); the outputs asked for."""
    servable = core.manager.resolve(name, _version(version))
    entry = predict.signature_of(servable, "")
    checked = predict.check_arrays(entry, arrays)
    for output in wanted:
        if output not in entry.outputs:
            raise invalid(f"unexpected inference output '{output}' for model '{name}' "
                          f"(outputs: {', '.join(sorted(entry.outputs))})")
    with core.metrics.inflight(name):
        outputs = await core.run_async(servable, entry, checked)
    if wanted:
        outputs = {k: outputs[k] for k in wanted}
    return servable, outputs


def _infer_parser(message_cls: Any) -> Any:
    """From ZERO_COPY_BYTES on, raw_input_contents stay in the request's bytes (as Predict's tensor_content do)."""
    def parse(data: bytes) -> Any:
        split = split_repeated_bytes(data, RAW_INPUT_CONTENTS_FIELD) if len(data) >= ZERO_COPY_BYTES else None
        if split is None:
            return message_cls.FromString(data)
        return WithWire(message_cls.FromString(split[0]), split[1])

    return parse


def build_servicer(core: Any) -> grpc.GenericRpcHandler:
    """``inference.GRPCInferenceService``'s methods of the KServe v2 proto, as a generic handler."""
    from tfship.serving.local_engine.v2_protos import MESSAGES, SERVICE

    async def abort(context: Any, exc: EngineError) -> None:
        await context.abort(exc.code, exc.message[:2000])

    async def server_live(request: Any, context: Any) -> Any:
        return MESSAGES["ServerLiveResponse"](live=True)

    async def server_ready_(request: Any, context: Any) -> Any:
        return MESSAGES["ServerReadyResponse"](ready=server_ready(core))

    async def model_ready_(request: Any, context: Any) -> Any:
        return MESSAGES["ModelReadyResponse"](ready=model_ready(core, request.name, request.version))

    async def server_metadata(request: Any, context: Any) -> Any:
        from importlib.metadata import version

        return MESSAGES["ServerMetadataResponse"](name="tfship", version=version("tfship"), extensions=[])

    async def model_metadata_(request: Any, context: Any) -> Any:
        try:
            meta = model_metadata(core, request.name, request.version)
        except EngineError as exc:
            await abort(context, exc)
        response = MESSAGES["ModelMetadataResponse"](name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for target, tensors in ((response.inputs, meta["inputs"]), (response.outputs, meta["outputs"])):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    async def model_infer(request: Any, context: Any) -> Any:
        raw_contents = None
        if isinstance(request, WithWire):  # a large request: its raw contents are read from the wire bytes, not copied
            request, raw_contents = request.message, request.views
        try:
            arrays = grpc_inputs(request, raw_contents)
            servable, outputs = await infer(core, request.model_name, request.model_version, arrays,
                                            [o.name for o in request.outputs])
        except EngineError as exc:
            await abort(context, exc)
        response = MESSAGES["ModelInferResponse"](model_name=servable.name, model_version=str(servable.version), id=request.id)
        for output_name, value in outputs.items():
            array = np.asarray(value)
            datatype = datatype_of(array.dtype)
            response.outputs.add(name=output_name, datatype=datatype, shape=list(array.shape))
            # Triton's convention: outputs travel as raw little-endian bytes, in the order of ``outputs``.
            response.raw_output_contents.append(_join_bytes(array) if datatype == "BYTES"
                                                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        return response

    def unary(method: Any, request_name: str, response_name: str) -> grpc.RpcMethodHandler:
        parse = _infer_parser(MESSAGES[request_name]) if request_name == "ModelInferRequest" else MESSAGES[request_name].FromString
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=parse,
                                                   response_serializer=MESSAGES[response_name].SerializeToString)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerLive": unary(server_live, "ServerLiveRequest", "ServerLiveResponse"),
        "ServerReady": unary(server_ready_, "ServerReadyRequest", "ServerReadyResponse"),
        "ModelReady": unary(model_ready_, "ModelReadyRequest", "ModelReadyResponse"),
        "ServerMetadata": unary(server_metadata, "ServerMetadataRequest", "ServerMetadataResponse"),
        "ModelMetadata": unary(model_metadata_, "ModelMetadataRequest", "ModelMetadataResponse"),
        "ModelInfer": unary(model_infer, "ModelInferRequest", "ModelInferResponse"),
    })


# -- REST ---------------------------------------------------------------------------------------------

def rest_inputs(body: Any) -> tuple[dict[str, np.ndarray], list[str], str]:
    """``{"id", "inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise invalid('the request body must be a JSON object with a non-empty "inputs" list')
    arrays = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not all(k in tensor for k in ("name", "shape", "datatype", "data")):
            raise invalid('each input needs "name", "shape", "datatype" and "data"')
        name, shape, datatype = str(tensor["name"]), tensor["shape"], str(tensor["datatype"])
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise invalid(f"input '{name}': shape must be a list of integers")
        data = tensor["data"]
        flat = np.asarray(data, dtype=object).reshape(-1).tolist() if isinstance(data, list) else [data]
        if name in arrays:
            raise invalid(f"input '{name}' is given twice")
        try:
            arrays[name] = _array(name, datatype, shape, flat)
        except (TypeError, ValueError) as exc:
            raise invalid(f"input '{name}': data does not fit datatype {datatype}: {exc}") from None
    wanted = [str(o.get("name")) for o in body.get("outputs") or [] if isinstance(o, dict)]
    return arrays, wanted, str(body.get("id", ""))


def rest_outputs(servable: Any, outputs: dict[str, np.ndarray], request_id: str) -> dict[str, Any]:
    result = []
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array.dtype)
        flat = array.reshape(-1)
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat] if datatype == "BYTES" \
            else flat.tolist()
        result.append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": data})
    payload: dict[str, Any] = {"model_name": servable.name, "model_version": str(servable.version), "outputs": result}
    if request_id:
        payload["id"] = request_id
    return payload
