"""Pooling: windowed max and average, their global and adaptive forms; and upsampling."""

from __future__ import annotations

from typing import Literal, final

from pydantic import StrictBool

from cnnspec.calculators import adaptive_windows
from cnnspec.layers.base import (
    Layer,
    LayerInfo,
    Padding,
    RoundingArg,
    Shape,
    ShapeError,
    Size2,
    Window,
    feature_map,
    register,
)
from cnnspec.layers.window import WindowGeometry, resolve_padding, window_geometry, window_out


class Pool2d(Layer):
    """Abstract: a pooling window. ``stride`` defaults to the kernel size."""

    kernel: Size2
    stride: Size2 | None = None
    padding: Padding = ((0, 0), (0, 0))
    rounding: RoundingArg = "exact"

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        stride = self.stride or self.kernel
        padding = resolve_padding(self.padding, (height, width), self.kernel, stride)
        for (before, after), k in zip(padding, self.kernel, strict=True):
            # PyTorch's rule: a window must not lie wholly in padding.
            if max(before, after) > k // 2:
                raise ShapeError(f"padding {max(before, after)} exceeds half the kernel {k}", "padding")
        rounding = "floor" if self.padding == "same" else self.rounding
        out = window_out((channels, height, width), self.kernel, stride, padding, (1, 1), rounding, pool=True)
        return LayerInfo(output_shape=(channels, *out), window=Window(kernel=self.kernel, stride=stride))

    def geometry(self, input_shape: Shape, output_shape: Shape) -> WindowGeometry:
        """The window resolved for these shapes (for lowerings)."""
        return window_geometry(self.padding, self.kernel, self.stride or self.kernel, (1, 1), input_shape, output_shape)


@final
@register
class MaxPool2d(Pool2d):
    kind = "maxpool2d"
    aliases = ("MaxPooling2D",)


@final
@register
class AvgPool2d(Pool2d):
    kind = "avgpool2d"
    aliases = ("AveragePooling2D",)
    count_include_pad: StrictBool = True  # PyTorch's default: zeros in padding count


class GlobalPool2d(Layer):
    """Abstract: pool each channel over the whole map, C x H x W -> C (or C x 1 x 1)."""

    keepdims: StrictBool = False

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, _, _ = feature_map(self, inputs[0])
        shape = (channels, 1, 1) if self.keepdims else (channels,)
        return LayerInfo(output_shape=shape, is_global=True)


@final
@register
class GlobalAvgPool2d(GlobalPool2d):
    kind = "global_avgpool2d"
    aliases = ("GlobalAveragePooling2D",)


@final
@register
class GlobalMaxPool2d(GlobalPool2d):
    kind = "global_maxpool2d"
    aliases = ("GlobalMaxPooling2D", "AdaptiveMaxPool2d")


@final
@register
class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed ``size`` [h, w] from any input size, PyTorch's
    ``AdaptiveAvgPool2d``: output i of o averages inputs floor(i n / o) to ceil((i + 1) n / o)
    (exclusive). Where o divides n that is a pool of kernel and stride n / o; where it does
    not, neighbouring windows overlap by one input. VGG's and AlexNet's heads use it, so
    they run at any input size."""

    kind = "adaptive_avgpool2d"
    aliases = ("AdaptiveAvgPool2d", "AdaptiveAveragePooling2D")
    size: Size2

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, _, _ = feature_map(self, inputs[0])
        return LayerInfo(output_shape=(channels, *self.size))

    def averaging(self, height: int, width: int) -> tuple[list[list[float]], list[list[float]]]:
        """(rows, columns): out_h x H and out_w x W matrices, y = rows @ x @ columns^T per channel."""
        return _averaging(height, self.size[0]), _averaging(width, self.size[1])


def _averaging(size: int, out: int) -> list[list[float]]:
    rows = []
    for start, end in adaptive_windows(size, out):
        rows.append([1.0 / (end - start) if start <= i < end else 0.0 for i in range(size)])
    return rows


@final
@register
class Upsample2d(Layer):
    """Upsampling by an integer ``scale`` (one number, or [h, w]), PyTorch's ``Upsample``:
    ``nearest`` repeats each pixel (output i reads input floor(i / s)); ``bilinear``
    interpolates, output i at input coordinate (i + 0.5) / s - 0.5 (clamped at 0), or with
    ``align_corners`` at i (n - 1) / (n s - 1), so that the corner pixels coincide. ONNX
    writes the two as ``Resize`` with coordinate modes ``asymmetric`` (nearest, floor),
    ``half_pixel`` and ``align_corners``."""

    kind = "upsample2d"
    aliases = ("Upsample", "UpSampling2D", "Resize", "interpolate")
    scale: Size2
    mode: Literal["nearest", "bilinear"] = "nearest"
    align_corners: StrictBool = False

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        if self.align_corners and self.mode == "nearest":
            raise ShapeError("align_corners applies to bilinear upsampling only", "align_corners")
        return LayerInfo(output_shape=(channels, height * self.scale[0], width * self.scale[1]))

    def matrices(self, height: int, width: int) -> tuple[list[list[float]], list[list[float]]]:
        """(rows, columns): out_h x H and out_w x W interpolation weights, y = rows @ x @ columns^T."""
        return (_interpolation(height, self.scale[0], self.mode, self.align_corners),
                _interpolation(width, self.scale[1], self.mode, self.align_corners))


def _interpolation(size: int, scale: int, mode: str, align_corners: bool) -> list[list[float]]:
    out = size * scale
    rows = [[0.0] * size for _ in range(out)]
    for i in range(out):
        if mode == "nearest":
            rows[i][i // scale] = 1.0
            continue
        source = i * (size - 1) / (out - 1) if align_corners and out > 1 else max((i + 0.5) / scale - 0.5, 0.0)
        low = min(int(source), size - 1)
        high, fraction = min(low + 1, size - 1), source - low
        rows[i][low] += 1.0 - fraction
        rows[i][high] += fraction
    return rows
