"""A Graph lowered to an ``nn.Module``.

Each layer kind has one lowering in ``LOWERINGS``, keyed by its class. Submodules carry
the spec's layer names (dots nest, as in torchvision: ``layer1.0.conv1``), so
``state_dict()`` keys are the canonical checkpoint names and PyTorch's weight layout is
the canonical one (conv O x I x H x W, dense out x in): weights pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnspec.backends.protocol import BackendError
from cnnspec.graph.dag import Graph
from cnnspec.layers import Layer, Shape
from cnnspec.layers.activation import (
    ELU,
    GELU,
    Activation,
    HardSigmoid,
    HardSwish,
    LeakyReLU,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from cnnspec.layers.conv import Conv2d, ConvTranspose2d
from cnnspec.layers.core import ChannelShuffle, Dense, Dropout, DropPath, Flatten, Slice, ZeroPadding2d
from cnnspec.layers.merge import Add, Concat, Multiply
from cnnspec.layers.norm import LRN, Affine, BatchNorm, LayerNorm
from cnnspec.layers.pool import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
    MaxPool2d,
    Pool2d,
    Upsample2d,
)
from cnnspec.layers.window import resolve_padding, window_out
from cnnspec.spec.grammar import INPUT

Lowering = Callable[[Any, list[Shape]], nn.Module]


LOWERINGS: dict[type[Layer], Lowering] = {}


L = TypeVar("L", bound=Layer)


def lowers(*kinds: type[Layer]) -> Callable[[Lowering], Lowering]:
    def register(function: Lowering) -> Lowering:
        for kind in kinds:
            LOWERINGS[kind] = function
        return function

    return register


_SIMPLE: dict[type[Activation], Callable[[Any], nn.Module]] = {
    ReLU: lambda a: nn.ReLU(),
    ReLU6: lambda a: nn.ReLU6(),
    LeakyReLU: lambda a: nn.LeakyReLU(a.negative_slope),
    ELU: lambda a: nn.ELU(a.alpha),
    Sigmoid: lambda a: nn.Sigmoid(),
    Tanh: lambda a: nn.Tanh(),
    Softmax: lambda a: nn.Softmax(dim=1),  # over channels
    SiLU: lambda a: nn.SiLU(),
    HardSwish: lambda a: nn.Hardswish(),
    HardSigmoid: lambda a: nn.Hardsigmoid() if (a.alpha, a.beta) == (1 / 6, 0.5) else _HardSigmoid(a.alpha, a.beta),
    GELU: lambda a: nn.GELU(approximate=a.approximate),
}


class _HardSigmoid(nn.Module):
    """clip(alpha * x + beta, 0, 1) for slopes other than PyTorch's 1/6 (ONNX's 0.2, Keras 2's)."""

    def __init__(self, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)


def _activation(activation: Activation, shape: Shape) -> nn.Module:
    if isinstance(activation, PReLU):
        return nn.PReLU(shape[0] if activation.channelwise else 1, init=activation.init)
    return _SIMPLE[type(activation)](activation)


_ACTIVATION_KINDS: tuple[type[Layer], ...] = (*_SIMPLE, PReLU)


for _kind in _ACTIVATION_KINDS:
    LOWERINGS[_kind] = lambda layer, shapes: _activation(layer, shapes[0])


def _optional_activation(activation: Activation | None, shape: Shape) -> nn.Module | None:
    return None if activation is None else _activation(activation, shape)


