"""A version directory's model.tflite, served the way TF Serving's TfLiteSession serves it.

What TF Serving does, and where it says so (tensorflow/serving, tensorflow_serving/servables/tensorflow/):

- saved_model_bundle_factory.cc: ``kTfLiteModelFilename[] = "model.tflite"``; ``is_tflite =
  config_.prefer_tflite_model() && TfLiteModelFound(path)``, else the SavedModel loader runs. So the
  TFLite file is served only with --prefer_tflite_model, and then only when the file exists.
- tflite_session.cc ``TfLiteSession::Create``: SignatureDefs come from ``tflite::GetSignatureDefMap``,
  which reads the model's ``signature_defs_metadata`` metadata entry (a flexbuffer map of key ->
  serialized SignatureDef, tensorflow/lite/tools/signature/signature_def_util.cc), *not* the native
  TFLite signatures the converter writes. Each stored SignatureDef is served under its key as stored
  (method name, shapes), with tensor names checked against the interpreter's input/output tensors
  (``FixTfLiteTensorName``: the exact name, else the name without its ``:0`` suffix).
- Without that metadata (what ``TFLiteConverter`` writes today) it logs "No signature def found in
  TFLite model. Generating one." and builds ``serving_default``: one entry per input/output tensor,
  keyed by the tensor name cut at its first ``:`` (``TfToTfLiteLegacyTensorName``), TensorInfo name =
  the TFLite tensor name, dtype, and shape = the tensor's ``dims`` (the converter's placeholder batch
  of 1, not -1: tflite_session_test.cc BasicTest expects ``dim { size: 1 }``), method
  ``tensorflow/serving/predict``.
- ``SetInputAndInvokeMiniBatch``: when the request's tensor differs from the TFLite input tensor,
  ``ResizeInputTensor`` to the request's dims and ``AllocateTensors`` again, then invoke.
- tflite_interpreter_pool.cc: a pool of interpreters built from one model; a Run takes one (waiting
  while all are busy) and gives it back. server.h: ``num_tflite_pools = NumSchedulableCPUs()``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tfship.core.errors import first_line
from tfship.serving.local_engine.errors import EngineError, invalid
from tfship.serving.local_engine.models import InputSpec, SignatureEntry

log = logging.getLogger(__name__)

TFLITE_FILE = "model.tflite"
# tensorflow/cc/saved_model/loader.cc MaybeSavedModelDirectory: saved_model.pb or saved_model.pbtxt.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
# TF Serving builds one interpreter per CPU; ours are built on demand, so idle models hold one.
DEFAULT_MAX_INTERPRETERS = 4

# tflite_session.cc TfLiteTypeToTfType: the only TFLite types TF Serving maps to TF types; any other
# (float16, float64, ...) fails the load with "Unknown TfLite type".
_SERVED_TYPES = {
    "float32": "float32", "int32": "int32", "uint8": "uint8", "int64": "int64", "bool": "bool",
    "int16": "int16", "complex64": "complex64", "int8": "int8", "string": "string",
}


def has_tflite(path: Path) -> bool:
    """bundle_factory TfLiteModelFound: ``model.tflite`` exists in the version directory."""
    return (path / TFLITE_FILE).exists()


def has_saved_model(path: Path) -> bool:
    """loader.cc MaybeSavedModelDirectory: ``saved_model.pb`` or ``saved_model.pbtxt`` exists."""
    return any((path / name).exists() for name in SAVED_MODEL_FILES)


def choose_format(path: Path, prefer_tflite: bool) -> str:
    """"tflite" or "saved_model", with saved_model_bundle_factory.cc's rule.

    The TFLite file is loaded only with --prefer_tflite_model and only when it exists; every other
    case goes to the SavedModel loader, also a directory holding nothing but model.tflite while the
    flag is off (TF Serving then fails to find a SavedModel there).
    """
    return "tflite" if prefer_tflite and has_tflite(path) else "saved_model"


@dataclass(frozen=True)
class _Tensor:
    """One input or output tensor of the primary subgraph, as the interpreter describes it."""

    index: int
    name: str
    dtype: Any  # tf.DType
    dims: tuple[int, ...]  # the tensor's dims in the file (TF Serving's TensorInfo shape)
    signature: tuple[int, ...]  # shape_signature: -1 where the converter left a dimension free

    def declared(self) -> str:
        return "[" + ", ".join(str(d) for d in self.signature) + "]"

    def spec(self, name: str) -> InputSpec:
        # The request's shape is what the interpreter gets resized to, so the first dimension is free
        # even when the file fixes it (the converter's batch of 1); other free dims stay free.
        dims = tuple(None if d < 0 or i == 0 else d for i, d in enumerate(self.signature))
        return InputSpec(name, self.dtype, dims)

    def tensor_info(self, info: Any) -> None:
        info.name = self.name
        info.dtype = self.dtype.as_datatype_enum
        for size in self.dims:
            info.tensor_shape.dim.add(size=size)


def _interpreter_class() -> Any:
    # LiteRT is the TFLite runtime now (tf.lite.Interpreter is deprecated, DESIGN.md section 6) and the
    # exporter already runs .tflite files with it; the same API is in TensorFlow for installs without it.
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


class _Slot:
    """An interpreter and the input shapes it is allocated for (resizing is the slow path)."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.shapes: dict[int, tuple[int, ...]] = {
            int(d["index"]): tuple(int(x) for x in d["shape"]) for d in interpreter.get_input_details()}


