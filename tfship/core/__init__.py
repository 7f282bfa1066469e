"""The vocabulary every part of tfship shares: errors with exit codes, signatures, tolerances, TF Serving's
wire messages and the numpy <-> TensorProto codec, sample inputs (``.npz`` and generated), and signing.

The core imports none of ``tfship.exporter``, ``tfship.serving`` or ``tfship.client``, and never tensorflow.
"""

from __future__ import annotations

from tfship.core.errors import (
    ExportError,
    PredictionMismatch,
    RpcError,
    ServerUnavailable,
    ServingError,
    SignatureError,
    TfshipError,
    UnsafeModelError,
    UsageError,
)
from tfship.core.signature import Signature, TensorSpec
from tfship.core.tolerance import Tolerance

__all__ = [
    "ExportError",
    "PredictionMismatch",
    "RpcError",
    "ServerUnavailable",
    "ServingError",
    "Signature",
    "SignatureError",
    "TensorSpec",
    "TfshipError",
    "Tolerance",
    "UnsafeModelError",
    "UsageError",
]
