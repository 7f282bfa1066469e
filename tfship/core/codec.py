"""numpy arrays to TensorProto and back, without tensorflow.

Numeric tensors travel as ``tensor_content`` (one memcpy each way), which is what makes this faster
than ``tf.make_tensor_proto``. Decoding also understands the typed ``*_val`` fields that other clients
and TF Serving itself may send, including TensorFlow's rule that a short value list is padded with
its last value. The functions work on any message with TensorProto's fields, so the local engine can
use them on the official ``tensorflow`` classes too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from tfship.core.errors import first_line
from tfship.core.protos import DATA_TYPES, TensorProto

_NUMPY_TO_DT: dict[np.dtype[Any], int] = {
    np.dtype(np.float16): DATA_TYPES["DT_HALF"],
    np.dtype(np.float32): DATA_TYPES["DT_FLOAT"],
    np.dtype(np.float64): DATA_TYPES["DT_DOUBLE"],
    np.dtype(np.int8): DATA_TYPES["DT_INT8"],
    np.dtype(np.int16): DATA_TYPES["DT_INT16"],
    np.dtype(np.int32): DATA_TYPES["DT_INT32"],
    np.dtype(np.int64): DATA_TYPES["DT_INT64"],
    np.dtype(np.uint8): DATA_TYPES["DT_UINT8"],
    np.dtype(np.uint16): DATA_TYPES["DT_UINT16"],
    np.dtype(np.uint32): DATA_TYPES["DT_UINT32"],
    np.dtype(np.uint64): DATA_TYPES["DT_UINT64"],
    np.dtype(np.bool_): DATA_TYPES["DT_BOOL"],
    np.dtype(np.complex64): DATA_TYPES["DT_COMPLEX64"],
    np.dtype(np.complex128): DATA_TYPES["DT_COMPLEX128"],
}
_DT_TO_NUMPY = {dt: np_dtype for np_dtype, dt in _NUMPY_TO_DT.items()}
DT_STRING = DATA_TYPES["DT_STRING"]

# Which repeated field holds the values of each dtype when tensor_content is not used.
_VAL_FIELD = {
    DATA_TYPES["DT_FLOAT"]: "float_val",
    DATA_TYPES["DT_DOUBLE"]: "double_val",
    DATA_TYPES["DT_INT32"]: "int_val",
    DATA_TYPES["DT_INT16"]: "int_val",
    DATA_TYPES["DT_INT8"]: "int_val",
    DATA_TYPES["DT_UINT8"]: "int_val",
    DATA_TYPES["DT_UINT16"]: "int_val",
    DATA_TYPES["DT_INT64"]: "int64_val",
    DATA_TYPES["DT_UINT32"]: "uint32_val",
    DATA_TYPES["DT_UINT64"]: "uint64_val",
    DATA_TYPES["DT_BOOL"]: "bool_val",
    DATA_TYPES["DT_HALF"]: "half_val",
    DATA_TYPES["DT_BFLOAT16"]: "half_val",
    DATA_TYPES["DT_COMPLEX64"]: "scomplex_val",
    DATA_TYPES["DT_COMPLEX128"]: "dcomplex_val",
}

DTYPE_NAMES = {
    DATA_TYPES["DT_HALF"]: "float16", DATA_TYPES["DT_FLOAT"]: "float32", DATA_TYPES["DT_DOUBLE"]: "float64",
    DATA_TYPES["DT_INT8"]: "int8", DATA_TYPES["DT_INT16"]: "int16", DATA_TYPES["DT_INT32"]: "int32",
    DATA_TYPES["DT_INT64"]: "int64", DATA_TYPES["DT_UINT8"]: "uint8", DATA_TYPES["DT_UINT16"]: "uint16",
    DATA_TYPES["DT_UINT32"]: "uint32", DATA_TYPES["DT_UINT64"]: "uint64", DATA_TYPES["DT_BOOL"]: "bool",
    DATA_TYPES["DT_STRING"]: "string", DATA_TYPES["DT_COMPLEX64"]: "complex64",
    DATA_TYPES["DT_COMPLEX128"]: "complex128", DATA_TYPES["DT_BFLOAT16"]: "bfloat16",
}


# TensorFlow fills a tensor whose value list is short with its last value (or zeros). A request can
# claim a huge shape with no values at all; refuse to materialize more than this many elements that way.
MAX_FILLED_ELEMENTS = 1 << 26
# TensorShape's own limit: a tensor's element count must fit int64.
MAX_ELEMENTS = (1 << 63) - 1


class CodecError(ValueError):
    """The array or the tensor cannot be converted."""


def dtype_to_enum(dtype: Any) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DT_STRING
    try:
        return _NUMPY_TO_DT[dtype]
    except KeyError:
        if dtype == bfloat16():
            return DATA_TYPES["DT_BFLOAT16"]
        raise CodecError(f"numpy dtype {dtype} has no TensorFlow equivalent") from None


def enum_to_dtype(dt: int) -> np.dtype[Any]:
    if dt == DT_STRING:
        return np.dtype(np.object_)
    try:
        return _DT_TO_NUMPY[dt]
    except KeyError:
        if dt == DATA_TYPES["DT_BFLOAT16"] and bfloat16() is not None:
            return bfloat16()  # type: ignore[return-value]
        raise CodecError(f"TensorFlow dtype {DTYPE_NAMES.get(dt, dt)} is not supported by the client") from None


@functools.cache
def bfloat16() -> np.dtype[Any] | None:
    """bfloat16 has no numpy dtype of its own; ml_dtypes (a tensorflow dependency) provides it. Imported when a
    bfloat16 tensor first comes by: its import alone takes most of a second, most of the client's start-up."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a declared dependency
        return None
    return np.dtype(ml_dtypes.bfloat16)