class _InterpreterPool:
    """tflite_interpreter_pool.cc: callers take an interpreter, run, and give it back.

    Interpreters are built on demand up to ``limit``; a caller waits while all are busy. One that
    raised while in use is dropped rather than returned: a failed resize can leave it half-prepared.
    """

    def __init__(self, build: Callable[[], _Slot], limit: int, first: _Slot) -> None:
        self._build = build
        self._limit = max(1, limit)
        self._idle = [first]
        self._count = 1
        self._ready = threading.Condition()

    @property
    def size(self) -> int:
        with self._ready:
            return self._count

    @contextmanager
    def take(self) -> Iterator[_Slot]:
        with self._ready:
            while not self._idle and self._count >= self._limit:
                self._ready.wait()
            slot = self._idle.pop() if self._idle else None
            if slot is None:
                self._count += 1
        if slot is None:
            try:
                slot = self._build()
            except BaseException:
                self._release(None)
                raise
        try:
            yield slot
        except BaseException:
            self._release(None)
            raise
        self._release(slot)

    def _release(self, slot: _Slot | None) -> None:
        with self._ready:
            if slot is None:
                self._count -= 1
            else:
                self._idle.append(slot)
            self._ready.notify()


class TfLiteModel:
    """What ``load_tflite`` returns as the servable's loaded object: the model and its interpreters."""

    def __init__(self, path: Path, model_bytes: bytes, pool: _InterpreterPool, inputs: dict[str, _Tensor],
                 outputs: dict[str, _Tensor]) -> None:
        self.path = path
        self.model_bytes = model_bytes
        self.pool = pool
        self.inputs = inputs  # by TFLite tensor name
        self.outputs = outputs

    def run(self, feeds: dict[str, tuple[_Tensor, np.ndarray]], fetches: dict[str, _Tensor]) -> dict[str, np.ndarray]:
        with self.pool.take() as slot:
            interpreter = slot.interpreter
            resized = {alias: (tensor, array) for alias, (tensor, array) in feeds.items()
                       if slot.shapes.get(tensor.index) != array.shape}
            if resized:
                # Every input is resized before one AllocateTensors: allocating after each (as
                # tflite_session.cc does) fails models that combine inputs while their batches differ.
                try:
                    for tensor, array in resized.values():
                        interpreter.resize_tensor_input(tensor.index, list(array.shape), strict=False)
                    interpreter.allocate_tensors()
                except (RuntimeError, ValueError) as exc:
                    raise _shape_error(resized, exc) from None
                slot.shapes.update({tensor.index: array.shape for tensor, array in resized.values()})
            for alias, (tensor, array) in feeds.items():
                try:
                    interpreter.set_tensor(tensor.index, array)
                except ValueError as exc:
                    raise invalid(f"input '{alias}': {first_line(exc, 300)}") from None
            try:
                interpreter.invoke()
            except RuntimeError as exc:
                raise EngineError(grpc.StatusCode.INTERNAL,
                                  f"Failed to invoke TfLite interpreter: {first_line(exc, 300)}") from None
            return {alias: np.array(interpreter.get_tensor(tensor.index)) for alias, tensor in fetches.items()}


