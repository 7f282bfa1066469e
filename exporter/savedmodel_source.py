"""A SavedModel directory as a source: exported from its signatures, never through a Keras object.

Its files and functions have passed :mod:`tfship.exporter.savedmodel_safety` when this runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfship.core.errors import ExportError
from tfship.core.signature import Signature, TensorSpec
from tfship.exporter import savedmodel_safety
from tfship.exporter.keras_model import np_dtype_name
from tfship.exporter.loaded_model import SIGNATURE_KEY, LoadedModel, describe_error


def load_savedmodel(source: Path, signature_key: str) -> LoadedModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(source))
    except Exception as exc:
        raise ExportError(f"{source}: cannot load the SavedModel: {describe_error(exc)}") from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature_key not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise ExportError(f"{source}: the SavedModel has no signature '{signature_key}' (it has: {known}); pass --signature NAME")
    fn = signatures[signature_key]
    _, kwargs = fn.structured_input_signature
    inputs = tuple(
        TensorSpec(name, np_dtype_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in sorted(kwargs.items())
    )
    outputs = tuple(
        TensorSpec(name, np_dtype_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in sorted(fn.structured_outputs.items())
    )
    signature = Signature(key=SIGNATURE_KEY, inputs=inputs, outputs=outputs)

    def predict_fn(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = fn(**{name: tf.constant(values[name]) for name in kwargs})
        return {k: v.numpy() for k, v in result.items()}

    def write_savedmodel(path: Path) -> None:
        # TensorFlow copies the source's asset files into the version; they were checked to be the
        # source's own regular files, and what was written is checked again.
        tf.saved_model.save(loaded, str(path), signatures={SIGNATURE_KEY: fn})
        savedmodel_safety.check_written_files(path)

    notices = []
    if not (source / "keras_metadata.pb").exists():
        notices.append("SavedModel without Keras metadata: exported from its signature")
    if signature_key != SIGNATURE_KEY:
        notices.append(f"signature '{signature_key}' is served as '{SIGNATURE_KEY}'")
    return LoadedModel(kind="savedmodel", source=source, signature=signature, predict_fn=predict_fn,
                       write_savedmodel=write_savedmodel, notices=notices)
