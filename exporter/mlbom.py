"""bom.cdx.json: a CycloneDX 1.6 ML-BOM of a version, made with cyclonedx-python-lib.

The model is the BOM's subject (``metadata.component``, type ``machine-learning-model``) with its
files nested as ``file`` components carrying their SHA-256; the libraries that loaded, converted and
checked it (TensorFlow, Keras, tf2onnx, LiteRT, ...) are ``library``/``framework`` components it
depends on. cyclonedx-python-lib has no model-card class (11.x), so the ``modelCard`` (the model's
inputs and outputs, and the measured parity as performance metrics) is added to the serialized
document, which is then validated against the CycloneDX 1.6 JSON schema by the library's validator
before it is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError
from tfship.exporter import manifest as mf

BOM_FILE = "bom.cdx.json"
MODEL_REF = "model"
# Libraries that are the frameworks a model runs on; the others are tools that converted or checked it.
FRAMEWORKS = {"tensorflow", "keras", "tf-keras", "onnxruntime", "ai-edge-litert"}


def _spec_format(spec: dict[str, Any]) -> str:
    shape = ",".join("-1" if d is None else str(d) for d in spec.get("shape", []))
    return f"{spec.get('name', '')}: {spec.get('dtype', '')}[{shape}]"


def _model_card(manifest: mf.Manifest) -> dict[str, Any]:
    signature = manifest.signature.to_dict()
    metrics = []
    for parity in manifest.parity:
        for output in parity.outputs:
            where = f"{parity.label} output {output.get('name')}"
            for key, kind in (("max_abs", "max absolute error vs original"), ("max_rel", "max relative error vs original"),
                              ("top1_agreement", "top-1 agreement with original")):
                if output.get(key) is not None:
                    metrics.append({"type": kind, "value": f"{output[key]:.6g}", "slice": where})
    card: dict[str, Any] = {
        "modelParameters": {
            "inputs": [{"format": _spec_format(s)} for s in signature.get("inputs", [])],
            "outputs": [{"format": _spec_format(s)} for s in signature.get("outputs", [])],
        },
    }
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    return card


def build(manifest: mf.Manifest) -> str:
    """The ML-BOM of ``manifest``'s version as CycloneDX 1.6 JSON (validated against the schema)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    files = []
    for artifact in manifest.artifacts:
        label = artifact.format if artifact.variant == "float32" else f"{artifact.format}:{artifact.variant}"
        for entry in artifact.files:
            files.append(Component(type=ComponentType.FILE, name=entry.path, bom_ref=f"file:{entry.path}",
                                   hashes=[HashType(alg=HashAlgorithm.SHA_256, content=entry.sha256)],
                                   properties=[Property(name="tfship:artifact", value=label),
                                               Property(name="tfship:bytes", value=str(entry.bytes))]))
    source = manifest.source
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=manifest.name, version=str(manifest.version), bom_ref=MODEL_REF,
        description=f"{manifest.name} version {manifest.version}, exported by tfship {manifest.tfship_version} from "
                    f"{Path(str(source.get('path', ''))).name} ({source.get('kind', '')})",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=str(source["sha256"]))] if source.get("sha256") else None,
        properties=[Property(name="tfship:source:path", value=str(source.get("path", ""))),
                    Property(name="tfship:source:kind", value=str(source.get("kind", ""))),
                    Property(name="tfship:signature_key", value=manifest.signature.key)],
        components=files,
    )
    libraries = []
    for name, version in sorted(manifest.libraries.items()):
        if name == "onnx_opset" or not version:
            if name == "onnx_opset":
                model.properties.add(Property(name="tfship:onnx_opset", value=str(version)))
            continue
        libraries.append(Component(type=ComponentType.FRAMEWORK if name in FRAMEWORKS else ComponentType.LIBRARY,
                                   name=name, version=str(version), bom_ref=f"pkg:{name}",
                                   purl=PackageURL(type="pypi", name=name, version=str(version))))
    bom = Bom(components=libraries)
    bom.metadata.component = model
    bom.register_dependency(model, libraries)
    for library in libraries:
        bom.register_dependency(library)
    document = json.loads(JsonV1Dot6(bom).output_as_string())
    # The hashes say which files were described; the model card says what goes in and out and how each
    # artifact compared with the original.
    document["metadata"]["component"]["modelCard"] = _model_card(manifest)
    text = json.dumps(document, indent=2) + "\n"
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ExportError(f"the ML-BOM does not validate against CycloneDX 1.6: {error}")
    return text


def write(directory: Path, manifest: mf.Manifest | None = None) -> Path:
    """Write ``directory/bom.cdx.json`` (from ``manifest``, or the directory's manifest.json)."""
    directory = Path(directory)
    if manifest is None:
        manifest = mf.Manifest.from_dict(json.loads((directory / mf.MANIFEST).read_text(encoding="utf-8")))
    target = directory / BOM_FILE
    target.write_text(build(manifest), encoding="utf-8")
    return target
