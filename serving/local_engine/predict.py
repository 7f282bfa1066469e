"""Predict requests: TF Serving's checks and messages, then the call.

Shapes are not checked before the call: TF Serving feeds whatever shape arrives, and a graph that accepts
it (an element-wise model given ``[1]`` for ``[-1, 1]``) answers. When the model fails on an input whose
shape differs from the signature's, the answer names the input, the shape sent and the shape declared
instead of TensorFlow's kernel message.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import grpc
import numpy as np

from tfship.core.codec import DT_STRING, CodecError, dtype_name, to_ndarray
from tfship.core.errors import first_line
from tfship.serving.local_engine.errors import EngineError, invalid
from tfship.serving.local_engine.models import Servable, SignatureEntry

DEFAULT_SIGNATURE = "serving_default"

# TensorFlow's DataTypeString names, which TF Serving's messages use.
_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def tf_type_name(dtype_text: str) -> str:
    return _TF_TYPE_NAMES.get(dtype_text, dtype_text)


def _fmt_set(names: Iterable[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def signature_of(servable: Servable, key: str) -> SignatureEntry:
    key = key or DEFAULT_SIGNATURE
    entry = servable.signatures.get(key)
    if entry is None:
        raise EngineError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
    return entry


def check_input_names(entry: SignatureEntry, sent: set[str]) -> None:
    expected = set(entry.inputs)
    if sent == expected:
        return
    if len(sent) != len(expected):
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({_fmt_set(sent)}) != "
            f"len({_fmt_set(expected)}). Sent extra: {_fmt_set(sent - expected)}. Missing but required: {_fmt_set(expected - sent)}."
        )
    extra = sorted(sent - expected)[0]
    raise invalid(f"input tensor alias not found in signature: {extra}. Inputs expected to be in the set {_fmt_set(expected)}.")


def decode_inputs(entry: SignatureEntry, tensors: dict[str, Any], contents: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes of TensorProtos against the signature, then decode them.

    ``contents``: tensor_content buffers by input name, views into the request's bytes
    (codec.split_tensor_contents): those arrays share the request's memory instead of copying it."""
    check_input_names(entry, set(tensors))
    arrays = {}
    for index, name in enumerate(entry.input_order):
        tensor = tensors[name]
        spec = entry.inputs[name]
        expected_dt = spec.dtype.as_datatype_enum
        if tensor.dtype != expected_dt:
            raise invalid(f"Expects arg[{index}] to be {tf_type_name(dtype_name(expected_dt))} but {tf_type_name(dtype_name(tensor.dtype))} is provided")
        try:
            arrays[name] = to_ndarray(tensor, contents.get(name) if contents else None)
        except CodecError as exc:
            raise invalid(f"input '{name}': {exc}") from None
    return arrays


def shape_mismatch(name: str, expected: tuple[int | None, ...] | None, shape: tuple[int, ...]) -> str | None:
    """Our sentence for an input whose shape the signature does not declare, or None when it fits."""
    if expected is None:
        return None
    if len(shape) != len(expected) or any(want is not None and want != got for want, got in zip(expected, shape)):
        shown = "[" + ", ".join("-1" if d is None else str(d) for d in expected) + "]"
        return f"input '{name}' has shape {list(shape)} but the signature expects {shown} (-1: any size)"
    return None


def explain_shapes(entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> str | None:
    for name in entry.input_order:
        if name in arrays:
            problem = shape_mismatch(name, entry.inputs[name].shape, tuple(np.shape(arrays[name])))
            if problem:
                return problem
    return None


def check_arrays(entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The REST path: arrays already decoded from JSON; cast to the signature's dtypes and check shapes."""
    check_input_names(entry, set(arrays))
    result = {}
    for index, name in enumerate(entry.input_order):
        spec = entry.inputs[name]
        value = arrays[name]
        if spec.dtype.as_datatype_enum == DT_STRING:
            result[name] = value.astype(object)
        else:
            target = np.dtype(spec.dtype.as_numpy_dtype)
            try:
                if value.dtype == object or (value.dtype.kind in "fc" and target.kind in "iub" and not np.all(np.mod(value, 1) == 0)):
                    raise ValueError
                result[name] = value.astype(target, copy=False)  # an array of the right type as it is (no copy)
            except (ValueError, TypeError):
                raise invalid(f"Expects arg[{index}] to be {tf_type_name(np.dtype(target).name)} but {tf_type_name(str(value.dtype))} is provided") from None
    return result


def check_output_filter(entry: SignatureEntry, output_filter: Iterable[str]) -> list[str]:
    names = list(output_filter)
    for name in names:
        if name not in entry.outputs:
            raise invalid(f"output tensor alias not found in signature: {name} Outputs expected to be in the set {_fmt_set(entry.outputs)}.")
    return names


@functools.cache
def onednn_enabled() -> bool:
    """Whether TensorFlow runs oneDNN kernels in this process (read once, as TensorFlow reads it).

    oneDNN's kernels abort the whole process on some shapes the standard kernels answer with
    INVALID_ARGUMENT (a Conv2D given a rank-2 input: a failed CHECK in tensor_format.h). TF Serving's
    standard build has no oneDNN, and tfship's model server turns it off (TF_ENABLE_ONEDNN_OPTS=0) before
    TensorFlow loads; where it is on anyway, shapes the signature does not declare are refused before the call.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return True


def run_signature(entry: SignatureEntry, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call the signature; a failure on inputs whose shapes the signature does not declare is explained."""
    import tensorflow as tf

    if onednn_enabled():
        problem = explain_shapes(entry, arrays)
        if problem:
            raise invalid(problem)
    try:
        result = entry.fn(**arrays)  # numpy arrays by alias: a Session's signature or a TFLite interpreter's
    except tf.errors.InvalidArgumentError as exc:
        raise invalid(explain_shapes(entry, arrays) or first_line(exc.message) or "invalid argument") from None
    except tf.errors.ResourceExhaustedError as exc:
        raise EngineError(grpc.StatusCode.RESOURCE_EXHAUSTED, first_line(exc.message)) from None
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        problem = explain_shapes(entry, arrays)
        if problem:
            raise invalid(problem) from None
        message = getattr(exc, "message", None) or str(exc)
        raise EngineError(grpc.StatusCode.INTERNAL, first_line(message, 500) if message else type(exc).__name__) from None
    return result


def batch_size(arrays: dict[str, np.ndarray]) -> int | None:
    sizes = {int(v.shape[0]) if v.ndim else None for v in arrays.values()}
    if len(sizes) != 1:
        return None
    return next(iter(sizes))
