"""Load what a user has on disk into something tfship can export and run: the entry point and dispatch.

Kinds of source: a Keras 3 ``.keras`` file (and the Keras 2.13+ ``.keras`` zips tf_keras can read), a
full-model ``.h5`` from Keras 3 or Keras 2, a SavedModel directory, and weights-only files together with
an architecture (``--architecture`` JSON or ``module:function``). Every file's stored configuration
passes :mod:`~tfship.exporter.config_safety`, and every SavedModel directory passes
:mod:`~tfship.exporter.savedmodel_safety`, before any loader sees it. The loaders live in
``keras_loading`` (Keras 3 / tf_keras), ``architecture`` (weights + architecture) and
``savedmodel_source``; ``custom_objects`` imports the user's own classes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from tfship.core.errors import ExportError, UsageError
from tfship.exporter import config_safety, savedmodel_safety
from tfship.exporter.architecture import is_checkpoint_directory, is_checkpoint_prefix, load_weights_with_architecture
from tfship.exporter.custom_objects import load_custom_objects
from tfship.exporter.keras_loading import load_h5, load_keras_file
from tfship.exporter.loaded_model import SIGNATURE_KEY, LoadedModel
from tfship.exporter.savedmodel_source import load_savedmodel

__all__ = ["SIGNATURE_KEY", "LoadedModel", "load_source"]

def load_source(
    source: Path,
    *,
    architecture: str | None = None,
    custom_objects_spec: str | None = None,
    trust_code: bool = False,
    signature_key: str = SIGNATURE_KEY,
) -> LoadedModel:
    """Check ``source`` and load it with the loader its kind needs."""
    if not source.exists() and not is_checkpoint_prefix(source):
        raise ExportError(f"{source}: no such file or directory")
    custom_objects = load_custom_objects(custom_objects_spec)
    if is_checkpoint_directory(source):
        if not architecture:
            raise UsageError(f"{source}: a folder of TensorFlow checkpoints holds only weights; "
                             f"pass --architecture arch.json or module:build_fn")
        return load_weights_with_architecture(source, architecture, custom_objects, trust_code)
    if source.is_dir():
        if architecture:
            raise UsageError(f"{source}: --architecture goes with a weights file, not a SavedModel directory")
        if not (source / "saved_model.pb").is_file():
            raise ExportError(f"{source}: directory without saved_model.pb; not a SavedModel")
        savedmodel_safety.check_savedmodel(source, trust_code=trust_code)
        return load_savedmodel(source, signature_key)
    if architecture:
        return load_weights_with_architecture(source, architecture, custom_objects, trust_code)
    if is_checkpoint_prefix(source) and not source.is_file():
        raise UsageError(f"{source}: a TensorFlow checkpoint holds only weights; pass --architecture arch.json or module:build_fn")
    config = config_safety.read_stored_config(source)
    if config is None:
        if config_safety.is_hdf5(source):
            raise UsageError(
                f"{source}: this HDF5 file holds only weights (no model configuration); "
                f"pass --architecture arch.json or --architecture module:build_fn"
            )
        raise ExportError(f"{source}: not a Keras model file (.keras, .h5), a SavedModel directory or an architecture")
    if not isinstance(config, dict) or ("class_name" not in config and "config" not in config):
        raise ExportError(f"{source}: the stored configuration does not describe a Keras model")
    config_safety.check(source, config, trust_code=trust_code, custom_objects=custom_objects)
    missing = config_safety.unknown_custom_objects(config, custom_objects)
    if missing:
        raise ExportError(
            f"{source}: the model uses custom objects tfship does not know: {', '.join(missing)}; "
            f"pass --custom-objects module.py (or pkg.module) that defines them"
        )
    if zipfile.is_zipfile(source):
        return load_keras_file(source, custom_objects, trust_code)
    return load_h5(source, config, custom_objects, trust_code)
