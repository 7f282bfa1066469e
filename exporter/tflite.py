"""SavedModel to TFLite (float32 and quantized variants), and running a .tflite file with LiteRT.

Routes, in order (each one's file is still checked for parity by the pipeline):

1. ``TFLiteConverter.from_saved_model`` on the version's SavedModel.
2. Recurrent layers (LSTM/GRU) with a dynamic batch do not lower to builtin ops
   (``tf.TensorListReserve ... element_shape to be static``): the Keras model is rebuilt from its config
   with a static batch of 1 (the user's custom objects in scope), its weights copied, and written as a
   SavedModel by the same code that wrote the version's (:func:`keras_model.from_keras_model`), so the
   TFLite signature keeps every input and output name (Keras 3's converter would call them ``output_0``)
   and Keras prints nothing on stdout.
3. The caller (:mod:`pipeline`) may then retry routes 1-2 with the model loaded by the other Keras
   library (:func:`keras_model.load_with_other_library`).

Whatever the route, the file then gets the SavedModel's serving signature as TF Serving reads it
(:func:`with_serving_signature`): TF Serving's TfLiteSession (tensorflow/serving,
tensorflow_serving/servables/tensorflow/tflite_session.cc) takes SignatureDefs only from the
``signature_defs_metadata`` metadata entry, not from the converter's native signatures; without it, it
makes up ``serving_default`` keyed by the TFLite tensor names (``serving_default_x``), which the
version's warmup records and its clients, using the SavedModel's names (``x``), do not match.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tfship.core.errors import ExportError, first_line

log = logging.getLogger(__name__)

# tensorflow/lite/tools/signature/signature_def_util.h kSignatureDefsMetadataName.
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
SERVING_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

VARIANTS = ("float16", "dynamic", "int8")
STATIC_BATCH_NOTICE = ("recurrent layers: TFLite model built with a static batch of 1 (feed one sample at a time and "
                       "call reset_all_variables() between samples: the fused LSTM/GRU keeps its state)")


def convert(savedmodel_dir: Path, out: Path, variant: str = "float32",
            calibration: dict[str, np.ndarray] | None = None, keras_model: Any = None,
            custom_objects: dict[str, Any] | None = None, kind: str = "keras") -> list[str]:
    """Write ``out``; returns notices. Raises ExportError with the converter's reason on failure."""
    import tensorflow as tf

    configure = _configurer(variant, calibration)
    try:
        data = _from_saved_model(tf, savedmodel_dir, configure)
        notices: list[str] = []
    except ExportError:
        raise
    except Exception as exc:
        message = str(exc)
        if keras_model is None or "TensorList" not in message:
            raise ExportError(f"TFLite conversion failed: {converter_reason(message)}") from exc
        log.info("TFLite: the SavedModel does not convert with a dynamic batch (%s); rebuilding with a static batch of 1",
                 converter_reason(message))
        data = _convert_static_batch(keras_model, configure, custom_objects or {}, kind)
        notices = [STATIC_BATCH_NOTICE]
    try:
        data = with_serving_signature(data, savedmodel_dir)
    except Exception as exc:  # the file as converted still serves, with TF Serving's generated names
        reason = first_line(exc, 300)
        log.warning("TFLite: %s keeps no TF Serving SignatureDef (%s); with --prefer_tflite_model TF Serving names its "
                    "inputs after the TFLite tensors (such as serving_default_x), not the SavedModel's", out.name, reason)
        notices.append(f"{out.name}: no TF Serving SignatureDef stored ({reason}): with --prefer_tflite_model, requests "
                       f"must name inputs after the TFLite tensors, and the warmup records will not match")
    out.write_bytes(data)
    return notices


