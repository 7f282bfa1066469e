"""tfship serving: TF Serving configs, the verification gate, the docker launcher and the local engine.

Importing this package is light; tensorflow is imported only by the parts that load models.
"""

from __future__ import annotations

from tfship.serving.config import BatchingOptions, VersionPolicy
from tfship.serving.config_writer import write_configs
from tfship.serving.lifecycle import down, up
from tfship.serving.options import ServeOptions
from tfship.serving.status import status

__all__ = ["BatchingOptions", "ServeOptions", "VersionPolicy", "down", "status", "up", "write_configs"]
