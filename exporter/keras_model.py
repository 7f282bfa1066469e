"""Wrap a loaded Keras model (Keras 3 or tf_keras) as a LoadedModel: signature, predict, SavedModel writer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tfship.core.errors import ExportError
from tfship.core.signature import Signature, TensorSpec
from tfship.exporter.loaded_model import SIGNATURE_KEY, LoadedModel


def keras3() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def tf_keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras


def _input_name(raw: str, index: int, count: int, notices: list[str]) -> str:
    name = raw.split(":")[0]
    if name.startswith("keras_tensor") or not name:
        fixed = "input" if count == 1 else f"input_{index}"
        notices.append(f"input {index} has no name (Keras called it '{name}'); it is served as '{fixed}': name your keras.Input layers")
        return fixed
    return name


def from_keras_model(model: Any, kind: str, source: Path) -> LoadedModel:
    """Wrap a loaded Keras 3 or tf_keras model: its serving signature, a predict function, a SavedModel writer."""
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
        TensorSpec(name, np_dtype_name(spec.dtype), tuple(None if d is None else int(d) for d in spec.shape))
        for name, spec in concrete.structured_outputs.items()
    )
    signature = Signature(key=SIGNATURE_KEY, inputs=tuple(input_specs), outputs=outputs)

    def predict_fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = serve(*[tf.constant(inputs[s.name]) for s in input_specs])
        return {k: v.numpy() for k, v in result.items()}

    def write_savedmodel(path: Path) -> None:
        if kind == "keras":
            keras = keras3()
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


def _all_layers(model: Any) -> Iterator[Any]:
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


def np_dtype_name(tf_dtype: Any) -> str:
    import tensorflow as tf

    dtype = tf.as_dtype(tf_dtype)
    return "string" if dtype == tf.string else np.dtype(dtype.as_numpy_dtype).name


OTHER_LIBRARY = {"keras": "tf_keras", "tf_keras": "keras"}


def load_with_other_library(loaded: LoadedModel, custom_objects: dict[str, Any], trust_code: bool) -> LoadedModel:
    """The same model read by the other Keras library (Keras 3 <-> tf_keras), for a conversion route that
    failed with the first one (Keras 3 ``UpSampling2D`` -> ``Conv2D`` does not convert to TFLite; the same file
    read by tf_keras does). The source file is read again (its configuration passed the safety check when it
    was first loaded); where that library cannot read the file, the loaded model's configuration is rebuilt
    and its weights copied. Raises ExportError when neither works.
    """
    kind = OTHER_LIBRARY.get(loaded.kind)
    model = loaded.keras_model
    if kind is None or model is None:
        raise ExportError(f"{loaded.source}: no other Keras library can read a {loaded.kind} source")
    library = tf_keras() if kind == "tf_keras" else keras3()
    scope = library.utils.custom_object_scope if kind == "tf_keras" else library.saving.custom_object_scope
    errors: list[str] = []
    other = None
    source = Path(loaded.source)
    if source.is_file() and source.suffix.lower() in (".h5", ".hdf5", ".keras"):
        try:
            with scope(custom_objects):
                if kind == "tf_keras":
                    other = library.models.load_model(str(source), compile=False, safe_mode=not trust_code) \
                        if source.suffix.lower() == ".keras" else library.models.load_model(str(source), compile=False)
                else:
                    other = library.saving.load_model(source, custom_objects=custom_objects, compile=False, safe_mode=not trust_code)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
    if other is None:
        try:
            with scope(custom_objects):
                other = library.models.model_from_json(model.to_json(), custom_objects=custom_objects)
            other.set_weights(model.get_weights())
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
            raise ExportError(f"{kind} cannot read the model ({'; '.join(errors)})") from exc
    return from_keras_model(other, kind, source)
