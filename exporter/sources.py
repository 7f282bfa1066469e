"""Load what a user has on disk into something tfship can export and run.

Kinds of source: a Keras 3 ``.keras`` file (and the Keras 2.x ``.keras`` zips tf_keras can read), a
full-model ``.h5`` from Keras 3 or Keras 2, a SavedModel directory (exported from its signatures, never
through a Keras object), and weights-only files together with an architecture (``--architecture``
JSON or ``module:function``). Keras 3 is tried first; where it cannot read a Keras-2 file, tf_keras is.
Every file's stored configuration passes ``safety.check`` before any loader sees it.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfship.core.errors import ExportError, UsageError
from tfship.core.signature import Signature, TensorSpec
from tfship.exporter import safety

log = logging.getLogger(__name__)

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


# --- custom objects -------------------------------------------------------------------------------

def load_custom_objects(spec: str | None) -> dict[str, Any]:
    """Import ``module.py`` or ``pkg.module`` named by the user and collect its classes and functions.

    Importing also runs ``register_keras_serializable`` decorators, which makes ``pkg>Name`` entries
    resolvable. This is the user's own code, named on the command line, not code from a model file.
    """
    if not spec:
        return {}
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise ExportError(f"{spec}: custom objects file not found")
            module_name = f"tfship_custom_objects_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except ExportError:
        raise
    except Exception as exc:  # any error in the user's module
        raise ExportError(f"{spec}: cannot import the custom objects module: {type(exc).__name__}: {exc}") from None
    objects: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            objects[name] = value
            package = getattr(value, "_tfship_package", None)
            if package:
                objects[f"{package}>{name}"] = value
    explicit = getattr(module, "custom_objects", None) or getattr(module, "CUSTOM_OBJECTS", None)
    if isinstance(explicit, dict):
        objects.update(explicit)
    # Names registered through keras.saving.register_keras_serializable while importing the module.
    try:
        import keras

        for registered, obj in keras.saving.get_custom_objects().items():
            if getattr(obj, "__module__", None) == module.__name__:
                objects.setdefault(registered, obj)
    except Exception:  # keras missing parts: registered names simply stay unresolved
        pass
    return objects


# --- entry point ----------------------------------------------------------------------------------

def load_source(
    source: Path,
    *,
    architecture: str | None = None,
    custom_objects_spec: str | None = None,
    trust_code: bool = False,
    signature_key: str = SIGNATURE_KEY,
) -> LoadedModel:
    if not source.exists() and not _is_checkpoint_prefix(source):
        raise ExportError(f"{source}: no such file or directory")
    custom_objects = load_custom_objects(custom_objects_spec)
    if source.is_dir():
        if architecture:
            raise UsageError(f"{source}: --architecture goes with a weights file, not a SavedModel directory")
        if not (source / "saved_model.pb").exists():
            raise ExportError(f"{source}: directory without saved_model.pb; not a SavedModel")
        safety.check_savedmodel(source, trust_code=trust_code, signature_key=signature_key)
        return _load_savedmodel(source, signature_key)
    if architecture:
        return _load_weights_with_architecture(source, architecture, custom_objects, trust_code)
    if _is_checkpoint_prefix(source) and not source.is_file():
        raise UsageError(f"{source}: a TensorFlow checkpoint holds only weights; pass --architecture arch.json or module:build_fn")
    config = safety.read_stored_config(source)
    if config is None:
        if _is_hdf5(source):
            raise UsageError(
                f"{source}: this HDF5 file holds only weights (no model configuration); "
                f"pass --architecture arch.json or --architecture module:build_fn"
            )
        raise ExportError(f"{source}: not a Keras model file (.keras, .h5), a SavedModel directory or an architecture")
    if isinstance(config, dict) and "class_name" not in config and "config" not in config:
        raise ExportError(f"{source}: the stored configuration does not describe a Keras model")
    safety.check(source, config, trust_code=trust_code, custom_objects=custom_objects)
    missing = safety.unknown_custom_objects(config, custom_objects)
    if missing:
        raise ExportError(
            f"{source}: the model uses custom objects tfship does not know: {', '.join(missing)}; "
            f"pass --custom-objects module.py (or pkg.module) that defines them"
        )
    if zipfile_like(source):
        return _load_keras_file(source, config, custom_objects, trust_code)
    return _load_h5(source, config, custom_objects, trust_code)


def zipfile_like(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _is_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _is_checkpoint_prefix(path: Path) -> bool:
    return Path(str(path) + ".index").exists()


# --- Keras 3 and tf_keras models ------------------------------------------------------------------

def _keras3():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def _tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras


def _explain_bytecode_error(source: Path, exc: BaseException) -> ExportError | None:
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
    keras = _keras3()
    try:
        model = keras.saving.load_model(source, custom_objects=custom_objects, compile=False, safe_mode=not trust_code)
        return _from_keras_model(model, "keras", source), None
    except Exception as exc:
        explained = _explain_bytecode_error(source, exc)
        if explained:
            raise explained from None
        log.info("Keras 3 cannot read %s (%s); trying tf_keras", source, _short(exc))
        return None, exc


def _tf_keras_failure(source: Path, exc: BaseException, first_error: BaseException | None) -> ExportError:
    explained = _explain_bytecode_error(source, exc)
    if explained:
        return explained
    said = f"Keras 3 said {_short(first_error)}; " if first_error else ""
    return ExportError(f"{source}: cannot load the model: {said}tf_keras said {_short(exc)}")


TF_KERAS_NOTICE = "read with tf_keras (Keras 2): Keras 3 could not load it"


def _load_keras_file(source: Path, config: Any, custom_objects: dict, trust_code: bool) -> LoadedModel:
    loaded, first_error = _keras3_load(source, custom_objects, trust_code)
    if loaded is not None:
        return loaded
    tf_keras = _tf_keras()
    try:
        with tf_keras.utils.custom_object_scope(custom_objects):
            model = tf_keras.models.load_model(source, compile=False, safe_mode=not trust_code)
    except Exception as exc:
        raise _tf_keras_failure(source, exc, first_error) from None
    loaded = _from_keras_model(model, "tf_keras", source)
    loaded.notices.append(TF_KERAS_NOTICE)
    return loaded


def _load_h5(source: Path, config: Any, custom_objects: dict, trust_code: bool) -> LoadedModel:
    notices: list[str] = []
    gpu_layers = safety.gpu_only_layers(config)
    first_error = None
    if not gpu_layers:
        loaded, first_error = _keras3_load(source, custom_objects, trust_code)
        if loaded is not None:
            return loaded
    tf_keras = _tf_keras()
    try:
        if gpu_layers:
            new_config = _replace_gpu_layers(config)
            with tf_keras.utils.custom_object_scope(custom_objects):
                model = tf_keras.models.model_from_json(json.dumps(new_config))
            # tf_keras converts CuDNN weight layouts to the CPU layers' while loading (by shape).
            model.load_weights(str(source))
            for name in gpu_layers:
                notices.append(f"{name} (GPU-only) was mapped to {safety.GPU_ONLY_LAYERS[name]}, which computes the same on a CPU")
        else:
            with tf_keras.utils.custom_object_scope(custom_objects):
                model = tf_keras.models.load_model(str(source), compile=False)
    except Exception as exc:
        raise _tf_keras_failure(source, exc, first_error) from None
    loaded = _from_keras_model(model, "tf_keras", source)
    loaded.notices = notices + ([TF_KERAS_NOTICE] if first_error else []) + loaded.notices
    return loaded


def _replace_gpu_layers(config: Any) -> Any:
    config = copy.deepcopy(config)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            target = safety.GPU_ONLY_LAYERS.get(node.get("class_name"))
            if target and isinstance(node.get("config"), dict):
                node["class_name"] = target
                cfg = node["config"]
                cfg.setdefault("activation", "tanh")
                cfg.setdefault("recurrent_activation", "sigmoid")
                cfg.setdefault("use_bias", True)
                if target == "GRU":
                    cfg["reset_after"] = True
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return config


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:240]}"


def _load_weights_with_architecture(weights: Path, architecture: str, custom_objects: dict, trust_code: bool) -> LoadedModel:
    arch_path = Path(architecture)
    if arch_path.suffix.lower() == ".json" or arch_path.is_file():
        if not arch_path.is_file():
            raise ExportError(f"{architecture}: architecture file not found")
        config = safety.read_stored_config(arch_path)
        if config is None:
            raise ExportError(f"{architecture}: not a JSON model architecture (expected model.to_json() output)")
        safety.check(arch_path, config, trust_code=trust_code, custom_objects=custom_objects)
        model, kind = _model_from_json(arch_path, config, custom_objects)
    elif ":" in architecture:
        model = _model_from_builder(architecture)
        kind = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    else:
        raise UsageError(f"--architecture {architecture}: expected a .json file or module:function")
    if kind == "keras" and _is_checkpoint_prefix(weights):
        raise ExportError(f"{weights}: Keras 3 models cannot read TensorFlow checkpoints; build the architecture with tf_keras")
    if not weights.exists() and not _is_checkpoint_prefix(weights):
        raise ExportError(f"{weights}: weights file not found")
    try:
        model.load_weights(str(weights))
    except Exception as exc:
        raise ExportError(f"{weights}: the weights do not fit the architecture {architecture}: {_short(exc)}") from None
    loaded = _from_keras_model(model, kind, weights)
    if kind == "tf_keras":
        loaded.notices.append("architecture read with tf_keras (Keras 2)")
    return loaded


def _model_from_json(arch_path: Path, config: Any, custom_objects: dict):
    text = json.dumps(config)
    keras = _keras3()
    try:
        return keras.models.model_from_json(text, custom_objects=custom_objects), "keras"
    except Exception as exc:
        first_error = exc
    tf_keras = _tf_keras()
    try:
        with tf_keras.utils.custom_object_scope(custom_objects):
            return tf_keras.models.model_from_json(text), "tf_keras"
    except Exception as exc:
        raise ExportError(f"{arch_path}: cannot build the architecture: Keras 3 said {_short(first_error)}; tf_keras said {_short(exc)}") from None


def _model_from_builder(spec: str):
    module_name, _, function_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location("tfship_architecture", module_name)
            if module_spec is None:
                raise FileNotFoundError(module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        builder = getattr(module, function_name)
    except Exception as exc:
        raise ExportError(f"--architecture {spec}: cannot import {function_name} from {module_name}: {_short(exc)}") from None
    try:
        model = builder()
    except Exception as exc:
        raise ExportError(f"--architecture {spec}: {function_name}() failed: {_short(exc)}") from None
    if not hasattr(model, "load_weights"):
        raise ExportError(f"--architecture {spec}: {function_name}() returned {type(model).__name__}, not a Keras model")
    return model


def _input_name(raw: str, index: int, count: int, notices: list[str]) -> str:
    name = raw.split(":")[0]
    if name.startswith("keras_tensor") or not name:
        fixed = "input" if count == 1 else f"input_{index}"
        notices.append(f"input {index} has no name (Keras called it '{name}'); it is served as '{fixed}': name your keras.Input layers")
        return fixed
    return name


def _from_keras_model(model: Any, kind: str, source: Path) -> LoadedModel:
    import tensorflow as tf

    notices: list[str] = []
    if not getattr(model, "inputs", None):
        raise ExportError(f"{source}: the model has no defined inputs (a subclassed model that was never built); save it after calling it once, or use a functional model")
    raw_inputs = list(model.inputs)
    input_names = [_input_name(getattr(t, "name", f"input_{i}"), i, len(raw_inputs), notices) for i, t in enumerate(raw_inputs)]
    input_specs = []
    for name, tensor in zip(input_names, raw_inputs):
        dtype = tf.as_dtype(getattr(tensor, "dtype", "float32")).as_numpy_dtype
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        input_specs.append(TensorSpec(name, np.dtype(dtype).name if dtype is not object else "string", shape))
    output_structure = model.outputs if hasattr(model, "outputs") else None
    raw_output_names = _output_names(model, output_structure)
    dict_outputs = isinstance(getattr(model, "output", None), dict)
    if dict_outputs:
        raw_output_names = list(model.output.keys())
    output_names = _unique(raw_output_names)

    def call(tensors: list) -> dict:
        args = tensors[0] if len(tensors) == 1 else list(tensors)
        result = model(args, training=False)
        if isinstance(result, dict):
            return {str(k): result[k] for k in result}
        if isinstance(result, (list, tuple)):
            return {name: value for name, value in zip(output_names, result)}
        return {output_names[0]: result}

    tf_specs = [tf.TensorSpec([d for d in s.shape], tf.as_dtype(s.dtype), name=s.name) for s in input_specs]
    serve = tf.function(lambda *args: call(list(args)), input_signature=tf_specs)
    concrete = serve.get_concrete_function()
    outputs = tuple(
        TensorSpec(name, _np_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in concrete.structured_outputs.items()
    )
    signature = Signature(key=SIGNATURE_KEY, inputs=tuple(input_specs), outputs=outputs)

    def predict_fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = serve(*[tf.constant(inputs[s.name]) for s in input_specs])
        return {k: v.numpy() for k, v in result.items()}

    def write_savedmodel(path: Path) -> None:
        if kind == "keras":
            keras = _keras3()
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint(SIGNATURE_KEY, serve)
            archive.write_out(str(path), verbose=False)
        else:
            tf.saved_model.save(model, str(path), signatures={SIGNATURE_KEY: concrete})

    vocab = _embedding_vocab(model)
    return LoadedModel(kind=kind, source=source, signature=signature, predict_fn=predict_fn,
                       write_savedmodel=write_savedmodel, keras_model=model, notices=notices,
                       vocab_sizes={s.name: vocab for s in input_specs if vocab and "int" in s.dtype})


def _output_names(model: Any, outputs: Any) -> list[str]:
    """Output names from the model's output layers (Keras 3 Sequential has no output_names)."""
    names = list(getattr(model, "output_names", None) or [])
    if names:
        return names
    for tensor in list(outputs or []):
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None) or (history[0] if isinstance(history, tuple) and history else None)
        names.append(getattr(operation, "name", None) or f"output_{len(names)}")
    if not names and getattr(model, "layers", None):
        names = [model.layers[-1].name]
    return names or ["output_0"]


