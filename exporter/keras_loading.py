"""Load a Keras model file: Keras 3 first, tf_keras (Keras 2) where Keras 3 cannot read a Keras-2 file.

The stored configuration has already passed :mod:`tfship.exporter.config_safety` when these run.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError, UnsafeModelError
from tfship.exporter import config_safety
from tfship.exporter.gpu_layers import GPU_ONLY_LAYERS, gpu_only_layers, replace_gpu_layers
from tfship.exporter.keras_model import from_keras_model, keras3, tf_keras
from tfship.exporter.loaded_model import LoadedModel, describe_error

log = logging.getLogger(__name__)

TF_KERAS_NOTICE = "read with tf_keras (Keras 2): Keras 3 could not load it"
REMOTE_SCHEMES = ("http://", "https://", "gs://", "s3://", "hdfs://")


@dataclass(frozen=True)
class HubLayer:
    """A ``hub.KerasLayer`` in a stored configuration: a layer that loads another model from ``handle``."""

    layer: str
    handle: str

    @property
    def remote(self) -> bool:
        return self.handle.lower().startswith(REMOTE_SCHEMES)


def hub_layers(config: Any) -> list[HubLayer]:
    """The TF Hub layers a stored configuration names (``module`` tensorflow_hub..., or a KerasLayer with a handle)."""
    found = []
    for node, layer in config_safety.walk(config):
        inner = node.get("config")
        if node.get("class_name") != "KerasLayer" or not isinstance(inner, dict):
            continue
        module = node.get("module")
        if (isinstance(module, str) and module.startswith("tensorflow_hub")) or "handle" in inner:
            handle = inner.get("handle")
            found.append(HubLayer(layer, handle if isinstance(handle, str) else repr(handle)))
    return found


def hub_problem(source: Path, hub: list[HubLayer], custom_objects: dict, trust_code: bool) -> ExportError | None:
    """Why a model with TF Hub layers cannot be loaded as asked, or None when it can."""
    if not hub:
        return None
    first = hub[0]
    what = f"layer '{first.layer}' is a TF Hub layer (hub.KerasLayer, handle {first.handle})"
    if "KerasLayer" not in custom_objects:
        return ExportError(
            f"{source}: {what}, which only tensorflow_hub can rebuild: export the SavedModel the guide saves "
            f"(model.save('dir') / tf.saved_model.save) instead, or pass --custom-objects tensorflow_hub with the "
            f"handle pointing at a local copy of the module")
    remote = next((h for h in hub if h.remote), None)
    if remote is not None and not trust_code:
        return UnsafeModelError(
            f"{source}: refused: layer '{remote.layer}' loads its TF Hub module from {remote.handle}, which would be "
            f"downloaded and run; download the module, point the handle at the local copy, or pass --trust-code")
    return None


def check_hub_layers(source: Path, config: Any, custom_objects: dict, trust_code: bool) -> None:
    """Raise before any loader runs when the configuration holds TF Hub layers that cannot load as asked."""
    problem = hub_problem(source, hub_layers(config), custom_objects, trust_code)
    if problem is not None:
        raise problem


def explain_bytecode_error(source: Path, exc: BaseException) -> ExportError | None:
    """The error to show when a trusted Lambda's bytecode comes from another Python version."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (EOFError, SystemError)) or "bad marshal data" in text or "unknown type code" in text or "code() argument" in text:
        return ExportError(
            f"{source}: the Lambda layer's code was written by another Python version and cannot run "
            f"on Python {sys.version_info.major}.{sys.version_info.minor} ({type(exc).__name__}); rebuild the "
            f"architecture in code (--architecture module:build_fn) and load only the weights from this file"
        )
    return None


def _keras3_load(source: Path, custom_objects: dict, trust_code: bool) -> tuple[LoadedModel | None, BaseException | None]:
    """Keras 3 first: the loaded model, or the error that sends us to tf_keras."""
    keras = keras3()
    try:
        model = keras.saving.load_model(source, custom_objects=custom_objects, compile=False, safe_mode=not trust_code)
        return from_keras_model(model, "keras", source), None
    except Exception as exc:
        explained = explain_bytecode_error(source, exc)
        if explained:
            raise explained from exc
        log.info("Keras 3 cannot read %s (%s); trying tf_keras", source, describe_error(exc))
        return None, exc


def _tf_keras_failure(source: Path, exc: BaseException, first_error: BaseException | None) -> ExportError:
    explained = explain_bytecode_error(source, exc)
    if explained:
        return explained
    said = f"Keras 3 said {describe_error(first_error)}; " if first_error else ""
    return ExportError(f"{source}: cannot load the model: {said}tf_keras said {describe_error(exc)}")


def load_keras_file(source: Path, custom_objects: dict, trust_code: bool) -> LoadedModel:
    """A ``.keras`` zip, written by Keras 3 or by Keras 2.13+ / tf_keras."""
    check_hub_layers(source, config_safety.read_stored_config(source), custom_objects, trust_code)
    loaded, first_error = _keras3_load(source, custom_objects, trust_code)
    if loaded is not None:
        return loaded
    library = tf_keras()
    try:
        with library.utils.custom_object_scope(custom_objects):
            model = library.models.load_model(source, compile=False, safe_mode=not trust_code)
    except Exception as exc:
        raise _tf_keras_failure(source, exc, first_error) from exc
    loaded = from_keras_model(model, "tf_keras", source)
    loaded.notices.append(TF_KERAS_NOTICE)
    return loaded


def load_h5(source: Path, config: Any, custom_objects: dict, trust_code: bool) -> LoadedModel:
    """A full-model HDF5 file from Keras 3 or Keras 2 (GPU-only layers rebuilt as their CPU twins)."""
    check_hub_layers(source, config, custom_objects, trust_code)
    notices: list[str] = []
    gpu_layers = gpu_only_layers(config)
    first_error = None
    if not gpu_layers:
        loaded, first_error = _keras3_load(source, custom_objects, trust_code)
        if loaded is not None:
            return loaded
    library = tf_keras()
    try:
        if gpu_layers:
            with library.utils.custom_object_scope(custom_objects):
                model = library.models.model_from_json(json.dumps(replace_gpu_layers(config)))
            # tf_keras converts CuDNN weight layouts to the CPU layers' while loading (by shape).
            model.load_weights(str(source))
            for name in gpu_layers:
                notices.append(f"{name} (GPU-only) was mapped to {GPU_ONLY_LAYERS[name]}, which computes the same on a CPU")
        else:
            with library.utils.custom_object_scope(custom_objects):
                model = library.models.load_model(str(source), compile=False)
    except Exception as exc:
        raise _tf_keras_failure(source, exc, first_error) from exc
    loaded = from_keras_model(model, "tf_keras", source)
    loaded.notices = notices + ([TF_KERAS_NOTICE] if first_error else []) + loaded.notices
    return loaded
