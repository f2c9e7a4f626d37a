"""conv2d: 2-D convolution (cross-correlation, as every framework computes it)."""

from __future__ import annotations

from typing import final

from pydantic import StrictBool

from cnnspec.calculators import conv2d_macs, conv2d_params
from cnnspec.calculators.sizes import effective_kernel
from cnnspec.layers.activation import ActivationArg, activation_params, activation_weights
from cnnspec.layers.base import (
    InitArg,
    Layer,
    LayerInfo,
    Padding,
    PositiveInt,
    RoundingArg,
    Shape,
    ShapeError,
    Size2,
    WeightSpec,
    Window,
    feature_map,
    register,
)
from cnnspec.layers.window import WindowGeometry, resolve_padding, window_geometry, window_out


@final
@register
class Conv2d(Layer):
    kind = "conv2d"

    filters: PositiveInt
    kernel: Size2
    stride: Size2 = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    dilation: Size2 = (1, 1)
    groups: PositiveInt = 1
    bias: StrictBool = True
    activation: ActivationArg = None
    rounding: RoundingArg = "exact"
    init: InitArg = "he"

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        if channels % self.groups:
            raise ShapeError(f"input channels {channels} are not divisible by groups {self.groups}", "groups")
        if self.filters % self.groups:
            raise ShapeError(f"filters {self.filters} are not divisible by groups {self.groups}", "groups")
        padding = resolve_padding(self.padding, (height, width), self.kernel, self.stride, self.dilation)
        rounding = "floor" if self.padding == "same" else self.rounding
        out = window_out((channels, height, width), self.kernel, self.stride, padding, self.dilation, rounding, pool=False)
        shape = (self.filters, *out)
        span = (effective_kernel(self.kernel[0], self.dilation[0]), effective_kernel(self.kernel[1], self.dilation[1]))
        return LayerInfo(
            output_shape=shape,
            params=conv2d_params(channels, self.filters, self.kernel, self.groups, self.bias)
            + activation_params(self.activation, shape),
            macs=conv2d_macs(channels, self.filters, self.kernel, out, self.groups),
            window=Window(kernel=span, stride=self.stride),
        )

    def geometry(self, input_shape: Shape, output_shape: Shape) -> WindowGeometry:
        """The window resolved for these shapes (for lowerings)."""
        return window_geometry(self.padding, self.kernel, self.stride, self.dilation, input_shape, output_shape)

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        channels = inputs[0][0]
        kh, kw = self.kernel
        fan_in, fan_out = channels // self.groups * kh * kw, self.filters // self.groups * kh * kw
        result = {"weight": WeightSpec((self.filters, channels // self.groups, kh, kw), self.init, fan_in=fan_in, fan_out=fan_out)}
        if self.bias:
            result["bias"] = WeightSpec((self.filters,), "zeros")
        out = self.infer(inputs).output_shape
        return result | activation_weights(self.activation, out)
