"""Inspect a model file's stored configuration before any loader sees it.

Model files are attack input. Keras ``.h5`` files and ``.keras`` zips carry a JSON description of the
model; a ``Lambda`` layer stores Python bytecode there, and tf_keras runs it on load even when asked
not to (it ignores safe_mode for .h5). Config entries can also name functions in arbitrary modules
(CVE-2025-1550) or keras helpers that reach outside the file (CVE-2025-8747, CVE-2025-9906). So tfship
reads the configuration itself, with h5py / zipfile / json only, and refuses what carries code unless
the user passed ``--trust-code``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError, UnsafeModelError

# Layers whose configuration carries or fetches code.
CODE_LAYERS = {
    "Lambda": "stores Python code that runs when the model is loaded",
    "TFSMLayer": "loads another SavedModel from a path named inside the file",
}
# Modules whose functions may be named in a Keras 3 config (activations, ops, initializers, ...).
SAFE_FUNCTION_MODULE_PREFIXES = (
    "keras.activations", "keras.src.activations", "keras.ops", "keras.src.ops", "keras.losses",
    "keras.src.losses", "keras.metrics", "keras.src.metrics", "keras.initializers", "keras.src.initializers",
    "keras.regularizers", "keras.src.regularizers", "keras.constraints", "keras.src.constraints",
)
# Keras modules that must never be reached from a config (file access, downloads, deserialization).
UNSAFE_KERAS_MODULES = ("keras.utils", "keras.src.utils", "keras.saving", "keras.src.saving", "keras.src.legacy.saving")
# tf_keras TFOpLambda layers name a TensorFlow API function that runs when the model runs; these reach
# files, Python or the process outside the model.
UNSAFE_TF_FUNCTIONS = ("io.", "py_func", "py_function", "numpy_function", "raw_ops.", "debugging.", "summary.", "data.",
                       "saved_model.", "load_op_library", "load_library", "print", "compat.v1.Print", "gfile", "distribute.")
# TensorFlow ops that touch files or run Python. A SavedModel graph that can reach one of them from its
# serving signature would do so during tfship's parity run (and on every request once served).
UNSAFE_OPS = {
    "WriteFile", "ReadFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "SaveV2", "Save", "SaveSlices",
    "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints", "PrintV2", "ImmutableConst", "WholeFileReader",
    "WholeFileReaderV2", "TFRecordReader", "TFRecordReaderV2", "TextLineReader", "TextLineReaderV2",
    "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset",
    "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "SaveDataset", "SaveDatasetV2", "ExperimentalSaveDataset",
    "SnapshotDataset", "SnapshotDatasetV2", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "CreateSummaryFileWriter",
    "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
    "WriteGraphSummary", "WriteRawProtoSummary", "LoadAndRemapMatrix", "DebugIdentity", "DebugIdentityV2",
    "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2", "GenerateVocabRemapping",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
}
# GPU-only layers of Keras 2 and the CPU layer that computes the same thing.
GPU_ONLY_LAYERS = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}


@dataclass(frozen=True)
class Finding:
    layer: str
    class_name: str
    reason: str

    def describe(self) -> str:
        return f"layer '{self.layer}' ({self.class_name}) {self.reason}"


def read_stored_config(path: Path) -> dict | list | None:
    """The model configuration stored in ``path`` (.h5, .keras or an architecture .json); None if absent."""
    if path.is_dir():
        return None
    suffix = path.suffix.lower()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    raise ExportError(f"{path}: zip file without config.json; not a .keras model file")
                return json.loads(archive.read("config.json"))
        with path.open("rb") as handle:
            head = handle.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                if isinstance(raw, bytes):
                    raw = raw.decode("utf-8")
                return json.loads(raw)
        if suffix in (".json",) or head.lstrip()[:1] in (b"{", b"["):
            return json.loads(path.read_text(encoding="utf-8"))
    except ExportError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{path}: cannot read the stored model configuration ({_short(exc)}); the file is damaged or not a Keras model") from None
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _walk(node: Any, layer: str = "?") -> Iterator[tuple[dict, str]]:
    """Every dict in the config, with the name of the innermost layer it belongs to."""
    if isinstance(node, dict):
        config = node.get("config")
        if isinstance(config, dict) and isinstance(config.get("name"), str) and "class_name" in node:
            layer = config["name"]
        elif isinstance(node.get("name"), str) and "class_name" in node:
            layer = node["name"]
        yield node, layer
        for value in node.values():
            yield from _walk(value, layer)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, layer)


def find_code(config: Any, custom_objects: Iterable[str] = ()) -> list[Finding]:
    """Entries of ``config`` that would run code from the file, or code the user did not provide."""
    provided = set(custom_objects)
    findings: list[Finding] = []
    seen: set[str] = set()

    def add(layer: str, class_name: str, reason: str) -> None:
        if layer not in seen:  # one finding per layer: the first reason is the one to tell
            seen.add(layer)
            findings.append(Finding(layer, class_name, reason))

    for node, layer in _walk(config):
        class_name = node.get("class_name")
        if isinstance(class_name, str):
            if class_name in CODE_LAYERS and class_name not in provided:
                add(layer, class_name, CODE_LAYERS[class_name])
            if class_name == "__lambda__":
                add(layer, class_name, "stores a serialized Python lambda")
            module = node.get("module")
            if isinstance(module, str) and module:
                registered = node.get("registered_name") or class_name
                if module.startswith(UNSAFE_KERAS_MODULES) and class_name not in ("Functional", "Sequential"):
                    add(layer, class_name, f"names '{module}.{node.get('config') if class_name == '__function__' else class_name}', which reaches outside the model")
                elif class_name == "__function__" and not module.startswith(SAFE_FUNCTION_MODULE_PREFIXES) and registered not in provided and node.get("config") not in provided:
                    add(layer, class_name, f"names function '{module}.{node.get('config')}', which is not part of Keras")
        function = node.get("function")
        op_function = (node.get("config") or {}).get("function") if isinstance(node.get("config"), dict) else None
        if class_name in ("TFOpLambda", "SlicingOpLambda") and isinstance(op_function, str):
            name = op_function.removeprefix("tf.")
            if any(name.startswith(p) or p in name for p in UNSAFE_TF_FUNCTIONS):
                add(layer, class_name, f"calls tf.{name}, which reaches outside the model")
        if isinstance(function, (list, tuple)) and function and isinstance(function[0], str):
            add(layer, str(class_name or "Lambda"), "stores Python bytecode")
        if isinstance(node.get("function_type"), str) and node.get("function_type") == "lambda":
            add(layer, str(class_name or "Lambda"), "stores Python bytecode")
    return findings


def unknown_custom_objects(config: Any, custom_objects: Iterable[str]) -> list[str]:
    """Keras 3 custom classes the config names (non-Keras modules) that the user did not provide."""
    provided = set(custom_objects)
    missing = []
    for node, _layer in _walk(config):
        module = node.get("module")
        class_name = node.get("class_name")
        if not isinstance(module, str) or not isinstance(class_name, str) or class_name.startswith("__"):
            continue
        if module.startswith("keras") or module in ("builtins",):
            continue
        registered = node.get("registered_name") or class_name
        if registered not in provided and class_name not in provided and registered not in missing:
            missing.append(registered)
    return missing


def gpu_only_layers(config: Any) -> list[str]:
    return sorted({node["class_name"] for node, _ in _walk(config) if node.get("class_name") in GPU_ONLY_LAYERS})


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


def savedmodel_unsafe_ops(directory: Path, signature_key: str = "serving_default") -> list[str]:
    """Op types from UNSAFE_OPS reachable from the signature's outputs (the graph and every function it calls).

    The SavedModel's own save/restore functions (SaveV2, RestoreV2) are not reachable from a serving
    signature, so ordinary models pass.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved_model = saved_model_pb2.SavedModel.FromString((directory / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ExportError(f"{directory}: saved_model.pb cannot be read ({_short(exc)})") from None
    found: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        signature = meta_graph.signature_def.get(signature_key)
        if signature is None:
            continue
        nodes = {node.name: node for node in meta_graph.graph_def.node}
        functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        seen_nodes: set[str] = set()
        seen_functions: set[str] = set()
        stack = [info.name.split(":")[0].lstrip("^") for info in signature.outputs.values()]

        def visit_function(name: str) -> None:
            if name in seen_functions or name not in functions:
                return
            seen_functions.add(name)
            for node in functions[name].node_def:
                inspect_node(node)

        def inspect_node(node) -> None:
            if node.op in UNSAFE_OPS:
                found.add(node.op)
            if node.op in functions:  # a function called by its name as an op
                visit_function(node.op)
            for value in node.attr.values():
                if value.HasField("func"):
                    visit_function(value.func.name)
                for func in value.list.func:
                    visit_function(func.name)

        while stack:  # walk the main graph backwards from the outputs
            name = stack.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            inspect_node(node)
            stack.extend(i.split(":")[0].lstrip("^") for i in node.input)
    return sorted(found)


def check_savedmodel(directory: Path, *, trust_code: bool, signature_key: str = "serving_default") -> None:
    ops = savedmodel_unsafe_ops(directory, signature_key)
    if ops and not trust_code:
        raise UnsafeModelError(
            f"{directory}: refused: the signature '{signature_key}' runs {', '.join(ops)}, which read or write "
            f"files or run Python outside the model. If you trust this SavedModel, pass --trust-code."
        )
