"""Config files are plain Python loaded by path (``configs/`` is not an installed package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_config_module(path: str | Path) -> ModuleType:
    """Import a config file by path; config files use it to extend a sibling (big_vision style)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"vidjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str):
    """``"configs/x.py"`` or ``"configs/x.py:variant"`` -> that file's ``get_config(variant)``."""
    file, _, variant = str(spec).partition(":")
    return load_config_module(file).get_config(variant or None)
