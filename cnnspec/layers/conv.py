"""conv2d: 2-D convolution (cross-correlation, as every framework computes it); and its
transpose, conv_transpose2d."""

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
    Size2Or0,
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


@final
@register
class ConvTranspose2d(Layer):
    """Transposed convolution (PyTorch's ``ConvTranspose2d``; FCN's and U-Net's upsampling):
    each input pixel adds the kernel, scaled, into the output at stride ``stride``. Output
    size (n - 1) s - 2 p + k + output_padding; weights I x O/groups x KH x KW, PyTorch's
    layout. Keras' ``Conv2DTranspose`` with padding 'valid' is padding 0 (with
    output_padding s - k where the kernel is smaller than the stride)."""

    kind = "conv_transpose2d"
    aliases = ("ConvTranspose2d", "Conv2DTranspose", "ConvTranspose", "deconvolution")
    filters: PositiveInt
    kernel: Size2
    stride: Size2 = (1, 1)
    padding: Size2Or0 = (0, 0)
    output_padding: Size2Or0 = (0, 0)
    groups: PositiveInt = 1
    bias: StrictBool = True
    init: InitArg = "he"

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        if channels % self.groups or self.filters % self.groups:
            raise ShapeError(f"input channels {channels} and filters {self.filters} must both divide into {self.groups} groups", "groups")
        for p, k in zip(self.padding, self.kernel, strict=True):
            if p > k - 1:
                raise ShapeError(f"padding {p} is more than kernel - 1 = {k - 1}: it would crop whole kernel rows", "padding")
        for op, s in zip(self.output_padding, self.stride, strict=True):
            if op >= s:
                raise ShapeError(f"output_padding {op} must be smaller than the stride {s} (PyTorch's rule)", "output_padding")
        out = tuple((n - 1) * s - 2 * p + k + op for n, s, p, k, op in
                    zip((height, width), self.stride, self.padding, self.kernel, self.output_padding, strict=True))
        kh, kw = self.kernel
        params = channels * (self.filters // self.groups) * kh * kw + (self.filters if self.bias else 0)
        return LayerInfo(output_shape=(self.filters, *out), params=params,
                         macs=channels * (self.filters // self.groups) * kh * kw * height * width)

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        channels = inputs[0][0]
        kh, kw = self.kernel
        fan_in, fan_out = self.filters // self.groups * kh * kw, channels // self.groups * kh * kw  # PyTorch's, for I x O/g
        result = {"weight": WeightSpec((channels, self.filters // self.groups, kh, kw), self.init, fan_in=fan_in, fan_out=fan_out)}
        if self.bias:
            result["bias"] = WeightSpec((self.filters,), "zeros")
        return result
