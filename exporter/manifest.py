"""manifest.json: what a version holds, where it came from, and how each artifact compared."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfship.core.signature import Signature

MANIFEST = "manifest.json"
GOLDEN = "golden.npz"
WARMUP = "assets.extra/tf_serving_warmup_requests"
SCHEMA = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Artifact:
    format: str  # savedmodel, tflite, onnx
    variant: str  # float32, float16, dynamic, int8
    path: str  # file or directory, relative to the version directory
    files: tuple[FileEntry, ...]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


@dataclass(frozen=True)
class ArtifactParity:
    format: str
    variant: str
    path: str
    # pass, mismatch, or failed: not produced (the conversion failed, or the converted file does not
    # run); a failed artifact's file is left out of the version and ``error`` says why.
    status: str
    error: str = ""
    tolerance: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[dict[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return self.format if self.variant == "float32" else f"{self.format}:{self.variant}"


@dataclass(frozen=True)
class Manifest:
    tfship_version: str
    name: str
    version: int
    created: str
    source: dict[str, Any]
    libraries: dict[str, str]
    signature: Signature
    artifacts: tuple[Artifact, ...]
    parity: tuple[ArtifactParity, ...]
    samples: dict[str, Any]
    notices: tuple[str, ...] = ()
    schema: int = SCHEMA
    # Where a failing artifact first diverges from the original (tfship.exporter.diagnose), one entry per artifact.
    diagnoses: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["signature"] = self.signature.to_dict()
        for artifact, entry in zip(self.artifacts, data["artifacts"]):
            entry["bytes"] = artifact.bytes
        return data

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The inverse of :meth:`to_dict` (the export worker sends its manifest to the parent so)."""
        return cls(
            tfship_version=data["tfship_version"], name=data["name"], version=int(data["version"]),
            created=data["created"], source=data["source"], libraries=data["libraries"],
            signature=Signature.from_dict(data["signature"]),
            artifacts=tuple(
                Artifact(format=a["format"], variant=a["variant"], path=a["path"],
                         files=tuple(FileEntry(**f) for f in a["files"]))
                for a in data["artifacts"]
            ),
            parity=tuple(
                ArtifactParity(format=p["format"], variant=p["variant"], path=p["path"], status=p["status"],
                               error=p.get("error", ""), tolerance=p.get("tolerance", {}), outputs=tuple(p.get("outputs", ())))
                for p in data["parity"]
            ),
            samples=data.get("samples", {}), notices=tuple(data.get("notices", ())), schema=data.get("schema", SCHEMA),
            diagnoses=tuple(data.get("diagnoses", ())),
        )


def describe_files(root: Path, relative: str) -> tuple[FileEntry, ...]:
    target = root / relative
    paths = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return tuple(FileEntry(path=str(p.relative_to(root)), bytes=p.stat().st_size, sha256=sha256_file(p)) for p in paths)
