"""ONNX import rules for the kinds of networks after 2016: the activations they use,
whichever way an exporter spells them, the product of two tensors (a gate), layer
normalisation over channels, slices of channels (ShuffleNetV2's split), adaptive
average pooling, upsampling and transposed convolution (segmentation decoders).

Exporters write the same activation many ways: ``HardSwish`` as one operator (torch,
opset 14+), as ``x * HardSigmoid(x)``, or as ``x * Clip(x + 3, 0, 6) / 6`` (Keras 3's
raw operations through tf2onnx); GELU as opset 20's ``Gelu`` or as a chain around
``Erf`` in any order of its multiplications; SiLU as ``Sigmoid`` then ``Mul``. So a chain
of element-wise operators is read by what it computes, not by how it is written: the
nodes that read only one tensor ``x`` (and scalar constants) are gathered, evaluated in
float64 on probe values, and compared with each candidate activation by the project's
agreement rule at a tolerance far below the gap between any two candidates (the tanh
form of GELU is within 1e-4 of the erf form; float32 constants within 1e-7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import numpy as np

from cnnspec.agreement import agrees
from cnnspec.backends.import_common import decimal, pair
from cnnspec.backends.onnx_backend import TRANSPOSED_PADDING_NOTE
from cnnspec.backends.onnx_reader import Reader, Rule, attributes
from cnnspec.layers.activation import GELU, GeluForm, HardSigmoid, HardSwish, SiLU
from cnnspec.layers.conv import ConvTranspose2d
from cnnspec.layers.core import Slice
from cnnspec.layers.merge import Multiply
from cnnspec.layers.norm import LayerNorm
from cnnspec.layers.pool import AdaptiveAvgPool2d, Upsample2d

_, _TANH_FORM = get_args(GeluForm)
_PROBE = np.concatenate([np.linspace(-5.0, 5.0, 201), [-3.0, 3.0, -2.5, 2.5]])
_IDENTIFY = 1e-6  # relative to the values' magnitude; candidates differ by 1e-4 or more


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return np.asarray(erf(x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _clip(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    return np.clip(x, -np.inf if low is None else low, np.inf if high is None else high)


# Element-wise operators: f(inputs, attributes); constants arrive as float64 scalars.
_EVALUATE: dict[str, Callable[[list[Any], dict[str, Any]], np.ndarray]] = {
    "Add": lambda v, a: v[0] + v[1],
    "Sub": lambda v, a: v[0] - v[1],
    "Mul": lambda v, a: v[0] * v[1],
    "Div": lambda v, a: v[0] / v[1],
    "Pow": lambda v, a: np.power(v[0], v[1]),
    "Neg": lambda v, a: -v[0],
    "Sqrt": lambda v, a: np.sqrt(v[0]),
    "Exp": lambda v, a: np.exp(v[0]),
    "Erf": lambda v, a: _erf(v[0]),
    "Tanh": lambda v, a: np.tanh(v[0]),
    "Sigmoid": lambda v, a: _sigmoid(v[0]),
    "Relu": lambda v, a: np.maximum(v[0], 0),
    "Clip": lambda v, a: _clip(v[0], v[1] if len(v) > 1 else None, v[2] if len(v) > 2 else None),
    "Min": lambda v, a: np.minimum(v[0], v[1]),
    "Max": lambda v, a: np.maximum(v[0], v[1]),
    "HardSigmoid": lambda v, a: np.clip(a.get("alpha", 0.2) * v[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda v, a: v[0] * np.clip(v[0] / 6 + 0.5, 0, 1),
}


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# (kind, arguments, function): what a chain may compute.
_CANDIDATES: list[tuple[str, dict[str, Any], Callable[[np.ndarray], np.ndarray]]] = [
    (SiLU.kind, {}, lambda x: x * _sigmoid(x)),
    (HardSwish.kind, {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    (GELU.kind, {}, _gelu),
    (GELU.kind, {"approximate": _TANH_FORM}, _gelu_tanh),
]


def _hard_sigmoid_args(y: np.ndarray) -> dict[str, Any] | None:
    """alpha and beta of clip(alpha * x + beta, 0, 1) when ``y`` is one; PyTorch's 1/6, 1/2 as
    the defaults (no arguments)."""
    inside = (y > 1e-6) & (y < 1 - 1e-6)
    if inside.sum() < 2:
        return None
    alpha, beta = np.polyfit(_PROBE[inside], y[inside], 1)
    if alpha <= 0 or not agrees(y, np.clip(alpha * _PROBE + beta, 0, 1), _IDENTIFY):
        return None
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return {}
    return {"alpha": decimal(float(alpha)), "beta": decimal(float(beta))}


def _identify(y: np.ndarray) -> tuple[str, dict[str, Any]] | None:
    for kind, args, function in _CANDIDATES:
        if agrees(y, function(_PROBE), _IDENTIFY):
            return kind, args
    slope = _hard_sigmoid_args(y)
    return None if slope is None else (HardSigmoid.kind, slope)


def _scalar(r: Reader, name: str) -> float | None:
    value = r.plain.constants.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _region(r: Reader, x: str) -> list[Any]:
    """Every element-wise node, in model order, that reads only ``x``, scalar constants and
    other such nodes' outputs."""
    inside: set[str] = {x}
    nodes: list[Any] = []
    for node in r.plain.nodes:  # topological order: one pass gathers the closure
        if id(node) in r.done or node.op_type not in _EVALUATE:
            continue
        names = [name for name in node.input if name]
        if names and all(name in inside or _scalar(r, name) is not None for name in names) and any(n in inside for n in names):
            nodes.append(node)
            inside.add(node.output[0])
    return nodes


