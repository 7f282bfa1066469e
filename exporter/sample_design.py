"""Generated samples that exercise the model: token ids where an input feeds an Embedding or a lookup,
and, for float inputs, the distribution whose outputs vary most.

A float32 ``Input`` that feeds an ``Embedding`` reads floats in [0, 1) as token 0, and a 5000-wide
TF-IDF classifier answers the same for every uniform [0, 1) row: parity on such samples proves
nothing. :func:`design_samples` follows each input through the model's config to the layers that
consume it, draws ids within their range, tries a few float distributions when it can run the
model, and names the outputs that still do not vary (the golden set is then *degenerate*:
``--samples`` with real data is the way out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfship.core import samples as sample_inputs
from tfship.core.signature import Signature

log = logging.getLogger(__name__)

Predict = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

# Layers that pass their input's values through unchanged (ids stay ids).
_PASS_THROUGH = {
    "InputLayer", "Reshape", "Flatten", "Permute", "RepeatVector", "Masking", "Dropout", "SpatialDropout1D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "Cropping1D", "ZeroPadding1D", "Identity", "Cast",
    "ExpandDims", "Squeeze", "Concatenate",
}
_LOOKUPS = {"StringLookup", "IntegerLookup"}
_MODELS = {"Functional", "Model", "Sequential"}
_WRAPPERS = {"TimeDistributed", "Bidirectional"}
# Float inputs: the first that makes every output vary is kept unless another varies ten times more.
_PREFER_MARGIN = 10.0
MAX_POOL = 100_000


@dataclass(frozen=True)
class IdRange:
    """Values an input must take to be read as ids by ``consumer``: ``low..high-1``, or ``vocabulary``."""

    consumer: str
    low: int = 0
    high: int = 10
    vocabulary: tuple[Any, ...] = ()

    def pool(self) -> np.ndarray:
        if self.vocabulary:
            return np.asarray(self.vocabulary[:MAX_POOL], dtype=object if isinstance(self.vocabulary[0], (str, bytes)) else None)
        return np.arange(self.low, max(self.low + 1, min(self.high, self.low + MAX_POOL)))

    def describe(self) -> dict[str, Any]:
        if self.vocabulary:
            return {"kind": "vocabulary", "consumer": self.consumer, "values": len(self.vocabulary)}
        return {"kind": "ids", "consumer": self.consumer, "range": [self.low, self.high]}


def design_samples(model_or_config: Any, signature: Signature, count: int = sample_inputs.DEFAULT_COUNT,
                   seed: int = sample_inputs.SEED, predict: Predict | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inputs for ``signature`` that exercise the model, and a report for the manifest's ``samples``.

    ``model_or_config``: a Keras 3 or tf_keras model, its ``get_config()`` (or ``to_json()`` parsed), or None (a SavedModel
    source: no layers to follow). ``predict`` runs the original model on a dict of inputs; without it
    floats are uniform [0, 1) and no output is checked.

    The report: ``source`` "generated", ``seed``, ``count``, ``distribution`` (kept for float inputs),
    ``inputs`` {name: {"kind": "ids"|"vocabulary"|"float"|..., ...}}, ``tried`` {distribution: {output:
    spread}}, ``output_spread`` {output: spread}, ``degenerate_outputs`` [names] and ``warnings`` [lines].
    """
    try:
        ranges = id_ranges(model_or_config, signature)
    except Exception as exc:  # a config shape not foreseen here: plain samples rather than no export
        log.warning("samples: could not follow the model's inputs to their layers (%s: %s); generating plain samples",
                    type(exc).__name__, exc)
        ranges = {}
    values = {name: r.pool() for name, r in ranges.items()}
    floats = [s.name for s in signature.inputs if s.name not in ranges and s.dtype in ("float16", "float32", "float64", "bfloat16")]
    report: dict[str, Any] = {"source": "generated", "seed": seed, "count": count, "inputs": {}}
    for spec in signature.inputs:
        if spec.name in ranges:
            report["inputs"][spec.name] = ranges[spec.name].describe()
        elif spec.name in floats:
            report["inputs"][spec.name] = {"kind": "float"}
        else:
            report["inputs"][spec.name] = {"kind": spec.dtype}

    def make(distribution: str) -> dict[str, np.ndarray]:
        return sample_inputs.generate_inputs(signature, count, seed=seed, distribution=distribution, values=values)

    candidates = ("uniform",) + tuple(d for d in sample_inputs.DISTRIBUTIONS if d != "uniform") if floats else ("uniform",)
    if predict is None:
        inputs = make("uniform")
        report["distribution"] = "uniform"
        report.update(tried={}, output_spread={}, degenerate_outputs=[], warnings=[])
        return inputs, report
    tried: dict[str, dict[str, float | None]] = {}
    made: dict[str, dict[str, np.ndarray]] = {}
    for distribution in candidates:
        made[distribution] = make(distribution)
        try:
            outputs = predict(made[distribution])
        except Exception as exc:  # a distribution the model refuses (NaN on normal, say) is not a candidate
            log.debug("samples: %s distribution fails: %s", distribution, exc)
            if distribution == "uniform":
                raise
            continue
        tried[distribution] = sample_inputs.output_spread(outputs)
        if distribution == "uniform" and not _degenerate(tried["uniform"]) and len(floats) == 0:
            break
    chosen = _choose(tried)
    spread = tried[chosen]
    degenerate = _degenerate(spread)
    for f in floats:
        report["inputs"][f]["distribution"] = chosen
    warnings = [f"output '{name}' gives the same answer for all {count} generated samples (spread {spread[name]:.2g}): "
                f"parity and the golden set prove little for it; pass real inputs with --samples" for name in degenerate]
    report.update(distribution=chosen, tried=tried, output_spread=spread, degenerate_outputs=degenerate, warnings=warnings)
    return made[chosen], report