def _window_padding(layer: Conv2d | Pool2d, shape: Shape, pool: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit padding, with extra at the bottom/right where ceil rounding needs it so
    that PyTorch's floor arithmetic gives the rounded-up size."""
    _, height, width = shape
    stride = layer.stride if isinstance(layer, Conv2d) else (layer.stride or layer.kernel)
    dilation = layer.dilation if isinstance(layer, Conv2d) else (1, 1)
    padding = resolve_padding(layer.padding, (height, width), layer.kernel, stride, dilation)
    if pool or layer.rounding != "ceil" or layer.padding == "same":
        return padding
    out = window_out((shape[0], height, width), layer.kernel, stride, padding, dilation, "ceil", pool=False)
    grown = []
    for axis, size in enumerate((height, width)):
        before, after = padding[axis]
        span = dilation[axis] * (layer.kernel[axis] - 1) + 1
        needed = (out[axis] - 1) * stride[axis] + span - (size + before + after)
        grown.append((before, after + max(needed, 0)))
    return (grown[0], grown[1])


def _torch_pad(padding: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """F.pad's (left, right, top, bottom), or None when nn's symmetric padding will do."""
    (top, bottom), (left, right) = padding
    return None if top == bottom and left == right else (left, right, top, bottom)


class SpecConv2d(nn.Conv2d):
    """nn.Conv2d plus asymmetric pre-padding and an activation, keeping the weight at
    '<name>.weight' as the canonical layout wants."""

    def __init__(self, layer: Conv2d, shapes: list[Shape]) -> None:
        padding = _window_padding(layer, shapes[0], pool=False)
        pre_pad = _torch_pad(padding)
        symmetric = (padding[0][0], padding[1][0]) if pre_pad is None else (0, 0)
        super().__init__(
            shapes[0][0], layer.filters, layer.kernel, layer.stride, symmetric, layer.dilation, layer.groups, layer.bias
        )
        self.pre_pad = pre_pad
        self.activation = _optional_activation(layer.activation, (layer.filters, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, F, H', W')
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        x = self._conv_forward(x, self.weight, self.bias)
        return x if self.activation is None else self.activation(x)


class SpecDense(nn.Linear):
    def __init__(self, layer: Dense, shapes: list[Shape]) -> None:
        super().__init__(shapes[0][0], layer.units, layer.bias)
        self.activation = _optional_activation(layer.activation, (layer.units,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, units)
        x = F.linear(x, self.weight, self.bias)
        return x if self.activation is None else self.activation(x)


class SpecPool2d(nn.Module):
    def __init__(self, layer: Pool2d, shapes: list[Shape]) -> None:
        super().__init__()
        self.is_max = isinstance(layer, MaxPool2d)
        self.kernel = layer.kernel
        self.stride = layer.stride or layer.kernel
        padding = _window_padding(layer, shapes[0], pool=True)
        self.pre_pad = _torch_pad(padding)
        self.padding = (padding[0][0], padding[1][0]) if self.pre_pad is None else (0, 0)
        self.ceil_mode = layer.rounding == "ceil" and layer.padding != "same"
        self.count_include_pad = getattr(layer, "count_include_pad", True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H', W')
        if self.is_max:
            if self.pre_pad is not None:
                x = F.pad(x, self.pre_pad, value=-math.inf)
            return F.max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        if self.pre_pad is None:
            return F.avg_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        pooled = F.avg_pool2d(F.pad(x, self.pre_pad), self.kernel, self.stride, 0, self.ceil_mode)
        if self.count_include_pad:
            return pooled
        # Mean over real pixels only: divide by the share of each window inside the image.
        ones = F.pad(torch.ones_like(x[:1, :1]), self.pre_pad)
        return pooled / F.avg_pool2d(ones, self.kernel, self.stride, 0, self.ceil_mode)


class GlobalPool(nn.Module):
    def __init__(self, is_max: bool, keepdims: bool) -> None:
        super().__init__()
        self.is_max, self.keepdims = is_max, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C[, 1, 1])
        return x.amax((2, 3), self.keepdims) if self.is_max else x.mean((2, 3), self.keepdims)


class Sum(nn.Module):
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` in mode "row", without torchvision."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.empty((x.shape[0], *([1] * (x.ndim - 1))), dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate)


class ChannelLayerNorm(nn.LayerNorm):
    """``LayerNorm(C)`` over the channels of an N x C x H x W map (torchvision's
    ``LayerNorm2d``), or over a vector's features; parameters ``weight`` and ``bias``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return super().forward(x)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelSlice(nn.Module):
    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.stop]


class CroppedConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution's full result cropped by ``crops`` ((top, bottom), (left,
    right); negative: zero rows added there), for the crops PyTorch's symmetric padding
    cannot say (Keras' 'same' with an odd kernel - stride). Parameters as ConvTranspose2d's."""

    def __init__(self, channels: int, layer: ConvTranspose2d, crops: tuple[tuple[int, int], tuple[int, int]]) -> None:
        ((top, bottom), (left, right)) = crops
        extra = (max(-bottom, 0), max(-right, 0))
        super().__init__(channels, layer.filters, layer.kernel, layer.stride, 0, extra, layer.groups, layer.bias)
        self.start, self.end = (top, left), (bottom + extra[0], right + extra[1])

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        y = super().forward(x)
        return y[:, :, self.start[0] : y.shape[2] - self.end[0], self.start[1] : y.shape[3] - self.end[1]]


def _conv_transpose(layer: ConvTranspose2d, shape: Shape) -> nn.Module:
    crops = layer.crops(*shape[1:])
    padding, extra = (crops[0][0], crops[1][0]), (crops[0][0] - crops[0][1], crops[1][0] - crops[1][1])
    if all(0 <= e < s for e, s in zip(extra, layer.stride, strict=True)):  # PyTorch's own padding says it
        return nn.ConvTranspose2d(shape[0], layer.filters, layer.kernel, layer.stride, padding, extra, layer.groups, layer.bias)
    return CroppedConvTranspose2d(shape[0], layer, crops)


class Product(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class ChannelConcat(nn.Module):
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=1)


class ChannelAffine(nn.Module):
    """y = weight[c] * x + bias[c] over dim 1."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.dim() - 2)))
        y = x * self.weight.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)


class SpecChannelShuffle(nn.Module):
    """view (groups, C/groups), transpose, flatten: what ShuffleNet's exports contain."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


LOWERINGS.update(
    {
        Conv2d: SpecConv2d,
        Dense: SpecDense,
        MaxPool2d: SpecPool2d,
        AvgPool2d: SpecPool2d,
        GlobalAvgPool2d: lambda layer, shapes: GlobalPool(False, layer.keepdims),
        GlobalMaxPool2d: lambda layer, shapes: GlobalPool(True, layer.keepdims),
        Flatten: lambda layer, shapes: nn.Flatten(),
        Dropout: lambda layer, shapes: nn.Dropout(layer.rate),
        DropPath: lambda layer, shapes: StochasticDepth(layer.rate),
        BatchNorm: lambda layer, shapes: (nn.BatchNorm2d if len(shapes[0]) == 3 else nn.BatchNorm1d)(
            shapes[0][0], eps=layer.eps, momentum=layer.momentum
        ),
        LRN: lambda layer, shapes: nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k),
        ZeroPadding2d: lambda layer, shapes: nn.ZeroPad2d(_zero_padding(layer)),
        Affine: lambda layer, shapes: ChannelAffine(shapes[0][0], layer.bias),
        LayerNorm: lambda layer, shapes: ChannelLayerNorm(shapes[0][0], layer.eps),
        ChannelShuffle: lambda layer, shapes: SpecChannelShuffle(layer.groups),
        Add: lambda layer, shapes: Sum(),
        Concat: lambda layer, shapes: ChannelConcat(),
        Multiply: lambda layer, shapes: Product(),
        Slice: lambda layer, shapes: ChannelSlice(layer.start, layer.stop),
        ConvTranspose2d: lambda layer, shapes: _conv_transpose(layer, shapes[0]),
        AdaptiveAvgPool2d: lambda layer, shapes: nn.AdaptiveAvgPool2d(layer.size),
        Upsample2d: lambda layer, shapes: nn.Upsample(scale_factor=tuple(float(s) for s in layer.scale), mode=layer.mode,
                                                     align_corners=layer.align_corners if layer.mode != "nearest" else None),
    }
)


def _zero_padding(layer: ZeroPadding2d) -> tuple[int, int, int, int]:
    assert not isinstance(layer.padding, str)
    (top, bottom), (left, right) = layer.padding
    return (left, right, top, bottom)


class GraphModule(nn.Module):
    """Runs the graph's nodes in order, keeping each output only until its last use."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        slots = {INPUT: 0}
        last_use: dict[str, int] = {}
        for step, node in enumerate(graph.nodes):
            for source in node.inputs:
                last_use[source] = step
        self._steps: list[tuple[nn.Module, tuple[int, ...], int, tuple[int, ...]]] = []
        for step, node in enumerate(graph.nodes):
            lowering = LOWERINGS.get(type(node.layer))
            if lowering is None:
                raise BackendError(f"the torch backend has no lowering for layer kind '{node.kind}'")
            module = lowering(node.layer, graph.input_shapes(node))
            _attach(self, node.name, module)
            slots[node.name] = step + 1
            frees = tuple(slots[s] for s in set(node.inputs) if last_use[s] == step and s != graph.output)
            self._steps.append((module, tuple(slots[s] for s in node.inputs), step + 1, frees))
        self._output = slots[graph.output]
        self._slots = len(slots)
        self._names = [node.name for node in graph.nodes]
        # A plain chain (LeNet, VGG) needs no bookkeeping: just call the layers in turn.
        self._chain = [module for module, *_ in self._steps] if graph.is_sequential and graph.output == graph.nodes[-1].name else None

    def swap_modules(self, swaps: dict[nn.Module, nn.Module]) -> None:
        """Run ``swaps[m]`` wherever the graph ran ``m`` (after the caller has re-registered
        it under the same name: SyncBatchNorm for BatchNorm)."""
        self._steps = [(swaps.get(module, module), sources, target, frees) for module, sources, target, frees in self._steps]
        if self._chain is not None:
            self._chain = [swaps.get(module, module) for module in self._chain]

    def activations(self, x: torch.Tensor, layers: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Every node's output by name (nothing freed), for verification; with ``layers``,
        only theirs, computing no further than the last of them."""
        values: list[torch.Tensor | None] = [None] * self._slots
        values[0] = x
        wanted = set(self._names if layers is None else layers)
        last = max((i for i, name in enumerate(self._names) if name in wanted), default=-1)
        for module, sources, target, _ in self._steps[: last + 1]:
            values[target] = module(*[values[i] for i in sources])
        return {name: value for name, value in zip(self._names, values[1:], strict=True) if value is not None and name in wanted}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        if self._chain is not None:
            for module in self._chain:
                x = module(x)
            return x
        values: list[torch.Tensor | None] = [None] * self._slots
        values[0] = x
        for module, sources, target, frees in self._steps:
            values[target] = module(*[values[i] for i in sources])
            for slot in frees:
                values[slot] = None
        result = values[self._output]
        assert result is not None
        return result


def _attach(root: nn.Module, name: str, module: nn.Module) -> None:
    """Register ``module`` under a dotted name, creating plain containers on the way."""
    *parents, leaf = name.split(".")
    parent = root
    for part in parents:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    if leaf in parent._modules:
        raise ValueError(f"layer name '{name}' collides with another layer's submodule")
    parent.add_module(leaf, module)


def build(graph: Graph) -> GraphModule:
    """The spec as an ``nn.Module`` (PyTorch's default initialisation; sessions load the
    harness's seeded initial weights over it)."""
    return GraphModule(graph)
