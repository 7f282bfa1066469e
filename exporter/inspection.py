"""What a version, a model directory or a source file holds: ``tfship inspect``.

A version is tfship's own output: its manifest, its SavedModel's signatures (read from
``saved_model.pb`` as a protocol buffer), its files and their hashes now, and its signature. A source
file is attack input and is never loaded: its stored configuration is read the way the exporter reads
it before any loader runs (:mod:`~tfship.exporter.config_safety`, bounded), a SavedModel's graph is
read as a protocol buffer and judged by :mod:`~tfship.exporter.savedmodel_safety`, a checkpoint by its
index. What tfship would do with the file is said from that alone.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfship.core.codec import dtype_name
from tfship.core.errors import ExportError, TfshipError, UsageError, first_line
from tfship.core.signature import Signature, TensorSpec
from tfship.exporter import config_safety, repository
from tfship.exporter import manifest as mf
from tfship.exporter.architecture import checkpoint_objects, is_checkpoint_directory, is_checkpoint_prefix, resolve_checkpoint
from tfship.exporter.gpu_layers import GPU_ONLY_LAYERS, gpu_only_layers
from tfship.exporter.keras_loading import hub_layers, hub_problem

INIT_OP_SIGNATURE = "__saved_model_init_op"
MAX_METADATA_BYTES = config_safety.MAX_ZIP_JSON_BYTES


@dataclass(frozen=True)
class SigningStatus:
    signed: bool
    verified: bool | None  # None: not checked (no --public-key)
    reason: str = ""
    attestation: str = ""

    def describe(self) -> str:
        if not self.signed:
            return "unsigned (no model.sig)"
        if self.verified is None:
            return "signed, not verified (pass --public-key to check it)"
        attested = f"; attestation: {self.attestation}" if self.attestation else ""
        return ("verified" if self.verified else f"NOT VERIFIED: {self.reason}") + attested


@dataclass(frozen=True)
class SavedModelInfo:
    tags: tuple[str, ...]
    tensorflow_version: str
    tf2: bool  # has an object graph (tf.saved_model.save); False: a TF1 SavedModel (signatures only)
    keras_metadata: bool
    signatures: tuple[Signature, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tags": list(self.tags), "tensorflow_version": self.tensorflow_version, "tf2": self.tf2,
                "keras_metadata": self.keras_metadata, "signatures": [s.to_dict() for s in self.signatures]}


@dataclass(frozen=True)
class VersionReport:
    directory: Path
    manifest: mf.Manifest
    savedmodel: SavedModelInfo | None
    files: dict[str, str]  # manifest path -> "ok", "changed", "missing"
    signing: SigningStatus
    kind: str = "version"

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "kind": self.kind, "directory": str(self.directory), "name": m.name, "version": m.version, "created": m.created,
            "tfship_version": m.tfship_version, "source": m.source, "libraries": m.libraries,
            "signature": m.signature.to_dict(),
            "signatures": [s.to_dict() for s in self.savedmodel.signatures] if self.savedmodel else [m.signature.to_dict()],
            "artifacts": [{"format": a.format, "variant": a.variant, "path": a.path, "bytes": a.bytes,
                           "files": [{"path": f.path, "bytes": f.bytes, "sha256": f.sha256, "state": self.files.get(f.path, "ok")}
                                     for f in a.files]} for a in m.artifacts],
            "parity": [{"artifact": p.label, "path": p.path, "status": p.status, "error": p.error, "tolerance": p.tolerance,
                        "outputs": [_output_parity(o) for o in p.outputs]} for p in m.parity],
            "samples": m.samples, "notices": list(m.notices),
            "signing": {"signed": self.signing.signed, "verified": self.signing.verified, "reason": self.signing.reason,
                        "attestation": self.signing.attestation, "status": self.signing.describe()},
        }


def _output_parity(output: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "passed", "reason", "max_abs", "p99_abs", "max_rel", "p99_rel", "top1_agreement", "failed_elements", "total_elements")
    return {k: output.get(k) for k in keys}


@dataclass(frozen=True)
class ModelDirReport:
    directory: Path
    versions: tuple[dict[str, Any], ...]
    kind: str = "model"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "directory": str(self.directory), "name": self.directory.name, "versions": list(self.versions)}


@dataclass(frozen=True)
class SourceReport:
    path: Path
    format: str  # keras (zip), h5, h5-weights, architecture, savedmodel, checkpoint
    verdict: str  # what tfship export would do, in one line
    exportable: bool  # False: export would refuse as things stand (the verdict says what to pass)
    writer: dict[str, str] = field(default_factory=dict)
    model_class: str = ""
    layers: dict[str, int] = field(default_factory=dict)  # class name -> count
    refused: tuple[dict[str, str], ...] = ()
    custom_objects: tuple[str, ...] = ()
    tf_hub: tuple[dict[str, Any], ...] = ()
    gpu_layers: tuple[str, ...] = ()
    savedmodel: SavedModelInfo | None = None
    checkpoint: dict[str, int] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # flags export would need: --architecture, --custom-objects, --trust-code, --signature
    kind: str = "source"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "format": self.format, "verdict": self.verdict,
                "exportable": self.exportable, "writer": self.writer, "model_class": self.model_class, "layers": self.layers,
                "refused": list(self.refused), "custom_objects": list(self.custom_objects), "tf_hub": list(self.tf_hub),
                "gpu_layers": list(self.gpu_layers), "savedmodel": self.savedmodel.to_dict() if self.savedmodel else None,
                "checkpoint": self.checkpoint, "needs": list(self.needs)}


Report = VersionReport | ModelDirReport | SourceReport


def inspect_path(path: Path, public_key: Path | None = None) -> Report:
    """What ``path`` is and holds: a version, a model directory (numbered versions) or a source."""
    path = Path(path)
    if not path.exists() and not is_checkpoint_prefix(path):
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir() and (path / mf.MANIFEST).is_file():
        return inspect_version(path, public_key)
    if path.is_dir() and repository.versions(path) and not (path / "saved_model.pb").exists():
        return inspect_model_dir(path, public_key)
    return inspect_source(path)


# --- versions ----------------------------------------------------------------------------------------

def read_manifest(directory: Path) -> mf.Manifest:
    path = directory / mf.MANIFEST
    try:
        if path.stat().st_size > MAX_METADATA_BYTES * 16:
            raise ExportError(f"{path}: larger than a manifest tfship writes")
        return mf.Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except TfshipError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a manifest tfship can read ({type(exc).__name__}: {first_line(exc, 160)})") from exc


def signing_status(directory: Path, public_key: Path | None) -> SigningStatus:
    from tfship.core import signing

    if not (directory / signing.SIGNATURE_FILE).is_file():
        return SigningStatus(signed=False, verified=False if public_key else None, reason="no signature (model.sig is missing)")
    if public_key is None:
        return SigningStatus(signed=True, verified=None)
    result = signing.verify(directory, public_key=public_key)
    check = result.attestation
    if check is None:
        attestation = ""
    elif check.present and check.ok and not check.reason:
        attestation = f"verified ({check.subjects} files)"
    else:
        attestation = check.reason
    return SigningStatus(signed=True, verified=result.ok, reason=result.reason, attestation=attestation)


def _file_states(directory: Path, manifest: mf.Manifest) -> dict[str, str]:
    states = {}
    for artifact in manifest.artifacts:
        for entry in artifact.files:
            target = directory / entry.path
            if not target.is_file():
                states[entry.path] = "missing"
            elif target.stat().st_size != entry.bytes or mf.sha256_file(target) != entry.sha256:
                states[entry.path] = "changed"
            else:
                states[entry.path] = "ok"
    return states


def inspect_version(directory: Path, public_key: Path | None = None) -> VersionReport:
    manifest = read_manifest(directory)
    savedmodel = read_savedmodel(directory) if (directory / "saved_model.pb").is_file() else None
    return VersionReport(directory=directory, manifest=manifest, savedmodel=savedmodel,
                         files=_file_states(directory, manifest), signing=signing_status(directory, public_key))


def inspect_model_dir(directory: Path, public_key: Path | None = None) -> ModelDirReport:
    rows = []
    for number in repository.versions(directory):
        folder = directory / str(number)
        row: dict[str, Any] = {"version": number, "directory": str(folder)}
        if not (folder / mf.MANIFEST).is_file():
            row.update({"tfship": False, "savedmodel": (folder / "saved_model.pb").is_file(),
                        "signing": signing_status(folder, public_key).describe()})
            rows.append(row)
            continue
        try:
            manifest = read_manifest(folder)
        except ExportError as exc:
            row.update({"tfship": True, "error": exc.message})
            rows.append(row)
            continue
        served = [a for a in manifest.artifacts if a.format in ("savedmodel", "tflite", "onnx")]
        row.update({
            "tfship": True, "created": manifest.created, "source": manifest.source.get("path", ""),
            "source_kind": manifest.source.get("kind", ""),
            "artifacts": [a.format if a.variant == "float32" else f"{a.format}:{a.variant}" for a in served],
            "bytes": sum(a.bytes for a in served),
            "parity": {p.label: p.status for p in manifest.parity},
            "signing": signing_status(folder, public_key).describe(),
        })
        rows.append(row)
    return ModelDirReport(directory=directory, versions=tuple(rows))


# --- SavedModels, read as protocol buffers ------------------------------------------------------------

def _spec(name: str, info: Any) -> TensorSpec:
    shape: tuple[int | None, ...] = ()
    if not info.tensor_shape.unknown_rank:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(name=name, dtype=dtype_name(info.dtype), shape=shape)


def read_savedmodel(directory: Path) -> SavedModelInfo:
    """Tags, writer and signatures of ``directory/saved_model.pb``, without loading the model."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = directory / "saved_model.pb"
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    except Exception as exc:
        raise ExportError(f"{pb}: cannot be read as a SavedModel ({first_line(exc, 160)})") from exc
    if not saved_model.meta_graphs:
        raise ExportError(f"{pb}: holds no MetaGraph; not a usable SavedModel")
    meta = next((m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags), saved_model.meta_graphs[0])
    signatures = tuple(
        Signature(key=key, method_name=sig.method_name,
                  inputs=tuple(_spec(n, sig.inputs[n]) for n in sorted(sig.inputs)),
                  outputs=tuple(_spec(n, sig.outputs[n]) for n in sorted(sig.outputs)))
        for key, sig in sorted(meta.signature_def.items()) if key != INIT_OP_SIGNATURE
    )
    return SavedModelInfo(tags=tuple(meta.meta_info_def.tags), tensorflow_version=meta.meta_info_def.tensorflow_version,
                          tf2=len(meta.object_graph_def.nodes) > 0, keras_metadata=(directory / "keras_metadata.pb").is_file(),
                          signatures=signatures)


