"""Normalisation: batchnorm, local response normalisation (AlexNet's LRN), and the
per-channel affine that batchnorm becomes once its statistics are folded in."""

from __future__ import annotations

from typing import final

from pydantic import StrictBool

from cnnspec.calculators import affine_params, batchnorm_params
from cnnspec.layers.base import (
    Layer,
    LayerInfo,
    Momentum,
    Number,
    PositiveInt,
    PositiveNumber,
    Shape,
    WeightSpec,
    channels_of,
    feature_map,
    register,
)


@final
@register
class BatchNorm(Layer):
    """Per-channel batch normalisation (Ioffe and Szegedy 2015) of a feature map or
    vector. ``momentum`` weighs the new batch in the running statistics, as in PyTorch
    (Keras' momentum is 1 minus this)."""

    kind = "batchnorm"
    aliases = ("BatchNormalization", "BatchNorm2d", "BatchNorm1d")
    eps: PositiveNumber = 1e-5
    momentum: Momentum = 0.1

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        learned, state = batchnorm_params(channels_of(inputs[0]))
        return LayerInfo(output_shape=inputs[0], params=learned, non_trainable=state)

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        channels = (inputs[0][0],)
        return {
            "weight": WeightSpec(channels, "constant", value=1.0),
            "bias": WeightSpec(channels, "zeros"),
            "running_mean": WeightSpec(channels, "zeros", trainable=False),
            "running_var": WeightSpec(channels, "constant", trainable=False, value=1.0),
        }


@final
@register
class LayerNorm(Layer):
    """Normalisation over the channels at each position (over the features of a vector),
    with a learned scale and shift per channel: PyTorch's ``LayerNorm(C)`` on a
    channels-last map, ConvNeXt's ``LayerNorm2d`` (its eps is 1e-6), Keras'
    ``LayerNormalization(axis=-1)``."""

    kind = "layer_norm"
    aliases = ("LayerNorm", "LayerNormalization", "LayerNorm2d")
    eps: PositiveNumber = 1e-5

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0], params=affine_params(channels_of(inputs[0])))

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        channels = (inputs[0][0],)
        return {"weight": WeightSpec(channels, "constant", value=1.0), "bias": WeightSpec(channels, "zeros")}


@final
@register
class LRN(Layer):
    """Local response normalisation across channels (Krizhevsky et al. 2012), with
    PyTorch's ``LocalResponseNorm`` semantics: b = a / (k + alpha/size * sum a^2)^beta."""

    kind = "lrn"
    aliases = ("LocalResponseNorm",)
    size: PositiveInt = 5
    alpha: Number = 1e-4
    beta: Number = 0.75
    k: Number = 1.0

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        feature_map(self, inputs[0])
        return LayerInfo(output_shape=inputs[0])


@final
@register
class Affine(Layer):
    """Per-channel scale and shift, y = weight[c] * x + bias[c], learned, of a feature
    map or vector: a batch norm with its statistics folded in (what inference exports
    write, as ONNX ``Mul`` and ``Add``), and Caffe's ``Scale`` layer. Unlike batchnorm it
    computes the same in training as in inference."""

    kind = "affine"
    bias: StrictBool = True
    init: Number = 1.0  # the scale's starting value (ConvNeXt's layer scale starts at 1e-6)

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0], params=affine_params(channels_of(inputs[0]), self.bias))

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        channels = (inputs[0][0],)
        scale = {"weight": WeightSpec(channels, "constant", value=self.init)}
        return scale | {"bias": WeightSpec(channels, "zeros")} if self.bias else scale
