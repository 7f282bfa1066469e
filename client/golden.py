"""Reading golden.npz (inputs/<name>, outputs/<name>) and the manifest next to it, without tensorflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfship.core.errors import TfshipError, UsageError
from tfship.core.signature import Signature, TensorSpec


@dataclass(frozen=True)
class GoldenSet:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    signature: Signature  # from manifest.json when present, else inferred from the arrays
    from_manifest: bool

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))


def _infer(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Signature:
    def spec(name, value):
        dtype = "string" if value.dtype == object or value.dtype.kind in "SU" else value.dtype.name
        return TensorSpec(name, dtype, (None,) + tuple(int(d) for d in value.shape[1:]))

    return Signature("serving_default", tuple(spec(n, v) for n, v in sorted(inputs.items())),
                     tuple(spec(n, v) for n, v in sorted(outputs.items())))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except Exception as exc:
        raise TfshipError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def load_golden(path: Path) -> GoldenSet:
    path = Path(path)
    if path.is_dir():
        path = path / "golden.npz"
    arrays = load_arrays(path)
    inputs = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("inputs/")}
    outputs = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("outputs/")}
    if not inputs or not outputs:
        raise TfshipError(f"{path}: not a golden set (expected arrays named inputs/<name> and outputs/<name>)")
    manifest = path.parent / "manifest.json"
    if manifest.exists():
        try:
            signature = Signature.from_dict(json.loads(manifest.read_text(encoding="utf-8"))["signature"])
            return GoldenSet(inputs, outputs, signature, True)
        except (ValueError, KeyError) as exc:
            raise TfshipError(f"{manifest}: unreadable manifest ({exc})") from None
    return GoldenSet(inputs, outputs, _infer(inputs, outputs), False)