def _embedding_vocab(model: Any) -> int | None:
    sizes = []
    for layer in _all_layers(model):
        if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", None):
            sizes.append(int(layer.input_dim))
    return min(sizes) if sizes else None


def _all_layers(model: Any):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        result.append(name)
    return result


def _np_name(tf_dtype: Any) -> str:
    import tensorflow as tf

    dtype = tf.as_dtype(tf_dtype)
    return "string" if dtype == tf.string else np.dtype(dtype.as_numpy_dtype).name


# --- SavedModel directories -----------------------------------------------------------------------

def _load_savedmodel(source: Path, signature_key: str) -> LoadedModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(source))
    except Exception as exc:
        raise ExportError(f"{source}: cannot load the SavedModel: {_short(exc)}") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature_key not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise ExportError(f"{source}: the SavedModel has no signature '{signature_key}' (it has: {known}); pass --signature NAME")
    fn = signatures[signature_key]
    _, kwargs = fn.structured_input_signature
    inputs = tuple(
        TensorSpec(name, _np_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in sorted(kwargs.items())
    )
    outputs = tuple(
        TensorSpec(name, _np_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in sorted(fn.structured_outputs.items())
    )
    signature = Signature(key=SIGNATURE_KEY, inputs=inputs, outputs=outputs)

    def predict_fn(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = fn(**{name: tf.constant(values[name]) for name in kwargs})
        return {k: v.numpy() for k, v in result.items()}

    def write_savedmodel(path: Path) -> None:
        tf.saved_model.save(loaded, str(path), signatures={SIGNATURE_KEY: fn})

    notices = []
    if not (source / "keras_metadata.pb").exists():
        notices.append("SavedModel without Keras metadata: exported from its signature")
    if signature_key != SIGNATURE_KEY:
        notices.append(f"signature '{signature_key}' is served as '{SIGNATURE_KEY}'")
    return LoadedModel(kind="savedmodel", source=source, signature=signature, predict_fn=predict_fn,
                       write_savedmodel=write_savedmodel, notices=notices)
