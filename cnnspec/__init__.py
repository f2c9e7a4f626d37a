"""cnnspec: declarative CNN specs, checked before they run.

    >>> import cnnspec
    >>> graph = cnnspec.load_spec("lenet5")
    >>> graph.params, graph.output_shape
    (61706, (10,))
"""

from __future__ import annotations

from cnnspec.api import build, embed, evaluate, features, predict, resume, similar, train
from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph, Node
from cnnspec.graph.load import SpecNotFound, load_spec, parse_spec, zoo_names
from cnnspec.spec.diagnostics import Diagnostic, Location, SpecError

__all__ = [
    "CnnspecError",
    "Diagnostic",
    "Graph",
    "Index",
    "Location",
    "Node",
    "SpecError",
    "SpecNotFound",
    "build",
    "embed",
    "evaluate",
    "features",
    "load_spec",
    "parse_spec",
    "predict",
    "resume",
    "similar",
    "train",
    "zoo_names",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``cnnspec.Index`` on first use: searching needs NumPy, checking a spec does not."""
    if name == "Index":
        from cnnspec.search.index import Index

        return Index
    raise AttributeError(f"module 'cnnspec' has no attribute {name!r}")