def _inspect_savedmodel(directory: Path) -> SourceReport:
    from tfship.exporter import savedmodel_safety

    info = read_savedmodel(directory)
    writer = {"tensorflow": info.tensorflow_version} if info.tensorflow_version else {}
    problems: list[str] = []
    try:
        savedmodel_safety.check_files(directory)
        savedmodel_safety.check_asset_paths(directory)
    except ExportError as exc:
        problems.append(exc.message.split(": ", 1)[-1])
    ops = savedmodel_safety.unsafe_ops(directory)
    refused = tuple({"layer": where, "class_name": op, "reason": "an op outside tfship's allow-list (it can read or write files or run code)"}
                    for op, where in sorted(ops.items()))
    keys = [s.key for s in info.signatures]
    kind = "TF2 SavedModel" if info.tf2 else "TF1 SavedModel (signatures only)"
    needs: list[str] = []
    if problems:
        verdict, ok = f"refused: {problems[0]}", False
    elif ops:
        verdict, ok = (f"refused: the op {next(iter(sorted(ops)))} is not a tensor op tfship allows; pass --trust-code "
                       f"only if you trust this SavedModel"), False
        needs.append("--trust-code")
    elif "serving_default" not in keys:
        verdict, ok = (f"{kind} without a 'serving_default' signature (it has: {', '.join(keys) or 'none'}); "
                       f"pass --signature NAME"), bool(keys)
        needs.append("--signature")
    else:
        verdict, ok = f"{kind}: exports from its 'serving_default' signature", True
    return SourceReport(path=directory, format="savedmodel", verdict=verdict, exportable=ok and not needs, writer=writer,
                        refused=refused, savedmodel=info, needs=tuple(needs))