def _evaluate(r: Reader, x: str, nodes: list[Any]) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {x: _PROBE}
    with np.errstate(all="ignore"):
        for node in nodes:
            inputs = [values[name] if name in values else _scalar(r, name) for name in node.input if name]
            values[node.output[0]] = np.broadcast_to(_EVALUATE[node.op_type](inputs, attributes(node)), _PROBE.shape)
    return values


def _ancestors(nodes: list[Any], last: Any) -> list[Any]:
    producer = {node.output[0]: node for node in nodes}
    wanted, stack = {id(last)}, [last]
    while stack:
        for name in stack.pop().input:
            if name in producer and id(producer[name]) not in wanted:
                wanted.add(id(producer[name]))
                stack.append(producer[name])
    return [node for node in nodes if id(node) in wanted]


def _closed(r: Reader, taken: list[Any], last: Any) -> bool:
    """No tensor inside ``taken`` but its last is read outside it or is the model's output."""
    ids = {id(node) for node in taken}
    for node in taken:
        if node is last:
            continue
        if node.output[0] == r.plain.output or any(id(user) not in ids for user in r.consumers.get(node.output[0], [])):
            return False
    return True


def _elementwise_chain(r: Reader, node: Any) -> list[Any] | None:
    """Two or more element-wise nodes, starting at ``node``, that compute a known activation
    of one tensor: the largest such chain."""
    variables = set(r.variables(node))
    if len(variables) != 1:
        return None
    x = variables.pop()
    region = _region(r, x)
    if len(region) < 2 or node not in region:
        return None
    values = _evaluate(r, x, region)
    for last in reversed(region):
        taken = _ancestors(region, last)
        if len(taken) < 2 or node not in taken or not _closed(r, taken, last):
            continue
        found = _identify(values[last.output[0]])
        if found is not None:
            r.add_activation(node, *found, reads=x, last=last)
            return taken
    return None


def _single(r: Reader, node: Any) -> list[Any] | None:
    a = attributes(node)
    if node.op_type == "HardSwish":
        kind, args = HardSwish.kind, {}
    elif node.op_type == "Gelu":
        form = a.get("approximate", b"none")
        kind, args = GELU.kind, ({"approximate": _TANH_FORM} if (form.decode() if isinstance(form, bytes) else form) == _TANH_FORM else {})
    else:  # HardSigmoid, ONNX's defaults 0.2 and 0.5
        slope = _hard_sigmoid_args(np.clip(float(a.get("alpha", 0.2)) * _PROBE + float(a.get("beta", 0.5)), 0, 1))
        if slope is None:
            return None
        kind, args = HardSigmoid.kind, slope
    r.add_activation(node, kind, args)
    return [node]


