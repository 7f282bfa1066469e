"""Where a conversion diverges: the first layer at which a format stops matching the original Keras model.

The original model is cut after layer k (its inputs -> layer k's output), the truncated model goes
through the same route as the artifact (SavedModel writer, then :func:`tfship.exporter.tflite.convert`
or :func:`tfship.exporter.onnx.convert`, then the same runtime), and its outputs are compared with the
truncated original on the same samples. Bisection over the layers in topological order finds the first
k that fails (does not convert, does not run, or differs beyond the tolerance) with log2(layers)
conversions. The truncated model and its converted file at that layer are kept as a minimal reproduction.

Bisection assumes that once a layer diverges, the layers after it do too (an error does not heal);
a result whose "before" layer passes and whose layer fails is exact either way.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfship.client.compare import compare_output
from tfship.core.errors import ExportError, TfshipError, UsageError, describe_exception
from tfship.core.tolerance import FLOAT32, Tolerance
from tfship.exporter import manifest as mf

log = logging.getLogger(__name__)

REPORT = "report.json"


@dataclass(frozen=True)
class Route:
    """How an artifact is made and run: ``convert(keras_model, workdir) -> file`` and ``run(file, inputs)``."""

    label: str  # tflite, tflite:float16, onnx ...
    convert: Callable[[Any, Path], Path]
    run: Callable[[Path, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class LayerCheck:
    index: int  # position among the model's layers (topological order)
    name: str
    class_name: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    error: str = ""  # why it failed: the comparison's reason, or the conversion/run failure

    def describe(self) -> str:
        if self.max_abs is None:
            return f"layer {self.index} '{self.name}' ({self.class_name}): {self.error}"
        return (f"layer {self.index} '{self.name}' ({self.class_name}): max abs error {self.max_abs:.3g}, "
                f"max rel error {self.max_rel:.3g}" + ("" if self.passed else f" ({self.error})"))


@dataclass(frozen=True)
class Diagnosis:
    artifact: str
    layers: int  # layers that can be cut after
    full: LayerCheck  # the whole model through the route
    first_divergent: LayerCheck | None  # None: the whole model matches, or no cut fails
    before: LayerCheck | None  # the last checked layer before it that matches (None: it is the first layer)
    reproduction: Path | None
    checked: tuple[LayerCheck, ...] = field(default=())

    @property
    def diverges(self) -> bool:
        return self.first_divergent is not None

    def summary(self) -> str:
        if self.first_divergent is None:
            if self.full.passed:
                return (f"{self.artifact}: matches the original at the output (max abs error {self.full.max_abs or 0.0:.3g}, "
                        f"max rel error {self.full.max_rel or 0.0:.3g})")
            return (f"{self.artifact}: the whole model fails ({self.full.error}) but every truncated model matches: "
                    f"the divergence is in how outputs are assembled, not in one layer")
        layer = self.first_divergent
        text = (f"{self.artifact}: first diverges at layer {layer.index} '{layer.name}' ({layer.class_name}): "
                f"{layer.error or 'beyond the tolerance'}")
        if layer.max_abs is not None:
            text += f"; max abs error there {layer.max_abs:.3g}"
        if self.before is not None:
            text += f", before it ('{self.before.name}', {self.before.class_name}) {self.before.max_abs if self.before.max_abs is not None else float('nan'):.3g}"
        else:
            text += ", it is the first layer"
        if self.reproduction is not None:
            text += f"; reproduction in {self.reproduction}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "layers": self.layers, "diverges": self.diverges, "summary": self.summary(),
                "full": asdict(self.full), "first_divergent": asdict(self.first_divergent) if self.first_divergent else None,
                "before": asdict(self.before) if self.before else None,
                "reproduction": str(self.reproduction) if self.reproduction else None,
                "checked": [asdict(c) for c in self.checked]}


# --- the model, cut after a layer -------------------------------------------------------------------

def _keras_module(model: Any) -> Any:
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def cut_points(model: Any) -> list[Any]:
    """The layers the model can be cut after, in topological order (input layers and shared layers excluded)."""
    points = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError, RuntimeError):  # a layer called more than once has no single output
            continue
        if isinstance(output, (list, tuple, dict)):
            continue
        points.append(layer)
    return points


def truncate(model: Any, layer_name: str) -> Any:
    """The model from its inputs to ``layer_name``'s output, sharing its weights."""
    keras = _keras_module(model)
    layer = model.get_layer(layer_name)
    return keras.Model(inputs=model.inputs, outputs=layer.output, name=f"{model.name}_to_{layer.name}")


