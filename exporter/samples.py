"""Sample inputs for the parity check: the exporter's names for ``tfship.core.samples``.

The loader and the generator live in the core, where the client and the serving benchmarks reach them
too; this module only keeps the exporter's import path (``from tfship.exporter import samples``).
"""

from __future__ import annotations

from tfship.core.samples import DEFAULT_COUNT, SEED, generate_inputs, load_npz_inputs

__all__ = ["DEFAULT_COUNT", "SEED", "generate_inputs", "load_npz_inputs"]
