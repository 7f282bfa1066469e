"""Weights-only files together with an architecture: a model.to_json() file or a ``module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError, UsageError
from tfship.exporter import config_safety
from tfship.exporter.keras_model import from_keras_model, keras3, tf_keras
from tfship.exporter.loaded_model import LoadedModel, describe_error


def is_checkpoint_prefix(path: Path) -> bool:
    return Path(str(path) + ".index").exists()


def load_weights_with_architecture(weights: Path, architecture: str, custom_objects: dict, trust_code: bool) -> LoadedModel:
    arch_path = Path(architecture)
    if arch_path.suffix.lower() == ".json" or arch_path.is_file():
        if not arch_path.is_file():
            raise ExportError(f"{architecture}: architecture file not found")
        config = config_safety.read_stored_config(arch_path)
        if config is None:
            raise ExportError(f"{architecture}: not a JSON model architecture (expected model.to_json() output)")
        config_safety.check(arch_path, config, trust_code=trust_code, custom_objects=custom_objects)
        model, kind = _model_from_json(arch_path, config, custom_objects)
    elif ":" in architecture:
        model = _model_from_builder(architecture)
        kind = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    else:
        raise UsageError(f"--architecture {architecture}: expected a .json file or module:function")
    if kind == "keras" and is_checkpoint_prefix(weights):
        raise ExportError(f"{weights}: Keras 3 models cannot read TensorFlow checkpoints; build the architecture with tf_keras")
    if not weights.exists() and not is_checkpoint_prefix(weights):
        raise ExportError(f"{weights}: weights file not found")
    try:
        model.load_weights(str(weights))
    except Exception as exc:
        raise ExportError(f"{weights}: the weights do not fit the architecture {architecture}: {describe_error(exc)}") from exc
    loaded = from_keras_model(model, kind, weights)
    if kind == "tf_keras":
        loaded.notices.append("architecture read with tf_keras (Keras 2)")
    return loaded


def _model_from_json(arch_path: Path, config: Any, custom_objects: dict) -> tuple[Any, str]:
    text = json.dumps(config)
    try:
        return keras3().models.model_from_json(text, custom_objects=custom_objects), "keras"
    except Exception as exc:
        first_error = exc
    library = tf_keras()
    try:
        with library.utils.custom_object_scope(custom_objects):
            return library.models.model_from_json(text), "tf_keras"
    except Exception as exc:
        raise ExportError(f"{arch_path}: cannot build the architecture: Keras 3 said {describe_error(first_error)}; "
                          f"tf_keras said {describe_error(exc)}") from exc


def _model_from_builder(spec: str) -> Any:
    """Call the user's own ``module:function`` (named on the command line) that builds the model."""
    module_name, _, function_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location("tfship_architecture", module_name)
            if module_spec is None or module_spec.loader is None:
                raise FileNotFoundError(module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        builder = getattr(module, function_name)
    except Exception as exc:
        raise ExportError(f"--architecture {spec}: cannot import {function_name} from {module_name}: {describe_error(exc)}") from exc
    try:
        model = builder()
    except Exception as exc:
        raise ExportError(f"--architecture {spec}: {function_name}() failed: {describe_error(exc)}") from exc
    if not hasattr(model, "load_weights"):
        raise ExportError(f"--architecture {spec}: {function_name}() returned {type(model).__name__}, not a Keras model")
    return model
