"""ONNX models from any exporter, read back as a spec and canonical weights.

Two stages, so that the rules stay small:

1. ``normalise`` (in ``onnx_normalise``): the model made plain with the onnx package's own
   tools: opset raised, batch fixed, shapes inferred, constants folded.
2. ``read``: ``RULES``, a table keyed by operator. Each rule matches a node, and the
   nodes after it that it needs (``MatMul`` then ``Add`` is a dense layer), and writes
   one spec layer. A node no rule takes is refused, naming the operator, the node and
   the patterns that operator is supported in.

Shapes below include the batch axis (the file's fixed batch, or 1 where it is symbolic); a
spec's shapes do not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from cnnspec.backends.import_common import ImportRefused, decimal, padding_arg, pair, rounding, spec_text
from cnnspec.backends.onnx_backend import DROP_PATH_NOTE
from cnnspec.backends.onnx_channels_last import ENTRY_RULES, REGION_RULES
from cnnspec.backends.onnx_modern_rules import MODERN_LAYOUT_FREE, MODERN_RULES
from cnnspec.backends.onnx_normalise import Shape, node_label, normalise
from cnnspec.backends.onnx_reader import Reader, Rule, attributes, explicit, per_channel
from cnnspec.layers.activation import ELU, LeakyReLU, PReLU, ReLU, ReLU6, Sigmoid, Softmax, Tanh
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.core import ChannelShuffle, Dense, Dropout, DropPath, Flatten, ZeroPadding2d
from cnnspec.layers.merge import Add, Concat
from cnnspec.layers.norm import LRN, Affine, BatchNorm
from cnnspec.layers.pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d


def _conv(r: Reader, node: Any) -> list[Any]:
    a = attributes(node)
    explicit(node, a)
    weight = r.constant(node, 1)
    if weight is None or weight.ndim != 4:
        raise ImportRefused(f"{node_label(node)}: Conv needs a known 4-d weight (a 2-d convolution)")
    kernel = list(a.get("kernel_shape", weight.shape[2:]))
    stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads = [p + q for p, q in zip(a.get("pads", [0, 0, 0, 0]), r.extra_pads.get(node.input[0], [0, 0, 0, 0]), strict=True)]
    source = r.variables(node)[0]
    size = r.shape(source)[2:]
    args: dict[str, Any] = {"filters": int(weight.shape[0]), "kernel": pair(kernel)}
    if stride != [1, 1]:
        args["stride"] = pair(stride)
    if any(pads):
        args["padding"] = padding_arg(pads)
    if dilation != [1, 1]:
        args["dilation"] = pair(dilation)
    if a.get("group", 1) != 1:
        args["groups"] = int(a["group"])
    bias = r.constant(node, 2)
    if bias is None:
        args["bias"] = False
    mode = rounding(size, kernel, stride, pads, dilation, False)
    if mode != "exact":
        args["rounding"] = mode
    name = r.add(node, Conv2d.kind, args, [source])
    r.weights[f"{name}.weight"] = weight.astype(np.float32)
    if bias is not None:
        r.weights[f"{name}.bias"] = bias.astype(np.float32).reshape(-1)
    return [node]


def _dense_from(r: Reader, node: Any, weight: np.ndarray, bias: np.ndarray | None, taken: list[Any], writes: str) -> list[Any]:
    """A dense layer; ``weight`` canonical (units x in)."""
    args: dict[str, Any] = {"units": int(weight.shape[0])} | ({} if bias is not None else {"bias": False})
    name = r.add(node, Dense.kind, args, r.variables(node)[:1], writes)
    r.weights[f"{name}.weight"] = np.ascontiguousarray(weight.astype(np.float32))
    if bias is not None:
        r.weights[f"{name}.bias"] = np.broadcast_to(bias.astype(np.float32).reshape(-1), (weight.shape[0],)).copy()
    return taken


def _gemm(r: Reader, node: Any) -> list[Any] | None:
    a = attributes(node)
    weight = r.constant(node, 1)
    if a.get("transA", 0) or weight is None or len(r.variables(node)) != 1:
        return None
    weight = (weight if a.get("transB", 0) else weight.T) * float(a.get("alpha", 1.0))
    bias = r.constant(node, 2)
    bias = None if bias is None else bias * float(a.get("beta", 1.0))
    return _dense_from(r, node, weight, bias, [node], node.output[0])


def _matmul(r: Reader, node: Any) -> list[Any] | None:
    weight = r.constant(node, 1)
    source = r.variables(node)
    if weight is None or weight.ndim != 2 or len(source) != 1 or node.input[0] != source[0] or len(r.shape(source[0])) != 2:
        return None
    after = r.next_one(node, "Add")
    bias = None if after is None else next((r.constant(after, i) for i in (0, 1) if r.constant(after, i) is not None), None)
    if after is not None and bias is not None and bias.size in (1, weight.shape[1]):
        return _dense_from(r, node, weight.T, bias, [node, after], after.output[0])
    return _dense_from(r, node, weight.T, None, [node], node.output[0])


def _affine(r: Reader, node: Any) -> list[Any] | None:
    """Mul or Div by per-channel constants, then (optionally) Add or Sub of them; or Add
    or Sub alone: a batch norm with its statistics folded in."""
    found = per_channel(r, node)
    if found is None:
        return None
    source, value = found
    if node.op_type in ("Sub", "Div") and node.input[0] != source:
        return None  # constant - x, constant / x: not an affine of x
    if node.op_type in ("Add", "Sub"):
        scale, shift, taken = np.ones_like(value), (value if node.op_type == "Add" else -value), [node]
    else:
        scale, shift, taken = (value if node.op_type == "Mul" else 1.0 / value), None, [node]
        after = r.next_one(node, ("Add", "Sub"))
        follows = per_channel(r, after) if after is not None else None
        if after is not None and follows is not None and not (after.op_type == "Sub" and after.input[0] != node.output[0]):
            shift = follows[1] if after.op_type == "Add" else -follows[1]
            taken.append(after)
    name = r.add(node, Affine.kind, {} if shift is not None else {"bias": False}, [source], taken[-1].output[0])
    r.weights[f"{name}.weight"] = scale.astype(np.float32)
    if shift is not None:
        r.weights[f"{name}.bias"] = shift.astype(np.float32)
    return taken


def _merge(kind: str) -> Callable[[Reader, Any], list[Any] | None]:
    def read(r: Reader, node: Any) -> list[Any] | None:
        sources = r.variables(node)
        if len(sources) < 2 or len(sources) != len([n for n in node.input if n]):
            return None
        r.add(node, kind, {}, sources)
        return [node]

    return read


def _concat(r: Reader, node: Any) -> list[Any] | None:
    sources = r.variables(node)
    axis = attributes(node).get("axis")
    rank = len(r.shape(sources[0]))
    if len(sources) != len(node.input) or axis not in (1, 1 - rank):
        return None
    r.add(node, Concat.kind, {}, sources)
    return [node]


def _flattens(r: Reader, node: Any) -> bool:
    """Whether ``node`` turns N x C x H x W into N x CHW (channels-first order)."""
    shape = r.shape(node.input[0])
    return len(shape) == 4 and r.plain.shapes.get(node.output[0]) == (shape[0], shape[1] * shape[2] * shape[3])


def _flatten(r: Reader, node: Any) -> list[Any] | None:
    if not _flattens(r, node) or (node.op_type == "Flatten" and attributes(node).get("axis", 1) != 1):
        return None
    r.add(node, Flatten.kind, {}, [node.input[0]])
    return [node]


def _shuffle(r: Reader, node: Any) -> list[Any] | None:
    """Reshape to (N, g, C/g, H, W), swap the two, reshape back: ShuffleNet's shuffle."""
    shape, split = r.shape(node.input[0]), r.plain.shapes.get(node.output[0])
    swap = r.next_one(node, "Transpose")
    back = r.next_one(swap, "Reshape") if swap is not None else None
    if swap is None or back is None or len(shape) != 4 or split is None or len(split) != 5:
        return None
    if (split[1] * split[2] != shape[1] or split[3:] != shape[2:] or list(attributes(swap).get("perm", [])) != [0, 2, 1, 3, 4]
            or r.plain.shapes.get(back.output[0]) != shape):
        return None
    r.add(node, ChannelShuffle.kind, {"groups": int(split[1])}, [node.input[0]], back.output[0])
    return [node, swap, back]


