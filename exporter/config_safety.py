"""Read a Keras model file's stored configuration, bounded, and decide what in it may be loaded.

Model files are attack input. Keras ``.h5`` files and ``.keras`` zips carry a JSON description of the
model that the loaders turn into Python calls: a ``Lambda`` layer stores bytecode (tf_keras runs it on
load even when asked not to: it ignores safe_mode for .h5), tf_keras op layers name any TensorFlow API
function and call it while the model is rebuilt (with constant arguments stored in the file), and Keras 3
entries name functions in arbitrary modules (CVE-2025-1550) or Keras helpers that reach outside the file
(CVE-2025-8747, CVE-2025-9906). So tfship reads the configuration itself, with zipfile / h5py / json
only, within size, depth and element bounds, and lets through only what is on an allow-list: pure
tensor functions for op layers, Keras' own functions for function references, Keras' own modules for
classes. Everything else is refused, naming the layer and what it names, unless the user passed
``--trust-code``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError, UnsafeModelError, first_line

# Bounds on a stored configuration. Real configs are far inside them (the largest real file we have is
# 1,500 elements, 11 levels deep; a 1,000-layer model is a few MB).
MAX_CONFIG_BYTES = 32 * 1024 * 1024
MAX_CONFIG_DEPTH = 100
MAX_CONFIG_ELEMENTS = 2_000_000
# Other small JSON members of a .keras zip (metadata.json) are read whole by the loaders.
MAX_ZIP_JSON_BYTES = 1024 * 1024
MAX_ZIP_MEMBERS = 10_000
_CHUNK = 1024 * 1024
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Layers whose configuration carries or fetches code.
CODE_LAYERS = {
    "Lambda": "stores Python code that runs when the model is loaded",
    "TFSMLayer": "loads another SavedModel from a path named inside the file",
    "TorchModuleWrapper": "stores a pickled Python object that runs when the model is loaded",
    "JaxLayer": "stores a Python function that runs when the model is called",
    "FlaxLayer": "stores a Python object that runs when the model is called",
}
# Lookup layers accept a file path as vocabulary and read it at load time: a host file would end up in
# the model (Keras writes the vocabulary into the file's assets, so a real file never needs a path).
VOCABULARY_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization")

# --- tf_keras op layers ----------------------------------------------------------------------------
# tf_keras records a TensorFlow API call on Keras tensors as a TFOpLambda / SlicingOpLambda layer that
# names the function (``function``), a ClassMethod (``cls_symbol``, ``method_name``), or an
# InstanceMethod / InstanceProperty (``attr_name``) on its input; rebuilding the model calls it, with
# constant arguments taken from the file. Only pure tensor functions are allowed.
TF_OPERATORS = frozenset({
    "__operators__.add", "__operators__.getitem", "__operators__.ragged_getitem", "__operators__.eq",
    "__operators__.ne",
})
# Array, shape and reduction functions (also as compat.v1.*, which tf_keras names for v1 aliases).
TF_ARRAY_FUNCTIONS = frozenset({
    "reshape", "expand_dims", "squeeze", "concat", "stack", "unstack", "split", "transpose", "tile", "gather",
    "gather_nd", "slice", "strided_slice", "pad", "identity", "identity_n", "cast", "where", "where_v2",
    "ones_like", "zeros_like", "ones", "zeros", "fill", "range", "rank", "size", "shape", "shape_n",
    "broadcast_to", "broadcast_static_shape", "broadcast_dynamic_shape", "reverse", "reverse_sequence", "roll",
    "one_hot", "clip_by_value", "clip_by_norm", "clip_by_global_norm", "boolean_mask", "einsum", "matmul",
    "tensordot", "sort", "argsort", "meshgrid", "repeat", "searchsorted", "stop_gradient", "ensure_shape",
    "convert_to_tensor", "norm", "linspace", "eye", "unique", "sequence_mask", "space_to_depth",
    "depth_to_space", "space_to_batch", "space_to_batch_nd", "batch_to_space", "extract_image_patches",
    "floor_div", "div", "div_no_nan", "to_float", "to_int32", "to_int64", "realdiv", "truncatediv",
    "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_any", "reduce_all",
    "reduce_logsumexp", "count_nonzero", "argmax", "argmin", "add_n", "maximum", "minimum", "scatter_nd",
    "tensor_scatter_nd_update", "tensor_scatter_nd_add", "histogram_fixed_width", "bitcast", "dtypes.cast",
    "squared_difference", "transpose_v2", "expand_dims_v2", "batch_gather", "matrix_band_part",
})
TF_NN_FUNCTIONS = frozenset({
    "relu", "relu6", "elu", "selu", "gelu", "silu", "swish", "sigmoid", "tanh", "softmax", "log_softmax",
    "softplus", "softsign", "leaky_relu", "crelu", "l2_normalize", "bias_add", "moments", "batch_normalization",
    "fused_batch_norm", "dropout", "normalize_moments", "local_response_normalization", "lrn", "conv1d",
    "conv2d", "conv3d", "convolution", "depthwise_conv2d", "separable_conv2d", "conv1d_transpose",
    "conv2d_transpose", "conv3d_transpose", "atrous_conv2d", "avg_pool", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "max_pool", "max_pool1d", "max_pool2d", "max_pool3d", "pool", "embedding_lookup",
    "sigmoid_cross_entropy_with_logits", "softmax_cross_entropy_with_logits", "top_k", "in_top_k",
    "weighted_moments", "safe_embedding_lookup_sparse",
})
TF_LINALG_FUNCTIONS = frozenset({
    "matmul", "matvec", "l2_normalize", "norm", "normalize", "einsum", "diag", "diag_part", "set_diag", "trace",
    "inv", "det", "logdet", "slogdet", "band_part", "matrix_transpose", "adjoint", "cross", "tensordot",
    "eye", "cholesky", "qr", "svd", "eigh", "solve", "triangular_solve", "pinv", "global_norm",
})
TF_IMAGE_FUNCTIONS = frozenset({
    "resize", "resize_with_pad", "resize_with_crop_or_pad", "resize_bilinear", "resize_nearest_neighbor",
    "resize_bicubic", "resize_area", "resize_images", "crop_to_bounding_box", "pad_to_bounding_box",
    "central_crop", "rgb_to_grayscale", "grayscale_to_rgb", "rgb_to_hsv", "hsv_to_rgb", "rgb_to_yuv",
    "yuv_to_rgb", "flip_left_right", "flip_up_down", "transpose", "rot90", "per_image_standardization",
    "convert_image_dtype", "extract_patches", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "adjust_hue", "adjust_gamma", "image_gradients", "sobel_edges", "crop_and_resize",
})
TF_SIGNAL_FUNCTIONS = frozenset({
    "fft", "ifft", "fft2d", "ifft2d", "rfft", "irfft", "rfft2d", "irfft2d", "stft", "inverse_stft", "frame",
    "hann_window", "hamming_window", "mfccs_from_log_mel_spectrograms", "linear_to_mel_weight_matrix", "dct",
})
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# RaggedTensor class methods tf_keras records as ClassMethod layers (tf_op_layer.py registers these).
TF_CLASS_METHODS = {"RaggedTensor": frozenset({
    "from_value_rowids", "from_row_splits", "from_row_lengths", "from_row_starts", "from_row_limits",
    "from_uniform_row_length", "from_nested_value_rowids", "from_nested_row_splits", "from_nested_row_lengths",
    "from_tensor", "from_sparse",
})}
# Ragged and sparse tensor attributes tf_keras delegates as InstanceProperty / InstanceMethod layers.
TF_INSTANCE_PROPERTIES = frozenset({"values", "flat_values", "row_splits", "nested_row_splits", "indices", "dense_shape"})
TF_INSTANCE_METHODS = frozenset({
    "value_rowids", "nested_value_rowids", "nrows", "row_starts", "row_limits", "row_lengths",
    "nested_row_lengths", "bounding_shape", "with_values", "with_flat_values", "with_row_splits_dtype",
    "merge_dims", "to_tensor", "to_sparse",
})
OP_LAYERS = ("TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty")

# --- Keras 3 references ----------------------------------------------------------------------------
# Function references may name only Keras' own functions of these kinds.
FUNCTION_KINDS = ("activations", "initializers", "regularizers", "constraints", "losses", "metrics")
# Module lookups that are functions but not modelling functions.
NOT_MODELLING_FUNCTIONS = frozenset({"get", "serialize", "deserialize"})
# Classes may come only from these parts of Keras (Keras 3, Keras 2.13+ and tf_keras spell them so).
CLASS_KINDS = (
    "layers", "initializers", "regularizers", "constraints", "losses", "metrics", "optimizers", "ops", "models",
    "engine", "dtype_policies", "mixed_precision", "quantizers", "random", "feature_column", "premade",
)
KERAS_PACKAGES = ("keras", "keras.src", "tf_keras", "tf_keras.src")
# Keras 3's own encodings of values (tensors, arrays, slices); "__lambda__" is code and refused.
KERAS_VALUE_ENTRIES = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__slice__", "__ellipsis__", "__typespec__"})


@dataclass(frozen=True)
class Finding:
    layer: str
    class_name: str
    reason: str

    def describe(self) -> str:
        return f"layer '{self.layer}' ({self.class_name}) {self.reason}"


# --- bounded reading -------------------------------------------------------------------------------

def read_stored_config(path: Path) -> Any:
    """The model configuration stored in ``path`` (.h5, .keras or an architecture .json); None if absent.

    Raises ExportError when the file is damaged or the configuration exceeds the bounds.
    """
    if path.is_dir():
        return None
    try:
        if zipfile.is_zipfile(path):
            return _parse(path, "config.json", _read_zip_config(path))
        with path.open("rb") as handle:
            head = handle.read(8)
        if head == HDF5_MAGIC:
            raw = _read_hdf5_config(path)
            return None if raw is None else _parse(path, "the model_config attribute", raw)
        if path.suffix.lower() == ".json" or head.lstrip()[:1] in (b"{", b"["):
            return _parse(path, "the file", _read_capped(path))
    except ExportError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ExportError(f"{path}: cannot read the stored model configuration ({first_line(exc, 200)}); the file is damaged or not a Keras model") from exc
    return None


def is_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _too_big(path: Path, what: str, size: int | str, cap: int | None = None) -> ExportError:
    cap = MAX_CONFIG_BYTES if cap is None else cap
    return ExportError(f"{path}: {what} is {size} bytes, over tfship's limit of {cap} bytes for a model "
                       f"configuration; this is not a model file tfship will read")


def _read_zip_config(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ExportError(f"{path}: the zip holds {len(members)} entries (limit {MAX_ZIP_MEMBERS}); not a .keras model file")
        by_name = {info.filename: info for info in members}
        info = by_name.get("config.json")
        if info is None:
            raise ExportError(f"{path}: zip file without config.json; not a .keras model file")
        for member in members:  # the loaders read these whole
            if member.filename.endswith(".json") and member.filename != "config.json" and member.file_size > MAX_ZIP_JSON_BYTES:
                raise _too_big(path, f"{member.filename} (inflated)", member.file_size, MAX_ZIP_JSON_BYTES)
        if info.compress_size > MAX_CONFIG_BYTES:
            raise _too_big(path, "config.json (compressed)", info.compress_size)
        if info.file_size > MAX_CONFIG_BYTES:
            raise _too_big(path, "config.json (inflated)", info.file_size)
        parts: list[bytes] = []
        total = 0
        with archive.open(info) as stream:  # streamed: the size in the header is not trusted
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > MAX_CONFIG_BYTES:
                    raise _too_big(path, "config.json (inflated)", f"more than {MAX_CONFIG_BYTES}")
                parts.append(chunk)
        return b"".join(parts)


def _read_hdf5_config(path: Path) -> bytes | None:
    import h5py

    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            return None
        attribute = h5py.h5a.open(f.id, b"model_config")
        if attribute.shape not in ((), (1,)):
            raise ExportError(f"{path}: the model_config attribute has shape {attribute.shape}, not a single string")
        kind = attribute.get_type()
        if not isinstance(kind, h5py.h5t.TypeStringID):
            raise ExportError(f"{path}: the model_config attribute is not a string")
        if not kind.is_variable_str() and kind.get_size() > MAX_CONFIG_BYTES:
            raise _too_big(path, "the model_config attribute", kind.get_size())
        # A variable-length string lives uncompressed in the file's global heap, and HDF5 refuses files
        # shorter than their recorded end: reading it costs at most the file's own size.
        raw = f.attrs["model_config"]
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    elif not isinstance(raw, bytes):
        raw = bytes(raw.tobytes()) if hasattr(raw, "tobytes") else bytes(raw)
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_big(path, "the model_config attribute", len(raw))
    return raw


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_big(path, "the architecture file", f"more than {MAX_CONFIG_BYTES}")
    return data


def _parse(path: Path, what: str, raw: bytes) -> Any:
    try:
        config = json.loads(raw)
    except RecursionError:  # json's C scanner guards its own recursion
        raise ExportError(f"{path}: {what} is nested more than {MAX_CONFIG_DEPTH} levels deep; not a model configuration tfship will read") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: {what} is not valid JSON ({first_line(exc, 200)}); the file is damaged or not a Keras model") from exc
    depth, count = _measure(config)
    if depth > MAX_CONFIG_DEPTH:
        raise ExportError(f"{path}: {what} is nested more than {MAX_CONFIG_DEPTH} levels deep; not a model configuration tfship will read")
    if count > MAX_CONFIG_ELEMENTS:
        raise ExportError(f"{path}: {what} holds more than {MAX_CONFIG_ELEMENTS} elements; not a model configuration tfship will read")
    return config


def _measure(config: Any) -> tuple[int, int]:
    """Nesting depth and element count, without recursion; stops early past the bounds."""
    deepest, count = 0, 0
    stack: list[tuple[Any, int]] = [(config, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if deepest > MAX_CONFIG_DEPTH or count > MAX_CONFIG_ELEMENTS:
            break
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    return deepest, count


# --- what the configuration names -----------------------------------------------------------------

def walk(config: Any) -> Iterator[tuple[dict, str]]:
    """Every dict in the config, with the name of the innermost layer it belongs to (no recursion)."""
    stack: list[tuple[Any, str]] = [(config, "?")]
    while stack:
        node, layer = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if "class_name" in node and isinstance(inner, dict) and isinstance(inner.get("name"), str):
                layer = inner["name"]
            elif "class_name" in node and isinstance(node.get("name"), str):
                layer = node["name"]
            yield node, layer
            stack.extend((value, layer) for value in reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend((value, layer) for value in reversed(node))


def allowed_tf_function(name: str) -> bool:
    """Whether a tf_keras op layer may call ``tf.<name>`` (canonical TensorFlow API name)."""
    if name in TF_OPERATORS:
        return True
    namespace, _, rest = name.rpartition(".")
    if namespace == "compat.v1":
        namespace = ""
    if namespace == "":
        return rest in TF_ARRAY_FUNCTIONS
    families = {"nn": TF_NN_FUNCTIONS, "linalg": TF_LINALG_FUNCTIONS, "image": TF_IMAGE_FUNCTIONS,
                "signal": TF_SIGNAL_FUNCTIONS, "compat.v1.nn": TF_NN_FUNCTIONS, "compat.v1.image": TF_IMAGE_FUNCTIONS,
                "compat.v1.linalg": TF_LINALG_FUNCTIONS, "dtypes": frozenset({"cast"})}
    if namespace in families:
        return rest in families[namespace]
    # Everything TensorFlow exports under tf.math is a pure tensor function.
    return namespace in ("math", "math.special", "compat.v1.math") and _IDENTIFIER.fullmatch(rest) is not None


def _op_layer_finding(class_name: str, config: dict) -> str | None:
    """Why an op layer's config is refused, or None when it names an allowed function."""
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        function = config.get("function")
        if not isinstance(function, str):
            return "names no TensorFlow function tfship can check"
        name = function.removeprefix("tf.")
        if not allowed_tf_function(name):
            return f"calls tf.{name}, which is not a pure tensor function tfship allows"
        return None
    if class_name == "ClassMethod":
        symbol, method = config.get("cls_symbol"), config.get("method_name")
        if not isinstance(symbol, str) or not isinstance(method, str) or method not in TF_CLASS_METHODS.get(symbol.removeprefix("tf."), ()):
            return f"calls tf.{symbol}.{method}, which is not a pure tensor function tfship allows"
        return None
    attribute = config.get("attr_name")
    allowed = TF_INSTANCE_PROPERTIES if class_name == "InstanceProperty" else TF_INSTANCE_METHODS
    if not isinstance(attribute, str) or attribute not in allowed:
        kind = "reads the attribute" if class_name == "InstanceProperty" else "calls the method"
        return f"{kind} '{attribute}' of its input, which is not a ragged/sparse tensor accessor tfship allows"
    return None