def check_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The spread and degenerate outputs of given samples' outputs (for ``--samples``): report fields as above."""
    spread = sample_inputs.output_spread(outputs)
    degenerate = _degenerate(spread)
    count = len(next(iter(outputs.values()))) if outputs else 0
    warnings = [f"output '{name}' gives the same answer for all {count} samples: parity and the golden set prove little for it"
                for name in degenerate]
    return {"output_spread": spread, "degenerate_outputs": degenerate, "warnings": warnings}


def _degenerate(spread: Mapping[str, float | None]) -> list[str]:
    return sorted(n for n, v in spread.items() if v is not None and v <= sample_inputs.DEGENERATE_SPREAD)


def _score(spread: Mapping[str, float | None]) -> tuple[int, float]:
    """(outputs that vary, geometric mean of their spreads)."""
    varying = [v for v in spread.values() if v is not None and v > sample_inputs.DEGENERATE_SPREAD]
    return len(varying), float(np.exp(np.mean(np.log(varying)))) if varying else 0.0


def _choose(tried: Mapping[str, Mapping[str, float | None]]) -> str:
    """Uniform [0, 1) (what images and scaled features look like) unless another distribution makes more
    outputs vary, or makes them vary ``_PREFER_MARGIN`` times more."""
    best = "uniform" if "uniform" in tried else next(iter(tried))
    for name, spread in tried.items():
        varying, size = _score(spread)
        best_varying, best_size = _score(tried[best])
        if varying > best_varying or (varying == best_varying and size > best_size * _PREFER_MARGIN):
            best = name
    return best


# --- following inputs through a Keras config ------------------------------------------------------


def id_ranges(model_or_config: Any, signature: Signature) -> dict[str, IdRange]:
    """Inputs of ``signature`` that a layer reads as ids (Embedding, lookups, one-hot, CategoryEncoding), with their range."""
    if model_or_config is None:
        return {}
    model = None if isinstance(model_or_config, (dict, list)) else model_or_config
    try:
        config = model_or_config if model is None else model.get_config()
    except Exception as exc:  # a model without a config (subclassed): nothing to follow
        log.debug("samples: no model config: %s", exc)
        return {}
    if isinstance(config, dict) and "class_name" in config and isinstance(config.get("config"), (dict, list)):
        config = config["config"]  # a whole model.to_json() / config.json, not just its config
    layers = _layer_objects(model)
    starts = _input_layers(config)
    names = [s.name for s in signature.inputs]
    result: dict[str, IdRange] = {}
    for index, start in enumerate(starts):
        name = start if start in names else (names[index] if index < len(names) and len(starts) == len(names) else None)
        if name is None:
            continue
        found = _follow(config, start, layers)
        if found is not None:
            result[name] = found
    return result


def _layer_objects(model: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(m: Any) -> None:
        for layer in getattr(m, "layers", None) or []:
            found.setdefault(layer.name, layer)
            walk(layer)
            inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
            if inner is not None:
                found.setdefault(inner.name, inner)

    if model is not None:
        walk(model)
    return found


def _entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    layers = config.get("layers", config) if isinstance(config, dict) else config
    return [e for e in (layers or []) if isinstance(e, dict)]


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("config", {}).get("name") or entry.get("name") or "")


def _is_sequential(config: Any) -> bool:
    return isinstance(config, list) or not any(e.get("inbound_nodes") for e in _entries(config))


def _input_layers(config: Any) -> list[str]:
    entries = _entries(config)
    if not _is_sequential(config):
        raw = config.get("input_layers") or []
        if isinstance(raw, dict):  # Keras 3 dict inputs: {key: [name, 0, 0]}
            raw = list(raw.values())
        if raw and isinstance(raw[0], str):  # Keras 3 writes one input as a flat [name, 0, 0]
            raw = [raw]
        return [str(r[0]) for r in raw if r]
    first = entries[0] if entries else {}
    return [_name(first) if first.get("class_name") == "InputLayer" else "__sequential_input__"]