def _softmax_of_map(r: Reader, node: Any) -> list[Any] | None:
    """Flatten, Softmax, Reshape back: what the opset converter makes of an old Softmax
    on N x C x 1 x 1 (SqueezeNet's last layer): the channel softmax."""
    shape = r.shape(node.input[0])
    softmax = r.next_one(node, "Softmax")
    back = r.next_one(softmax, "Reshape") if softmax is not None else None
    if back is None or len(shape) != 4 or shape[2:] != (1, 1) or r.plain.shapes.get(back.output[0]) != shape:
        return None
    r.add(softmax, Softmax.kind, {}, [node.input[0]], back.output[0])
    return [node, softmax, back]


def _softmax_transposed(r: Reader, node: Any) -> list[Any] | None:
    """Transpose, Softmax over the axis the channels moved to, Transpose back: what
    torch.onnx writes for a channel softmax before opset 13."""
    perm = list(attributes(node).get("perm", []))
    softmax = r.next_one(node, "Softmax")
    back = r.next_one(softmax, "Transpose") if softmax is not None else None
    if back is None or len(perm) != 4:
        return None
    axis = int(attributes(softmax).get("axis", -1)) % 4
    if perm[axis] != 1 or [perm[i] for i in attributes(back).get("perm", [])] != [0, 1, 2, 3]:
        return None
    r.add(softmax, Softmax.kind, {}, [node.input[0]], back.output[0])
    return [node, softmax, back]


