"""Keras 2's GPU-only recurrent layers, rewritten to the CPU layers that compute the same thing."""

from __future__ import annotations

import copy
from typing import Any

from tfship.exporter.config_safety import walk

GPU_ONLY_LAYERS = {"CuDNNLSTM": "LSTM", "CuDNNGRU": "GRU"}


def gpu_only_layers(config: Any) -> list[str]:
    """The GPU-only layer classes a stored configuration uses."""
    return sorted({node["class_name"] for node, _ in walk(config) if node.get("class_name") in GPU_ONLY_LAYERS})


def replace_gpu_layers(config: Any) -> Any:
    """A copy of ``config`` with CuDNNLSTM / CuDNNGRU turned into LSTM / GRU with the CuDNN settings."""
    config = copy.deepcopy(config)
    for node, _layer in walk(config):
        target = GPU_ONLY_LAYERS.get(node.get("class_name", ""))
        if target and isinstance(node.get("config"), dict):
            node["class_name"] = target
            cfg = node["config"]
            cfg.setdefault("activation", "tanh")
            cfg.setdefault("recurrent_activation", "sigmoid")
            cfg.setdefault("use_bias", True)
            if target == "GRU":
                cfg["reset_after"] = True
    return config
