"""Layer kinds. Importing this package registers every kind in ``LAYERS``."""

from __future__ import annotations

from cnnspec.layers import activation, conv, core, merge, norm, pool  # noqa: F401  (registers)
from cnnspec.layers.base import LAYERS, Layer, LayerInfo, Shape, ShapeError, Window, format_shape

__all__ = ["LAYERS", "Layer", "LayerInfo", "Shape", "ShapeError", "Window", "format_shape"]