# --- Keras files, read as stored configurations --------------------------------------------------------

def _keras_zip_metadata(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        info = next((i for i in archive.infolist() if i.filename == "metadata.json"), None)
        if info is None or info.file_size > MAX_METADATA_BYTES:
            return {}
        with archive.open(info) as stream:
            raw = stream.read(MAX_METADATA_BYTES + 1)
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {k: str(v) for k, v in data.items() if isinstance(v, (str, int, float)) and k in ("keras_version", "date_saved")} if isinstance(data, dict) else {}


def _h5_metadata(path: Path) -> dict[str, str]:
    import h5py

    result = {}
    with h5py.File(path, "r") as f:
        for key in ("keras_version", "backend"):
            if key in f.attrs:
                attribute = h5py.h5a.open(f.id, key.encode())
                kind = attribute.get_type()
                if isinstance(kind, h5py.h5t.TypeStringID) and (kind.is_variable_str() or kind.get_size() < 256):
                    value = f.attrs[key]
                    result[key] = (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))[:64]
    return result


def _layer_classes(config: Any) -> Counter[str]:
    """Class names of the model's layers (the entries of every ``layers`` list, and wrapped ``layer``s)."""
    counts: Counter[str] = Counter()
    stack: list[Any] = [config]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        inner = node.get("config")
        if isinstance(inner, dict):
            layers = inner.get("layers")
            members: list[Any] = layers if isinstance(layers, list) else []
            wrapped = [inner["layer"]] if isinstance(inner.get("layer"), dict) else []
            for member in [*members, *wrapped]:
                if isinstance(member, dict) and isinstance(member.get("class_name"), str):
                    counts[member["class_name"]] += 1
                    stack.append(member)
    return counts


