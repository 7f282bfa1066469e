"""The attestation of a version: an in-toto Statement v1 of what the export proved, signed with the signing key.

Subjects are every file of the version (each artifact's files, the golden set, the warmup records,
the manifest, the ML-BOM) with their SHA-256; the predicate is what was measured: the source file's
digest and format, the library versions, the golden set's digest and, per artifact and output, the
parity against the original (max abs/rel error, the tolerance, top-1 agreement). The statement is
built from ``manifest.json`` after checking that every artifact file still has the digest the
export measured, so a file swapped after the export cannot be attested with someone else's parity.

Write it before ``model.sig`` (:func:`tfship.core.signing.sign`): the signature then covers it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfship.core import signing
from tfship.core.errors import SignatureError
from tfship.exporter import manifest as mf

PREDICATE_TYPE = "https://tfship.dev/attestation/export/v1"
# The output fields a parity claim keeps (the manifest has more: worst cases, p99, counts).
OUTPUT_FIELDS = ("name", "passed", "max_abs", "max_rel", "p99_abs", "p99_rel", "top1_agreement",
                 "failed_elements", "total_elements", "nan_count", "inf_count")


def _source_format(source: dict[str, Any]) -> str:
    path = str(source.get("path", ""))
    suffix = Path(path).suffix.lower()
    kind = str(source.get("kind", ""))
    if kind == "savedmodel" and not suffix:
        return "savedmodel"
    return f"{kind}{suffix}" if suffix else kind


def predicate(manifest: mf.Manifest, golden_sha256: str) -> dict[str, Any]:
    """What the export proved, from its manifest."""
    parity = []
    for entry in manifest.parity:
        parity.append({
            "artifact": entry.label, "format": entry.format, "variant": entry.variant, "path": entry.path,
            "status": entry.status, "error": entry.error, "tolerance": dict(entry.tolerance),
            "outputs": [{k: o.get(k) for k in OUTPUT_FIELDS} for o in entry.outputs],
        })
    result: dict[str, Any] = {
        "model": {"name": manifest.name, "version": manifest.version, "created": manifest.created,
                  "signature": manifest.signature.to_dict()},
        "source": {"path": manifest.source.get("path", ""), "kind": manifest.source.get("kind", ""),
                   "format": _source_format(manifest.source), "digest": {"sha256": manifest.source.get("sha256", "")}},
        "libraries": dict(manifest.libraries),
        "goldenSet": {"path": mf.GOLDEN, "digest": {"sha256": golden_sha256}, "samples": dict(manifest.samples)},
        "parity": parity,
        "tfship": manifest.tfship_version,
    }
    if manifest.diagnoses:
        result["diagnoses"] = [{"artifact": d.get("artifact"), "summary": d.get("summary"),
                                "firstDivergent": d.get("first_divergent"), "before": d.get("before")} for d in manifest.diagnoses]
    return result


def _check_artifacts_unchanged(directory: Path, manifest: mf.Manifest, subjects: dict[str, str]) -> None:
    changed = []
    for artifact in manifest.artifacts:
        for entry in artifact.files:
            if subjects.get(entry.path) != entry.sha256:
                changed.append(entry.path)
    if changed:
        raise SignatureError(f"{directory}: {', '.join(changed[:10])} no longer match the digests the export measured "
                             f"(manifest.json): refusing to attest parity that was measured on other files")


def statement(directory: Path) -> dict[str, Any]:
    """The in-toto Statement v1 for the version in ``directory`` (its manifest.json must exist)."""
    directory = Path(directory)
    manifest = mf.Manifest.from_dict(json.loads((directory / mf.MANIFEST).read_text(encoding="utf-8")))
    subjects = signing.subjects_of(directory)
    digests = {s["name"]: s["digest"]["sha256"] for s in subjects}
    _check_artifacts_unchanged(directory, manifest, digests)
    labels = {f.path: (a.format if a.variant == "float32" else f"{a.format}:{a.variant}")
              for a in manifest.artifacts for f in a.files}
    for subject in subjects:
        if subject["name"] in labels:
            subject["annotations"] = {"artifact": labels[subject["name"]]}
    return {"_type": signing.STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE,
            "predicate": predicate(manifest, digests.get(mf.GOLDEN, ""))}


def attest(directory: Path, key: Path, password: str | bytes | None = None) -> Path:
    """Write ``directory/attestation.intoto.jsonl`` signed with ``key``; call it before signing model.sig."""
    return signing.write_attestation(directory, statement(directory), key, password)


def has_manifest(directory: Path) -> bool:
    return (Path(directory) / mf.MANIFEST).is_file()
