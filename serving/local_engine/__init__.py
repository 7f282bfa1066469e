"""Embedded TensorFlow-Serving-compatible server for machines without a container engine."""

from __future__ import annotations

from tfship.serving.local_engine.models import ModelConfig
from tfship.serving.local_engine.server import LocalEngine, TlsOptions

__all__ = ["LocalEngine", "ModelConfig", "TlsOptions"]
