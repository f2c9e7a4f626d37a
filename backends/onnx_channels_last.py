"""ONNX import rules for maps whose channels a ``Transpose`` moved last, and for layer
normalisation however an exporter spells it.

PyTorch code often permutes a map to N x H x W x C, applies ``LayerNorm`` and ``Linear``
layers there (they act on the last axis) and permutes back: torchvision's ConvNeXt block.
The exporters keep that region as it is: ``Transpose(0, 2, 3, 1)``, then
``LayerNormalization``, ``MatMul`` + ``Add``, element-wise activations, then
``Transpose(0, 3, 1, 2)``. cnnspec's layers work on N x C x H x W, so the region is read
as what it computes there: the first Transpose moves nothing (its output stands for its
input), a ``MatMul`` by a constant C x O matrix is a 1x1 convolution, a per-channel
constant acts on the last axis, and the Transpose back ends the region. Anything else
inside a region is refused, naming what the region may hold; a model whose output is still
channels-last is refused (a spec's output is N x C x H x W).

Layer normalisation also arrives decomposed (the TorchScript exporter before opset 17, and
hand-written ``LayerNorm2d`` modules as ConvNeXt's authors wrote it):
``m = ReduceMean(x)``, ``d = x - m``, ``ReduceMean(d ** 2)``, ``+ eps``, ``Sqrt``, ``d / that``,
then optionally a per-channel ``Mul`` and ``Add``: over the channel axis (1, or the last axis
in a channels-last region) that is one ``layer_norm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnspec.backends.import_common import ImportRefused, decimal
from cnnspec.backends.onnx_modern_rules import layer_norm_args
from cnnspec.backends.onnx_normalise import node_label
from cnnspec.backends.onnx_reader import Reader, Rule, attributes, per_channel
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.norm import LayerNorm

_LAST, _FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _enter(r: Reader, node: Any) -> list[Any] | None:
    if len(r.shape(node.input[0])) != 4 or list(attributes(node).get("perm", [])) != _LAST:
        return None
    if node.input[0] not in r.producer:
        raise ImportRefused(f"{node_label(node)} reads '{node.input[0]}', which no supported node computes")
    r.producer[node.output[0]] = r.producer[node.input[0]]
    r.channels_last.add(node.output[0])
    return [node]


def _leave(r: Reader, node: Any) -> list[Any] | None:
    if list(attributes(node).get("perm", [])) != _FIRST:
        return None
    r.producer[node.output[0]] = r.producer[node.input[0]]
    return [node]


def _layer_norm_last(r: Reader, node: Any) -> list[Any] | None:
    found = layer_norm_args(r, node, r.shape(node.input[0])[-1])
    if found is None:
        return None
    args, scale, bias = found
    _write_layer_norm(r, node, args, node.input[0], scale, bias)
    return [node]


def _write_layer_norm(r: Reader, last: Any, args: dict[str, Any], reads: str, scale: np.ndarray, bias: np.ndarray) -> None:
    name = r.add(last, LayerNorm.kind, args, [reads])
    r.weights[f"{name}.weight"], r.weights[f"{name}.bias"] = scale.astype(np.float32), bias.astype(np.float32)


def _pointwise(r: Reader, node: Any) -> list[Any] | None:
    """x @ W (+ b) on the last axis: a 1x1 convolution with weight W transposed."""
    weight, source = r.constant(node, 1), r.variables(node)
    if weight is None or weight.ndim != 2 or len(source) != 1 or node.input[0] != source[0] or r.shape(source[0])[-1] != weight.shape[0]:
        return None
    after = r.next_one(node, "Add")
    bias = None if after is None else next((r.constant(after, i) for i in (0, 1) if r.constant(after, i) is not None), None)
    if bias is not None and bias.size != weight.shape[1]:
        bias = None
    taken = [node] if bias is None else [node, after]
    args: dict[str, Any] = {"filters": int(weight.shape[1]), "kernel": 1}
    if bias is None:
        args["bias"] = False
    name = r.add(node, Conv2d.kind, args, [source[0]], taken[-1].output[0])
    r.weights[f"{name}.weight"] = np.ascontiguousarray(weight.T[:, :, None, None].astype(np.float32))
    if bias is not None:
        r.weights[f"{name}.bias"] = bias.astype(np.float32).reshape(-1)
    return taken


def _axes(r: Reader, node: Any) -> list[int]:
    given = r.constant(node, 1)
    return [int(v) % 4 for v in (given.reshape(-1) if given is not None else attributes(node).get("axes", []))]


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _user(r: Reader, tensor: str, op: str, test: Any = lambda node: True) -> Any | None:
    found = [node for node in r.consumers.get(tensor, []) if node.op_type == op and test(node)]
    return found[0] if len(found) == 1 else None


def _decomposed_layer_norm(r: Reader, node: Any) -> list[Any] | None:
    """The chain from ``m = ReduceMean(x)`` to ``(x - m) / Sqrt(var + eps)`` over the channel
    axis, with the per-channel scale and shift that may follow."""
    x = node.input[0]
    if len(r.shape(x)) != 4 or not attributes(node).get("keepdims", 1):
        return None
    axis = 3 if x in r.channels_last else 1
    if _axes(r, node) != [axis]:
        return None
    sub = _user(r, node.output[0], "Sub", lambda n: list(n.input) == [x, node.output[0]])
    if sub is None:
        return None
    d = sub.output[0]
    square = _user(r, d, "Pow", lambda n: _scalar(r.constant(n, 1)) == 2.0)
    if square is None:
        square = _user(r, d, "Mul", lambda n: list(n.input) == [d, d])
    div = _user(r, d, "Div", lambda n: n.input[0] == d)
    if square is None or div is None or len(r.consumers.get(d, [])) != 2:
        return None
    variance = r.next_one(square, "ReduceMean")
    plus = r.next_one(variance, "Add") if variance is not None and _axes(r, variance) == [axis] else None
    eps = next((r.constant(plus, i) for i in (0, 1) if r.constant(plus, i) is not None), None) if plus is not None else None
    root = r.next_one(plus, "Sqrt") if eps is not None and eps.size == 1 else None
    if root is None or div.input[1] != root.output[0] or r.next_one(node, "Sub") is None:
        return None
    taken = [node, sub, square, variance, plus, root, div]
    channels = r.shape(x)[axis]
    scale, bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    if x in r.channels_last:  # the chain's tensors are channels-last too: per_channel reads the last axis
        r.channels_last.update(n.output[0] for n in taken)
    times = r.next_one(div, "Mul")
    found = per_channel(r, times) if times is not None else None
    if times is not None and found is not None:
        scale = found[1] * np.ones(channels, np.float32)
        taken.append(times)
        if x in r.channels_last:
            r.channels_last.add(times.output[0])
    plus_bias = r.next_one(taken[-1], "Add")
    found = per_channel(r, plus_bias) if plus_bias is not None else None
    if found is not None:
        bias = found[1] * np.ones(channels, np.float32)
        taken.append(plus_bias)
    value = float(np.asarray(eps).reshape(-1)[0])
    _write_layer_norm(r, taken[-1], {} if np.isclose(value, 1e-5, rtol=1e-3) else {"eps": decimal(value)}, x, scale, bias)
    return taken


_DECOMPOSED = Rule(("ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div"), LayerNorm.kind, _decomposed_layer_norm,
                   "over channels, then an optional per-channel Mul and Add")

# Rules for the model's ordinary (N x C x H x W) tensors: after the more specific Transpose rules.
ENTRY_RULES: list[Rule] = [
    _DECOMPOSED,
    Rule(("Transpose",), "a channels-last region", _enter, "perm (0, 2, 3, 1) on a map: a region that a Transpose (0, 3, 1, 2) ends"),
]

# Rules inside a region, before the layout-free rules of the ordinary table.
REGION_RULES: list[Rule] = [
    Rule(("Transpose",), "the region's end", _leave, "perm (0, 3, 1, 2)", leaves=True),
    Rule(("LayerNormalization",), LayerNorm.kind, _layer_norm_last, "over the last axis, with a known scale"),
    _DECOMPOSED,
    Rule(("MatMul", "Add"), Conv2d.kind, _pointwise, "by a known C x O matrix: a 1x1 convolution"),
]
