"""The serving signature: what a model takes and returns, as plain values shared by every part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy-style name: float32, int64, string, ...
    shape: tuple[int | None, ...]  # None for a dimension of any size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))

    def shape_text(self) -> str:
        return "(" + ", ".join("None" if d is None else str(d) for d in self.shape) + ")"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, shape))


@dataclass(frozen=True)
class Signature:
    key: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method_name: str = "tensorflow/serving/predict"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "method_name": self.method_name,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            key=data["key"],
            method_name=data.get("method_name", "tensorflow/serving/predict"),
            inputs=tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in data["outputs"]),
        )

    def differences(self, other: Signature) -> list[str]:
        """Human-readable differences between this (expected) signature and ``other`` (served)."""
        problems = []
        for kind, mine, theirs in (("input", self.inputs, other.inputs), ("output", self.outputs, other.outputs)):
            mine_by_name = {s.name: s for s in mine}
            theirs_by_name = {s.name: s for s in theirs}
            for name in sorted(mine_by_name.keys() - theirs_by_name.keys()):
                problems.append(f"{kind} '{name}' is missing from the served signature")
            for name in sorted(theirs_by_name.keys() - mine_by_name.keys()):
                problems.append(f"served signature has an unexpected {kind} '{name}'")
            for name in sorted(mine_by_name.keys() & theirs_by_name.keys()):
                a, b = mine_by_name[name], theirs_by_name[name]
                if a.dtype != b.dtype:
                    problems.append(f"{kind} '{name}': dtype {b.dtype} served, {a.dtype} expected")
                if a.shape != b.shape:
                    problems.append(f"{kind} '{name}': shape {b.shape_text()} served, {a.shape_text()} expected")
        return problems