def _inspect_config(path: Path, file_format: str, config: Any, writer: dict[str, str]) -> SourceReport:
    if not isinstance(config, dict) or ("class_name" not in config and "config" not in config):
        return SourceReport(path=path, format=file_format, writer=writer, exportable=False,
                            verdict="the stored configuration does not describe a Keras model; export would refuse it")
    findings = config_safety.find_code(config)
    missing = tuple(config_safety.unknown_custom_objects(config, ()))
    hub = hub_layers(config)
    gpu = tuple(gpu_only_layers(config))
    needs: list[str] = []
    refused = tuple({"layer": f.layer, "class_name": f.class_name, "reason": f.reason} for f in findings)
    version = writer.get("keras_version", "")
    reader = "Keras 3" if version.startswith("3.") else "Keras 3, falling back to tf_keras (Keras 2)"
    if file_format == "architecture":
        verdict, ok = "an architecture (model.to_json()): pass it as --architecture with a weights file or checkpoint", False
        needs.append("--architecture")
    elif findings:
        first = findings[0]
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        verdict, ok = (f"refused: {first.describe()}{more}; loading it would run code from the file. Pass --trust-code only if "
                       f"you trust it, or rebuild the architecture in code (--architecture) and load only the weights"), False
        needs.append("--trust-code")
    elif hub:
        problem = hub_problem(path, hub, {}, trust_code=False)
        verdict, ok = (problem.message.split(": ", 1)[-1] if problem else "TF Hub layers"), False
        needs.append("--custom-objects tensorflow_hub")
    elif missing:
        verdict, ok = (f"needs --custom-objects: the model uses classes tfship does not know: {', '.join(missing)} "
                       f"(pass module.py or pkg.module that defines them)"), False
        needs.append("--custom-objects")
    elif gpu:
        verdict, ok = (f"exports: read with tf_keras, {', '.join(gpu)} (GPU-only) rebuilt as "
                       f"{', '.join(GPU_ONLY_LAYERS[g] for g in gpu)}"), True
    else:
        verdict, ok = f"exports: loads with {reader}", True
    layers = _layer_classes(config)
    return SourceReport(
        path=path, format=file_format, verdict=verdict, exportable=ok, writer=writer,
        model_class=str(config.get("class_name", "")), layers=dict(sorted(layers.items())), refused=refused,
        custom_objects=missing, tf_hub=tuple({"layer": h.layer, "handle": h.handle, "remote": h.remote} for h in hub),
        gpu_layers=gpu, needs=tuple(needs),
    )


