"""What a loaded source gives the pipeline: its signature, a way to run it, a way to write a SavedModel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfship.core.errors import first_line
from tfship.core.signature import Signature

SIGNATURE_KEY = "serving_default"


@dataclass
class LoadedModel:
    """A model ready to export: its signature, a way to run it, and a way to write a SavedModel."""

    kind: str  # "keras", "tf_keras" or "savedmodel"
    source: Path
    signature: Signature
    predict_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    write_savedmodel: Callable[[Path], None]
    keras_model: Any = None
    notices: list[str] = field(default_factory=list)
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    def predict(self, inputs: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, count, batch_size):
            parts.append(self.predict_fn({k: v[start:start + batch_size] for k, v in inputs.items()}))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def describe_error(exc: BaseException | None) -> str:
    """``TypeName: first line`` of a loader's exception, for messages that quote what a library said."""
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {first_line(exc, 240)}"
