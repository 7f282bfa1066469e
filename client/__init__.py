"""tfship client: call TensorFlow Serving over gRPC and check what it answers. Never imports tensorflow."""

from __future__ import annotations

from tfship.client.compare import Comparison, OutputComparison, compare_outputs
from tfship.client.grpc_client import ServingClient

__all__ = ["Comparison", "OutputComparison", "ServingClient", "compare_outputs"]