def dtype_name(dt: int) -> str:
    return DTYPE_NAMES.get(dt, f"dtype#{dt}")


def to_tensor_proto(value: Any, out: Any = None) -> Any:
    """Encode ``value`` (array-like) into ``out`` (a TensorProto, created when omitted)."""
    tensor = TensorProto() if out is None else out
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        tensor.dtype = DT_STRING
        tensor.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
        return tensor
    tensor.dtype = dtype_to_enum(array.dtype)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    return tensor


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


def shape_of(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d.size) for d in tensor.tensor_shape.dim)


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of ``shape``, refusing unknown sizes and counts TensorFlow cannot hold."""
    if any(size < 0 for size in shape):
        raise CodecError(f"tensor shape {_shown_shape(shape)} has a negative (unknown) dimension; send a concrete shape")
    count = math.prod(shape)  # exact: numpy's int64 product wraps around silently
    if count > MAX_ELEMENTS:
        raise CodecError(f"tensor shape {_shown_shape(shape)} has {count} elements, more than TensorFlow's limit of 2**63-1")
    return count


def _shown_shape(shape: tuple[int, ...]) -> str:
    text = "[" + ", ".join(str(d) for d in shape[:8]) + (", ..." if len(shape) > 8 else "") + "]"
    return text if len(text) <= 200 else text[:200] + "...]"


def to_ndarray(tensor: Any, content: Any = None) -> np.ndarray:
    """Decode a TensorProto (ours or tensorflow's) into a numpy array; a malformed one raises CodecError.

    ``content``: the tensor's tensor_content as a buffer already at hand (a view into the request's bytes
    from :func:`tensor_contents`), used instead of the message's field: the array then shares that memory.
    """
    shape = shape_of(tensor)
    count = element_count(shape)
    try:
        return _decode(tensor, shape, count, content)
    except (ValueError, OverflowError, MemoryError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"tensor of shape {_shown_shape(shape)} cannot be decoded: {first_line(exc, 200)}") from exc


def _decode(tensor: Any, shape: tuple[int, ...], count: int, content: Any = None) -> np.ndarray:
    dt = tensor.dtype
    if dt == DT_STRING:
        values = list(tensor.string_val)
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return _fill(array, count, shape, "string_val")
    dtype = enum_to_dtype(dt)
    if content is None:
        content = tensor.tensor_content
    if len(content):
        if len(content) != count * dtype.itemsize:
            raise CodecError(
                f"tensor_content holds {len(content)} bytes but shape {_shown_shape(shape)} of {dtype_name(dt)} "
                f"needs {count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    field = _VAL_FIELD[dt]
    raw = getattr(tensor, field)
    if field == "half_val":
        array = np.asarray(raw, dtype=np.uint16).view(dtype)
    elif field in ("scomplex_val", "dcomplex_val"):
        parts = np.asarray(raw, dtype=np.float64)  # float32 values of scomplex_val convert exactly
        array = (parts[0::2] + 1j * parts[1::2]).astype(dtype)
    else:
        array = np.asarray(raw).astype(dtype, copy=False)
    return _fill(array, count, shape, field)


def _fill(array: np.ndarray, count: int, shape: tuple[int, ...], field: str) -> np.ndarray:
    # TensorFlow pads a short value list with its last value (a single value fills the tensor).
    if array.size == count:
        return array.reshape(shape)
    if count > MAX_FILLED_ELEMENTS:
        raise CodecError(f"{field} holds {array.size} values for shape {_shown_shape(shape)} ({count} elements); "
                         f"send the values (tensor_content) instead of relying on fill")
    if array.size == 0:
        return np.zeros(shape, dtype=array.dtype if array.dtype != object else object)
    if array.size < count:
        padded = np.empty(count, dtype=array.dtype)
        padded[: array.size] = array
        padded[array.size:] = array[-1]
        return padded.reshape(shape)
    raise CodecError(f"{field} holds {array.size} values but shape {_shown_shape(shape)} needs {count}")


# --- zero-copy decoding from the wire --------------------------------------------------------------

def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


# split_tensor_contents reads at most this many fields: a message of many small fields (a long string_val,
# thousands of output_filter entries) is left to protobuf's own parser, which reads them at C speed.
MAX_SCANNED_FIELDS = 4096


def _fields(data: memoryview, start: int, end: int, budget: list[int]) -> Any:
    """(field number, wire type, field start, value start, value end) of each field in data[start:end]
    (protobuf wire format); the field starts at its tag, its value after the tag and any length.
    ``budget[0]``: fields left to read; ValueError once it runs out."""
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("too many fields to scan")
        field_start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, after = _varint(data, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            after = pos + length
        elif wire == 5:
            after = pos + 4
        else:  # groups (3, 4) are not in these messages
            raise ValueError(f"wire type {wire}")
        if after > end:
            raise ValueError("field past the end of its message")
        yield number, wire, field_start, pos, after
        pos = after


def _encoded_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, body: list[Any]) -> list[Any]:
    """Field ``number`` (wire type 2) holding the concatenation of ``body``'s buffers: its tag and length, then them."""
    return [_encoded_varint(number << 3 | 2) + _encoded_varint(sum(len(part) for part in body)), *body]


