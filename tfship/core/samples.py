"""Sample inputs as every part reads them: ``.npz`` files (plain, or a golden set's ``inputs/<name>``),
matched to a signature, or generated from it.

Used by the exporter (``--samples``, ``--calibration``, the generated parity inputs), by the client
(``validate``, ``compare``, ``bench``) and by the serving benchmarks; numpy only, no tensorflow.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfship.core.errors import TfshipError, UsageError
from tfship.core.signature import Signature

DEFAULT_COUNT = 32
UNKNOWN_DIM = 8
SEED = 20240
INPUTS_PREFIX = "inputs/"
OUTPUTS_PREFIX = "outputs/"
# An .npz is a zip of .npy files; np.load decompresses each array whole. Refuse before reading what
# would not fit (a zip bomb, a wrong file) and files with absurd numbers of arrays.
MAX_NPZ_ARRAYS = 1024
MAX_NPZ_BYTES = 8 << 30


def load_npz(path: Path, what: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, without pickles; ``what`` names the option in messages."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise UsageError(f"{where}: file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise TfshipError(f"{where}: not a readable .npz file ({type(exc).__name__}); write it with numpy.savez") from exc
    if len(members) > MAX_NPZ_ARRAYS:
        raise TfshipError(f"{where}: {len(members)} arrays, more than the {MAX_NPZ_ARRAYS} tfship reads from one file")
    size = sum(m.file_size for m in members)
    if size > MAX_NPZ_BYTES:
        raise TfshipError(f"{where}: {size / 2**30:.1f} GiB uncompressed, more than {MAX_NPZ_BYTES >> 30} GiB; use fewer samples")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        # allow_pickle=False makes object arrays fail here with ValueError: pickles are never loaded.
        raise TfshipError(f"{where}: not a readable .npz file ({type(exc).__name__}); write it with numpy.savez") from exc


def split_golden(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``inputs/<name>`` and ``outputs/<name>`` arrays of a golden set, with the prefixes removed."""
    inputs = {k[len(INPUTS_PREFIX):]: v for k, v in arrays.items() if k.startswith(INPUTS_PREFIX)}
    outputs = {k[len(OUTPUTS_PREFIX):]: v for k, v in arrays.items() if k.startswith(OUTPUTS_PREFIX)}
    return inputs, outputs


