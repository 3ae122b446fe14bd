"""Which kernels this process uses: compiled (telemon.cext._<name>) or the NumPy reference
(telemon.cext.<name>_reference). `TELEMON_PUREPYTHON=1` forces the reference."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON = os.environ.get("TELEMON_PUREPYTHON") == "1"
CHOSEN: dict[str, str] = {}


def kernels(name: str) -> ModuleType:
    """The kernel module for `name`; records in CHOSEN which implementation it is."""
    reference = importlib.import_module(f"telemon.cext.{name}_reference")
    if not PURE_PYTHON:
        try:
            module = importlib.import_module(f"telemon.cext._{name}")
        except ImportError:  # not built (a source tree without `pip install`)
            pass
        else:
            CHOSEN[name] = "compiled"
            return module
    CHOSEN[name] = "reference"
    return reference