def _multiply(r: Reader, node: Any) -> list[Any] | None:
    reads = r.variables(node)
    if len(reads) != 2 or len(node.input) != 2:
        return None
    first, second = (r.shape(name) for name in reads)
    gate = first if first[2:] == (1, 1) else second
    if first != second and not (len(first) == len(second) == 4 and gate[2:] == (1, 1) and first[:2] == second[:2]):
        return None
    r.add(node, Multiply.kind, {}, reads)
    return [node]


def layer_norm_args(r: Reader, node: Any, channels: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    a = attributes(node)
    scale, bias = r.constant(node, 1), r.constant(node, 2)
    if scale is None or scale.size != channels or a.get("axis", -1) not in (-1, len(r.shape(node.input[0])) - 1):
        return None
    bias = np.zeros(channels, np.float32) if bias is None else bias
    eps = float(a.get("epsilon", 1e-5))
    return ({} if np.isclose(eps, 1e-5, rtol=1e-3) else {"eps": decimal(eps)}), scale.reshape(-1), bias.reshape(-1)


def _layer_norm(r: Reader, node: Any) -> list[Any] | None:
    """LayerNormalization over the last axis: of a vector; or between Transposes that move a
    map's channels last and back (how exporters write LayerNorm2d)."""
    if node.op_type == "LayerNormalization":  # on N x F
        shape = r.shape(node.input[0])
        found = layer_norm_args(r, node, shape[-1]) if len(shape) == 2 else None
        taken, reads, last = [node], node.input[0], node
    else:
        norm = r.next_one(node, "LayerNormalization")
        back = r.next_one(norm, "Transpose") if norm is not None else None
        if back is None or list(attributes(node).get("perm", [])) != [0, 2, 3, 1] or list(attributes(back).get("perm", [])) != [0, 3, 1, 2]:
            return None
        found = layer_norm_args(r, norm, r.shape(node.input[0])[1])
        taken, reads, last = [node, norm, back], node.input[0], back
    if found is None:
        return None
    args, scale, bias = found
    name = r.add(last, LayerNorm.kind, args, [reads])
    r.weights[f"{name}.weight"], r.weights[f"{name}.bias"] = scale.astype(np.float32), bias.astype(np.float32)
    return taken


def _channel_range(start: int, stop: int, channels: int) -> tuple[int, int]:
    """Python's slice rule: negatives count from the end; ends past it (torch writes
    2**63 - 1 for ``x[:, 2:]``) stop at it."""
    start, stop = (value + channels if value < 0 else value for value in (start, stop))
    return max(0, min(start, channels)), max(0, min(stop, channels))


def _slice(r: Reader, node: Any) -> list[Any] | None:
    starts, ends, axes, steps = (r.constant(node, index) for index in (1, 2, 3, 4))
    if starts is None or ends is None or axes is None or starts.size != 1 or [int(v) for v in axes.reshape(-1)] not in ([1], [-3]):
        return None
    if (len(r.shape(node.input[0])) == 2 and int(axes.reshape(-1)[0]) != 1) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    start, stop = _channel_range(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), r.shape(node.input[0])[1])
    if start >= stop:
        return None
    r.add(node, Slice.kind, {"start": start, "stop": stop} if start else {"stop": stop}, [node.input[0]])
    return [node]