def _inbound(entry: dict[str, Any]) -> set[str]:
    """Names of the layers whose outputs ``entry`` consumes (Keras 2 and Keras 3 node formats)."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            history = value.get("keras_history")
            if isinstance(history, (list, tuple)) and history:
                names.add(str(history[0]))
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int) and isinstance(value[2], int):
                names.add(value[0])
                return
            for v in value:
                walk(v)

    walk(entry.get("inbound_nodes") or [])
    return names


def _consumers(config: Any, name: str) -> Iterator[dict[str, Any]]:
    entries = _entries(config)
    if _is_sequential(config):
        ordered = [e for e in entries if e.get("class_name") != "InputLayer"]
        if name == "__sequential_input__" or (entries and entries[0].get("class_name") == "InputLayer" and name == _name(entries[0])):
            if ordered:
                yield ordered[0]
            return
        for i, entry in enumerate(ordered[:-1]):
            if _name(entry) == name:
                yield ordered[i + 1]
        return
    for entry in entries:
        if name in _inbound(entry):
            yield entry


def _follow(config: Any, start: str, layers: Mapping[str, Any], depth: int = 0) -> IdRange | None:
    """The narrowest id range among the layers that read ``start``'s values (through pass-through layers)."""
    found: list[IdRange] = []
    seen = {start}
    frontier = [start]
    while frontier:
        current = frontier.pop()
        for entry in _consumers(config, current):
            name = _name(entry)
            if name in seen:
                continue
            seen.add(name)
            kind = entry.get("class_name", "")
            cfg = entry.get("config", {}) or {}
            if kind in _WRAPPERS and isinstance(cfg.get("layer"), dict):
                entry, kind, cfg = cfg["layer"], cfg["layer"].get("class_name", ""), cfg["layer"].get("config", {}) or {}
            id_range = _consumes_ids(kind, cfg, entry, name, layers)
            if id_range is not None:
                found.append(id_range)
            elif kind in _MODELS and depth < 8:
                for inner_start in _input_layers(cfg)[:1]:
                    nested = _follow(cfg, inner_start, layers, depth + 1)
                    if nested is not None:
                        found.append(nested)
            elif kind in _PASS_THROUGH or _is_cast(kind, cfg):
                frontier.append(name)
    if not found:
        return None
    vocabularies = [r for r in found if r.vocabulary]
    if vocabularies:
        return min(vocabularies, key=lambda r: len(r.vocabulary))
    return min(found, key=lambda r: r.high)


def _is_cast(kind: str, cfg: dict[str, Any]) -> bool:
    return kind in ("TFOpLambda", "SlicingOpLambda") and "cast" in str(cfg.get("function", ""))


def _consumes_ids(kind: str, cfg: dict[str, Any], entry: dict[str, Any], name: str, layers: Mapping[str, Any]) -> IdRange | None:
    label = f"{name} ({kind})"
    if kind == "Embedding" and cfg.get("input_dim"):
        # mask_zero: id 0 is padding; a sample of only padding says little.
        low = 1 if cfg.get("mask_zero") and int(cfg["input_dim"]) > 1 else 0
        return IdRange(label, low, int(cfg["input_dim"]))
    if kind == "CategoryEncoding" and cfg.get("num_tokens"):
        return IdRange(label, 0, int(cfg["num_tokens"]))
    if kind in ("OneHot",) and cfg.get("num_classes"):
        return IdRange(label, 0, int(cfg["num_classes"]))
    if kind in _LOOKUPS:
        vocabulary = cfg.get("vocabulary")
        if not isinstance(vocabulary, (list, tuple)) and name in layers and hasattr(layers[name], "get_vocabulary"):
            try:
                vocabulary = layers[name].get_vocabulary(include_special_tokens=False)
            except Exception:  # not adapted: no vocabulary to draw from
                vocabulary = None
        if isinstance(vocabulary, (list, tuple)) and vocabulary:
            if kind == "StringLookup":
                vocabulary = [v.encode() if isinstance(v, str) else v for v in vocabulary]
            return IdRange(label, vocabulary=tuple(vocabulary))
        return None
    if kind in ("TFOpLambda", "SlicingOpLambda"):
        function = str(cfg.get("function", ""))
        kwargs = _node_kwargs(entry)
        if function.endswith("one_hot") and kwargs.get("depth"):
            return IdRange(label, 0, int(kwargs["depth"]))
    return None


def _node_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    nodes = entry.get("inbound_nodes") or []
    for node in nodes:
        if isinstance(node, dict):
            return dict(node.get("kwargs") or {})
        if isinstance(node, list) and node and isinstance(node[0], list) and len(node[0]) >= 4 and isinstance(node[0][3], dict):
            return dict(node[0][3])
    return {}