def split_tensor_contents(data: bytes, map_field: int) -> tuple[bytes, dict[str, memoryview]] | None:
    """``data`` (a serialized message such as PredictRequest) without the ``tensor_content`` of the
    TensorProtos in its ``map<string, TensorProto>`` field number ``map_field`` (PredictRequest.inputs: 2),
    and views into ``data`` of those contents by key.

    Parsing the returned bytes gives the message ``data`` holds, tensor_content left empty, without
    copying the tensors into the parsed message; ``to_ndarray(tensor, content=view)`` then decodes each
    tensor as a view of ``data``'s memory. Everything else is kept byte for byte, so the returned bytes
    parse exactly when ``data`` does (tensor_content is a ``bytes`` field: any content parses).
    Protobuf's rules hold: the last entry of a key wins, and a TensorProto given in several pieces keeps
    the last tensor_content. A tensor without tensor_content is absent from the views. None when ``data``
    does not parse as protobuf fields or holds more than MAX_SCANNED_FIELDS of them: the caller then
    parses ``data`` itself, which refuses it properly or copies the tensors.
    """
    view = memoryview(data)
    found: dict[str, memoryview] = {}
    budget = [MAX_SCANNED_FIELDS]
    # The stripped message: runs of ``data`` as they are, and the map entries rewritten without their contents.
    pieces: list[Any] = []
    kept = 0  # where the run of ``data`` not yet in ``pieces`` starts
    try:
        for number, wire, field_start, start, end in _fields(view, 0, len(view), budget):
            if number != map_field or wire != 2:
                continue
            key, content, entry, entry_kept = "", None, [], start
            for entry_number, entry_wire, entry_field_start, entry_start, entry_end in _fields(view, start, end, budget):
                if entry_number == 1 and entry_wire == 2:
                    key = bytes(view[entry_start:entry_end]).decode("utf-8")
                elif entry_number == 2 and entry_wire == 2:
                    tensor: list[Any] = []
                    tensor_kept = entry_start
                    for tensor_number, tensor_wire, tensor_field_start, tensor_start, tensor_end in _fields(view, entry_start, entry_end, budget):
                        if tensor_number == 4 and tensor_wire == 2:  # TensorProto.tensor_content
                            content = view[tensor_start:tensor_end]
                            tensor.append(view[tensor_kept:tensor_field_start])
                            tensor_kept = tensor_end
                    if tensor:  # this TensorProto (or piece of one) without its tensor_content
                        tensor.append(view[tensor_kept:entry_end])
                        entry.append(view[entry_kept:entry_field_start])
                        entry += _length_delimited(2, tensor)
                        entry_kept = entry_end
            if entry:  # the entry without its tensor_content
                entry.append(view[entry_kept:end])
                pieces.append(view[kept:field_start])
                pieces += _length_delimited(map_field, entry)
                kept = end
            if content is not None and len(content):
                found[key] = content
            else:
                found.pop(key, None)
    except (ValueError, IndexError):
        return None
    pieces.append(view[kept:])
    return b"".join(pieces), found


def split_repeated_bytes(data: bytes, field: int) -> tuple[bytes, list[memoryview]] | None:
    """``data`` (a serialized message such as the Open Inference Protocol's ModelInferRequest) without its
    top-level ``repeated bytes`` field number ``field`` (raw_input_contents: 7), and views into ``data`` of
    that field's values, in order.

    Parsing the returned bytes gives the message ``data`` holds with that field empty, without copying its
    values into the parsed message. None when ``data`` does not parse as protobuf fields or holds more than
    MAX_SCANNED_FIELDS of them at the top: the caller then parses ``data`` itself.
    """
    view = memoryview(data)
    values: list[memoryview] = []
    pieces: list[Any] = []
    kept = 0
    try:
        for number, wire, field_start, start, end in _fields(view, 0, len(view), [MAX_SCANNED_FIELDS]):
            if number == field and wire == 2:
                values.append(view[start:end])
                pieces.append(view[kept:field_start])
                kept = end
    except (ValueError, IndexError):
        return None
    pieces.append(view[kept:])
    return b"".join(pieces), values
