"""Sample inputs for the parity check: from the user's .npz, or generated from the signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfship.core.errors import ExportError
from tfship.core.signature import Signature

DEFAULT_COUNT = 32
UNKNOWN_DIM = 8
SEED = 20240


def load_npz_inputs(path: Path, signature: Signature, what: str = "--samples") -> dict[str, np.ndarray]:
    """Inputs from an .npz whose keys are input names (or ``inputs/<name>``, as in golden.npz)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ExportError(f"{what} {path}: file not found") from None
    except Exception as exc:
        raise ExportError(f"{what} {path}: not a readable .npz file ({type(exc).__name__})") from None
    result = {}
    for spec in signature.inputs:
        value = arrays.get(spec.name, arrays.get(f"inputs/{spec.name}"))
        if value is None and len(signature.inputs) == 1 and len(arrays) == 1:
            value = next(iter(arrays.values()))
        if value is None:
            raise ExportError(f"{what} {path}: no array for input '{spec.name}' (keys: {', '.join(sorted(arrays)) or 'none'})")
        if not spec.accepts_shape(tuple(value.shape)):
            raise ExportError(f"{what} {path}: input '{spec.name}' has shape {list(value.shape)}, the model expects {spec.shape_text()}")
        if spec.dtype != "string":
            value = value.astype(spec.dtype, copy=False)
        result[spec.name] = value
    counts = {len(v) for v in result.values()}
    if len(counts) != 1:
        raise ExportError(f"{what} {path}: inputs have different numbers of samples ({sorted(counts)})")
    return result


def generate_inputs(signature: Signature, count: int = DEFAULT_COUNT, vocab_sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs from the signature: floats in [0, 1), integers within an Embedding's vocabulary."""
    rng = np.random.default_rng(SEED)
    vocab_sizes = vocab_sizes or {}
    result = {}
    for spec in signature.inputs:
        shape = [count] + [UNKNOWN_DIM if d is None else d for d in spec.shape[1:]]
        if spec.dtype == "string":
            values = np.array([f"sample-{i}".encode() for i in range(int(np.prod(shape)))], dtype=object)
            result[spec.name] = values.reshape(shape)
        elif spec.dtype == "bool":
            result[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            high = vocab_sizes.get(spec.name, 10)
            result[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
        else:
            result[spec.name] = rng.random(size=shape).astype(spec.dtype)
    return result