def _keras_kind(module: str, kinds: Iterable[str]) -> str | None:
    """The part of Keras a module belongs to (``keras.src.losses.losses`` -> ``losses``), if allowed."""
    for package in KERAS_PACKAGES:
        if module.startswith(package + "."):
            first = module[len(package) + 1:].split(".")[0]
            if first in kinds:
                return first
    return None


def _keras_function(kind: str, name: str) -> bool:
    """Whether ``name`` is a public function of Keras' (or tf_keras') ``kind`` module."""
    if name in NOT_MODELLING_FUNCTIONS or not _IDENTIFIER.fullmatch(name.lower()):
        return False
    for package in ("keras", "tf_keras"):
        try:
            module = importlib.import_module(f"{package}.{kind}")
        except ImportError:
            continue
        value = getattr(module, name, None)
        if inspect.isfunction(value) and str(getattr(value, "__module__", "")).startswith((f"{package}.src.", "keras.src.")):
            return True
    return False


def _function_reference_finding(node: dict, provided: set[str]) -> str | None:
    module, name = node.get("module"), node.get("config")
    registered = node.get("registered_name")
    if (isinstance(name, str) and name in provided) or (isinstance(registered, str) and registered in provided):
        return None
    if not isinstance(module, str) or not isinstance(name, str):
        return "names a function without a module tfship can check"
    full = f"{module}.{name}"
    if module == "builtins":  # Keras resolves these against its own modules
        if any(_keras_function(kind, name) for kind in FUNCTION_KINDS):
            return None
    else:
        kind = _keras_kind(module, FUNCTION_KINDS)
        if kind is not None and _keras_function(kind, name):
            return None
    return (f"names the function '{full}', which is not one of Keras' own activations, initializers, "
            f"regularizers, constraints, losses or metrics")


