"""The versions a run records: Python, cnnspec, NumPy and each framework already imported."""

from __future__ import annotations

import platform

import numpy as np


def versions() -> dict[str, str]:
    """Python, cnnspec, numpy, and each framework already imported (never imports one)."""
    import sys

    import cnnspec

    found = {"python": platform.python_version(), "cnnspec": cnnspec.__version__, "numpy": np.__version__}
    for name in ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "?"))
    return found
