"""Import the custom classes and functions a user names with ``--custom-objects``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from tfship.core.errors import ExportError


def load_custom_objects(spec: str | None) -> dict[str, Any]:
    """Import ``module.py`` or ``pkg.module`` named by the user and collect its classes and functions.

    Importing also runs ``register_keras_serializable`` decorators, which makes ``pkg>Name`` entries
    resolvable. This is the user's own code, named on the command line, not code from a model file.
    """
    if not spec:
        return {}
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise ExportError(f"{spec}: custom objects file not found")
            module_name = f"tfship_custom_objects_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise ExportError(f"{spec}: not a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except ExportError:
        raise
    except Exception as exc:  # any error in the user's module
        raise ExportError(f"{spec}: cannot import the custom objects module: {type(exc).__name__}: {exc}") from exc
    objects: dict[str, Any] = {}
    for name, value in vars(module).items():
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value)):
            objects[name] = value
    explicit = getattr(module, "custom_objects", None) or getattr(module, "CUSTOM_OBJECTS", None)
    if isinstance(explicit, dict):
        objects.update(explicit)
    # Names registered through keras.saving.register_keras_serializable while importing the module.
    try:
        import keras

        for registered, obj in keras.saving.get_custom_objects().items():
            if getattr(obj, "__module__", None) == module.__name__:
                objects.setdefault(registered, obj)
    except Exception:  # keras missing parts: registered names simply stay unresolved
        pass
    return objects
