"""The layer-kind base class and its registry.

A layer kind is one final Pydantic class: its fields are the spec arguments, ``kind`` is
its name in specs (the only place that name is written), and ``infer`` returns the output
shape, parameter counts and MACs from the pure rules in ``cnnspec.calculators``. Backends
register a lowering per class; nothing dispatches on kind strings.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, WithJsonSchema

from cnnspec.calculators import Rounding

Shape = tuple[int, ...]  # channels-first, batch axis left out: (C, H, W) or (features,)


class ShapeError(ValueError):
    """The layer cannot take its input; ``field`` names the argument to point at."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Window:
    """The sliding window of a layer, for receptive-field arithmetic: effective kernel
    (dilation included) and stride, (h, w)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]


Init = Literal["he", "xavier", "normal", "uniform", "zeros"]  # what a spec may ask for


@dataclass(frozen=True)
class WeightSpec:
    """One array a layer owns, in the canonical layout (conv O x I x H x W, dense out x
    in): what checkpoints store and every backend converts to and from."""

    shape: tuple[int, ...]
    init: Init | Literal["constant"]
    trainable: bool = True
    fan_in: int = 1
    fan_out: int = 1
    value: float = 0.0  # the value of a "constant" init


@dataclass(frozen=True)
class LayerInfo:
    output_shape: Shape
    params: int = 0  # learned parameters
    non_trainable: int = 0  # state such as batchnorm running statistics
    macs: int = 0  # multiply-accumulates per sample, bias excluded
    window: Window | None = None  # a spatial window (conv, pool, padding)
    is_global: bool = False  # each output sees the whole input (global pool, dense)


class Layer(BaseModel):
    """Abstract base of every layer kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kind: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # what Keras and PyTorch call it, for did-you-mean (same-name spellings need none)
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # (least, most) inputs; None: any

    @abstractmethod
    def infer(self, inputs: list[Shape]) -> LayerInfo:
        """Shapes, counts and cost for these input shapes; raises ShapeError."""

    def weights(self, inputs: list[Shape]) -> dict[str, WeightSpec]:
        """The arrays this layer owns, by name within the layer ('weight', 'bias', ...).
        Their trainable sizes add up to ``infer(...).params`` (a test checks)."""
        return {}


LAYERS: dict[str, type[Layer]] = {}
L = TypeVar("L", bound=type[Layer])


def kind_aliases() -> dict[str, str]:
    """Other frameworks' names of the registered kinds: alias -> kind."""
    return {alias: kind for kind, cls in LAYERS.items() for alias in cls.aliases}


def register(cls: L) -> L:
    """Class decorator: make ``cls`` usable in specs under ``cls.kind``."""
    if cls.kind in LAYERS:
        raise ValueError(f"layer kind '{cls.kind}' is registered twice")
    LAYERS[cls.kind] = cls
    return cls


# ---- argument types shared by several kinds -------------------------------------------

PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


def number_value(value: Any) -> Any:
    """Accept ints and floats, not booleans or numeric strings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


Number = Annotated[float, BeforeValidator(number_value)]
# Constrained numbers put Field before the validator so the JSON Schema shows the bounds.
Rate = Annotated[float, Field(ge=0.0, lt=1.0), BeforeValidator(number_value)]
PositiveNumber = Annotated[float, Field(gt=0.0), BeforeValidator(number_value)]
Momentum = Annotated[float, Field(gt=0.0, le=1.0), BeforeValidator(number_value)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: Any, minimum: int, what: str) -> tuple[int, int]:
    if _is_int(value) and value >= minimum:
        return (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_int(v) and v >= minimum for v in value)
    ):
        return (value[0], value[1])
    raise ValueError(f"expected {what} or a pair [h, w] of them, got {value!r}")


def _positive_pair(value: Any) -> tuple[int, int]:
    return _pair(value, 1, "a positive integer")


_PAIR_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
    ]
}
Size2 = Annotated[
    tuple[int, int], BeforeValidator(_positive_pair), WithJsonSchema(_PAIR_SCHEMA)
]
"""A kernel, stride or dilation: a scalar for both axes or an [h, w] pair."""

Size2Or0 = Annotated[
    tuple[int, int],
    BeforeValidator(lambda value: _pair(value, 0, "a non-negative integer")),
    WithJsonSchema({"oneOf": [{"type": "integer", "minimum": 0},
                              {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}]}),
]
"""A symmetric padding or an output padding: a non-negative scalar or [h, w] pair."""

InitArg = Annotated[
    Init,
    Field(description="initial weights: he (normal, fan-in), xavier (uniform), normal (std 0.01), uniform (+-1/sqrt(fan-in)), zeros"),
]

RoundingArg = Annotated[
    Rounding,
    Field(description="how a non-integer output size is rounded: 'exact' refuses it, 'floor' (PyTorch, Keras), 'ceil' (Caffe)"),
]

Padding4 = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


def _padding(value: Any) -> Padding4 | str:
    if value in ("same", "valid"):
        return str(value)
    try:
        h, w = _pair(value, 0, "a non-negative integer")
        return ((h, h), (w, w))
    except ValueError:
        pass
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            return (_pair(value[0], 0, ""), _pair(value[1], 0, ""))
        except ValueError:
            pass
    raise ValueError(
        "expected 'same', 'valid', a non-negative integer, a pair [h, w] "
        f"or [[top, bottom], [left, right]], got {value!r}"
    )


Padding = Annotated[
    Padding4 | str,
    BeforeValidator(_padding),
    WithJsonSchema(
        {
            "oneOf": [
                {"enum": ["same", "valid"]},
                {"type": "integer", "minimum": 0},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                    "minItems": 2,
                    "maxItems": 2,
                },
            ]
        }
    ),
]
"""Padding: 'same', 'valid', a scalar, [h, w], or asymmetric [[top, bottom], [left, right]]."""


def feature_map(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    """The (C, H, W) of an input that must be a feature map."""
    if len(shape) != 3:
        raise ShapeError(
            f"needs a C x H x W feature map, got a vector of {shape[0]} features"
            if len(shape) == 1
            else f"needs a C x H x W feature map, got shape {format_shape(shape)}"
        )
    return shape[0], shape[1], shape[2]


def channels_of(shape: Shape) -> int:
    """The channels of a C x H x W feature map or the length of a feature vector: what a
    per-channel layer (batchnorm, affine) normalises. A C x L input is neither."""
    if len(shape) not in (1, 3):
        raise ShapeError(f"needs a C x H x W feature map or a vector of features, got shape {format_shape(shape)}")
    return shape[0]


def format_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)
