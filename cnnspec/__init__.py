"""cnnspec: declarative CNN specs, checked before they run.

    >>> import cnnspec
    >>> graph = cnnspec.load_spec("lenet5")
    >>> graph.params, graph.output_shape
    (61706, (10,))
"""

from __future__ import annotations

from cnnspec.api import build, evaluate, predict, resume, train
from cnnspec.diagnostics import Diagnostic, Location, SpecError
from cnnspec.graph import Graph, Node
from cnnspec.load import SpecNotFound, load_spec, parse_spec, zoo_names

__all__ = [
    "Diagnostic",
    "Graph",
    "Location",
    "Node",
    "SpecError",
    "SpecNotFound",
    "build",
    "evaluate",
    "load_spec",
    "parse_spec",
    "predict",
    "resume",
    "train",
    "zoo_names",
]
__version__ = "0.1.0"