def _shape_error(resized: dict[str, tuple[_Tensor, np.ndarray]], exc: Exception) -> EngineError:
    def fits(tensor: _Tensor, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(tensor.signature) and all(
            want < 0 or i == 0 or want == got for i, (want, got) in enumerate(zip(tensor.signature, shape)))

    # Name the inputs that break the model's declared shape; if each fits alone, name them all.
    culprits = {a: ta for a, ta in resized.items() if not fits(ta[0], ta[1].shape)} or resized
    parts = [f"input '{alias}' has shape {list(array.shape)} but the model declares {tensor.declared()} (-1: any size)"
             for alias, (tensor, array) in culprits.items()]
    return invalid("; ".join(parts) + f": the TFLite interpreter cannot run that shape ({first_line(exc, 200)})")


class _SignatureFunction:
    """``fn(**inputs)`` of a SignatureEntry: numpy arrays by alias in and out."""

    def __init__(self, model: TfLiteModel, key: str, inputs: dict[str, _Tensor], outputs: dict[str, _Tensor]) -> None:
        self.model = model
        self.key = key
        self.inputs = inputs
        self.outputs = outputs

    def __call__(self, **values: Any) -> dict[str, np.ndarray]:
        if set(values) != set(self.inputs):
            raise invalid(f"signature '{self.key}' takes inputs {sorted(self.inputs)}, got {sorted(values)}")
        feeds = {}
        for alias, value in values.items():
            tensor = self.inputs[alias]
            array = np.asarray(value)
            want = tensor.dtype.as_numpy_dtype
            if tensor.dtype.name == "string":
                if array.dtype.kind not in "OSU":
                    raise invalid(f"input '{alias}' has dtype {array.dtype.name} but the model expects string")
                array = array.astype(object)
            elif array.dtype != np.dtype(want):
                raise invalid(f"input '{alias}' has dtype {array.dtype.name} but the model expects {tensor.dtype.name}")
            feeds[alias] = (tensor, np.ascontiguousarray(array))
        return self.model.run(feeds, self.outputs)


def load_tflite(path: Path, *, num_threads: int | None = None,
                max_interpreters: int | None = None) -> tuple[TfLiteModel, dict[str, SignatureEntry]]:
    """Load ``path / model.tflite`` and its signatures as TF Serving's TfLiteSession::Create does.

    ``num_threads`` goes to each interpreter; ``max_interpreters`` (default ``min(4, CPUs)``) bounds
    the pool that concurrent calls share.
    """
    file = Path(path) / TFLITE_FILE
    try:
        model_bytes = file.read_bytes()
    except OSError as exc:
        raise EngineError(grpc.StatusCode.NOT_FOUND, f"cannot read {file}: {exc.strerror or exc}") from None
    from tensorflow.lite.python import schema_py_generated as schema

    if len(model_bytes) < 8 or not schema.Model.ModelBufferHasIdentifier(model_bytes, 0):
        raise invalid(f"Cannot build FlatBufferModel from buffer: {file} is not a TFLite model (no TFL3 identifier)")

    interpreter_class = _interpreter_class()

    def build() -> Any:
        return interpreter_class(model_content=model_bytes, num_threads=num_threads)

    try:
        first = build()
    except (RuntimeError, ValueError) as exc:
        raise EngineError(grpc.StatusCode.INTERNAL, f"Cannot build Interpreter from {file}: {first_line(exc, 300)}") from None
    # Read before allocate_tensors(): TF Serving's TensorInfo shapes are the dims stored in the file.
    inputs = _tensor_map(first.get_input_details(), "Input", file)
    outputs = _tensor_map(first.get_output_details(), "Output", file)
    try:
        first.allocate_tensors()
    except RuntimeError as exc:
        raise EngineError(grpc.StatusCode.INTERNAL, f"Failed to allocate tensors for {file}: {first_line(exc, 300)}") from None

    def build_allocated() -> _Slot:
        interpreter = build()
        interpreter.allocate_tensors()
        return _Slot(interpreter)

    limit = max_interpreters if max_interpreters is not None else min(DEFAULT_MAX_INTERPRETERS, os.cpu_count() or 1)
    pool = _InterpreterPool(build_allocated, limit, _Slot(first))
    model = TfLiteModel(Path(path), model_bytes, pool, inputs, outputs)
    stored = _stored_signature_defs(model_bytes, file)
    if stored:
        signatures = {key: _stored_entry(model, key, proto, file) for key, proto in sorted(stored.items())}
    else:
        log.warning("No signature def found in TFLite model %s. Generating one.", file)
        signatures = {DEFAULT_SIGNATURE: _generated_entry(model)}
    return model, signatures


def _tensor_map(details: list[dict[str, Any]], kind: str, file: Path) -> dict[str, _Tensor]:
    import tensorflow as tf

    tensors: dict[str, _Tensor] = {}
    for d in details:
        name = d.get("name") or ""
        if not name:
            raise EngineError(grpc.StatusCode.INTERNAL, f"{file}: {kind} name missing for tensor index: {d['index']}")
        dtype = np.dtype(d["dtype"])
        type_name = "string" if dtype.kind in "OSU" else dtype.name
        served = _SERVED_TYPES.get(type_name)
        if served is None:
            raise EngineError(grpc.StatusCode.INTERNAL, f"{file}: {kind.lower()} tensor '{name}' has type {type_name}, "
                              f"which TF Serving's TFLite session does not serve (Unknown TfLite type)")
        if name in tensors:
            raise EngineError(grpc.StatusCode.ALREADY_EXISTS, f"{file}: {kind} tensor name: {name} has multiple indices")
        dims = tuple(int(x) for x in d["shape"])
        signature = tuple(int(x) for x in d.get("shape_signature", d["shape"]))
        tensors[name] = _Tensor(int(d["index"]), name, tf.as_dtype(served), dims, signature)
    return tensors


def _stored_signature_defs(model_bytes: bytes, file: Path) -> dict[str, Any]:
    """signature_def_util.cc GetSignatureDefMap: the ``signature_defs_metadata`` entry, or nothing."""
    from tensorflow.core.protobuf import meta_graph_pb2

    from tfship.exporter.tflite import stored_signature_defs

    try:
        stored = stored_signature_defs(model_bytes)
    except Exception as exc:
        raise invalid(f"Invalid SignatureDefs found in TfLite model {file}: {first_line(exc, 200)}") from None
    result = {}
    for key, raw in stored.items():
        # ReadSignatureDefMap copies ``AsString().c_str()``: a serialized SignatureDef is cut at its first NUL byte.
        if b"\0" in raw:
            log.warning("%s: SignatureDef '%s' holds a NUL byte; TF Serving reads it only up to there", file, key)
            raw = raw.split(b"\0", 1)[0]
        proto = meta_graph_pb2.SignatureDef()
        try:
            proto.ParseFromString(raw)
        except Exception:
            raise EngineError(grpc.StatusCode.INTERNAL, f"{file}: Cannot parse signature def found in flatbuffer ({key!r}).") from None
        result[key] = proto
    return result


def _fixed_name(name: str, tensors: dict[str, _Tensor]) -> str | None:
    """tflite_session.cc FixTfLiteTensorName: the name itself, else without its ``:N`` suffix."""
    if name in tensors:
        return name
    legacy = name.split(":", 1)[0]
    return legacy if legacy in tensors else None


def _stored_entry(model: TfLiteModel, key: str, stored: Any, file: Path) -> SignatureEntry:
    from tensorflow.core.protobuf import meta_graph_pb2

    proto = meta_graph_pb2.SignatureDef()
    proto.CopyFrom(stored)
    chosen: list[dict[str, _Tensor]] = [{}, {}]
    for kind, infos, tensors, picked in (("input", proto.inputs, model.inputs, chosen[0]),
                                         ("output", proto.outputs, model.outputs, chosen[1])):
        for alias, info in infos.items():
            name = _fixed_name(info.name, tensors)
            if name is None:
                raise EngineError(grpc.StatusCode.INTERNAL, f"{file}: signature '{key}': Signature {kind} {alias} "
                                  f"references an unknown tensor '{info.name}'")
            info.name = name
            picked[alias] = tensors[name]
    inputs, outputs = chosen
    return SignatureEntry(key, _SignatureFunction(model, key, inputs, outputs),
                          {a: t.spec(a) for a, t in inputs.items()}, {a: t.spec(a) for a, t in outputs.items()},
                          proto.method_name or PREDICT_METHOD, proto)


def _generated_entry(model: TfLiteModel) -> SignatureEntry:
    """The ``serving_default`` TF Serving makes up for a model without stored SignatureDefs."""
    from tensorflow.core.protobuf import meta_graph_pb2

    proto = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    chosen: list[dict[str, _Tensor]] = [{}, {}]
    for kind, tensors, infos, picked in (("input", model.inputs, proto.inputs, chosen[0]),
                                         ("output", model.outputs, proto.outputs, chosen[1])):
        # std::map order (by tensor name); a later tensor whose name has the same part before ':'
        # replaces the earlier one, so a Keras model's outputs "StatefulPartitionedCall_1:0" and ":1"
        # leave one output in the signature. TF Serving does this; so do we, and say so.
        for name in sorted(tensors):
            alias = name.split(":", 1)[0]
            if alias in picked:
                log.warning("TFLite %s tensor '%s' hides '%s' under the alias '%s' in the generated %s signature "
                            "(as TF Serving does): it cannot be requested", kind, name, picked[alias].name, alias,
                            DEFAULT_SIGNATURE)
                del infos[alias]
            picked[alias] = tensors[name]
            tensors[name].tensor_info(infos[alias])
    inputs, outputs = chosen
    return SignatureEntry(DEFAULT_SIGNATURE, _SignatureFunction(model, DEFAULT_SIGNATURE, inputs, outputs),
                          {a: t.spec(a) for a, t in inputs.items()}, {a: t.spec(a) for a, t in outputs.items()},
                          PREDICT_METHOD, proto)
