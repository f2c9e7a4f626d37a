"""Layers that join branches of a DAG: residual add, channel concat and multiply (a gate)."""

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


@final
@register
class Multiply(Layer):
    """Element-wise product of two inputs of identical shape, or of a C x H x W map by a
    C x 1 x 1 gate in either place (squeeze-and-excitation's scaling); the output is the
    map's shape."""

    kind = "multiply"
    arity = (2, 2)

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        first, second = inputs
        if first == second:
            return LayerInfo(output_shape=first)
        gate, other = (first, second) if _is_gate(first) else (second, first)
        if len(other) == 3 and _is_gate(gate) and gate[0] == other[0]:
            return LayerInfo(output_shape=other)
        raise ShapeError(
            f"cannot multiply a {format_shape(first)} input by a {format_shape(second)} input: multiply takes two "
            f"inputs of one shape, or a C x H x W map and a C x 1 x 1 gate"
        )


def _is_gate(shape: Shape) -> bool:
    return len(shape) == 3 and shape[1:] == (1, 1)
