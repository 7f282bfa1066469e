"""TensorFlow Serving wire messages, defined here so the client never imports tensorflow.

``tensorflow-serving-api``'s generated modules import tensorflow (hundreds of MB, seconds to import).
The client needs a handful of messages, so it declares them itself: same package names, field numbers
and types as the tensorflow and tensorflow_serving ``.proto`` files, hence the same bytes on the wire.
Fields the client never reads (resource handles, variants, sparse tensor infos) are left out; protobuf
keeps them as unknown fields, so nothing is lost in a round trip. ``tests/test_protos.py`` checks every
field against the official descriptors.

The descriptors live in one private pool, ``POOL``: a process that also imports tensorflow (the local
engine, the tests) registers the official ones in the default pool, and the two must not collide.
Other parts declare their extra messages into the same pool with ``add_file`` (the serving config
messages in ``tfship.serving.config_protos``), so there is one private pool in the process.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto

# Field shorthands: (name, number, type, label, type_name)
_SCALAR = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

DATA_TYPES = {
    "DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5,
    "DT_INT8": 6, "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10, "DT_QINT8": 11,
    "DT_QUINT8": 12, "DT_QINT32": 13, "DT_BFLOAT16": 14, "DT_QINT16": 15, "DT_QUINT16": 16,
    "DT_UINT16": 17, "DT_COMPLEX128": 18, "DT_HALF": 19, "DT_RESOURCE": 20, "DT_VARIANT": 21,
    "DT_UINT32": 22, "DT_UINT64": 23,
}

ERROR_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13,
    "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

MODEL_VERSION_STATES = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def add_field(msg: Any, name: str, number: int, kind: str, *, repeated: bool = False, type_name: str | None = None,
              oneof: int | None = None, packed: bool | None = None) -> Any:
    f = msg.field.add(name=name, number=number)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if kind in _SCALAR:
        f.type = _SCALAR[kind]
    elif kind == "enum":
        f.type = _F.TYPE_ENUM
        f.type_name = type_name
    else:
        f.type = _F.TYPE_MESSAGE
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    if packed is not None:
        f.options.packed = packed
    return f


def _map(msg: Any, name: str, number: int, value_kind: str, value_type: str | None = None) -> None:
    entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    add_field(entry, "key", 1, "string")
    add_field(entry, "value", 2, value_kind, type_name=value_type)
    add_field(msg, name, number, "message", repeated=True, type_name=f".{msg.name}.{entry_name}")
    # A map field's type name must be fully qualified; fixed up by qualify below.


def _enum(container: Any, name: str, values: dict[str, int]) -> None:
    e = container.enum_type.add(name=name)
    for value_name, number in values.items():
        e.value.add(name=value_name, number=number)


def qualify(file_proto: descriptor_pb2.FileDescriptorProto) -> None:
    """Turn the '.Outer.Entry' shorthand of _map into fully qualified names."""
    for msg in file_proto.message_type:
        for f in msg.field:
            if f.type_name.startswith(f".{msg.name}."):
                f.type_name = f".{file_proto.package}{f.type_name}"


def _framework_file() -> descriptor_pb2.FileDescriptorProto:
    fp = descriptor_pb2.FileDescriptorProto(name="tfship/tensorflow_framework.proto", package="tensorflow", syntax="proto3")
    _enum(fp, "DataType", DATA_TYPES)

    shape = fp.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    add_field(dim, "size", 1, "int64")
    add_field(dim, "name", 2, "string")
    add_field(shape, "dim", 2, "message", repeated=True, type_name=".tensorflow.TensorShapeProto.Dim")
    add_field(shape, "unknown_rank", 3, "bool")

    t = fp.message_type.add(name="TensorProto")
    add_field(t, "dtype", 1, "enum", type_name=".tensorflow.DataType")
    add_field(t, "tensor_shape", 2, "message", type_name=".tensorflow.TensorShapeProto")
    add_field(t, "version_number", 3, "int32")
    add_field(t, "tensor_content", 4, "bytes")
    add_field(t, "half_val", 13, "int32", repeated=True, packed=True)
    add_field(t, "float_val", 5, "float", repeated=True, packed=True)
    add_field(t, "double_val", 6, "double", repeated=True, packed=True)
    add_field(t, "int_val", 7, "int32", repeated=True, packed=True)
    add_field(t, "string_val", 8, "bytes", repeated=True)
    add_field(t, "scomplex_val", 9, "float", repeated=True, packed=True)
    add_field(t, "int64_val", 10, "int64", repeated=True, packed=True)
    add_field(t, "bool_val", 11, "bool", repeated=True, packed=True)
    add_field(t, "dcomplex_val", 12, "double", repeated=True, packed=True)
    add_field(t, "uint32_val", 16, "uint32", repeated=True, packed=True)
    add_field(t, "uint64_val", 17, "uint64", repeated=True, packed=True)

    info = fp.message_type.add(name="TensorInfo")
    info.oneof_decl.add(name="encoding")
    add_field(info, "name", 1, "string", oneof=0)
    add_field(info, "dtype", 2, "enum", type_name=".tensorflow.DataType")
    add_field(info, "tensor_shape", 3, "message", type_name=".tensorflow.TensorShapeProto")

    sig = fp.message_type.add(name="SignatureDef")
    _map(sig, "inputs", 1, "message", ".tensorflow.TensorInfo")
    _map(sig, "outputs", 2, "message", ".tensorflow.TensorInfo")
    add_field(sig, "method_name", 3, "string")
    _map(sig, "defaults", 4, "message", ".tensorflow.TensorProto")
    qualify(fp)
    return fp


def _error_file() -> descriptor_pb2.FileDescriptorProto:
    fp = descriptor_pb2.FileDescriptorProto(name="tfship/tensorflow_error.proto", package="tensorflow.error", syntax="proto3")
    _enum(fp, "Code", ERROR_CODES)
    return fp


def _serving_file() -> descriptor_pb2.FileDescriptorProto:
    fp = descriptor_pb2.FileDescriptorProto(name="tfship/tensorflow_serving.proto", package="tensorflow.serving", syntax="proto3")
    fp.dependency.extend([
        "tfship/tensorflow_framework.proto", "tfship/tensorflow_error.proto",
        "google/protobuf/wrappers.proto", "google/protobuf/any.proto",
    ])

    spec = fp.message_type.add(name="ModelSpec")
    spec.oneof_decl.add(name="version_choice")
    add_field(spec, "name", 1, "string")
    add_field(spec, "version", 2, "message", type_name=".google.protobuf.Int64Value", oneof=0)
    add_field(spec, "version_label", 4, "string", oneof=0)
    add_field(spec, "signature_name", 3, "string")

    req = fp.message_type.add(name="PredictRequest")
    add_field(req, "model_spec", 1, "message", type_name=".tensorflow.serving.ModelSpec")
    _map(req, "inputs", 2, "message", ".tensorflow.TensorProto")
    add_field(req, "output_filter", 3, "string", repeated=True)

    resp = fp.message_type.add(name="PredictResponse")
    add_field(resp, "model_spec", 2, "message", type_name=".tensorflow.serving.ModelSpec")
    _map(resp, "outputs", 1, "message", ".tensorflow.TensorProto")

    sdm = fp.message_type.add(name="SignatureDefMap")
    _map(sdm, "signature_def", 1, "message", ".tensorflow.SignatureDef")

    mreq = fp.message_type.add(name="GetModelMetadataRequest")
    add_field(mreq, "model_spec", 1, "message", type_name=".tensorflow.serving.ModelSpec")
    add_field(mreq, "metadata_field", 2, "string", repeated=True)

    mresp = fp.message_type.add(name="GetModelMetadataResponse")
    add_field(mresp, "model_spec", 1, "message", type_name=".tensorflow.serving.ModelSpec")
    _map(mresp, "metadata", 2, "message", ".google.protobuf.Any")

    status = fp.message_type.add(name="StatusProto")
    add_field(status, "error_code", 1, "enum", type_name=".tensorflow.error.Code")
    add_field(status, "error_message", 2, "string")

    sreq = fp.message_type.add(name="GetModelStatusRequest")
    add_field(sreq, "model_spec", 1, "message", type_name=".tensorflow.serving.ModelSpec")

    mvs = fp.message_type.add(name="ModelVersionStatus")
    _enum(mvs, "State", MODEL_VERSION_STATES)
    add_field(mvs, "version", 1, "int64")
    add_field(mvs, "state", 2, "enum", type_name=".tensorflow.serving.ModelVersionStatus.State")
    add_field(mvs, "status", 3, "message", type_name=".tensorflow.serving.StatusProto")

    sresp = fp.message_type.add(name="GetModelStatusResponse")
    add_field(sresp, "model_version_status", 1, "message", repeated=True, type_name=".tensorflow.serving.ModelVersionStatus")
    qualify(fp)
    return fp


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, any_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    for fp in (_framework_file(), _error_file(), _serving_file()):
        pool.Add(fp)
    return pool


POOL = _build_pool()


def add_file(file_proto: descriptor_pb2.FileDescriptorProto) -> None:
    """Declare more messages in the private pool (its dependencies must be in the pool already)."""
    qualify(file_proto)
    POOL.Add(file_proto)


def message_class(full_name: str) -> Any:
    """The generated message class of ``full_name`` from the private pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


TensorShapeProto = message_class("tensorflow.TensorShapeProto")
TensorProto = message_class("tensorflow.TensorProto")
TensorInfo = message_class("tensorflow.TensorInfo")
SignatureDef = message_class("tensorflow.SignatureDef")
ModelSpec = message_class("tensorflow.serving.ModelSpec")
PredictRequest = message_class("tensorflow.serving.PredictRequest")
PredictResponse = message_class("tensorflow.serving.PredictResponse")
SignatureDefMap = message_class("tensorflow.serving.SignatureDefMap")
GetModelMetadataRequest = message_class("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = message_class("tensorflow.serving.GetModelMetadataResponse")
StatusProto = message_class("tensorflow.serving.StatusProto")
GetModelStatusRequest = message_class("tensorflow.serving.GetModelStatusRequest")
ModelVersionStatus = message_class("tensorflow.serving.ModelVersionStatus")
GetModelStatusResponse = message_class("tensorflow.serving.GetModelStatusResponse")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

STATE_NAMES = {number: name for name, number in MODEL_VERSION_STATES.items()}
ERROR_CODE_NAMES = {number: name for name, number in ERROR_CODES.items()}