def _wrap(model: Any) -> Any:
    from tfship.exporter.keras_model import from_keras_model

    kind = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    return from_keras_model(model, kind, Path(f"<{model.name}>"))


# --- routes: the exporter's own conversion functions ------------------------------------------------

def route_for(label: str, *, opset: int | None = None, calibration: dict[str, np.ndarray] | None = None) -> Route:
    """The route that made artifact ``label`` (``tflite``, ``tflite:VARIANT``, ``onnx``) in the export pipeline."""
    from tfship.exporter import onnx as onnx_export
    from tfship.exporter import tflite

    fmt, _, variant = label.partition(":")
    variant = variant or "float32"

    def savedmodel(model: Any, workdir: Path) -> tuple[Any, Path]:
        wrapped = _wrap(model)
        directory = workdir / "savedmodel"
        wrapped.write_savedmodel(directory)
        return wrapped, directory

    if fmt == "tflite":
        if variant != "float32" and variant not in tflite.VARIANTS:
            raise UsageError(f"{label}: unknown TFLite variant (choose from float32, {', '.join(tflite.VARIANTS)})")

        def convert_tflite(model: Any, workdir: Path) -> Path:
            wrapped, directory = savedmodel(model, workdir)
            names = [s.name for s in wrapped.signature.inputs]
            subset = {k: calibration[k] for k in names if k in calibration} if calibration else None
            out = workdir / ("truncated.tflite" if variant == "float32" else f"truncated.{variant}.tflite")
            tflite.convert(directory, out, variant, calibration=subset, keras_model=model)
            return out

        return Route(label, convert_tflite, tflite.run)
    if fmt == "onnx":
        chosen = opset or onnx_export.DEFAULT_OPSET

        def convert_onnx(model: Any, workdir: Path) -> Path:
            _, directory = savedmodel(model, workdir)
            out = workdir / "truncated.onnx"
            onnx_export.convert(directory, out, chosen)
            return out

        return Route(label, convert_onnx, onnx_export.run)
    raise UsageError(f"{label}: diagnose compares converted formats (tflite, tflite:VARIANT, onnx), not {fmt!r}")


# --- comparing one cut --------------------------------------------------------------------------

