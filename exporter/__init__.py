"""tfship exporter: turn a Keras model file into a signed, verified model version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tfship.exporter.pipeline import ExportOptions, ExportResult, export

__all__ = ["ExportOptions", "ExportResult", "export"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the export worker (tfship.exporter.worker) confines itself before numpy and the
    # pipeline are imported: Landlock only restricts threads started after it (numpy's BLAS starts some).
    if name in __all__:
        from tfship.exporter import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
