"""Decide whether a SavedModel directory may be loaded, run and copied into a version.

A SavedModel is a program: loading it runs its restore and init functions (TF1 ``main_op`` /
``legacy_init_op``, TF2 ``__saved_model_init_op``, resource initializers), the parity run calls its
signatures, and saving it again calls its save functions. tfship walks every one of those functions,
and every function they call, and allows only op types from TensorFlow's tensor-math families (math,
nn, array, image, linalg, strings, control flow, variables, lookup tables filled from tensors, ...).
Ops that read or write files (``RestoreV2``, ``SaveV2``, ``MergeV2Checkpoints``) are allowed only in
TensorFlow's own checkpoint functions, and only on the checkpoint prefix the loader passes in (the
version's own ``variables/``). Everything else is refused before TensorFlow loads the directory.

The directory's files are attack input too: a symlink (``assets -> /etc``), a device file or an asset
path that leaves the directory would copy host files into the version, so they are refused.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from tfship.core.errors import ExportError, UnsafeModelError, first_line

log = logging.getLogger(__name__)

# TensorFlow's op families (tensorflow/python/ops/gen_<family>_ops.py) whose ops compute on tensors,
# variables and the model's own resources.
PURE_OP_FAMILIES = (
    "math", "nn", "array", "image", "linalg", "bitwise", "spectral", "sparse", "random", "stateless_random",
    "stateful_random", "special_math", "string", "resource_variable", "state", "parsing", "ctc", "set",
    "candidate_sampling", "ragged_array", "ragged_math", "ragged_conversion", "count", "list", "clustering",
    "cudnn_rnn", "audio", "uniform_quant",
)
# Ops of those families that reach outside the model.
NOT_PURE = frozenset({"ImmutableConst"})  # memory-maps a file named in its attributes
# Ops picked one by one from families that also hold file, queue, process or remote ops.
SELECTED_OPS = frozenset({
    # control flow (not Abort, which ends the process)
    "ControlTrigger", "Enter", "Exit", "LoopCond", "Merge", "NextIteration", "NoOp", "RefEnter", "RefExit",
    "RefMerge", "RefNextIteration", "RefSelect", "RefSwitch", "Switch",
    # function calls (not RemoteCall)
    "Case", "StatelessCase", "If", "StatelessIf", "While", "StatelessWhile", "For", "PartitionedCall",
    "StatefulPartitionedCall", "SymbolicGradient", "ToBool", "FakeParam", "DeviceIndex",
    # lookup tables filled from tensors (not InitializeTableFromTextFile*, which reads a file)
    "HashTable", "HashTableV2", "AnonymousHashTable", "InitializeTable", "InitializeTableV2", "LookupTableFind",
    "LookupTableFindV2", "LookupTableImport", "LookupTableImportV2", "LookupTableExport", "LookupTableExportV2",
    "LookupTableInsert", "LookupTableInsertV2", "LookupTableRemoveV2", "LookupTableSize", "LookupTableSizeV2",
    "MutableHashTable", "MutableHashTableV2", "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2",
    "MutableDenseHashTable", "MutableDenseHashTableV2", "AnonymousMutableHashTable",
    "AnonymousMutableHashTableOfTensors", "AnonymousMutableDenseHashTable",
    # tensor arrays and stitching (recurrent layers)
    "DynamicPartition", "DynamicStitch", "ParallelDynamicStitch", "TensorArrayV3", "TensorArrayReadV3",
    "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3", "TensorArrayConcatV3",
    "TensorArraySplitV3", "TensorArraySizeV3", "TensorArrayCloseV3", "TensorArrayGradV3",
    "TensorArrayGradWithShape", "TensorArrayV2", "TensorArrayReadV2", "TensorArrayWriteV2",
    "TensorArrayGatherV2", "TensorArrayScatterV2", "TensorArraySizeV2", "TensorArrayCloseV2",
    "StackV2", "StackPushV2", "StackPopV2", "StackCloseV2",
    # checks; file names built from strings (the checkpoint functions shard their prefix)
    "Assert", "ShardedFilename", "ShardedFilespec",
})
# tf.print may write to these streams (PrintV2's output_stream attribute).
PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})
# File ops TensorFlow's own checkpoint functions use on the prefix they are given.
CHECKPOINT_FILE_OPS = frozenset({"RestoreV2", "SaveV2", "MergeV2Checkpoints"})
# Ops through which a checkpoint prefix flows from the loader to those file ops.
_PREFIX_OPS = frozenset({"Identity", "StringJoin", "ShardedFilename", "Pack"})
# Where a TF1 SavedModel keeps the ops its loader runs after restoring variables.
INIT_OP_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer", "init_op", "local_init_op")


@cache
def allowed_ops() -> frozenset[str]:
    names: set[str] = set(SELECTED_OPS)
    for family in PURE_OP_FAMILIES:
        try:
            module = importlib.import_module(f"tensorflow.python.ops.gen_{family}_ops")
        except ImportError:  # a family this TensorFlow does not have
            continue
        names.update(name for name, value in vars(module).items()
                     if name[:1].isupper() and not name.startswith("TV_") and callable(value) and not isinstance(value, type))
    return frozenset(names - NOT_PURE)


@dataclass
class _Findings:
    ops: dict[str, str] = field(default_factory=dict)  # op type -> where it was found

    def add(self, op: str, where: str) -> None:
        self.ops.setdefault(op, where)


def _node_name(reference: str) -> str:
    return reference.lstrip("^").split(":")[0]


class _Walker:
    """Walks one meta graph: graph nodes backwards from roots, functions whole, calls followed."""

    def __init__(self, meta_graph: Any, findings: _Findings) -> None:
        self.nodes = {node.name: node for node in meta_graph.graph_def.node}
        self.functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        self.findings = findings
        self.allowed = allowed_ops()
        self.saver = meta_graph.saver_def
        self.seen_functions: set[tuple[str, frozenset[int], bool]] = set()

    # --- graph nodes --------------------------------------------------------------------------
    def graph(self, roots: Iterable[str], where: str, checkpoint: bool = False) -> None:
        stack = [_node_name(r) for r in roots if r]
        seen: set[str] = set()
        filename = _node_name(self.saver.filename_tensor_name) if checkpoint else None
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            node = self.nodes[name]
            self._check(node, where, checkpoint, lambda ref: self._graph_prefix(ref, filename))
            self._calls(node, where, checkpoint, lambda ref: self._graph_prefix(ref, filename))
            stack.extend(_node_name(i) for i in node.input)

    def _graph_prefix(self, reference: str, filename: str | None, depth: int = 0) -> bool:
        """Whether a graph tensor is the loader's checkpoint prefix (or a file name built from it)."""
        name = _node_name(reference)
        if filename is not None and name == filename:
            return True
        node = self.nodes.get(name)
        return node is not None and depth < 50 and self._derived(node, lambda ref: self._graph_prefix(ref, filename, depth + 1),
                                                                lambda ref: self.nodes.get(_node_name(ref)))

    # --- functions -----------------------------------------------------------------------------
    def function(self, name: str, where: str, checkpoint: bool = False, prefix_args: frozenset[int] = frozenset()) -> None:
        key = (name, prefix_args, checkpoint)
        if key in self.seen_functions or name not in self.functions:
            return
        self.seen_functions.add(key)
        fdef = self.functions[name]
        args = {arg.name: i for i, arg in enumerate(fdef.signature.input_arg)}
        body = {node.name: node for node in fdef.node_def}

        def lookup(reference: str) -> Any:
            return body.get(reference.lstrip("^").split(":")[0])

        def is_prefix(reference: str, depth: int = 0) -> bool:
            head = reference.lstrip("^").split(":")[0]
            if head in args:
                return args[head] in prefix_args
            node = body.get(head)
            return node is not None and depth < 50 and self._derived(node, lambda ref: is_prefix(ref, depth + 1), lookup)

        for node in fdef.node_def:
            self._check(node, f"{where} (function {name})", checkpoint, is_prefix)
            self._calls(node, where, checkpoint, is_prefix)

    # --- shared --------------------------------------------------------------------------------
    def _derived(self, node: Any, is_prefix: Any, lookup: Any) -> bool:
        """A file name built from the prefix: Identity/StringJoin/ShardedFilename/Pack of it, where every
        constant part stays below it (no '..')."""
        if node.op not in _PREFIX_OPS or not node.input:
            return False
        data = [i for i in node.input if not i.startswith("^")]
        if node.op == "Pack":
            return bool(data) and all(is_prefix(i) for i in data)
        if node.op == "ShardedFilename":
            return is_prefix(data[0])
        if node.op == "StringJoin":
            return is_prefix(data[0]) and all(self._safe_suffix(lookup(i), lookup) for i in data[1:])
        return is_prefix(data[0])

    def _safe_suffix(self, node: Any, lookup: Any, depth: int = 0) -> bool:
        if node is None or depth > 10:
            return False
        if node.op == "Const":
            values = node.attr["value"].tensor.string_val
            return all(b".." not in value for value in values)
        if node.op == "Select":  # TF's save function picks one of two constant suffixes
            data = [i for i in node.input if not i.startswith("^")]
            return len(data) == 3 and all(self._safe_suffix(lookup(i), lookup, depth + 1) for i in data[1:])
        if node.op == "Identity":
            return self._safe_suffix(lookup(node.input[0]), lookup, depth + 1)
        return False

    def _check(self, node: Any, where: str, checkpoint: bool, is_prefix: Any) -> None:
        op = node.op
        if op in self.functions or op in self.allowed:
            return
        if op == "PrintV2" and ("output_stream" not in node.attr  # stripped when it is the default, stderr
                                or node.attr["output_stream"].s.decode(errors="replace") in PRINT_STREAMS):
            return  # tf.print to the process's own output; a "file://" stream would write a file
        if checkpoint and op in CHECKPOINT_FILE_OPS:
            data = [i for i in node.input if not i.startswith("^")]
            prefixes = data[:1] if op != "MergeV2Checkpoints" else data[:2]
            if prefixes and all(is_prefix(p) for p in prefixes):
                return
            self.findings.add(op, f"{where}, on a path other than the version's own variables/")
            return
        self.findings.add(op, where)

    def _calls(self, node: Any, where: str, checkpoint: bool, is_prefix: Any) -> None:
        """Follow the functions a node calls; a checkpoint prefix passed as an argument stays one."""
        called: list[str] = []
        if node.op in self.functions:
            called.append(node.op)
        for key in sorted(node.attr):
            value = node.attr[key]
            if value.HasField("func"):
                called.append(value.func.name)
            called.extend(f.name for f in value.list.func)
        data = [i for i in node.input if not i.startswith("^")]
        prefix_args = frozenset(i for i, ref in enumerate(data) if checkpoint and is_prefix(ref)) if checkpoint else frozenset()
        for name in called:
            self.function(name, where, checkpoint, prefix_args)


