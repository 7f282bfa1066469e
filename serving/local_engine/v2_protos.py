"""The Open Inference Protocol's gRPC messages (KServe v2, ``inference.GRPCInferenceService``).

Declared field for field as KServe's ``grpc_predict_v2.proto`` (the subset Triton's ``grpc_service.proto``
shares: same package, names, numbers and types, hence the same bytes on the wire) into tfship's private
descriptor pool, so a process that also imports another client's generated modules sees no collision.
``tests/test_model_server_v2.py`` talks to the server with Triton's own client.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2

from tfship.core.protos import add_field, add_file, message_class

_fp = descriptor_pb2.FileDescriptorProto(name="tfship/grpc_predict_v2.proto", package="inference", syntax="proto3")


def _message(name: str, fields: list[tuple[str, int, str]], container: Any = None) -> Any:
    message = (container or _fp).message_type.add(name=name) if container is None else container.nested_type.add(name=name)
    for field_name, number, kind in fields:
        repeated = kind.startswith("repeated ")
        kind = kind.removeprefix("repeated ")
        if kind.startswith("."):
            add_field(message, field_name, number, "message", repeated=repeated, type_name=kind)
        else:
            add_field(message, field_name, number, kind, repeated=repeated)
    return message


def _parameters(message: Any, full_name: str, number: int) -> None:
    """``map<string, InferParameter> parameters = number``."""
    entry = message.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    add_field(entry, "key", 1, "string")
    add_field(entry, "value", 2, "message", type_name=".inference.InferParameter")
    add_field(message, "parameters", number, "message", repeated=True, type_name=f".{full_name}.ParametersEntry")


for _name in ("ServerLiveRequest", "ServerReadyRequest", "ServerMetadataRequest"):
    _message(_name, [])
_message("ServerLiveResponse", [("live", 1, "bool")])
_message("ServerReadyResponse", [("ready", 1, "bool")])
_message("ModelReadyRequest", [("name", 1, "string"), ("version", 2, "string")])
_message("ModelReadyResponse", [("ready", 1, "bool")])
_message("ServerMetadataResponse", [("name", 1, "string"), ("version", 2, "string"), ("extensions", 3, "repeated string")])
_message("ModelMetadataRequest", [("name", 1, "string"), ("version", 2, "string")])
_meta = _message("ModelMetadataResponse", [("name", 1, "string"), ("versions", 2, "repeated string"), ("platform", 3, "string"),
                                           ("inputs", 4, "repeated .inference.ModelMetadataResponse.TensorMetadata"),
                                           ("outputs", 5, "repeated .inference.ModelMetadataResponse.TensorMetadata")])
_message("TensorMetadata", [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64")], container=_meta)

_param = _fp.message_type.add(name="InferParameter")
_param.oneof_decl.add(name="parameter_choice")
for _field, _number, _kind in (("bool_param", 1, "bool"), ("int64_param", 2, "int64"), ("string_param", 3, "string"),
                               ("double_param", 4, "double"), ("uint64_param", 5, "uint64")):
    add_field(_param, _field, _number, _kind, oneof=0)

_message("InferTensorContents", [("bool_contents", 1, "repeated bool"), ("int_contents", 2, "repeated int32"),
                                 ("int64_contents", 3, "repeated int64"), ("uint_contents", 4, "repeated uint32"),
                                 ("uint64_contents", 5, "repeated uint64"), ("fp32_contents", 6, "repeated float"),
                                 ("fp64_contents", 7, "repeated double"), ("bytes_contents", 8, "repeated bytes")])

_request = _message("ModelInferRequest", [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                                          ("inputs", 5, "repeated .inference.ModelInferRequest.InferInputTensor"),
                                          ("outputs", 6, "repeated .inference.ModelInferRequest.InferRequestedOutputTensor"),
                                          ("raw_input_contents", 7, "repeated bytes")])
_parameters(_request, "inference.ModelInferRequest", 4)
_input = _message("InferInputTensor", [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64"),
                                       ("contents", 5, ".inference.InferTensorContents")], container=_request)
_parameters(_input, "inference.ModelInferRequest.InferInputTensor", 4)
_requested = _message("InferRequestedOutputTensor", [("name", 1, "string")], container=_request)
_parameters(_requested, "inference.ModelInferRequest.InferRequestedOutputTensor", 2)

_response = _message("ModelInferResponse", [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                                            ("outputs", 5, "repeated .inference.ModelInferResponse.InferOutputTensor"),
                                            ("raw_output_contents", 6, "repeated bytes")])
_parameters(_response, "inference.ModelInferResponse", 4)
_output = _message("InferOutputTensor", [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64"),
                                         ("contents", 5, ".inference.InferTensorContents")], container=_response)
_parameters(_output, "inference.ModelInferResponse.InferOutputTensor", 4)

add_file(_fp)

SERVICE = "inference.GRPCInferenceService"
MESSAGES = {name: message_class(f"inference.{name}") for name in (
    "ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse", "ModelReadyRequest",
    "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse", "ModelMetadataRequest", "ModelMetadataResponse",
    "ModelInferRequest", "ModelInferResponse")}