def _softmax(r: Reader, node: Any) -> list[Any] | None:
    rank = len(r.shape(node.input[0]))
    if attributes(node).get("axis", -1) not in (1, 1 - rank) and not (rank == 2 and attributes(node).get("axis", -1) == -1):
        return None
    r.add(node, Softmax.kind, {}, [node.input[0]])
    return [node]


_ACTIVATIONS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "Relu": lambda a: (ReLU.kind, {}),
    "LeakyRelu": lambda a: (LeakyReLU.kind, {"negative_slope": decimal(float(a.get("alpha", 0.01)))}),
    "Elu": lambda a: (ELU.kind, {"alpha": decimal(float(a.get("alpha", 1.0)))}),
    "Sigmoid": lambda a: (Sigmoid.kind, {}),
    "Tanh": lambda a: (Tanh.kind, {}),
}


def _activation_of(r: Reader, node: Any) -> tuple[str, dict[str, Any], np.ndarray | None] | None:
    op = node.op_type
    if op in _ACTIVATIONS:
        return (*_ACTIVATIONS[op](attributes(node)), None)
    if op == "Clip":
        low, high = r.constant(node, 1), r.constant(node, 2)
        if low is None or high is None or (float(low), float(high)) != (0.0, 6.0):
            return None
        return ReLU6.kind, {}, None
    slope = r.constant(node, 1)  # PRelu
    if slope is None:
        return None
    slope = slope.reshape(-1).astype(np.float32)
    return PReLU.kind, ({"channelwise": True} if slope.size > 1 else {}), slope


def _activation(r: Reader, node: Any) -> list[Any] | None:
    found = _activation_of(r, node)
    if found is None:
        return None
    r.add_activation(node, *found)
    return [node]


