"""conv2d: 2-D convolution (cross-correlation, as every framework computes it); and its
transpose, conv_transpose2d."""

from __future__ import annotations

from typing import Literal, final

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
    """Transposed convolution (PyTorch's ``ConvTranspose2d``, Keras' ``Conv2DTranspose``; FCN's
    and U-Net's upsampling): each input pixel adds the kernel, scaled, into the output at
    stride ``stride``, a full result of (n - 1) s + k rows, then cropped. Weights
    I x O/groups x KH x KW, PyTorch's layout.

    ``padding`` as PyTorch says it (a number or a pair): p rows cropped at each side and
    ``output_padding`` rows given back at the bottom, output (n - 1) s - 2 p + k + op. Or as
    Keras says it: 'valid' crops nothing (output n s + max(k - s, 0), or (n - 1) s + k + op
    with an output_padding); 'same' gives n s rows (or (n - 1) s + k - 2 floor(k / 2) + op),
    cropping floor of half the surplus at the top and the rest at the bottom, as TensorFlow
    does (a 3x3 kernel at stride 2 crops its one row at the bottom: no PyTorch padding says
    that)."""

    kind = "conv_transpose2d"
    aliases = ("ConvTranspose2d", "Conv2DTranspose", "ConvTranspose", "deconvolution")
    filters: PositiveInt
    kernel: Size2
    stride: Size2 = (1, 1)
    padding: Size2Or0 | Literal["same", "valid"] = (0, 0)
    output_padding: Size2Or0 | None = None
    groups: PositiveInt = 1
    bias: StrictBool = True
    init: InitArg = "he"

    def crops(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)): rows and columns cropped from the full result of
        an input of ``height`` x ``width``; a negative bottom or right adds zero rows there
        (before the bias)."""
        extra = self.output_padding
        result = []
        for n, s, k, axis in zip((height, width), self.stride, self.kernel, (0, 1), strict=True):
            full = (n - 1) * s + k
            if isinstance(self.padding, str):
                if extra is None:
                    out = n * s + max(k - s, 0) if self.padding == "valid" else n * s
                else:
                    out = full + extra[axis] - (2 * (k // 2) if self.padding == "same" else 0)
                top = max(0, (full - out) // 2) if self.padding == "same" else 0
            else:
                top = self.padding[axis]
                out = full - 2 * top + (extra[axis] if extra is not None else 0)
            result.append((top, full - out - top))
        return result[0], result[1]

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        if channels % self.groups or self.filters % self.groups:
            raise ShapeError(f"input channels {channels} and filters {self.filters} must both divide into {self.groups} groups", "groups")
        if not isinstance(self.padding, str):
            for p, k in zip(self.padding, self.kernel, strict=True):
                if p > k - 1:
                    raise ShapeError(f"padding {p} is more than kernel - 1 = {k - 1}: it would crop whole kernel rows", "padding")
        for op, s in zip(self.output_padding or (0, 0), self.stride, strict=True):
            if op >= s:
                raise ShapeError(f"output_padding {op} must be smaller than the stride {s} (PyTorch's and Keras' rule)", "output_padding")
        crops = self.crops(height, width)
        out = tuple((n - 1) * s + k - top - bottom for n, s, k, (top, bottom) in
                    zip((height, width), self.stride, self.kernel, crops, strict=True))
        if min(out) < 1:
            raise ShapeError(f"the output would be {out[0]} x {out[1]}", "padding")
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