def with_serving_signature(model_bytes: bytes, savedmodel_dir: Path) -> bytes:
    """``model_bytes`` with the SavedModel's serving SignatureDef stored where TF Serving reads it.

    tflite_session.cc ``TfLiteSession::Create`` serves each SignatureDef of the ``signature_defs_metadata``
    entry (signature_def_util.cc: a flexbuffer map of key -> serialized SignatureDef) under its key, its
    TensorInfo names matched to the interpreter's tensors by ``FixTfLiteTensorName``. The entry written
    here keeps the SavedModel's input and output keys; each TensorInfo names the TFLite tensor that the
    file's own ``serving_default`` signature runner maps that key to, with the tensor's dtype and
    ``shape_signature`` (-1 where the file leaves a dimension free). Raises if the two signatures differ.
    """
    from ai_edge_litert.interpreter import Interpreter

    saved = _saved_serving_signature(savedmodel_dir)
    interpreter = Interpreter(model_content=model_bytes)
    signature_def = _mapped_signature(interpreter, saved)
    stored = _store_signature_defs(model_bytes, {SERVING_SIGNATURE: signature_def})
    # The repacked file must load in LiteRT with the same tensors and native signatures as before.
    check = Interpreter(model_content=stored)
    if (check.get_signature_list() != interpreter.get_signature_list()
            or _tensor_names(check) != _tensor_names(interpreter)):
        raise ExportError("the file with the SignatureDef stored loads with other tensors or signatures in LiteRT")
    # As TF Serving reads them: signature_def_util.cc ReadSignatureDefMap copies ``AsString().c_str()``.
    if {k: v.split(b"\0", 1)[0] for k, v in stored_signature_defs(stored).items()} != {SERVING_SIGNATURE: signature_def.SerializeToString()}:
        raise ExportError("the stored SignatureDef does not read back as written")
    return stored


def stored_signature_defs(model_bytes: bytes) -> dict[str, bytes]:
    """The ``signature_defs_metadata`` entry (key -> serialized SignatureDef, as stored), or {}.

    A value that is not a flexbuffer string reads as empty (signature_def_util.cc ReadSignatureDefMap); TF
    Serving then copies it only up to its first NUL byte (``AsString().c_str()``): callers cut it.
    """
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:  # a large model keeps buffers after the flatbuffer
            data = model_bytes[buffer.Offset():buffer.Offset() + buffer.Size()]
        else:
            data = bytes(buffer.DataAsNumpy()) if buffer.DataLength() else b""
        table = flexbuffers.GetRoot(data).AsMap
        return {key.AsKey: value.AsStringBytes if value.IsString else b"" for key, value in zip(table.Keys, table.Values)}
    return {}


