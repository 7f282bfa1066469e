"""Weights-only files together with an architecture: a model.to_json() file or a ``module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path, PurePath
from typing import Any

from tfship.core.errors import ExportError, UsageError
from tfship.exporter import config_safety
from tfship.exporter.keras_model import from_keras_model, keras3, tf_keras
from tfship.exporter.loaded_model import LoadedModel, describe_error

# Top-level names in a checkpoint that are bookkeeping, not the model.
CHECKPOINT_BOOKKEEPING = frozenset({"save_counter", "optimizer", "_CHECKPOINTABLE_OBJECT_GRAPH", "step", "epoch", "global_step"})
# What tf_keras' model.save_weights(prefix) puts at the root (the model itself is the root object).
KERAS_ROOT_NAMES = ("layer_with_weights-", "layer-", "keras_api", "variables")
MAX_STATE_FILE_BYTES = 1 << 20


def is_checkpoint_prefix(path: Path) -> bool:
    return Path(str(path) + ".index").exists()


def is_checkpoint_directory(path: Path) -> bool:
    """A folder written by tf.train.Checkpoint / CheckpointManager: it holds a ``checkpoint`` state file."""
    return path.is_dir() and (path / "checkpoint").is_file() and not (path / "saved_model.pb").exists()


def resolve_checkpoint(path: Path) -> Path:
    """The checkpoint prefix ``path`` names: itself, or the latest one of a checkpoint directory."""
    if is_checkpoint_prefix(path) and not path.is_dir():
        return path
    if not path.is_dir():
        raise ExportError(f"{path}: not a TensorFlow checkpoint (no {path.name}.index next to it)")
    state = path / "checkpoint"
    if not state.is_file():
        raise ExportError(f"{path}: a directory without a 'checkpoint' file; name the checkpoint itself (e.g. {path}/ckpt-1)")
    with state.open("rb") as handle:
        text = handle.read(MAX_STATE_FILE_BYTES).decode("utf-8", "replace")
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if not match:
        raise ExportError(f"{state}: names no latest checkpoint (no model_checkpoint_path line)")
    named = PurePath(match.group(1))
    # An absolute path is where the folder was when it was written; the checkpoint sits beside the file now.
    relative = PurePath(named.name) if named.is_absolute() else named
    if ".." in relative.parts:
        raise ExportError(f"{state}: the latest checkpoint '{named}' lies outside {path}; name the checkpoint itself")
    prefix = path / relative
    if not is_checkpoint_prefix(prefix):
        raise ExportError(f"{state}: the latest checkpoint is '{named}', but {prefix}.index is missing")
    return prefix


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
    notices: list[str] = []
    if is_checkpoint_prefix(weights) or is_checkpoint_directory(weights):
        notices = restore_checkpoint(model, kind, resolve_checkpoint(weights), architecture)
        if weights.is_dir():
            notices.insert(0, f"restored the latest checkpoint of {weights}: {resolve_checkpoint(weights).name}")
    elif not weights.exists():
        raise ExportError(f"{weights}: weights file not found")
    elif weights.is_dir():
        raise ExportError(f"{weights}: a directory that is neither a SavedModel nor a checkpoint directory (no 'checkpoint' file)")
    else:
        try:
            model.load_weights(str(weights))
        except Exception as exc:
            raise ExportError(f"{weights}: the weights do not fit the architecture {architecture}: {describe_error(exc)}") from exc
    loaded = from_keras_model(model, kind, weights)
    loaded.notices.extend(notices)
    if kind == "tf_keras":
        loaded.notices.append("architecture read with tf_keras (Keras 2)")
    return loaded


def checkpoint_objects(prefix: Path) -> dict[str, int]:
    """Top-level object names of a checkpoint and how many variables each holds (reads only its index)."""
    import tensorflow as tf

    try:
        names = [name for name, _shape in tf.train.list_variables(str(prefix))]
    except Exception as exc:
        raise ExportError(f"{prefix}: cannot read the checkpoint index: {describe_error(exc)}") from exc
    counts: dict[str, int] = {}
    for name in names:
        top = name.split("/", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return counts


def restore_checkpoint(model: Any, kind: str, prefix: Path, architecture: str) -> list[str]:
    """Restore an object-based checkpoint into ``model``; every variable of the model must be matched.

    ``tf.train.Checkpoint(model=model).save(prefix)`` (the guides' way) stores the model under the name
    ``model``; tf_keras' ``model.save_weights(prefix)`` stores it as the root object.
    """
    import tensorflow as tf

    objects = checkpoint_objects(prefix)
    if not getattr(model, "weights", None):
        raise ExportError(f"--architecture {architecture}: the model has no variables yet (no input shape, so its layers "
                          f"are not built); give the architecture an Input / input_shape")
    notices: list[str] = []
    if "model" in objects:
        attach = "model"
    elif any(name.startswith(KERAS_ROOT_NAMES) for name in objects):
        if kind != "tf_keras":
            raise ExportError(f"{prefix}: written by tf_keras' model.save_weights (the model is the checkpoint's root), which a "
                              f"Keras 3 model cannot read; build the architecture with tf_keras, or save with "
                              f"tf.train.Checkpoint(model=model)")
        try:
            model.load_weights(str(prefix)).assert_existing_objects_matched()
        except Exception as exc:
            raise ExportError(f"{prefix}: the checkpoint does not fit the architecture {architecture}: {describe_error(exc)}") from exc
        return notices
    else:
        candidates = sorted(set(objects) - CHECKPOINT_BOOKKEEPING)
        if len(candidates) != 1:
            raise ExportError(f"{prefix}: the checkpoint holds no object named 'model' (it holds: {', '.join(sorted(objects)) or 'nothing'}); "
                              f"save it with tf.train.Checkpoint(model=model)")
        attach = candidates[0]
        notices.append(f"restored the checkpoint's object '{attach}' as the model")
    try:
        status = tf.train.Checkpoint(**{attach: model}).restore(str(prefix))
        status.expect_partial()  # optimizer slots and counters are not part of the served model
        status.assert_existing_objects_matched()
    except AssertionError as exc:
        raise ExportError(f"{prefix}: the checkpoint's objects do not match the architecture {architecture} "
                          f"({describe_error(exc)[:200]}); it was saved from another model") from exc
    except Exception as exc:
        raise ExportError(f"{prefix}: the checkpoint does not fit the architecture {architecture}: {describe_error(exc)}") from exc
    return notices


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