def _saveable_functions(object_graph: Any) -> set[str]:
    """Names of the concrete functions used only to save or restore an object's state."""
    names: set[str] = set()
    nodes = list(object_graph.nodes)
    for node in nodes:
        for saveable in node.saveable_objects.values():
            for index in (saveable.save_function, saveable.restore_function):
                if 0 <= index < len(nodes):
                    target = nodes[index]
                    kind = target.WhichOneof("kind")
                    if kind == "function":
                        names.update(target.function.concrete_functions)
                    elif kind == "bare_concrete_function":
                        names.add(target.bare_concrete_function.concrete_function_name)
    return names


def unsafe_ops(directory: Path) -> dict[str, str]:
    """Op types outside the allow-list that loading, running or saving the SavedModel can execute."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved_model = saved_model_pb2.SavedModel.FromString((directory / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ExportError(f"{directory}: saved_model.pb cannot be read ({first_line(exc, 200)})") from exc
    findings = _Findings()
    for meta_graph in saved_model.meta_graphs:
        walker = _Walker(meta_graph, findings)
        for key, signature in sorted(meta_graph.signature_def.items()):
            walker.graph([info.name for info in signature.outputs.values()], f"signature '{key}'")
        for collection in INIT_OP_COLLECTIONS:
            if collection in meta_graph.collection_def:
                walker.graph(list(meta_graph.collection_def[collection].node_list.value), f"the {collection} collection")
        saver = meta_graph.saver_def
        walker.graph([saver.restore_op_name, saver.save_tensor_name], "the checkpoint restore/save ops", checkpoint=True)
        saveables = _saveable_functions(meta_graph.object_graph_def)
        for name in sorted(meta_graph.object_graph_def.concrete_functions):
            if name not in saveables:
                walker.function(name, "a restored function")
        for name in sorted(saveables):
            walker.function(name, "an object's save/restore function")
    return findings.ops


def check_files(directory: Path) -> None:
    """Refuse symlinks, device files and asset paths that leave the SavedModel directory."""
    root = directory.resolve()
    for current, dirs, files in os.walk(root, followlinks=False):
        for entry in dirs + files:
            path = Path(current) / entry
            mode = path.lstat().st_mode
            relative = path.relative_to(root)
            if stat.S_ISLNK(mode):
                raise UnsafeModelError(f"{directory}: refused: '{relative}' is a symbolic link (to {os.readlink(path)}); "
                                       f"a SavedModel directory must hold only its own regular files")
            if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
                raise UnsafeModelError(f"{directory}: refused: '{relative}' is not a regular file (a device, pipe or socket); "
                                       f"a SavedModel directory must hold only its own regular files")


def check_asset_paths(directory: Path) -> None:
    """Every asset the SavedModel names must be a regular file inside its own assets/ folder."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((directory / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        names = [asset.filename for asset in meta_graph.asset_file_def]
        for name in names:
            pure = PurePosixPath(name)
            if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
                raise UnsafeModelError(f"{directory}: refused: the asset '{name}' points outside the SavedModel's assets/ folder")
            if not (directory / "assets" / name).is_file():
                raise ExportError(f"{directory}: the asset '{name}' is missing from assets/; the SavedModel is incomplete")


def check_savedmodel(directory: Path, *, trust_code: bool) -> None:
    """Refuse a SavedModel source whose files or functions reach outside the model."""
    check_files(directory)
    check_asset_paths(directory)
    ops = unsafe_ops(directory)
    if ops and not trust_code:
        first, where = next(iter(sorted(ops.items())))
        others = sorted(ops)[1:]
        more = f" (also: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        raise UnsafeModelError(
            f"{directory}: refused: the op {first} (in {where}){more} is not a tensor op tfship allows: it can read "
            f"or write files or run code outside the model. If you trust this SavedModel, pass --trust-code."
        )
    if ops:
        log.warning("%s: runs ops outside tfship's allow-list (%s); loading it because of --trust-code", directory, ", ".join(sorted(ops)))


def check_written_files(directory: Path) -> None:
    """After TensorFlow wrote a version from a SavedModel source: only regular files were copied."""
    check_files(directory)