def _split(r: Reader, node: Any) -> list[Any] | None:
    """One slice layer per output of a Split over channels."""
    a, channels = attributes(node), r.shape(node.input[0])[1]
    if a.get("axis", 0) not in (1, -3 if len(r.shape(node.input[0])) == 4 else 1):
        return None
    sizes = r.constant(node, 1)
    parts = [int(v) for v in (sizes.reshape(-1) if sizes is not None else a.get("split", []))]
    if not parts:  # equal parts (opset 18's num_outputs: the last may be smaller)
        each = -(-channels // len(node.output))
        parts = [min(each, channels - i * each) for i in range(len(node.output))]
    if sum(parts) != channels or len(parts) != len(node.output):
        return None
    start = 0
    for size, output in zip(parts, node.output, strict=True):
        r.add(node, Slice.kind, {"start": start, "stop": start + size} if start else {"stop": size}, [node.input[0]], output)
        start += size
    return [node]


def _adaptive_pool(r: Reader, node: Any) -> list[Any] | None:
    """x @ C, then R @ that, with constant averaging matrices: adaptive average pooling
    (cnnspec's export of it), when R and C are exactly PyTorch's windows."""
    shape = r.shape(node.input[0])
    columns, rows_node = r.constant(node, 1), r.next_one(node, "MatMul")
    if len(shape) != 4 or columns is None or columns.ndim != 2 or rows_node is None or rows_node.input[1] != node.output[0]:
        return None
    rows = r.constant(rows_node, 0)
    if rows is None or rows.ndim != 2 or rows.shape[1] != shape[2] or columns.shape[0] != shape[3]:
        return None
    size = (rows.shape[0], columns.shape[1])
    layer = AdaptiveAvgPool2d(size=size)
    expected_rows, expected_columns = (np.array(m) for m in layer.averaging(shape[2], shape[3]))
    if not (np.allclose(rows, expected_rows, atol=1e-7) and np.allclose(columns.T, expected_columns, atol=1e-7)):
        return None
    r.add(rows_node, AdaptiveAvgPool2d.kind, {"size": size[0] if size[0] == size[1] else list(size)}, [node.input[0]])
    return [node, rows_node]


_COORDINATES = {("nearest", "asymmetric"): ("nearest", False), ("linear", "half_pixel"): ("bilinear", False),
                ("linear", "pytorch_half_pixel"): ("bilinear", False), ("linear", "align_corners"): ("bilinear", True)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize(r: Reader, node: Any) -> list[Any] | None:
    """Resize by integer scales in the modes PyTorch's Upsample writes (nearest flooring)."""
    a, shape = attributes(node), r.shape(node.input[0])
    found = _COORDINATES.get((_text(a.get("mode", "nearest")), _text(a.get("coordinate_transformation_mode", "half_pixel"))))
    if found is None or len(shape) != 4 or (_text(a.get("nearest_mode", "floor")) != "floor" and found[0] == "nearest"):
        return None
    out = r.shape(node.output[0])
    scale = [out[2] / shape[2], out[3] / shape[3]]
    if out[:2] != shape[:2] or any(s != int(s) or s < 1 for s in scale):
        return None
    mode, align = found
    args: dict[str, Any] = {"scale": int(scale[0]) if scale[0] == scale[1] else [int(s) for s in scale]}
    if mode != "nearest":
        args["mode"] = mode
    if align:
        args["align_corners"] = True
    r.add(node, Upsample2d.kind, args, [node.input[0]])
    return [node]


def _transposed_padding(said: str, kernel: list[int], stride: list[int], size: tuple[int, ...],
                        crops: list[tuple[int, int]]) -> dict[str, Any] | None:
    """The padding arguments that crop ``crops`` from the full result: the Keras spelling
    cnnspec's export noted, or PyTorch's symmetric padding and output padding where they can
    say it, else Keras' 'same' or 'valid'."""
    if said.startswith(TRANSPOSED_PADDING_NOTE):  # "Keras padding: same" or "... same 1 1" (with an output padding)
        spelling, *extra = said.removeprefix(TRANSPOSED_PADDING_NOTE).split()
        noted: dict[str, Any] = {"padding": spelling} | ({"output_padding": pair([int(v) for v in extra])} if len(extra) == 2 else {})
        candidate = ConvTranspose2d(filters=1, kernel=kernel, stride=stride, **noted)
        if [list(c) for c in candidate.crops(size[2], size[3])] == [list(c) for c in crops]:
            return noted
    if all(0 <= top - bottom < s and top <= k - 1 for (top, bottom), s, k in zip(crops, stride, kernel, strict=True)):
        symmetric, given_back = [top for top, _ in crops], [top - bottom for top, bottom in crops]
        return ({"padding": pair(symmetric)} if any(symmetric) else {}) | ({"output_padding": pair(given_back)} if any(given_back) else {})
    for keras in ("same", "valid"):
        candidate = ConvTranspose2d(filters=1, kernel=kernel, stride=stride, padding=keras)
        if [list(c) for c in candidate.crops(size[2], size[3])] == [list(c) for c in crops]:
            return {"padding": keras}
    return None


def _conv_transpose(r: Reader, node: Any) -> list[Any] | None:
    """ConvTranspose with a known weight and no dilation; its crops (the pads, less the
    output padding, or what the sizes the file states imply) as PyTorch's padding or as
    Keras' 'same' or 'valid'."""
    a, weight, bias = attributes(node), r.constant(node, 1), r.constant(node, 2)
    shape, out = r.shape(node.input[0]), r.shape(node.output[0])
    if weight is None or weight.ndim != 4 or len(shape) != 4 or any(d != 1 for d in a.get("dilations", [1, 1])):
        return None
    group = int(a.get("group", 1))
    kernel, stride = list(weight.shape[2:]), [int(v) for v in a.get("strides", [1, 1])]
    totals = [(n - 1) * s + k - o for n, s, k, o in zip(shape[2:], stride, kernel, out[2:], strict=True)]
    pads = [int(v) for v in a.get("pads", [])]
    tops = pads[:2] if len(pads) == 4 else [t // 2 for t in totals]
    crops = [(top, total - top) for top, total in zip(tops, totals, strict=True)]
    padding = _transposed_padding(node.doc_string, kernel, stride, shape, crops)
    if padding is None:
        return None
    args: dict[str, Any] = {"filters": int(weight.shape[1]) * group, "kernel": pair(kernel), "stride": pair(stride), **padding}
    if group > 1:
        args["groups"] = group
    if bias is None:
        args["bias"] = False
    name = r.add(node, ConvTranspose2d.kind, args, [node.input[0]])
    r.weights[f"{name}.weight"] = weight.astype(np.float32)
    if bias is not None:
        r.weights[f"{name}.bias"] = bias.astype(np.float32)
    return [node]


_CHAIN_KINDS = f"{SiLU.kind}, {HardSwish.kind}, {HardSigmoid.kind} or {GELU.kind}"
# The kinds of these rules that compute the same whichever axis holds the channels.
MODERN_LAYOUT_FREE = (_CHAIN_KINDS, HardSwish.kind, HardSigmoid.kind, GELU.kind, Multiply.kind)

MODERN_RULES: list[Rule] = [
    *(Rule((op,), _CHAIN_KINDS, _elementwise_chain, "element-wise operators of one tensor that compute one of them")
      for op in sorted(_EVALUATE)),
    Rule(("HardSwish",), HardSwish.kind, _single),
    Rule(("HardSigmoid",), HardSigmoid.kind, _single, "with a positive alpha"),
    Rule(("Gelu",), GELU.kind, _single),
    Rule(("Transpose", "LayerNormalization", "Transpose"), LayerNorm.kind, _layer_norm, "channels moved last, normalised, moved back"),
    Rule(("LayerNormalization",), LayerNorm.kind, _layer_norm, "of a vector, with a known scale"),
    Rule(("MatMul", "MatMul"), AdaptiveAvgPool2d.kind, _adaptive_pool, "by constant averaging matrices on either side"),
    Rule(("ConvTranspose",), ConvTranspose2d.kind, _conv_transpose, "a known weight, no dilation, crops PyTorch's or Keras' padding makes"),
    Rule(("Resize",), Upsample2d.kind, _resize, "by integer scales: nearest (asymmetric, floor) or linear (half_pixel, align_corners)"),
    Rule(("Slice",), Slice.kind, _slice, "of channels, by known bounds, step 1"),
    Rule(("Split",), Slice.kind, _split, "over channels: a slice per output"),
    Rule(("Mul",), Multiply.kind, _multiply, "of two tensors of one shape, or of a map by an N x C x 1 x 1 gate"),
]