def _only(outputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Outputs in signature order; a single output is taken whatever a converter named it."""
    if len(outputs) == 1 and len(names) == 1:
        return list(outputs.values())
    return [outputs[n] for n in names]


def _check(model: Any, index: int, layer_name: str, class_name: str, route: Route, inputs: dict[str, np.ndarray],
           tolerance: Tolerance, workdir: Path) -> tuple[LayerCheck, Path | None]:
    wrapped = _wrap(model)
    feed = {s.name: inputs[s.name] for s in wrapped.signature.inputs}
    names = [s.name for s in wrapped.signature.outputs]
    reference = wrapped.predict(feed)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        artifact = route.convert(model, workdir)
    except TfshipError as exc:
        return LayerCheck(index, layer_name, class_name, False, error=f"does not convert: {exc.message}"), None
    except Exception as exc:
        return LayerCheck(index, layer_name, class_name, False, error=f"does not convert: {describe_exception(exc)}"), None
    try:
        actual = route.run(artifact, feed)
        pairs = list(zip(names, _only(reference, names), _only(actual, names)))
    except Exception as exc:
        return LayerCheck(index, layer_name, class_name, False, error=f"converted but does not run: {describe_exception(exc)}"), artifact
    worst_abs, worst_rel, reasons, passed = 0.0, 0.0, [], True
    for name, ref, act in pairs:
        result = compare_output(name, np.asarray(ref), np.asarray(act), tolerance)
        worst_abs, worst_rel = max(worst_abs, float(result.max_abs)), max(worst_rel, float(result.max_rel))
        if not result.passed:
            passed = False
            reasons.append(f"output '{name}': {result.reason}")
    return LayerCheck(index, layer_name, class_name, passed, worst_abs, worst_rel, "; ".join(reasons)), artifact


def diagnose(model: Any, route: Route, inputs: dict[str, np.ndarray], tolerance: Tolerance, out: Path | None,
             scratch: Path | None = None) -> Diagnosis:
    """Bisect ``model``'s layers for the first one whose truncated model fails through ``route``.

    ``out`` receives the minimal reproduction (the truncated Keras model, its converted file, the
    samples and ``report.json``); None keeps nothing. Conversions happen in a temporary folder under
    ``scratch`` (the system's temporary folder by default; the confined export worker passes its staging).
    """
    points = cut_points(model)
    # Intermediate activations are not class scores: judge them element by element.
    elementwise = Tolerance(atol=tolerance.atol, rtol=tolerance.rtol)
    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfship-diagnose-", dir=scratch) as work:
        root = Path(work)
        checks: dict[int, tuple[LayerCheck, Path | None]] = {}
        last_is_output = bool(points) and len(model.outputs) == 1 and points[-1].output is model.outputs[0]
        full, artifact = _check(model, len(model.layers) - 1, model.name, type(model).__name__, route, inputs, tolerance, root / "full")
        if last_is_output and tolerance.min_top1 is None:
            # The last cut is the whole model, judged by the same rule: reuse its conversion.
            layer = points[-1]
            checks[len(points) - 1] = (LayerCheck(model.layers.index(layer), layer.name, type(layer).__name__, full.passed,
                                                  full.max_abs, full.max_rel, full.error), artifact)

        def at(k: int) -> LayerCheck:
            if k not in checks:
                layer = points[k]
                log.info("diagnose %s: checking the model cut after layer %d/%d '%s'", route.label, k + 1, len(points), layer.name)
                checks[k] = _check(truncate(model, layer.name), model.layers.index(layer), layer.name, type(layer).__name__,
                                   route, inputs, elementwise, root / f"cut{k}")
            return checks[k][0]

        first: int | None = None
        if not full.passed and points:
            low, high = -1, len(points) - 1
            if at(high).passed:
                high = -2  # the last cut matches: no single layer to blame
            while high >= 0 and high - low > 1:
                middle = (low + high) // 2
                if at(middle).passed:
                    low = middle
                else:
                    high = middle
            first = high if high >= 0 else None
        divergent = checks[first][0] if first is not None else None
        before = checks[first - 1][0] if first is not None and first - 1 in checks else None
        if first is not None and first > 0 and before is None:
            before = at(first - 1)
        reproduction = None
        if first is not None and out is not None:
            reproduction = _keep(Path(out), truncate(model, points[first].name), checks[first][1], inputs, divergent, route)
        checked = tuple(sorted((c for c, _ in checks.values()), key=lambda c: c.index))
    diagnosis = Diagnosis(route.label, len(points), full, divergent, before, reproduction, checked)
    if reproduction is not None:
        (reproduction / REPORT).write_text(json.dumps(diagnosis.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return diagnosis


def _keep(out: Path, truncated: Any, artifact: Path | None, inputs: dict[str, np.ndarray], check: LayerCheck | None,
          route: Route) -> Path:
    target = out / route.label.replace(":", "-")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if artifact is not None and artifact.exists():
        shutil.copy2(artifact, target / artifact.name)
    wrapped = _wrap(truncated)
    np.savez(target / "inputs.npz", **{s.name: inputs[s.name] for s in wrapped.signature.inputs})  # type: ignore[arg-type]
    try:
        truncated.save(target / "truncated.keras")
    except Exception as exc:  # a model Keras cannot save as .keras: the converted file and the report still help
        log.warning("diagnose: could not save the truncated model: %s", describe_exception(exc))
    return target


# --- a version directory --------------------------------------------------------------------------

def diagnose_version(version: Path, *, source: Path | None = None, artifacts: tuple[str, ...] = (), out: Path | None = None,
                     custom_objects: str | None = None, trust_code: bool = False) -> list[Diagnosis]:
    """Diagnose the converted artifacts of an exported version (the mismatched ones, else ``artifacts``, else all)."""
    from tfship.exporter import sources

    version = Path(version)
    if not (version / mf.MANIFEST).is_file():
        raise UsageError(f"{version}: no {mf.MANIFEST}; not a tfship version directory")
    manifest = mf.Manifest.from_dict(json.loads((version / mf.MANIFEST).read_text(encoding="utf-8")))
    path = Path(source) if source else Path(str(manifest.source.get("path", "")))
    if not path.exists():
        raise UsageError(f"{version}: the original model {path} is not there; pass --source FILE (the file this version was exported from)")
    if manifest.source.get("sha256") and path.is_file() and mf.sha256_file(path) != manifest.source["sha256"]:
        raise UsageError(f"{path}: not the file version {manifest.version} was exported from (its SHA-256 differs from the manifest's)")
    converted = [p for p in manifest.parity if p.format in ("tflite", "onnx")]
    if artifacts:
        known = {p.label for p in converted}
        unknown = [a for a in artifacts if a not in known]
        if unknown:
            raise UsageError(f"--artifact {unknown[0]}: this version has {', '.join(sorted(known)) or 'no converted artifacts'}")
        chosen = [p for p in converted if p.label in artifacts]
    else:
        chosen = [p for p in converted if p.status != "pass"] or converted
    if not chosen:
        raise UsageError(f"{version}: no TFLite or ONNX artifact to diagnose")
    loaded = sources.load_source(path, custom_objects_spec=custom_objects, trust_code=trust_code)
    if loaded.keras_model is None:
        raise ExportError(f"{path}: diagnose cuts a Keras model layer by layer; a SavedModel source has no layers to cut")
    with np.load(version / mf.GOLDEN, allow_pickle=False) as golden:
        inputs = {k.split("/", 1)[1]: golden[k] for k in golden.files if k.startswith("inputs/")}
    opset = int(manifest.libraries.get("onnx_opset", 0)) or None
    destination = Path(out) if out else Path("tfship-diagnose") / f"{manifest.name}-{manifest.version}"
    results = []
    for parity in chosen:
        tolerance = Tolerance(atol=float(parity.tolerance.get("atol", FLOAT32.atol)), rtol=float(parity.tolerance.get("rtol", FLOAT32.rtol)),
                              min_top1=parity.tolerance.get("min_top1"))
        route = route_for(parity.label, opset=opset, calibration=inputs)
        results.append(diagnose(loaded.keras_model, route, inputs, tolerance, destination))
    return results


# --- inside the export ------------------------------------------------------------------------------

# Where the export worker (which may write only its staging folder) leaves reproductions; the parent
# moves the folder out of the version with move_reproductions() before it signs or discards it.
STAGING_DIR = ".diagnose"


def diagnose_export(keras_model: Any, parity: list[mf.ArtifactParity] | tuple[mf.ArtifactParity, ...], inputs: dict[str, np.ndarray],
                    staging: Path, *, opset: int | None = None, calibration: dict[str, np.ndarray] | None = None,
                    everything: bool = False, progress: Callable[[str], None] | None = None) -> list[Diagnosis]:
    """Diagnose the converted artifacts that failed parity (``everything``: all of them) during an export.

    ``parity`` entries carry each artifact's tolerance; a ``failed`` artifact (it did not convert or
    run) is diagnosed too: bisection then finds the first layer that does not convert.
    """
    if keras_model is None:
        return []
    chosen = [p for p in parity if p.format in ("tflite", "onnx") and (everything or p.status != "pass")]
    results = []
    for entry in chosen:
        if progress is not None:
            progress(f"diagnosing {entry.label}: bisecting the layers for the first that diverges")
        tolerance = Tolerance(atol=float(entry.tolerance.get("atol", FLOAT32.atol)), rtol=float(entry.tolerance.get("rtol", FLOAT32.rtol)),
                              min_top1=entry.tolerance.get("min_top1"))
        route = route_for(entry.label, opset=opset, calibration=calibration or inputs)
        found = diagnose(keras_model, route, inputs, tolerance, Path(staging) / STAGING_DIR,
                         scratch=Path(staging) / STAGING_DIR / ".work")
        if found.reproduction is not None:
            # Named relative to the reproductions folder: the parent moves that folder out of the version.
            relative = Path(found.reproduction.name)
            found = replace(found, reproduction=relative)
            (Path(staging) / STAGING_DIR / relative / REPORT).write_text(
                json.dumps(found.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        results.append(found)
    shutil.rmtree(Path(staging) / STAGING_DIR / ".work", ignore_errors=True)
    return results


def move_reproductions(staging: Path, destination: Path) -> Path | None:
    """Move the reproductions the worker left in ``staging`` to ``destination``; None when there are none."""
    source = Path(staging) / STAGING_DIR
    if not source.is_dir():
        return None
    shutil.rmtree(source / ".work", ignore_errors=True)
    if not any(source.iterdir()):
        source.rmdir()
        return None
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        target = destination / entry.name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(entry), str(target))
    source.rmdir()
    return destination


def located(diagnoses: tuple[dict[str, Any], ...] | list[dict[str, Any]], folder: Path | None) -> list[dict[str, Any]]:
    """Diagnoses from a manifest with each reproduction's path inside ``folder`` (where move_reproductions put it)."""
    return [{**d, "reproduction": str(Path(folder) / d["reproduction"]) if folder is not None and d.get("reproduction") else None}
            for d in diagnoses]