def _ceil_emulated(size: Shape, kernel: list[int], stride: list[int], pads: list[int]) -> bool:
    """Whether extra padding at the end of a max pool (how exporters before opset 10
    write ``ceil_mode``) gives exactly the windows of ceil rounding with the start's
    padding on both sides (PyTorch's rule: the last window starts inside the input)."""
    if pads[2] <= pads[0] and pads[3] <= pads[1]:
        return False
    for axis in range(2):
        begin, end = pads[axis], pads[axis + 2]
        given = (size[axis] + begin + end - kernel[axis]) // stride[axis] + 1
        ceiled = -(-(size[axis] + 2 * begin - kernel[axis]) // stride[axis]) + 1
        if (ceiled - 1) * stride[axis] >= size[axis] + begin:
            ceiled -= 1
        if given != ceiled or 2 * begin > kernel[axis]:
            return False
    return True


def _pool(kind: str) -> Callable[[Reader, Any], list[Any] | None]:
    def read(r: Reader, node: Any) -> list[Any] | None:
        a = attributes(node)
        explicit(node, a)
        if len(node.output) > 1 and node.output[1]:
            raise ImportRefused(f"{node_label(node)}: MaxPool with an indices output is not supported")
        if list(a.get("dilations", [1, 1])) != [1, 1]:
            raise ImportRefused(f"{node_label(node)}: {node.op_type} with dilations is not supported")
        kernel = list(a["kernel_shape"])
        stride = list(a.get("strides", [1, 1]))
        pads = [p + q for p, q in zip(a.get("pads", [0, 0, 0, 0]), r.extra_pads.get(node.input[0], [0, 0, 0, 0]), strict=True)]
        size = r.shape(node.input[0])[2:]
        ceil = bool(a.get("ceil_mode", 0))
        if kind == MaxPool2d.kind and not ceil and _ceil_emulated(size, kernel, stride, pads):
            pads, ceil = [pads[0], pads[1], pads[0], pads[1]], True
        args: dict[str, Any] = {"kernel": pair(kernel)}
        if stride != kernel:
            args["stride"] = pair(stride)
        if any(pads):
            args["padding"] = padding_arg(pads)
        mode = rounding(size, kernel, stride, pads, [1, 1], ceil)
        if mode != "exact":
            args["rounding"] = mode
        if kind == AvgPool2d.kind and not a.get("count_include_pad", 0) and any(a.get("pads", [0])):
            args["count_include_pad"] = False
        r.add(node, kind, args, [node.input[0]])
        return [node]

    return read


def _global(kind: str) -> Callable[[Reader, Any], list[Any] | None]:
    def read(r: Reader, node: Any) -> list[Any] | None:
        after = r.next_one(node, ("Flatten", "Reshape", "Squeeze"))
        if after is not None and _flattens(r, after):  # pool then drop the 1 x 1 axes: a plain global pool
            r.add(node, kind, {}, [node.input[0]], after.output[0])
            return [node, after]
        r.add(node, kind, {"keepdims": True}, [node.input[0]])
        return [node]

    return read


def _reduce(kind: str) -> Callable[[Reader, Any], list[Any] | None]:
    """ReduceMean or ReduceMax over height and width: a global pool (``x.mean((2, 3))``)."""

    def read(r: Reader, node: Any) -> list[Any] | None:
        a = attributes(node)
        given = r.constant(node, 1)
        axes = sorted(int(i) % 4 for i in (given if given is not None else a.get("axes", [])))
        if len(r.shape(node.input[0])) != 4 or axes != [2, 3]:
            return None
        r.add(node, kind, {} if not a.get("keepdims", 1) else {"keepdims": True}, [node.input[0]])
        return [node]

    return read


def _pad(r: Reader, node: Any) -> list[Any] | None:
    a = attributes(node)
    given = r.constant(node, 1)
    pads = [int(p) for p in (given if given is not None else a.get("pads", []))]
    fill = r.constant(node, 2)
    value = float(fill) if fill is not None else 0.0
    if a.get("mode", b"constant") not in (b"constant", "constant") or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        return None
    spatial = [pads[2], pads[3], pads[6], pads[7]]  # top, left, bottom, right
    after = r.next_one(node, ("Conv", "AveragePool", "MaxPool"))
    folds = after is not None and (
        (after.op_type == "Conv" and value == 0.0)
        or (after.op_type == "AveragePool" and value == 0.0 and not any(attributes(after).get("pads", [0])))
        or (after.op_type == "MaxPool" and value == -np.inf)
    )
    if folds:  # the padding becomes the next layer's own
        r.extra_pads[node.output[0]] = spatial
        r.producer[node.output[0]] = r.producer[node.input[0]]
        r.plain.shapes[node.output[0]] = r.shape(node.input[0])  # the layer sees the unpadded map
        return [node]
    if value != 0.0:
        return None
    r.add(node, ZeroPadding2d.kind, {"padding": [[pads[2], pads[6]], [pads[3], pads[7]]]}, [node.input[0]])
    return [node]


def _batchnorm(r: Reader, node: Any) -> list[Any] | None:
    parts = [r.constant(node, i) for i in range(1, 5)]
    if any(p is None for p in parts):
        return None
    a = attributes(node)
    eps, momentum = float(a.get("epsilon", 1e-5)), 1.0 - decimal(float(a.get("momentum", 0.9)))  # 0.99 as written, then 0.01
    args: dict[str, Any] = {}
    if not np.isclose(eps, 1e-5, rtol=1e-6):
        args["eps"] = decimal(eps)
    if not np.isclose(momentum, 0.1, rtol=1e-6):
        args["momentum"] = decimal(momentum)
    name = r.add(node, BatchNorm.kind, args, [node.input[0]])
    for part, array in zip(("weight", "bias", "running_mean", "running_var"), parts, strict=True):
        r.weights[f"{name}.{part}"] = np.asarray(array, np.float32)
    return [node]


def _lrn(r: Reader, node: Any) -> list[Any] | None:
    a = attributes(node)
    size = int(a["size"])
    if size % 2 == 0:
        raise ImportRefused(f"{node_label(node)}: LRN of even size {size} centres its window differently from cnnspec's")
    args = {"size": size, "alpha": decimal(float(a.get("alpha", 1e-4))), "beta": decimal(float(a.get("beta", 0.75))),
            "k": decimal(float(a.get("bias", 1.0)))}
    r.add(node, LRN.kind, args, [node.input[0]])
    return [node]


def _dropout(r: Reader, node: Any) -> list[Any]:
    """Kept as a layer (an identity in inference; fine-tuning wants it back)."""
    rate = r.constant(node, 1)
    kind = DropPath.kind if node.doc_string == DROP_PATH_NOTE else Dropout.kind  # cnnspec's own export of drop_path
    r.add(node, kind, {"rate": decimal(float(rate) if rate is not None else float(attributes(node).get("ratio", 0.5)))},
          [node.input[0]])
    return [node]


RULES: list[Rule] = [
    Rule(("Conv",), Conv2d.kind, _conv),
    Rule(("Gemm",), Dense.kind, _gemm, "a known weight, input not transposed"),
    Rule(("MatMul", "Add"), Dense.kind, _matmul, "a vector times a known matrix, plus a known vector"),
    *(Rule((op, "Add"), Affine.kind, _affine, "by per-channel constants") for op in ("Mul", "Div")),
    *(Rule((op,), Affine.kind, _affine, "of per-channel constants") for op in ("Add", "Sub")),
    Rule(("Add",), Add.kind, _merge(Add.kind), "of two tensors"),
    Rule(("Sum",), Add.kind, _merge(Add.kind), "of two or more tensors"),
    Rule(("Concat",), Concat.kind, _concat, "over channels"),
    Rule(("Reshape", "Transpose", "Reshape"), ChannelShuffle.kind, _shuffle, "to N x g x C/g x H x W, swap, back"),
    Rule(("Flatten", "Softmax", "Reshape"), Softmax.kind, _softmax_of_map, "on N x C x 1 x 1"),
    Rule(("Transpose", "Softmax", "Transpose"), Softmax.kind, _softmax_transposed, "over the channel axis, moved last and back"),
    *(Rule((op,), Flatten.kind, _flatten, "N x C x H x W to N x CHW") for op in ("Flatten", "Reshape", "Squeeze")),
    Rule(("Softmax",), Softmax.kind, _softmax, "over channels or features"),
    *(Rule((op,), kind, _activation) for op, kind in (("Relu", ReLU.kind), ("LeakyRelu", LeakyReLU.kind), ("Elu", ELU.kind),
                                                      ("Sigmoid", Sigmoid.kind), ("Tanh", Tanh.kind), ("PRelu", PReLU.kind))),
    Rule(("Clip",), ReLU6.kind, _activation, "between 0 and 6"),
    Rule(("MaxPool",), MaxPool2d.kind, _pool(MaxPool2d.kind)),
    Rule(("AveragePool",), AvgPool2d.kind, _pool(AvgPool2d.kind)),
    Rule(("GlobalAveragePool",), GlobalAvgPool2d.kind, _global(GlobalAvgPool2d.kind)),
    Rule(("GlobalMaxPool",), GlobalMaxPool2d.kind, _global(GlobalMaxPool2d.kind)),
    Rule(("ReduceMean",), GlobalAvgPool2d.kind, _reduce(GlobalAvgPool2d.kind), "over height and width"),
    Rule(("ReduceMax",), GlobalMaxPool2d.kind, _reduce(GlobalMaxPool2d.kind), "over height and width"),
    Rule(("Pad",), ZeroPadding2d.kind, _pad, "constant padding of height and width; folded into a following Conv or pool"),
    Rule(("BatchNormalization",), BatchNorm.kind, _batchnorm, "known statistics"),
    Rule(("LRN",), LRN.kind, _lrn),
    Rule(("Dropout",), Dropout.kind, _dropout),
]


# What a layer computes the same way whichever axis holds the channels: element-wise
# activations, sums and products of equal shapes, dropout, and per-channel affines (which
# read the channel axis where it is).
_LAYOUT_FREE = {ReLU.kind, LeakyReLU.kind, ELU.kind, Sigmoid.kind, Tanh.kind, ReLU6.kind, Dropout.kind, Add.kind, Affine.kind,
                *MODERN_LAYOUT_FREE}
RULES_BY_OP: dict[str, list[Rule]] = {}
REGION_RULES_BY_OP: dict[str, list[Rule]] = {}
for _rule in [*MODERN_RULES, *RULES, *ENTRY_RULES]:  # the longer patterns of the newer kinds first (Sigmoid + Mul before Sigmoid)
    RULES_BY_OP.setdefault(_rule.pattern[0], []).append(_rule)
for _rule in [*REGION_RULES, *(rule for rule in [*MODERN_RULES, *RULES] if rule.kind in _LAYOUT_FREE)]:
    REGION_RULES_BY_OP.setdefault(_rule.pattern[0], []).append(_rule)


@dataclasses.dataclass(frozen=True)
class Imported:
    """An ONNX model as a spec: its text, canonical weights, the batch size the file fixes
    (None where symbolic: the spec itself is batch-free) and notes for the user."""

    text: str
    weights: dict[str, np.ndarray]
    batch: int | None
    notes: list[str]


def import_onnx(model: onnx.ModelProto, name: str | None = None) -> Imported:
    """The spec and canonical weights of an ONNX model."""
    plain = normalise(model)
    reader = Reader(plain, rules=RULES_BY_OP, last_rules=REGION_RULES_BY_OP)
    reader.read()
    output = reader.producer.get(plain.output)
    if output is None or not reader.layers or output != reader.layers[-1]["name"]:
        raise ImportRefused(f"the model's output comes from '{output}', not from its last node; a spec ends at its output")
    description = f"imported from ONNX ({model.producer_name or 'unknown producer'}) by cnnspec import"
    text = spec_text(name or model.graph.name or "imported", description, list(plain.shapes[plain.input][1:]), reader.layers)
    return Imported(text, reader.weights, plain.batch, plain.notes)