def find_code(config: Any, custom_objects: Iterable[str] = ()) -> list[Finding]:
    """Entries of ``config`` that would run code from the file, or code the user did not provide."""
    provided = set(custom_objects)
    findings: list[Finding] = []
    seen: set[str] = set()

    def add(layer: str, class_name: str, reason: str) -> None:
        if layer not in seen:  # one finding per layer: the first reason is the one to tell
            seen.add(layer)
            findings.append(Finding(layer, class_name, reason))

    for node, layer in walk(config):
        class_name = node.get("class_name")
        inner = node.get("config")
        if isinstance(node.get("function"), list) or node.get("function_type") == "lambda":
            add(layer, str(class_name or "Lambda"), "stores Python bytecode")
        if not isinstance(class_name, str):
            continue
        registered = node.get("registered_name")
        is_provided = class_name in provided or (isinstance(registered, str) and registered in provided)
        if class_name in CODE_LAYERS and not is_provided:
            add(layer, class_name, CODE_LAYERS[class_name])
        elif class_name == "__lambda__":
            add(layer, class_name, "stores a serialized Python lambda")
        elif class_name in ("function", "__function__"):
            reason = _function_reference_finding(node, provided)
            if reason:
                add(layer, class_name, reason)
        elif class_name.startswith("__") and class_name not in KERAS_VALUE_ENTRIES:
            add(layer, class_name, "is an entry Keras does not write")
        elif class_name in OP_LAYERS and not is_provided:
            reason = _op_layer_finding(class_name, inner if isinstance(inner, dict) else {})
            if reason:
                add(layer, class_name, reason)
        elif class_name in VOCABULARY_LAYERS and isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
            add(layer, class_name, f"reads its vocabulary from the file '{inner['vocabulary']}' named inside the model")
        module = node.get("module")
        if (isinstance(module, str) and class_name not in ("function", "__function__") and not is_provided
                and module.split(".")[0] in ("keras", "tf_keras") and module != "keras" and _keras_kind(module, CLASS_KINDS) is None):
            add(layer, class_name, f"names '{module}.{class_name}', which is not a Keras layer, model or initializer")
    return findings