def _saved_serving_signature(directory: Path) -> Any:
    """The ``serving_default`` SignatureDef of the SavedModel's ``serve`` MetaGraph (what the converter read)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary = directory / "saved_model.pb"
    if binary.exists():
        saved_model.ParseFromString(binary.read_bytes())
    else:
        text_format.Parse((directory / "saved_model.pbtxt").read_text(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags and SERVING_SIGNATURE in meta_graph.signature_def:
            return meta_graph.signature_def[SERVING_SIGNATURE]
    raise ExportError(f"{directory}: the SavedModel has no '{SERVING_SIGNATURE}' signature under the 'serve' tag")


def _mapped_signature(interpreter: Any, saved: Any) -> Any:
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    if SERVING_SIGNATURE not in interpreter.get_signature_list():
        raise ExportError(f"the TFLite file has no '{SERVING_SIGNATURE}' signature of its own to map tensors with")
    runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
    # TF Serving matches names against the primary subgraph's inputs and outputs (GetTensorInfoMap).
    primary_inputs, primary_outputs = _tensor_names(interpreter)
    signature_def = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for kind, details, primary, wanted, infos in (
            ("input", runner.get_input_details(), primary_inputs, saved.inputs, signature_def.inputs),
            ("output", runner.get_output_details(), primary_outputs, saved.outputs, signature_def.outputs)):
        if set(details) != set(wanted):
            raise ExportError(f"the TFLite signature's {kind}s {sorted(details)} are not the SavedModel's {sorted(wanted)}")
        for key in sorted(details):
            detail = details[key]
            name = detail["name"]
            if primary.count(name) != 1:
                # TF Serving refuses a repeated name itself (GetTensorInfoMap: "has multiple indices").
                where = "is not" if name not in primary else f"is {primary.count(name)} times"
                raise ExportError(f"{kind} '{key}' maps to tensor '{name}', which {where} among the main subgraph's {kind}s")
            dtype = np.dtype(detail["dtype"])
            info = infos[key]
            info.name = name
            info.dtype = (tf.string if dtype.kind in "OSU" else tf.as_dtype(dtype)).as_datatype_enum
            for size in detail.get("shape_signature", detail["shape"]):
                info.tensor_shape.dim.add(size=int(size))
    return signature_def


def _tensor_names(interpreter: Any) -> tuple[list[str], list[str]]:
    return [d["name"] for d in interpreter.get_input_details()], [d["name"] for d in interpreter.get_output_details()]


def _store_signature_defs(model_bytes: bytes, signature_defs: dict[str, Any]) -> bytes:
    """What signature_def_util.cc SetSignatureDefMap writes: the model with a ``signature_defs_metadata``
    entry whose buffer is a flexbuffer map of key -> serialized SignatureDef (a flexbuffer string),
    replacing the buffer of an entry already there."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    root = schema.Model.GetRootAs(model_bytes, 0)
    if any(root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength())):
        # Weights kept after the flatbuffer (a model over 2 GB): repacking them inline would exceed its limit.
        raise ExportError("the file keeps its weights outside the flatbuffer (a model over 2 GB)")
    builder = flexbuffers.Builder()
    with builder.Map():
        for key, signature_def in sorted(signature_defs.items()):
            serialized = signature_def.SerializeToString()
            if b"\0" in serialized:
                # ReadSignatureDefMap reads the value with c_str(): TF Serving would get it cut short.
                raise ExportError(f"SignatureDef '{key}' serializes with a NUL byte (an empty shape or a dimension of 0)")
            builder.Key(key)
            # SetSignatureDefMap stores the bytes with fbb.String; flexbuffers' Python Builder.String takes
            # text only, and _WriteBlob is what it calls with the encoded text (the read-back checks it).
            builder._WriteBlob(serialized, append_zero=True, type_=flexbuffers.Type.STRING)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Finish()), dtype=np.uint8)
    metadata = list(model.metadata or [])
    existing = next((m for m in metadata if _text(m.name) == SIGNATURE_DEFS_METADATA), None)
    if existing is not None:
        model.buffers[existing.buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = SIGNATURE_DEFS_METADATA
        entry.buffer = len(model.buffers) - 1
        metadata.append(entry)
    model.metadata = metadata
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def converter_reason(error: BaseException | str) -> str:
    """The line of a converter's failure that says what failed, without MLIR's ``loc(...)`` location prefix."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error:" not in line:
            continue
        reason = line.split("error:", 1)[1].strip()
        if reason.startswith("loc("):
            depth = 0
            for i, char in enumerate(reason):
                depth += (char == "(") - (char == ")")
                if depth == 0 and i >= len("loc("):
                    reason = reason[i + 1:].lstrip(": ").strip()
                    break
        if reason:
            return reason[:300]
    return first_line(error)


def _configurer(variant: str, calibration: dict[str, np.ndarray] | None) -> Callable[[Any], None]:
    import tensorflow as tf

    if variant not in ("float32",) + VARIANTS:
        raise ExportError(f"unknown TFLite variant '{variant}' (choose from {', '.join(VARIANTS)})")
    if variant == "int8" and not calibration:
        raise ExportError("int8 quantization needs calibration inputs (--calibration X.npz or the samples)")

    def configure(converter: Any) -> None:
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8" and calibration:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative(calibration)

    return configure


def _from_saved_model(tf: Any, directory: Path, configure: Callable[[Any], None]) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(directory), signature_keys=["serving_default"])
    configure(converter)
    return bytes(converter.convert())


def static_batch_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a functional or Sequential model's) with every input's batch dimension set to 1."""
    layers = config.get("layers", [])
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            cfg = layer["config"]
            key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
            shape = cfg.get(key)
            if shape:
                cfg[key] = [1] + list(shape[1:])
    if layers and not any(layer.get("class_name") == "InputLayer" for layer in layers):
        # A Sequential model whose first layer carries the input shape (Keras 2 style).
        first = layers[0].get("config", {})
        for key in ("batch_input_shape", "batch_shape"):
            if first.get(key):
                first[key] = [1] + list(first[key][1:])
    if config.get("build_input_shape"):
        shape = config["build_input_shape"]
        if isinstance(shape, (list, tuple)) and shape and not isinstance(shape[0], (list, tuple, dict)):
            config["build_input_shape"] = [1] + list(shape[1:])
    return config


def rebuild_static(model: Any, custom_objects: dict[str, Any], kind: str) -> Any:
    """The same model with a batch of 1: rebuilt from its config (custom objects in scope), weights copied."""
    from tfship.exporter.keras_model import keras3, tf_keras

    library = tf_keras() if kind == "tf_keras" else keras3()
    config = static_batch_config(model.get_config())
    scope = library.utils.custom_object_scope if kind == "tf_keras" else library.saving.custom_object_scope
    with scope(custom_objects):
        static = type(model).from_config(config, custom_objects=custom_objects)
    static.set_weights(model.get_weights())
    return static


def _convert_static_batch(model: Any, configure: Callable[[Any], None], custom_objects: dict[str, Any], kind: str) -> bytes:
    import tensorflow as tf

    from tfship.exporter.keras_model import from_keras_model

    try:
        static = rebuild_static(model, custom_objects, kind)
        with tempfile.TemporaryDirectory(prefix="tfship-static-") as folder:
            rebuilt = from_keras_model(static, kind, Path(folder))
            rebuilt.write_savedmodel(Path(folder) / "savedmodel")
            return _from_saved_model(tf, Path(folder) / "savedmodel", configure)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed (static-batch rebuild too): {converter_reason(exc)}") from exc


def _representative(calibration: dict[str, np.ndarray]) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    count = len(next(iter(calibration.values())))

    def generate():
        for i in range(count):
            yield {name: value[i:i + 1] for name, value in calibration.items()}

    return generate


def run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the 'serving_default' signature of a .tflite file on ``inputs`` with LiteRT.

    Dimensions the file leaves dynamic (``shape_signature`` -1, the batch or a sequence length) are
    resized to the inputs' before they are set; a file built with a static batch of 1 runs one sample at
    a time, its variables (a fused LSTM/GRU's state) reset between samples.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    details = runner.get_input_details()
    outputs = runner.get_output_details()
    missing = [name for name in inputs if name not in details]
    if missing:
        raise ExportError(f"{path.name}: the TFLite signature has no input '{missing[0]}' (it has {', '.join(details)})")
    static_batch = all(len(d["shape_signature"]) and int(d["shape_signature"][0]) == 1 for d in details.values())
    count = len(next(iter(inputs.values())))
    batch = 1 if static_batch else count
    # The plain tensor API: a signature runner holds references that block reset_all_variables().
    plain = Interpreter(model_path=str(path))
    plain.allocate_tensors()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, count, batch):
        feed = {name: np.ascontiguousarray(inputs[name][start:start + batch]) for name in details}
        resized = False
        for name, detail in details.items():
            current = plain.get_input_details()[_position(plain, detail["index"])]["shape"]
            if tuple(current) != feed[name].shape:
                _check_resizable(path, name, detail["shape_signature"], feed[name].shape)
                plain.resize_tensor_input(detail["index"], list(feed[name].shape))
                resized = True
        if resized:
            plain.allocate_tensors()
        plain.reset_all_variables()
        for name, detail in details.items():
            plain.set_tensor(detail["index"], feed[name])
        plain.invoke()
        for name, detail in outputs.items():
            parts[name].append(np.array(plain.get_tensor(detail["index"])))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _position(interpreter: Any, index: int) -> int:
    return next(i for i, d in enumerate(interpreter.get_input_details()) if d["index"] == index)


def _check_resizable(path: Path, name: str, signature: Any, shape: tuple[int, ...]) -> None:
    fixed = list(int(d) for d in signature)
    if len(fixed) != len(shape) or any(f not in (-1, s) for f, s in zip(fixed, shape)):
        raise ExportError(f"{path.name}: input '{name}' has shape {list(shape)} but the TFLite file takes {fixed}")
