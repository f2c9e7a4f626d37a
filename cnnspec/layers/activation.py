"""Activations, usable as layers (``- relu: {}``) and as the ``activation:`` argument of
conv2d and dense (``activation: relu`` or ``activation: {leaky_relu: {negative_slope: 0.2}}``).

Semantics follow PyTorch's modules of the same names (``torch.nn.ReLU``, ``nn.SiLU``,
``nn.Hardsigmoid``, ``nn.Hardswish``, ``nn.GELU`` and so on); softmax runs over the
channel axis.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, final

from pydantic import BeforeValidator, Field, StrictBool, WithJsonSchema

from cnnspec.errors import did_you_mean
from cnnspec.layers.base import LAYERS, Layer, LayerInfo, Number, Shape, WeightSpec, register


class Activation(Layer):
    """Abstract: an element-wise (or channel-wise, for softmax) nonlinearity."""

    is_activation: ClassVar[bool] = True

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0])


@final
@register
class ReLU(Activation):
    kind = "relu"


@final
@register
class ReLU6(Activation):
    kind = "relu6"


@final
@register
class LeakyReLU(Activation):
    kind = "leaky_relu"
    negative_slope: Number = 0.01


@final
@register
class PReLU(Activation):
    """Learned negative slope: one shared (PyTorch's default) or one per channel."""

    kind = "prelu"
    channelwise: StrictBool = False
    init: Number = 0.25

    def infer(self, inputs: list[Shape]) -> LayerInfo:
        return LayerInfo(output_shape=inputs[0], params=inputs[0][0] if self.channelwise else 1)

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        count = inputs[0][0] if self.channelwise else 1
        return {"weight": WeightSpec((count,), "constant", value=self.init)}


@final
@register
class ELU(Activation):
    kind = "elu"
    alpha: Number = 1.0


@final
@register
class Sigmoid(Activation):
    kind = "sigmoid"


@final
@register
class Tanh(Activation):
    kind = "tanh"


@final
@register
class SiLU(Activation):
    """x * sigmoid(x): Keras' ``swish``, EfficientNet's activation."""

    kind = "silu"


@final
@register
class HardSigmoid(Activation):
    """clip(alpha * x + beta, 0, 1). The defaults are PyTorch's and Keras 3's,
    relu6(x + 3) / 6; ONNX's operator defaults to alpha 0.2 (Keras 2's)."""

    kind = "hard_sigmoid"
    alpha: Number = 1 / 6
    beta: Number = 0.5


@final
@register
class HardSwish(Activation):
    """x * relu6(x + 3) / 6: MobileNetV3's activation, Keras' ``hard_silu``."""

    kind = "hard_swish"


GeluForm = Literal["none", "tanh"]


@final
@register
class GELU(Activation):
    """x * Phi(x), Phi the standard normal's distribution function (the erf form);
    ``approximate: tanh`` for 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""

    kind = "gelu"
    approximate: GeluForm = "none"


@final
@register
class Softmax(Activation):
    kind = "softmax"


def _activation_kinds() -> list[str]:
    return [kind for kind, cls in LAYERS.items() if issubclass(cls, Activation)]


def _parse_activation(value: Any) -> Activation | None:
    if value is None or value in ("none", "linear"):
        return None
    if isinstance(value, Activation):
        return value
    args: Any
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        name, args = next(iter(value.items()))
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f"arguments of activation '{name}' must be a mapping, got {args!r}")
    else:
        raise ValueError(f"expected an activation name or {{name: {{arguments}}}}, got {value!r}")
    cls = LAYERS.get(name) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, Activation):
        kinds = _activation_kinds()
        raise ValueError(
            f"unknown activation {name!r}{did_you_mean(str(name), kinds)}; known: {', '.join(kinds)}"
        )
    return cls.model_validate(args)


ActivationArg = Annotated[
    Activation | None,
    BeforeValidator(_parse_activation),
    WithJsonSchema(
        {
            "description": "an activation name (relu, ...) or {name: {arguments}}; none for linear",
            "oneOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}],
        }
    ),
    Field(description="activation applied to the output"),
]


def activation_params(activation: Activation | None, shape: Shape) -> int:
    return activation.infer([shape]).params if activation is not None else 0


def activation_weights(activation: Activation | None, shape: Shape) -> dict[str, WeightSpec]:
    """An activation argument's own weights, named 'activation.NAME' in its layer."""
    if activation is None:
        return {}
    return {f"activation.{name}": spec for name, spec in activation.weights([shape]).items()}
