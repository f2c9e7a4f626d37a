"""Framework lowerings of a cnnspec Graph, one module per framework.

Each backend module is imported by name, only when asked for, so that ``cnnspec check``
and everything else under ``cnnspec`` never loads a framework.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from cnnspec.errors import CnnspecError, did_you_mean

# Backend name -> module under cnnspec.backends. Each later backend adds one row.
BACKENDS: dict[str, str] = {"numpy": "numpy_backend", "torch": "torch_backend", "tensorflow": "tensorflow_backend"}
# Backends that train across processes: backend name -> the module of its process group and
# distributed sessions (``join``, ``DistributedBackend``), imported by name by ``group.joined``.
DISTRIBUTED: dict[str, str] = {"torch": "torch_distributed"}
# The framework each needs beyond cnnspec's own dependencies.
FRAMEWORKS: dict[str, str] = {"torch": "torch", "tensorflow": "tensorflow"}


class BackendUnavailable(CnnspecError, LookupError):
    """An unknown backend, or one whose framework is not installed."""


def load_backend(name: str) -> ModuleType:
    """Import a backend module by name, on demand."""
    module = BACKENDS.get(name)
    if module is None:
        known = ", ".join(BACKENDS) or "none yet"
        raise BackendUnavailable(f"unknown backend '{name}'{did_you_mean(name, BACKENDS)} (available: {known})")
    return import_module(module, name, f"backend '{name}'")


def import_module(module: str, extra: str, what: str) -> ModuleType:
    """Import ``cnnspec.backends.<module>``; a missing framework is a BackendUnavailable
    that names the extra to install."""
    try:
        return importlib.import_module(f"cnnspec.backends.{module}")
    except ImportError as exc:
        if exc.name in (None, f"cnnspec.backends.{module}"):
            raise
        raise BackendUnavailable(f"{what} needs {exc.name}, which is not installed: pip install 'cnnspec[{extra}]'") from None

def installed_backends() -> list[str]:
    """The backends whose framework is installed (found, not imported)."""
    return [name for name in BACKENDS if name not in FRAMEWORKS or importlib.util.find_spec(FRAMEWORKS[name]) is not None]