def _inspect_checkpoint(path: Path) -> SourceReport:
    prefix = resolve_checkpoint(path)
    objects = checkpoint_objects(prefix)
    where = f"the latest checkpoint of {path}: {prefix.name}" if path.is_dir() else "a TensorFlow checkpoint"
    holds = ", ".join(f"{name} ({count} entries)" for name, count in sorted(objects.items()))
    return SourceReport(path=path, format="checkpoint", exportable=False, checkpoint=objects, needs=("--architecture",),
                        verdict=f"{where}: weights only ({holds}); pass --architecture arch.json or module:build_fn")


def inspect_source(path: Path) -> SourceReport:
    """What ``tfship export`` would do with ``path``, decided without loading it."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _inspect_savedmodel(path)
        if is_checkpoint_directory(path):
            return _inspect_checkpoint(path)
        raise UsageError(f"{path}: a directory that is not a version (no manifest.json), a model directory (no numbered "
                         f"versions), a SavedModel (no saved_model.pb) or a checkpoint directory (no 'checkpoint' file)")
    if is_checkpoint_prefix(path) and not path.is_file():
        return _inspect_checkpoint(path)
    config = config_safety.read_stored_config(path)
    if zipfile.is_zipfile(path):
        return _inspect_config(path, "keras", config, _keras_zip_metadata(path))
    if config_safety.is_hdf5(path):
        writer = _h5_metadata(path)
        if config is None:
            return SourceReport(path=path, format="h5-weights", writer=writer, exportable=False, needs=("--architecture",),
                                verdict="an HDF5 file with weights only (no model configuration); pass --architecture arch.json or module:build_fn")
        return _inspect_config(path, "h5", config, writer)
    if config is not None:
        return _inspect_config(path, "architecture", config, {})
    raise UsageError(f"{path}: not a Keras model file (.keras, .h5), an architecture (.json), a SavedModel, a checkpoint or a tfship version")


# --- predict: the inputs through every artifact of a version, side by side ---------------------------------

FORMATS = ("savedmodel", "tflite", "onnx")
SERVED = "served"
MAX_SHOWN_VALUES = 100_000  # per output in --json; larger outputs give their shape and statistics only


@dataclass(frozen=True)
class Run:
    label: str  # savedmodel, tflite, tflite:float16, onnx, served
    path: str
    outputs: dict[str, Any]  # output name -> numpy array
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class PredictResult:
    directory: Path
    name: str
    version: int | None
    signature: Signature
    inputs: dict[str, Any]
    runs: tuple[Run, ...]
    differences: tuple[dict[str, Any], ...]  # one per (run, output) compared with the reference run
    signing: SigningStatus | None = None

    @property
    def reference(self) -> str:
        return next((r.label for r in self.runs if not r.error), "")

    @property
    def mismatched(self) -> list[dict[str, Any]]:
        return [d for d in self.differences if not d["passed"]]

    @property
    def failed_runs(self) -> list[Run]:
        return [r for r in self.runs if r.error]

    def to_dict(self) -> dict[str, Any]:
        def values(array: Any) -> Any:
            return array.tolist() if array.size <= MAX_SHOWN_VALUES and array.dtype.kind != "O" else (
                [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)[:MAX_SHOWN_VALUES]]
                if array.dtype.kind == "O" else None)

        return {
            "directory": str(self.directory), "name": self.name, "version": self.version, "reference": self.reference,
            "signature": self.signature.to_dict(),
            "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in self.inputs.items()},
            "runs": [{"artifact": r.label, "path": r.path, "error": r.error, "seconds": round(r.seconds, 4),
                      "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": values(v)} for k, v in r.outputs.items()}}
                     for r in self.runs],
            "differences": list(self.differences),
            "signing": None if self.signing is None else {"signed": self.signing.signed, "verified": self.signing.verified,
                                                          "reason": self.signing.reason, "status": self.signing.describe()},
            "passed": not self.mismatched and not self.failed_runs,
        }


def _select(formats: tuple[str, ...], artifacts: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The (label, format, path) artifacts ``formats`` names ('all', a format, or a label like tflite:float16)."""
    wanted = set(formats)
    unknown = wanted - {"all", *FORMATS} - {label for label, _, _ in artifacts}
    if unknown:
        known = ", ".join(["all", *FORMATS, *[label for label, _, _ in artifacts if ":" in label]])
        raise UsageError(f"--format {', '.join(sorted(unknown))}: choose from {known}")
    chosen = [a for a in artifacts if "all" in wanted or a[0] in wanted or a[1] in wanted]
    if not chosen:
        have = ", ".join(label for label, _, _ in artifacts) or "none"
        raise UsageError(f"--format {', '.join(formats)}: this version has no such artifact (it has: {have})")
    return chosen