def unknown_custom_objects(config: Any, custom_objects: Iterable[str]) -> list[str]:
    """Classes from modules outside Keras that the config names and the user did not provide."""
    provided = set(custom_objects)
    missing: list[str] = []
    for node, _layer in walk(config):
        module = node.get("module")
        class_name = node.get("class_name")
        if not isinstance(module, str) or not module or not isinstance(class_name, str) or class_name.startswith("__"):
            continue
        if class_name == "function" or module.split(".")[0] in ("keras", "tf_keras"):
            continue  # function references and Keras' own classes are judged by find_code
        registered = node.get("registered_name") or class_name
        if registered not in provided and class_name not in provided and registered not in missing:
            missing.append(str(registered))
    return missing


def check(path: Path, config: Any, *, trust_code: bool, custom_objects: Iterable[str] = ()) -> list[Finding]:
    """Raise UnsafeModelError for code-carrying entries unless ``trust_code``; return the findings."""
    findings = find_code(config, custom_objects)
    if findings and not trust_code:
        first = findings[0]
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise UnsafeModelError(
            f"{path}: refused: {first.describe()}{more}. Loading it would run code from the file. "
            f"If you trust this file, pass --trust-code; otherwise rebuild the architecture in code "
            f"(--architecture module:build_fn) and load only the weights from this file."
        )
    return findings
