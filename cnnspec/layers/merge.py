"""Layers that join branches of a DAG: residual add and channel concat."""

from __future__ import annotations

from typing import final

from cnnspec.layers.base import Layer, LayerInfo, Shape, ShapeError, format_shape, register


@final
@register
class Add(Layer):
    """Element-wise sum of inputs of identical shape (ResNet's shortcut)."""

    kind = "add"
    arity = (2, None)

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        first = inputs[0]
        for index, shape in enumerate(inputs[1:], start=1):
            if len(shape) != len(first):
                raise ShapeError(
                    f"cannot add a {format_shape(first)} input to a {format_shape(shape)} input (input {index})"
                )
            if shape[0] != first[0]:
                raise ShapeError(
                    f"channel mismatch: input 0 has {first[0]} channels, input {index} has {shape[0]} "
                    f"(shapes {format_shape(first)} and {format_shape(shape)})"
                )
            if shape != first:
                raise ShapeError(
                    f"spatial mismatch: input 0 is {format_shape(first)}, input {index} is {format_shape(shape)}"
                )
        return LayerInfo(output_shape=first)


@final
@register
class Concat(Layer):
    """Concatenate along the channel axis (GoogLeNet's inception output)."""

    kind = "concat"
    aliases = ("Concatenate",)
    arity = (2, None)

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        first = inputs[0]
        for index, shape in enumerate(inputs[1:], start=1):
            if len(shape) != len(first) or shape[1:] != first[1:]:
                raise ShapeError(
                    f"spatial mismatch: input 0 is {format_shape(first)}, input {index} is "
                    f"{format_shape(shape)}; concat joins channels and needs equal H x W"
                )
        return LayerInfo(output_shape=(sum(shape[0] for shape in inputs), *first[1:]))
