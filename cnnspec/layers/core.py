"""Layers that reshape, connect densely, pad, drop or reorder: flatten, dense,
zero_padding2d, dropout, channel_shuffle."""

from __future__ import annotations

from typing import final

from pydantic import StrictBool

from cnnspec.calculators import dense_macs, dense_params
from cnnspec.layers.activation import ActivationArg, activation_params, activation_weights
from cnnspec.layers.base import (
    InitArg,
    Layer,
    LayerInfo,
    NonNegativeInt,
    Padding,
    PositiveInt,
    Rate,
    Shape,
    ShapeError,
    WeightSpec,
    Window,
    feature_map,
    format_shape,
    register,
)


@final
@register
class Flatten(Layer):
    """C x H x W -> C*H*W, channels-first order (PyTorch's ``flatten``)."""

    kind = "flatten"

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        size = 1
        for dim in inputs[0]:
            size *= dim
        return LayerInfo(output_shape=(size,), is_global=len(inputs[0]) == 3)


@final
@register
class Dense(Layer):
    """Fully connected: out = W x + b with W of shape units x in."""

    kind = "dense"
    aliases = ("Linear",)

    units: PositiveInt
    bias: StrictBool = True
    activation: ActivationArg = None
    init: InitArg = "xavier"

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        shape = inputs[0]
        if len(shape) != 1:
            raise ShapeError(
                f"needs a vector but gets a {format_shape(shape)} feature map; "
                "add 'flatten: {}' or 'global_avgpool2d: {}' before it"
            )
        out = (self.units,)
        return LayerInfo(
            output_shape=out,
            params=dense_params(shape[0], self.units, self.bias) + activation_params(self.activation, out),
            macs=dense_macs(shape[0], self.units),
            is_global=True,
        )

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        features = inputs[0][0]
        result = {"weight": WeightSpec((self.units, features), self.init, fan_in=features, fan_out=self.units)}
        if self.bias:
            result["bias"] = WeightSpec((self.units,), "zeros")
        return result | activation_weights(self.activation, (self.units,))


@final
@register
class Dropout(Layer):
    """Zero each element with probability ``rate`` in training (inverted dropout)."""

    kind = "dropout"
    rate: Rate = 0.5

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0])


@final
@register
class DropPath(Layer):
    """Stochastic depth (Huang et al. 2016) on a residual branch: in training each sample's
    whole branch is zeroed with probability ``rate`` and the kept ones scaled by
    1 / (1 - rate) (torchvision's ``StochasticDepth``, mode "row"); the identity at
    evaluation."""

    kind = "drop_path"
    rate: Rate = 0.0

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0])


@final
@register
class ZeroPadding2d(Layer):
    kind = "zero_padding2d"
    aliases = ("ZeroPad2d",)
    padding: Padding

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, height, width = feature_map(self, inputs[0])
        if isinstance(self.padding, str):
            raise ShapeError("needs explicit amounts, not 'same' or 'valid'", "padding")
        (top, bottom), (left, right) = self.padding
        return LayerInfo(
            output_shape=(channels, height + top + bottom, width + left + right),
            window=Window(kernel=(1, 1), stride=(1, 1)),
        )


@final
@register
class Slice(Layer):
    """Channels ``start`` to ``stop`` (excluded) of a map, or features of a vector:
    ShuffleNetV2's ``x.chunk(2, dim=1)`` is two slices of one input."""

    kind = "slice"
    aliases = ("Split", "chunk")
    start: NonNegativeInt = 0
    stop: PositiveInt

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels = inputs[0][0]
        if self.stop > channels:
            raise ShapeError(f"stop {self.stop} is past the input's {channels} channels", "stop")
        if self.start >= self.stop:
            raise ShapeError(f"start {self.start} is not before stop {self.stop}: the slice would be empty", "start")
        return LayerInfo(output_shape=(self.stop - self.start, *inputs[0][1:]))


@final
@register
class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle (Zhang et al. 2018): the channels, seen as ``groups``
    rows of C/groups, read out by column, so that the next grouped convolution sees
    channels from every group. PyTorch's ``ChannelShuffle``: view (groups, C/groups),
    transpose, flatten."""

    kind = "channel_shuffle"
    groups: PositiveInt

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        channels, _, _ = feature_map(self, inputs[0])
        if channels % self.groups:
            raise ShapeError(f"{channels} channels do not split into {self.groups} groups", "groups")
        return LayerInfo(output_shape=inputs[0], window=Window(kernel=(1, 1), stride=(1, 1)))

    def order(self, channels: int) -> list[int]:
        """Output channel i is input channel order[i]."""
        per_group = channels // self.groups
        return [group * per_group + index for index in range(per_group) for group in range(self.groups)]