def _run_savedmodel(directory: Path, key: str, inputs: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory))
    signatures = dict(loaded.signatures)
    if key not in signatures:
        raise UsageError(f"{directory}: no signature '{key}' (it has: {', '.join(sorted(signatures)) or 'none'}); pass --signature NAME")
    result = signatures[key](**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in result.items()}


def predict_version(directory: Path, arrays: dict[str, Any], *, formats: tuple[str, ...] = ("all",),
                    public_key: Path | None = None, trust_code: bool = False, signature_key: str = "serving_default",
                    target: str | None = None, model: str | None = None, model_version: int | None = None,
                    timeout: float = 30.0) -> PredictResult:
    """Run ``arrays`` through the chosen artifacts of a version (and the served model); compare them."""
    import time

    import numpy as np

    from tfship.client.compare import compare_outputs
    from tfship.core.errors import SignatureError
    from tfship.core.samples import inputs_for
    from tfship.core.tolerance import DEFAULT_TOLERANCES, Tolerance
    from tfship.exporter import onnx as onnx_runner
    from tfship.exporter import savedmodel_safety
    from tfship.exporter import tflite as tflite_runner

    directory = Path(directory)
    if not directory.exists():
        raise UsageError(f"{directory}: no such file or directory")
    if not directory.is_dir():
        raise UsageError(f"{directory}: predict runs a version (a directory tfship export wrote) or a SavedModel; "
                         f"this is a model file: export it first (tfship export {directory} --name NAME)")
    if target and not model:
        raise UsageError("--target needs --model NAME (the model name on the server)")
    manifest = read_manifest(directory) if (directory / mf.MANIFEST).is_file() else None
    if manifest is None and not (directory / "saved_model.pb").is_file():
        raise UsageError(f"{directory}: neither a tfship version (no manifest.json) nor a SavedModel (no saved_model.pb)")
    status = None
    if public_key is not None:
        status = signing_status(directory, public_key)
        if not status.verified:
            raise SignatureError(f"{directory}: signature not verified ({status.reason}); nothing was run")
    tolerances: dict[str, Tolerance] = {}
    if manifest is not None:
        signature = manifest.signature
        signature_key = "serving_default"
        artifacts = [(a.format if a.variant == "float32" else f"{a.format}:{a.variant}", a.format, a.path)
                     for a in manifest.artifacts if a.format in FORMATS]
        for p in manifest.parity:
            if p.tolerance:
                tolerances[p.label] = Tolerance(atol=float(p.tolerance["atol"]), rtol=float(p.tolerance["rtol"]),
                                                min_top1=p.tolerance.get("min_top1"))
    else:
        # Not our own output: the same checks as an export source before TensorFlow runs its graph.
        savedmodel_safety.check_savedmodel(directory, trust_code=trust_code)
        info = read_savedmodel(directory)
        found = next((s for s in info.signatures if s.key == signature_key), None)
        if found is None:
            raise UsageError(f"{directory}: no signature '{signature_key}' (it has: {', '.join(s.key for s in info.signatures) or 'none'}); "
                             f"pass --signature NAME")
        signature = found
        artifacts = [("savedmodel", "savedmodel", ".")]
    chosen = _select(formats, artifacts)
    inputs = inputs_for(signature, arrays, "inputs")
    runs: list[Run] = []
    for label, fmt, path in chosen:
        started = time.perf_counter()
        try:
            if fmt == "savedmodel":
                outputs = _run_savedmodel(directory, signature_key, inputs)
            elif fmt == "tflite":
                outputs = tflite_runner.run(directory / path, inputs)
            else:
                outputs = onnx_runner.run(directory / path, inputs)
            runs.append(Run(label, path, {k: np.asarray(v) for k, v in outputs.items()}, seconds=time.perf_counter() - started))
        except UsageError:
            raise
        except Exception as exc:  # the runtime refuses this input or this file: shown beside the others
            runs.append(Run(label, path, {}, error=f"{type(exc).__name__}: {first_line(exc, 240)}", seconds=time.perf_counter() - started))
    if target:
        from tfship.client.grpc_client import ServingClient

        started = time.perf_counter()
        with ServingClient(target, timeout=timeout) as client:
            answer = client.predict(inputs, str(model), version=model_version, signature=signature_key)
        runs.append(Run(SERVED, f"{target} {model}" + (f" version {answer.version}" if answer.version else ""),
                        {k: np.asarray(v) for k, v in answer.items()}, seconds=time.perf_counter() - started))
    reference = next((r for r in runs if not r.error), None)
    differences: list[dict[str, Any]] = []
    if reference is not None:
        for run in runs:
            if run is reference or run.error:
                continue
            tolerance = tolerances.get(run.label) or DEFAULT_TOLERANCES.get(run.label) or DEFAULT_TOLERANCES["savedmodel"]
            for output in compare_outputs(reference.outputs, run.outputs, tolerance).outputs:
                differences.append({"artifact": run.label, "reference": reference.label, "output": output.name,
                                    "passed": output.passed, "reason": output.reason, "max_abs": output.max_abs,
                                    "max_rel": output.max_rel, "top1_agreement": output.top1_agreement,
                                    "worst_index": list(output.worst_index), "tolerance": tolerance.describe()})
    return PredictResult(directory=directory, name=manifest.name if manifest else directory.name,
                         version=manifest.version if manifest else None, signature=signature, inputs=inputs,
                         runs=tuple(runs), differences=tuple(differences), signing=status)