def input_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs held by an ``.npz``: its ``inputs/<name>`` arrays when it is a golden set, else every array."""
    inputs, _ = split_golden(arrays)
    return inputs or dict(arrays)


def load_inputs(path: Path, what: str = "--inputs") -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` (plain arrays named by input, or a golden.npz), all with one sample count."""
    inputs = input_arrays(load_npz(path, what))
    if not inputs:
        raise UsageError(f"{what} {path}: the file holds no arrays")
    counts = {len(v) if v.ndim else 0 for v in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise UsageError(f"{what} {path}: every input needs a leading sample dimension of the same size "
                         f"(found {', '.join(f'{k} {list(v.shape)}' for k, v in sorted(inputs.items()))})")
    return inputs


def inputs_for(signature: Signature, arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """One array per input of ``signature``, checked against its shape and cast to its dtype.

    ``arrays`` may be keyed by input name or carry a golden set's ``inputs/`` prefix; a file with one
    array fits a model with one input whatever the array's name.
    """
    arrays = input_arrays(arrays)
    result = {}
    for spec in signature.inputs:
        value = arrays.get(spec.name)
        if value is None and len(signature.inputs) == 1 and len(arrays) == 1:
            value = next(iter(arrays.values()))
        if value is None:
            raise UsageError(f"{where}: no array for input '{spec.name}' (keys: {', '.join(sorted(arrays)) or 'none'})")
        if not spec.accepts_shape(tuple(value.shape)):
            raise UsageError(f"{where}: input '{spec.name}' has shape {list(value.shape)}, the model expects {spec.shape_text()}")
        if spec.dtype != "string":
            value = value.astype(spec.dtype, copy=False)
        result[spec.name] = value
    counts = {len(v) for v in result.values()}
    if len(counts) != 1:
        raise UsageError(f"{where}: inputs have different numbers of samples ({sorted(counts)})")
    return result


def load_npz_inputs(path: Path, signature: Signature, what: str = "--samples") -> dict[str, np.ndarray]:
    """Inputs for ``signature`` from an ``.npz`` whose keys are input names (or ``inputs/<name>``)."""
    return inputs_for(signature, load_npz(path, what), f"{what} {path}")


DISTRIBUTIONS = ("uniform", "normal", "sparse", "scaled")
# An output whose values differ across samples by less than this, relative to their size, does not vary.
DEGENERATE_SPREAD = 1e-6


def float_values(rng: np.random.Generator, shape: list[int], distribution: str = "uniform") -> np.ndarray:
    """Floats for one input: ``uniform`` [0, 1); ``normal`` N(0, 1); ``sparse`` (about 20 non-zero values in
    [0, 1) per sample, at most half); ``scaled`` (uniform [0, 1) divided by the last dimension, so a wide
    input's sum stays near 0.5, as a TF-IDF or bag-of-words row's does)."""
    if distribution == "uniform":
        return rng.random(size=shape)
    if distribution == "normal":
        return rng.standard_normal(size=shape)
    width = max(1, shape[-1]) if len(shape) > 1 else 1
    if distribution == "sparse":
        keep = rng.random(size=shape) < min(0.5, 20.0 / width)
        return np.where(keep, rng.random(size=shape), 0.0)
    if distribution == "scaled":
        return rng.random(size=shape) / width
    raise UsageError(f"unknown sample distribution {distribution!r} (choose from {', '.join(DISTRIBUTIONS)})")


def generate_inputs(signature: Signature, count: int = DEFAULT_COUNT, vocab_sizes: Mapping[str, int] | None = None,
                    *, seed: int = SEED, distribution: str = "uniform",
                    values: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Deterministic inputs from the signature; unknown dimensions get 8.

    An input named in ``values`` gets elements drawn from those values (token ids within a vocabulary,
    a lookup's vocabulary), cast to the input's dtype whatever it is; other integers fall within an
    Embedding's vocabulary (``vocab_sizes``, else [0, 10)); floats follow ``distribution`` (see
    :func:`float_values`); booleans are random and strings distinct."""
    rng = np.random.default_rng(seed)
    vocab_sizes = vocab_sizes or {}
    values = values or {}
    result: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [count] + [UNKNOWN_DIM if d is None else d for d in spec.shape[1:]]
        if spec.name in values and len(values[spec.name]):
            pool = np.asarray(values[spec.name])
            drawn = pool[rng.integers(0, len(pool), size=shape)]
            result[spec.name] = drawn if spec.dtype == "string" else drawn.astype(spec.dtype)
        elif spec.dtype == "string":
            strings = np.array([f"sample-{i}".encode() for i in range(int(np.prod(shape)))], dtype=object)
            result[spec.name] = strings.reshape(shape)
        elif spec.dtype == "bool":
            result[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            high = vocab_sizes.get(spec.name, 10)
            result[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
        else:
            result[spec.name] = float_values(rng, shape, distribution).astype(spec.dtype)
    return result


def output_spread(outputs: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """How much each output varies across samples (the leading dimension).

    Floats: the mean over elements of the standard deviation across samples, relative to the mean
    absolute value (0 when every sample gives the same answer). Other dtypes: the fraction of samples
    whose answer differs from the first. None with fewer than two samples."""
    spread: dict[str, float | None] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or len(array) < 2:
            spread[name] = None
            continue
        rows = array.reshape(len(array), -1)
        if np.issubdtype(rows.dtype, np.floating):
            rows64 = rows.astype(np.float64)
            finite = np.where(np.isfinite(rows64), rows64, 0.0)
            scale = float(np.mean(np.abs(finite)))
            spread[name] = float(np.mean(np.std(finite, axis=0)) / scale) if scale > 0 else 0.0
        else:
            differs = [not np.array_equal(rows[i], rows[0]) for i in range(1, len(rows))]
            spread[name] = float(np.mean(differs))
    return spread


def degenerate_outputs(outputs: Mapping[str, np.ndarray]) -> list[str]:
    """Outputs that give (nearly) the same answer for every sample: a parity check on them proves little."""
    return sorted(name for name, value in output_spread(outputs).items() if value is not None and value <= DEGENERATE_SPREAD)
