"""tfship client: call TensorFlow Serving over gRPC and check what it answers. Never imports tensorflow."""

from __future__ import annotations

from client.codec import to_ndarray, to_tensor_proto
from client.compare import Comparison, OutputComparison, Tolerance, compare_outputs
from client.errors import (
    ExportError,
    PredictionMismatch,
    RpcError,
    ServerUnavailable,
    ServingError,
    SignatureError,
    TfshipError,
    UsageError,
)
from client.signature import Signature, TensorSpec

__all__ = [
    "Comparison",
    "ExportError",
    "OutputComparison",
    "PredictionMismatch",
    "RpcError",
    "ServerUnavailable",
    "ServingError",
    "Signature",
    "SignatureError",
    "TensorSpec",
    "TfshipError",
    "Tolerance",
    "UsageError",
    "compare_outputs",
    "to_ndarray",
    "to_tensor_proto",
]
