"""tfship exporter: turn a Keras model file into a signed, verified model version."""

from __future__ import annotations

from tfship.exporter.pipeline import ExportOptions, ExportResult, export

__all__ = ["ExportOptions", "ExportResult", "export"]
