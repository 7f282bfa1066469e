"""Reading golden.npz (inputs/<name>, outputs/<name>) and the manifest next to it, without tensorflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfship.core.errors import TfshipError
from tfship.core.samples import load_npz, split_golden
from tfship.core.signature import Signature, TensorSpec

# manifest.json is small (a signature and a few artifact entries); refuse to parse anything far larger.
MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class GoldenSet:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    signature: Signature  # from manifest.json when present, else inferred from the arrays


def _infer(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Signature:
    def spec(name: str, value: np.ndarray) -> TensorSpec:
        dtype = "string" if value.dtype == object or value.dtype.kind in "SU" else value.dtype.name
        return TensorSpec(name, dtype, (None,) + tuple(int(d) for d in value.shape[1:]))

    return Signature("serving_default", tuple(spec(n, v) for n, v in sorted(inputs.items())),
                     tuple(spec(n, v) for n, v in sorted(outputs.items())))


def load_golden(path: Path) -> GoldenSet:
    """The golden set at ``path`` (a golden.npz, or the version directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "golden.npz"
    inputs, outputs = split_golden(load_npz(path, "--golden"))
    if not inputs or not outputs:
        raise TfshipError(f"--golden {path}: not a golden set (expected arrays named inputs/<name> and outputs/<name>)")
    manifest = path.parent / "manifest.json"
    if not manifest.exists():
        return GoldenSet(inputs, outputs, _infer(inputs, outputs))
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        signature = Signature.from_dict(json.loads(manifest.read_text(encoding="utf-8"))["signature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TfshipError(f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    return GoldenSet(inputs, outputs, signature)
