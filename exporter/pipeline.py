"""``tfship export``: source → SavedModel → TFLite → ONNX → parity → golden set, warmup, manifest → sign → publish.

:func:`export` runs here; :func:`build_version` (everything that reads the model file) runs in the
confined export worker (:mod:`tfship.exporter.worker`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tfship.client.compare import Comparison, compare_outputs
from tfship.core import samples as sample_inputs
from tfship.core import signing
from tfship.core import tolerance as tolerances
from tfship.core.errors import ExportError, PredictionMismatch, TfshipError, UsageError, describe_exception
from tfship.core.tolerance import Tolerance
from tfship.exporter import attestation, diagnose, keras_model, mlbom, repository, sources, tflite, warmup
from tfship.exporter import manifest as mf
from tfship.exporter import onnx as onnx_export

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMATS = ("savedmodel", "tflite", "onnx")
_FALLBACK_TOLERANCES = {
    "savedmodel": Tolerance(atol=1e-5, rtol=1e-5),
    "tflite": Tolerance(atol=1e-5, rtol=1e-5),
    "onnx": Tolerance(atol=1e-5, rtol=1e-5),
    "tflite:float16": Tolerance(atol=1e-3, rtol=1e-3),
    "tflite:dynamic": Tolerance(atol=1e-2, rtol=1e-2),
    "tflite:int8": Tolerance(atol=0.1, rtol=0.1, min_top1=0.99),
}
# The defaults live in tfship.core.tolerance (chosen from the measured parity corpus).
DEFAULT_TOLERANCES: dict[str, Tolerance] = getattr(tolerances, "DEFAULT_TOLERANCES", _FALLBACK_TOLERANCES)


@dataclass(frozen=True)
class ExportOptions:
    source: Path
    name: str
    repo: Path = Path("models")
    version: int | None = None
    formats: tuple[str, ...] = FORMATS
    tflite_quantize: tuple[str, ...] = ()
    calibration: Path | None = None
    samples: Path | None = None
    num_samples: int = sample_inputs.DEFAULT_COUNT
    architecture: str | None = None
    custom_objects: str | None = None
    trust_code: bool = False
    sign_key: Path | None = None
    sign_key_password: str | None = None
    opset: int = onnx_export.DEFAULT_OPSET
    strict: bool = False
    allow_mismatch: bool = False
    atol: dict[str, float] = field(default_factory=dict)  # label ("*" for all) -> value
    rtol: dict[str, float] = field(default_factory=dict)
    signature: str = sources.SIGNATURE_KEY
    # Bisect every converted artifact for where it diverges (an artifact that fails parity always is).
    diagnose: bool = False
    diagnose_dir: Path | None = None  # where the reproductions go [default: ./tfship-diagnose/NAME-VERSION]


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    directory: Path
    manifest: mf.Manifest
    timings: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "version": self.version, "directory": str(self.directory),
            "signed": (self.directory / signing.SIGNATURE_FILE).exists(),
            "artifacts": [{"format": a.format, "variant": a.variant, "path": a.path, "bytes": a.bytes} for a in self.manifest.artifacts],
            "parity": [{"artifact": p.label, "status": p.status, "error": p.error,
                        "max_abs": max((o["max_abs"] for o in p.outputs), default=None),
                        "top1_agreement": _min_top1(p.outputs)} for p in self.manifest.parity],
            "notices": list(self.manifest.notices), "timings": self.timings,
            "diagnoses": [{"artifact": d.get("artifact"), "summary": _located_summary(d), "reproduction": d.get("reproduction")}
                          for d in self.manifest.diagnoses],
        }


def _min_top1(outputs: tuple[dict[str, Any], ...]) -> float | None:
    values = [o["top1_agreement"] for o in outputs if o.get("top1_agreement") is not None]
    return min(values) if values else None


def tolerance_for(label: str, options: ExportOptions) -> Tolerance:
    base = DEFAULT_TOLERANCES.get(label) or DEFAULT_TOLERANCES[label.split(":")[0]]
    atol = options.atol.get(label, options.atol.get(label.split(":")[0], options.atol.get("*", base.atol)))
    rtol = options.rtol.get(label, options.rtol.get(label.split(":")[0], options.rtol.get("*", base.rtol)))
    return Tolerance(atol=atol, rtol=rtol, min_top1=base.min_top1)


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in ("tfship", "tensorflow", "keras", "tf-keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "model-signing", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


class _Stages:
    def __init__(self, progress: Callable[[str], None]) -> None:
        self.timings: dict[str, float] = {}
        self.progress = progress

    def run(self, name: str, message: str, fn: Callable[[], T]) -> T:
        self.progress(message)
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def check_options(options: ExportOptions) -> None:
    """Usage errors, found before any file is read."""
    repository.check_name(options.name)
    unknown = [f for f in options.formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"--formats: unknown format {unknown[0]!r} (choose from {', '.join(FORMATS)})")
    if "savedmodel" not in options.formats:
        raise UsageError("--formats must include savedmodel: TFLite and ONNX are converted from it and TF Serving serves it")
    bad_variants = [v for v in options.tflite_quantize if v not in tflite.VARIANTS]
    if bad_variants:
        raise UsageError(f"--tflite-quantize: unknown variant {bad_variants[0]!r} (choose from {', '.join(tflite.VARIANTS)})")
    if options.tflite_quantize and "tflite" not in options.formats:
        raise UsageError("--tflite-quantize needs tflite in --formats")
    if options.sign_key is not None and not Path(options.sign_key).is_file():
        raise UsageError(f"{options.sign_key}: signing key not found")
    if options.opset not in onnx_export.SUPPORTED_OPSETS:
        raise UsageError(f"--opset {options.opset}: choose {onnx_export.SUPPORTED_OPSETS.start}-{onnx_export.SUPPORTED_OPSETS.stop - 1}")


def export(options: ExportOptions, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``options.source`` as a new version of ``options.name``.

    The model file is loaded, converted and checked by :mod:`tfship.exporter.worker` in a confined
    child process that writes only the staging directory; this process keeps the signing key, signs
    the finished directory and renames it into the repository.
    """
    from tfship.exporter import worker

    report = progress or (lambda message: log.info("%s", message))
    check_options(options)
    model_dir = Path(options.repo) / options.name
    version = repository.next_version(model_dir, options.version)
    staging = repository.staging_dir(model_dir)
    try:
        manifest, timings = worker.build_in_child(options, staging, version, report)
        # The reproductions of a diagnosis leave the version before anything checks, attests or signs it.
        reproductions = diagnose.move_reproductions(staging, Path(options.diagnose_dir or Path("tfship-diagnose") / f"{options.name}-{version}"))
        if manifest.diagnoses:
            manifest = replace(manifest, diagnoses=tuple(diagnose.located(manifest.diagnoses, reproductions)))
            manifest.write(staging)
            for entry in manifest.diagnoses:
                report(f"notice: diagnose: {_located_summary(entry)}")
        worker.check_staging(staging)
        parity = manifest.parity
        failed = [p for p in parity if p.status == "failed"]
        if failed and options.strict:
            raise ExportError(f"{failed[0].label} could not be produced ({failed[0].error}); --strict makes that fatal")
        mismatched = [p for p in parity if p.status == "mismatch"]
        if mismatched and not options.allow_mismatch:
            first = mismatched[0]
            where = next((f"; {_located_summary(d)}" for d in manifest.diagnoses if d.get("artifact") == first.label and d.get("diverges")), "")
            raise PredictionMismatch(
                f"{first.label} does not predict what the original predicts: {first.error}{where}; "
                f"no version was written (pass --allow-mismatch to keep it, or loosen --atol/--rtol)"
            )
        stages = _Stages(report)
        stages.timings.update(timings)
        stages.run("bom", "writing the ML-BOM", lambda: mlbom.write(staging))
        sign_key = options.sign_key
        if sign_key is not None:
            def sign() -> None:
                # The attestation first: model.sig then covers it with every other file.
                attestation.attest(staging, Path(sign_key), options.sign_key_password)
                signing.sign(staging, key=Path(sign_key), password=options.sign_key_password)

            stages.run("sign", "attesting and signing the version", sign)
        final = repository.publish(staging, model_dir, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(name=options.name, version=version, directory=final, manifest=manifest, timings=stages.timings)


def _located_summary(entry: dict[str, Any]) -> str:
    """A diagnosis' summary naming where its reproduction now lies."""
    text = str(entry.get("summary") or entry.get("artifact"))
    head, _, _ = text.partition("; reproduction in ")
    return f"{head}; reproduction in {entry['reproduction']}" if entry.get("reproduction") else head


def build_version(options: ExportOptions, staging: Path, version: int, progress: Callable[[str], None],
                  source_label: str | None = None) -> tuple[mf.Manifest, dict[str, float]]:
    """Load the source and write every artifact, the golden set, warmup records and the manifest into ``staging``.

    This is the part that reads the untrusted file: :func:`export` runs it in the confined worker.
    """
    stages = _Stages(progress)
    source = Path(options.source)
    loaded = stages.run("load", f"loading {source_label or source}", lambda: sources.load_source(
        source, architecture=options.architecture, custom_objects_spec=options.custom_objects,
        trust_code=options.trust_code, signature_key=options.signature))
    for notice in loaded.notices:
        progress(f"notice: {notice}")

    inputs, sample_info = stages.run("samples", "choosing sample inputs", lambda: _samples(loaded, options))
    for warning in sample_info.get("warnings", []):
        progress(f"warning: {warning}")
    calibration = sample_inputs.load_npz_inputs(Path(options.calibration), loaded.signature, "--calibration") if options.calibration else inputs

    def original_outputs() -> dict[str, np.ndarray]:
        try:
            return loaded.predict(inputs)
        except TfshipError:
            raise
        except Exception as exc:
            raise ExportError(f"{source}: the model fails on the sample inputs: {describe_exception(exc)}") from exc

    reference = stages.run("original", "running the original model on the sample inputs", original_outputs)
    if options.samples:
        sample_info.update(_check_outputs(reference))
        for warning in sample_info.get("warnings", []):
            progress(f"warning: {warning}")
    artifacts, parity = _build(staging, loaded, inputs, reference, calibration, options, stages)
    failures = [f"{p.label} could not be produced: {p.error}" for p in parity if p.status == "failed"]
    # A mismatch is always bisected; with --diagnose every converted artifact is (a failed conversion too).
    to_diagnose = [p for p in parity if options.diagnose or p.status == "mismatch"]
    diagnoses = stages.run("diagnose", "finding where the conversion diverges", lambda: diagnose.diagnose_export(
        loaded.keras_model, to_diagnose, inputs, staging, opset=options.opset, calibration=calibration,
        everything=options.diagnose, progress=progress)) if to_diagnose else []
    stages.run("write", "writing golden set, warmup records and manifest", lambda: _write_support(staging, options.name, inputs, reference))
    artifacts.append(mf.Artifact("golden", "float32", mf.GOLDEN, mf.describe_files(staging, mf.GOLDEN)))
    artifacts.append(mf.Artifact("warmup", "float32", mf.WARMUP, mf.describe_files(staging, mf.WARMUP)))
    manifest = mf.Manifest(
        tfship_version=_library_versions().get("tfship", "0"), name=options.name, version=version,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source={"path": source_label or str(source), "kind": loaded.kind, "sha256": _source_digest(source)},
        libraries={**_library_versions(), "onnx_opset": str(options.opset)},
        signature=loaded.signature, artifacts=tuple(artifacts), parity=tuple(parity),
        samples=sample_info, notices=tuple(loaded.notices) + tuple(failures),
        diagnoses=tuple(d.to_dict() for d in diagnoses),
    )
    manifest.write(staging)
    return manifest, stages.timings




def _samples(loaded: sources.LoadedModel, options: ExportOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The user's ``--samples``, or inputs designed to exercise the model (ids for Embedding inputs, the float
    distribution whose outputs vary most: :mod:`tfship.exporter.sample_design`)."""
    if options.samples:
        inputs = sample_inputs.load_npz_inputs(Path(options.samples), loaded.signature)
        return inputs, {"source": str(options.samples), "count": len(next(iter(inputs.values())))}
    try:
        from tfship.exporter import sample_design
    except ImportError:  # pragma: no cover - the sample designer ships with tfship
        inputs = sample_inputs.generate_inputs(loaded.signature, options.num_samples, loaded.vocab_sizes)
        return inputs, {"source": "generated", "seed": sample_inputs.SEED, "count": options.num_samples}
    return sample_design.design_samples(loaded.keras_model, loaded.signature, options.num_samples,
                                        predict=loaded.predict)


def _check_outputs(reference: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        from tfship.exporter import sample_design
    except ImportError:  # pragma: no cover
        return {}
    return sample_design.check_outputs(reference)


_LIBRARY = {"keras": "Keras 3", "tf_keras": "tf_keras", "savedmodel": "the SavedModel"}


def _names(signature: Any) -> tuple[list[str], list[str]]:
    return sorted(s.name for s in signature.inputs), sorted(s.name for s in signature.outputs)


def _custom_objects(options: ExportOptions) -> dict[str, Any]:
    """The user's custom objects again, for the conversions that rebuild the model (static batch, other library)."""
    if not options.custom_objects:
        return {}
    from tfship.exporter.custom_objects import load_custom_objects

    return load_custom_objects(options.custom_objects)


def _source_digest(source: Path) -> str:
    if source.is_file():
        return mf.sha256_file(source)
    if source.is_dir() and (source / "saved_model.pb").exists():
        return mf.sha256_file(source / "saved_model.pb")
    return ""


def _write_support(staging: Path, name: str, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    arrays = {f"inputs/{k}": v for k, v in inputs.items()}
    arrays.update({f"outputs/{k}": v for k, v in reference.items()})
    with (staging / mf.GOLDEN).open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    warmup.write(staging / mf.WARMUP, name, inputs)


def _parity(label: str, fmt: str, variant: str, path: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            options: ExportOptions) -> mf.ArtifactParity:
    tolerance = tolerance_for(label, options)
    comparison: Comparison = compare_outputs(reference, actual, tolerance)
    failures = comparison.failures()
    error = "; ".join(f"output '{o.name}': {o.reason}" for o in failures)
    return mf.ArtifactParity(format=fmt, variant=variant, path=path, status="pass" if comparison.passed else "mismatch",
                             error=error, tolerance={"atol": tolerance.atol, "rtol": tolerance.rtol, "min_top1": tolerance.min_top1},
                             outputs=tuple(o.to_dict() for o in comparison.outputs))


def _failed(fmt: str, variant: str, path: str, error: str) -> mf.ArtifactParity:
    return mf.ArtifactParity(format=fmt, variant=variant, path=path, status="failed", error=error)


def _build(staging: Path, loaded: sources.LoadedModel, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           calibration: dict[str, np.ndarray], options: ExportOptions, stages: _Stages) -> tuple[list[mf.Artifact], list[mf.ArtifactParity]]:
    import tensorflow as tf

    artifacts: list[mf.Artifact] = []
    parity: list[mf.ArtifactParity] = []

    def write_savedmodel() -> None:
        try:
            loaded.write_savedmodel(staging)
        except TfshipError:
            raise
        except Exception as exc:
            raise ExportError(f"{loaded.source}: writing the SavedModel failed: {describe_exception(exc)}") from exc

    stages.run("savedmodel", "writing the SavedModel (serving_default)", write_savedmodel)
    files = tuple(f for f in mf.describe_files(staging, ".") if f.path == "saved_model.pb" or f.path.startswith(("variables/", "fingerprint.pb", "assets/")))
    artifacts.append(mf.Artifact("savedmodel", "float32", ".", files))

    def savedmodel_outputs() -> dict[str, np.ndarray]:
        try:
            served = tf.saved_model.load(str(staging)).signatures["serving_default"]
            result: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(next(iter(inputs.values()))), 256):
                part = served(**{k: tf.constant(v[start:start + 256]) for k, v in inputs.items()})
                for key, value in part.items():
                    result.setdefault(key, []).append(value.numpy())
        except Exception as exc:  # TF Serving serves this directory: a SavedModel that does not run is fatal
            raise ExportError(f"{loaded.source}: the written SavedModel does not run: {describe_exception(exc)}") from exc
        return {k: np.concatenate(v) for k, v in result.items()}

    parity.append(stages.run("parity", "checking the SavedModel against the original",
                             lambda: _parity("savedmodel", "savedmodel", "float32", ".", reference, savedmodel_outputs(), options)))

    custom_objects = _custom_objects(options)
    other: list[tuple[sources.LoadedModel, Path] | ExportError] = []  # the other Keras library's model, once

    def other_route() -> tuple[sources.LoadedModel, Path]:
        """The model as the other Keras library reads it, with its own SavedModel (for a route that failed)."""
        if not other:
            try:
                if loaded.keras_model is None:
                    raise ExportError("a SavedModel source has no other loader")
                model = keras_model.load_with_other_library(loaded, custom_objects, options.trust_code)
                if _names(model.signature) != _names(loaded.signature):
                    raise ExportError(f"{model.kind} names the model's inputs/outputs differently")
                folder = Path(tempfile.mkdtemp(prefix="tfship-other-"))
                model.write_savedmodel(folder / "savedmodel")
                other.append((model, folder / "savedmodel"))
            except ExportError as exc:
                other.append(exc)
            except Exception as exc:
                other.append(ExportError(describe_exception(exc)))
        found = other[0]
        if isinstance(found, ExportError):
            raise found
        return found

    def with_fallback(label: str, convert: Callable[[Path, sources.LoadedModel], list[str]]) -> list[str]:
        """``convert`` from the version's SavedModel; when it fails, from the model read by the other Keras library."""
        try:
            return convert(staging, loaded)
        except ExportError as first:
            if loaded.keras_model is None:
                raise
            try:
                model, savedmodel = other_route()
            except ExportError as exc:
                log.info("%s: no second route (%s)", label, exc.message)
                raise first from None
            try:
                notices = convert(savedmodel, model)
            except ExportError as second:
                raise ExportError(f"{first.message} (read with {_LIBRARY[model.kind]} too: {second.message})") from None
            log.info("%s: converted the model as %s reads it (%s's route failed: %s)", label, _LIBRARY[model.kind],
                     _LIBRARY[loaded.kind], first.message)
            return notices + [f"{label}: converted from the model as {_LIBRARY[model.kind]} reads it "
                              f"({_LIBRARY[loaded.kind]}'s route failed: {first.message})"]

    def add_converted(fmt: str, variant: str, filename: str, convert: Callable[[], list[str]],
                      run: Callable[[], dict[str, np.ndarray]], message: str) -> None:
        """Convert, then run; a file that does not convert, does not run or does not match is left out of the version."""
        label = fmt if variant == "float32" else f"{fmt}:{variant}"
        try:
            notices = stages.run(fmt, message, convert)
        except ExportError as exc:
            (staging / filename).unlink(missing_ok=True)
            stages.progress(f"warning: {label} not produced: {exc.message}")
            parity.append(_failed(fmt, variant, filename, exc.message))
            return
        try:
            actual = stages.run("parity", f"checking {filename} against the original", run)
        except Exception as exc:  # the runtime refuses or crashes on the converted file
            (staging / filename).unlink(missing_ok=True)
            text = exc.message if isinstance(exc, ExportError) else describe_exception(exc)
            reason = f"{filename} converted but does not run ({text}); it is left out of the version"
            stages.progress(f"warning: {label} not produced: {reason}")
            parity.append(_failed(fmt, variant, filename, reason))
            return
        checked = _parity(label, fmt, variant, filename, reference, actual, options)
        parity.append(checked)
        if checked.status != "pass" and not options.allow_mismatch:
            (staging / filename).unlink(missing_ok=True)  # never left in a version (export() refuses the version)
            return
        artifacts.append(mf.Artifact(fmt, variant, filename, mf.describe_files(staging, filename)))
        loaded.notices.extend(notices)

    if "tflite" in options.formats:
        for variant in ("float32",) + tuple(options.tflite_quantize):
            filename = "model.tflite" if variant == "float32" else f"model.{variant}.tflite"
            path = staging / filename

            def convert_tflite(path: Path = path, variant: str = variant) -> list[str]:
                return with_fallback("tflite", lambda savedmodel, model: tflite.convert(
                    savedmodel, path, variant, calibration=calibration, keras_model=model.keras_model,
                    custom_objects=custom_objects, kind=model.kind))

            def run_tflite(path: Path = path) -> dict[str, np.ndarray]:
                return tflite.run(path, inputs)

            add_converted("tflite", variant, filename, convert_tflite, run_tflite, f"converting to TFLite ({variant})")

    if "onnx" in options.formats:
        onnx_path = staging / "model.onnx"

        def convert_onnx() -> list[str]:
            def route(savedmodel: Path, model: sources.LoadedModel) -> list[str]:
                onnx_export.convert(savedmodel, onnx_path, options.opset)
                return []
            return with_fallback("onnx", route)

        add_converted("onnx", "float32", "model.onnx", convert_onnx,
                      lambda: onnx_export.run(onnx_path, inputs), f"converting to ONNX (opset {options.opset})")
    if other and not isinstance(other[0], ExportError):
        shutil.rmtree(other[0][1].parent, ignore_errors=True)
    return artifacts, parity
