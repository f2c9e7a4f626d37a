"""ONNX: a Graph lowered to an ONNX model, built directly from the graph (no framework
in between), and an ONNX model of the supported operators read back into a spec.

ONNX computes channels-first, as specs do, so weights keep the canonical layout and
names: initializers are called '<layer>.weight' and so on. Each spec layer's output is
the tensor named after the layer. A layer that needs more than one ONNX node gets helper
nodes named '<layer>:<role>' (':' is not allowed in spec names), which is how
``import_onnx`` folds them back (a conv2d and its fused activation, a global pool that
drops its 1 x 1 axes). The batch axis is dynamic ('N').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnspec.graph import Graph, Node
from cnnspec.layers import Layer
from cnnspec.layers.activation import ELU, Activation, LeakyReLU, PReLU, ReLU, ReLU6, Sigmoid, Softmax, Tanh
from cnnspec.layers.base import Padding4
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.core import Dense, Dropout, Flatten, ZeroPadding2d
from cnnspec.layers.merge import Add, Concat
from cnnspec.layers.norm import LRN, BatchNorm
from cnnspec.layers.pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, Pool2d
from cnnspec.spec import INPUT

MIN_OPSET = 13  # Softmax over one axis (channels) needs 13; Clip's min/max inputs 11
DEFAULT_OPSET = 17


class ExportRefused(ValueError):
    """The format cannot represent this network; nothing was written."""


@dataclasses.dataclass
class Emitter:
    """Collects nodes and initializers while a graph is lowered."""

    weights: dict[str, np.ndarray]
    nodes: list[Any] = dataclasses.field(default_factory=list)
    initializers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def node(self, op: str, inputs: list[str], output: str, name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def weight(self, name: str, shape: tuple[int, ...] | None = None) -> str:
        array = np.asarray(self.weights[name], np.float32)
        self.initializers[name] = numpy_helper.from_array(array if shape is None else array.reshape(shape), name)
        return name

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name


Lowering = Callable[[Emitter, Node, list[str], Graph], str]
LOWERINGS: dict[type[Layer], Lowering] = {}


def _onnx_pads(padding: Padding4) -> list[int]:
    (top, bottom), (left, right) = padding
    return [top, left, bottom, right]


# ---- activations ---------------------------------------------------------------------------

_ACTIVATIONS: dict[type[Activation], Callable[[Any], tuple[str, dict[str, Any]]]] = {
    ReLU: lambda a: ("Relu", {}),
    LeakyReLU: lambda a: ("LeakyRelu", {"alpha": a.negative_slope}),
    ELU: lambda a: ("Elu", {"alpha": a.alpha}),
    Sigmoid: lambda a: ("Sigmoid", {}),
    Tanh: lambda a: ("Tanh", {}),
    Softmax: lambda a: ("Softmax", {"axis": 1}),  # over channels, or features
}


def _emit_activation(e: Emitter, activation: Activation, source: str, output: str, name: str, weight: str,
                     rank: int) -> str:
    """``activation`` as ONNX; ``rank`` counts the axes after the batch (3 for C x H x W)."""
    if isinstance(activation, ReLU6):
        low, high = e.constant(f"{name}:min", np.array(0.0, np.float32)), e.constant(f"{name}:max", np.array(6.0, np.float32))
        return e.node("Clip", [source, low, high], output, name)
    if isinstance(activation, PReLU):  # slope broadcast over the channel axis
        count = e.weights[weight].shape[0]
        shape = (count, *([1] * (rank - 1))) if activation.channelwise else (1,)
        return e.node("PRelu", [source, e.weight(weight, shape)], output, name)
    op, attributes = _ACTIVATIONS[type(activation)](activation)
    return e.node(op, [source], output, name, **attributes)


def _activation_layer(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    assert isinstance(node.layer, Activation)
    rank = len(node.output_shape)
    return _emit_activation(e, node.layer, inputs[0], node.name, node.name, f"{node.name}.weight", rank)


def _with_activation(e: Emitter, node: Node, activation: Activation | None, op: str, inputs: list[str],
                     **attributes: Any) -> str:
    """The main op, then its activation as '<layer>:activation' producing '<layer>'."""
    if activation is None:
        return e.node(op, inputs, node.name, node.name, **attributes)
    raw = e.node(op, inputs, f"{node.name}:linear", node.name, **attributes)
    return _emit_activation(e, activation, raw, node.name, f"{node.name}:activation", f"{node.name}.activation.weight",
                            len(node.output_shape))


# ---- layers --------------------------------------------------------------------------------


def _conv(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, Conv2d)
    # ONNX rounds down only: ceil rounding's overhang becomes explicit padding.
    padding = layer.geometry(graph.input_shapes(node)[0], node.output_shape).covering
    args = [inputs[0], e.weight(f"{node.name}.weight")] + ([e.weight(f"{node.name}.bias")] if layer.bias else [])
    return _with_activation(e, node, layer.activation, "Conv", args, kernel_shape=list(layer.kernel),
                            strides=list(layer.stride), dilations=list(layer.dilation), group=layer.groups,
                            pads=_onnx_pads(padding))


def _pool(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, Pool2d)
    g = layer.geometry(graph.input_shapes(node)[0], node.output_shape)
    given, stride = g.given, g.stride
    ceil = int(layer.rounding == "ceil" and layer.padding != "same")
    attributes: dict[str, Any] = {"kernel_shape": list(layer.kernel), "strides": list(stride), "pads": _onnx_pads(given),
                                  "ceil_mode": ceil}
    if isinstance(layer, MaxPool2d):
        return e.node("MaxPool", inputs[:1], node.name, node.name, **attributes)
    assert isinstance(layer, AvgPool2d)
    return e.node("AveragePool", inputs[:1], node.name, node.name, count_include_pad=int(layer.count_include_pad),
                  **attributes)


def _dense(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, Dense)
    args = [inputs[0], e.weight(f"{node.name}.weight")] + ([e.weight(f"{node.name}.bias")] if layer.bias else [])
    return _with_activation(e, node, layer.activation, "Gemm", args, transB=1)


def _global_pool(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, (GlobalAvgPool2d, GlobalMaxPool2d))
    op = "GlobalMaxPool" if isinstance(layer, GlobalMaxPool2d) else "GlobalAveragePool"
    if layer.keepdims:
        return e.node(op, inputs, node.name, node.name)
    pooled = e.node(op, inputs, f"{node.name}:pooled", f"{node.name}:pool")
    return e.node("Flatten", [pooled], node.name, node.name, axis=1)


def _batchnorm(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, BatchNorm)
    names = [e.weight(f"{node.name}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
    # ONNX's momentum weighs the running value (Keras' convention): 1 - PyTorch's.
    return e.node("BatchNormalization", [inputs[0], *names], node.name, node.name, epsilon=layer.eps,
                  momentum=1.0 - layer.momentum)


def _lrn(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, LRN)
    if layer.size % 2 == 0:
        raise ExportRefused(
            f"lrn '{node.name}': ONNX's LRN centres an even window of {layer.size} channels differently from the spec's "
            f"(PyTorch's: {layer.size // 2} before, {(layer.size - 1) // 2} after; ONNX: {(layer.size - 1) // 2} before, "
            f"{layer.size // 2} after); use an odd size to export to ONNX"
        )
    return e.node("LRN", inputs, node.name, node.name, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)


def _zero_padding(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, ZeroPadding2d) and not isinstance(layer.padding, str)
    (top, bottom), (left, right) = layer.padding
    pads = e.constant(f"{node.name}:pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
    return e.node("Pad", [inputs[0], pads], node.name, node.name, mode="constant")


def _dropout(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, Dropout)  # an identity at inference; the rate is kept for import
    ratio = e.constant(f"{node.name}:ratio", np.array(layer.rate, np.float32))
    return e.node("Dropout", [inputs[0], ratio], node.name, node.name)


LOWERINGS.update(
    {
        Conv2d: _conv,
        MaxPool2d: _pool,
        AvgPool2d: _pool,
        Dense: _dense,
        Flatten: lambda e, node, inputs, graph: e.node("Flatten", inputs, node.name, node.name, axis=1),
        GlobalAvgPool2d: _global_pool,
        GlobalMaxPool2d: _global_pool,
        BatchNorm: _batchnorm,
        LRN: _lrn,
        ZeroPadding2d: _zero_padding,
        Dropout: _dropout,
        Add: lambda e, node, inputs, graph: e.node("Sum", inputs, node.name, node.name),
        Concat: lambda e, node, inputs, graph: e.node("Concat", inputs, node.name, node.name, axis=1),
    }
)
_ACTIVATION_KINDS: tuple[type[Layer], ...] = (*_ACTIVATIONS, ReLU6, PReLU)
for _kind in _ACTIVATION_KINDS:
    LOWERINGS[_kind] = _activation_layer


def to_onnx(graph: Graph, weights: dict[str, np.ndarray], opset: int = DEFAULT_OPSET,
            metadata: dict[str, str] | None = None, every_layer: bool = False) -> onnx.ModelProto:
    """The graph as an ONNX model; ``every_layer`` also makes every layer's output a graph
    output (for layer-by-layer comparison). Raises ExportRefused before building anything
    for a layer ONNX cannot represent."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportRefused(f"opset {opset} is not supported: use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")
    emitter = Emitter(weights)
    for node in graph.nodes:
        lowering = LOWERINGS.get(type(node.layer))
        if lowering is None:
            raise ExportRefused(f"{node.kind} '{node.name}': ONNX export has no lowering for this layer kind")
        lowering(emitter, node, [source for source in node.inputs], graph)
    batch: list[int | str] = ["N"]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, batch + list(graph.input_shape))]
    names = [node.name for node in graph.nodes] if every_layer else [graph.output]
    shapes = {node.name: node.output_shape for node in graph.nodes}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, batch + list(shapes[name])) for name in names]
    body = helper.make_graph(emitter.nodes, graph.name, inputs, outputs, list(emitter.initializers.values()))
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnnspec")
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.2x reads
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker with full shape inference (strict); returns the inferred model."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def run(model: onnx.ModelProto | bytes | str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``x``, by name, through onnxruntime (CPU)."""
    import onnxruntime

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


# ---- import: an ONNX model back into a spec ------------------------------------------------


class ImportRefused(ValueError):
    """The ONNX model uses something no spec layer expresses; the message names it."""


def _attributes(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decimal(value: float) -> float:
    """A float32 attribute as the decimal it was written as (0.01, not 0.0099999998)."""
    return float(f"{value:.7g}")


def _padding_arg(pads: list[int]) -> Any:
    top, left, bottom, right = pads
    if top == bottom == left == right:
        return top
    if top == bottom and left == right:
        return [top, left]
    return [[top, bottom], [left, right]]


def _rounding(size: tuple[int, int], kernel: list[int], stride: list[int], pads: list[int], dilation: list[int],
              ceil: bool) -> str:
    if ceil:
        return "ceil"
    spans = [(size[i] + pads[i] + pads[i + 2] - dilation[i] * (kernel[i] - 1) - 1) for i in range(2)]
    return "exact" if all(span % s == 0 for span, s in zip(spans, stride, strict=True)) else "floor"


_IMPORTED_ACTIVATIONS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "Relu": lambda a: (ReLU.kind, {}),
    "LeakyRelu": lambda a: (LeakyReLU.kind, {"negative_slope": _decimal(float(a.get("alpha", 0.01)))}),
    "Elu": lambda a: (ELU.kind, {"alpha": _decimal(float(a.get("alpha", 1.0)))}),
    "Sigmoid": lambda a: (Sigmoid.kind, {}),
    "Tanh": lambda a: (Tanh.kind, {}),
}


@dataclasses.dataclass
class _Reader:
    """Walks an ONNX graph, turning each node (or node group) into a spec layer."""

    model: onnx.ModelProto
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    producer: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> layer name
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # tensor -> shape (no batch)
    by_name: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pooled: dict[str, tuple[str, list[str]]] = dataclasses.field(default_factory=dict)  # global pool awaiting its Flatten

    def __post_init__(self) -> None:
        inferred = onnx.shape_inference.infer_shapes(self.model)
        self.constants = {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer}
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            dims = value.type.tensor_type.shape.dim
            self.shapes[value.name] = tuple(int(d.dim_value) for d in dims[1:])
        graph_input = next(i for i in self.model.graph.input if i.name not in self.constants)
        self.input_name = graph_input.name
        self.producer[graph_input.name] = INPUT

    def name_for(self, node: Any, kind: str) -> str:
        from cnnspec.spec import NAME_PATTERN

        base = node.name if node.name and NAME_PATTERN.match(node.name) and node.name != INPUT else ""
        if not base:
            base = "".join(c if c.isalnum() or c in "_.-" else "_" for c in (node.name or kind)).lstrip(".-") or kind
        name, count = base, 1
        while name in self.by_name or name == INPUT:
            count += 1
            name = f"{base}_{count}"
        return name

    def sources(self, node: Any) -> list[str]:
        return [self.producer[t] for t in node.input if t and t not in self.constants]

    def add(self, node: Any, kind: str, args: dict[str, Any], inputs: list[str] | None = None) -> str:
        name = self.name_for(node, kind)
        layer = {"kind": kind, "args": args, "name": name, "inputs": inputs if inputs is not None else self.sources(node)}
        self.layers.append(layer)
        self.by_name[name] = layer
        self.producer[node.output[0]] = name
        return name

    def constant(self, node: Any, index: int) -> np.ndarray:
        if len(node.input) <= index or not node.input[index]:
            raise KeyError(index)
        return self.constants[node.input[index]]

    def read(self, node: Any) -> None:
        op, a = node.op_type, _attributes(node)
        prefix, _, role = node.name.partition(":")
        if op == "Constant":
            self.constants[node.output[0]] = numpy_helper.to_array(a["value"])
            return
        if role == "activation" and prefix in self.by_name:  # cnnspec's fused activation
            self.fuse_activation(node, self.by_name[prefix])
            return
        if op in ("Identity",):
            self.producer[node.output[0]] = self.sources(node)[0]
            return
        reader = getattr(self, f"op_{op}", None)
        if reader is not None:
            reader(node, a)
            return
        if op in _IMPORTED_ACTIVATIONS or op in ("Clip", "PRelu", "Softmax"):
            kind, args, weight = self.activation(node, a)
            name = self.add(node, kind, args)
            if weight is not None:
                self.weights[f"{name}.weight"] = weight
            return
        raise ImportRefused(f"node '{node.name or node.output[0]}': ONNX operator {op} has no cnnspec layer kind")

    def activation(self, node: Any, a: dict[str, Any]) -> tuple[str, dict[str, Any], np.ndarray | None]:
        op = node.op_type
        if op in _IMPORTED_ACTIVATIONS:
            kind, args = _IMPORTED_ACTIVATIONS[op](a)
            return kind, args, None
        if op == "Clip":
            low, high = (float(self.constant(node, i)) for i in (1, 2))
            if (low, high) != (0.0, 6.0):
                raise ImportRefused(f"node '{node.name}': Clip({low:g}, {high:g}) is not relu6, the only clip cnnspec has")
            return ReLU6.kind, {}, None
        if op == "Softmax":
            rank = len(self.shapes.get(node.input[0], ())) + 1
            if a.get("axis", -1) not in (1, 1 - rank):
                raise ImportRefused(f"node '{node.name}': Softmax over axis {a.get('axis', -1)}; cnnspec's is over channels")
            return Softmax.kind, {}, None
        slope = self.constant(node, 1).reshape(-1).astype(np.float32)  # PRelu
        return PReLU.kind, ({"channelwise": True} if slope.size > 1 else {}), slope

    def fuse_activation(self, node: Any, layer: dict[str, Any]) -> None:
        kind, args, weight = self.activation(node, _attributes(node))
        layer["args"]["activation"] = {kind: args} if args else kind
        if weight is not None:
            self.weights[f"{layer['name']}.activation.weight"] = weight
        self.producer[node.output[0]] = layer["name"]

    def op_Conv(self, node: Any, a: dict[str, Any]) -> None:
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ImportRefused(f"node '{node.name}': Conv with auto_pad is not supported; export with explicit pads")
        weight = self.constant(node, 1)
        kernel = list(a.get("kernel_shape", weight.shape[2:]))
        stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        size = self.shapes[node.input[0]][1:]
        args: dict[str, Any] = {"filters": int(weight.shape[0]), "kernel": _pair(kernel)}
        if stride != [1, 1]:
            args["stride"] = _pair(stride)
        if any(pads):
            args["padding"] = _padding_arg(pads)
        if dilation != [1, 1]:
            args["dilation"] = _pair(dilation)
        if a.get("group", 1) != 1:
            args["groups"] = int(a["group"])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if not has_bias:
            args["bias"] = False
        rounding = _rounding((size[0], size[1]), kernel, stride, pads, dilation, False)
        if rounding != "exact":
            args["rounding"] = rounding
        name = self.add(node, Conv2d.kind, args, self.sources(node))
        self.weights[f"{name}.weight"] = weight.astype(np.float32)
        if has_bias:
            self.weights[f"{name}.bias"] = self.constant(node, 2).astype(np.float32)

    def op_Gemm(self, node: Any, a: dict[str, Any]) -> None:
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise ImportRefused(f"node '{node.name}': Gemm with transA, alpha or beta is not a dense layer")
        weight = self.constant(node, 1)
        weight = weight if a.get("transB", 0) else weight.T
        has_bias = len(node.input) > 2 and bool(node.input[2])
        args: dict[str, Any] = {"units": int(weight.shape[0])} | ({} if has_bias else {"bias": False})
        name = self.add(node, Dense.kind, args, self.sources(node))
        self.weights[f"{name}.weight"] = np.ascontiguousarray(weight.astype(np.float32))
        if has_bias:
            self.weights[f"{name}.bias"] = self.constant(node, 2).astype(np.float32).reshape(-1)

    def _pool(self, node: Any, a: dict[str, Any], kind: str, extra: dict[str, Any]) -> None:
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or list(a.get("dilations", [1, 1])) != [1, 1]:
            raise ImportRefused(f"node '{node.name}': {node.op_type} with auto_pad or dilations is not supported")
        kernel = list(a["kernel_shape"])
        stride, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        size = self.shapes[node.input[0]][1:]
        args: dict[str, Any] = {"kernel": _pair(kernel)}
        if stride != kernel:
            args["stride"] = _pair(stride)
        if any(pads):
            args["padding"] = _padding_arg(pads)
        rounding = _rounding((size[0], size[1]), kernel, stride, pads, [1, 1], bool(a.get("ceil_mode", 0)))
        if rounding != "exact":
            args["rounding"] = rounding
        self.add(node, kind, args | extra)

    def op_MaxPool(self, node: Any, a: dict[str, Any]) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise ImportRefused(f"node '{node.name}': MaxPool with an indices output is not supported")
        self._pool(node, a, MaxPool2d.kind, {})

    def op_AveragePool(self, node: Any, a: dict[str, Any]) -> None:
        self._pool(node, a, AvgPool2d.kind, {} if a.get("count_include_pad", 0) else {"count_include_pad": False})

    def _global(self, node: Any, kind: str) -> None:
        _, _, role = node.name.partition(":")
        if role == "pool":  # cnnspec's global pool without keepdims: the Flatten named 'prefix' follows
            self.pooled[node.output[0]] = (kind, self.sources(node))
            return
        self.add(node, kind, {"keepdims": True})

    def op_GlobalAveragePool(self, node: Any, a: dict[str, Any]) -> None:
        self._global(node, GlobalAvgPool2d.kind)

    def op_GlobalMaxPool(self, node: Any, a: dict[str, Any]) -> None:
        self._global(node, GlobalMaxPool2d.kind)

    def op_Flatten(self, node: Any, a: dict[str, Any]) -> None:
        if a.get("axis", 1) != 1:
            raise ImportRefused(f"node '{node.name}': Flatten at axis {a['axis']}; cnnspec flattens after the batch axis")
        if node.input[0] in self.pooled:
            kind, inputs = self.pooled.pop(node.input[0])
            self.add(node, kind, {}, inputs)
            return
        self.add(node, Flatten.kind, {})

    def op_BatchNormalization(self, node: Any, a: dict[str, Any]) -> None:
        eps, momentum = float(a.get("epsilon", 1e-5)), 1.0 - float(a.get("momentum", 0.9))
        args: dict[str, Any] = {}
        if not np.isclose(eps, 1e-5, rtol=1e-6):
            args["eps"] = _decimal(eps)
        if not np.isclose(momentum, 0.1, rtol=1e-6):
            args["momentum"] = _decimal(momentum)
        name = self.add(node, BatchNorm.kind, args, self.sources(node)[:1])
        for index, part in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
            self.weights[f"{name}.{part}"] = self.constant(node, index).astype(np.float32)

    def op_LRN(self, node: Any, a: dict[str, Any]) -> None:
        size = int(a["size"])
        if size % 2 == 0:
            raise ImportRefused(f"node '{node.name}': LRN of even size {size} centres its window differently from cnnspec's")
        args = {"size": size, "alpha": _decimal(float(a.get("alpha", 1e-4))), "beta": _decimal(float(a.get("beta", 0.75))),
                "k": _decimal(float(a.get("bias", 1.0)))}
        self.add(node, LRN.kind, args)

    def op_Pad(self, node: Any, a: dict[str, Any]) -> None:
        pads = [int(p) for p in self.constant(node, 1)]
        value = float(self.constant(node, 2)) if len(node.input) > 2 and node.input[2] else 0.0
        if a.get("mode", b"constant") not in (b"constant", "constant") or value != 0.0 or len(pads) != 8 \
                or any(pads[i] for i in (0, 1, 4, 5)):
            raise ImportRefused(f"node '{node.name}': only zero padding of height and width has a cnnspec layer")
        self.add(node, ZeroPadding2d.kind, {"padding": [[pads[2], pads[6]], [pads[3], pads[7]]]}, self.sources(node)[:1])

    def op_Dropout(self, node: Any, a: dict[str, Any]) -> None:
        try:
            rate = float(self.constant(node, 1))
        except KeyError:
            rate = float(a.get("ratio", 0.5))
        self.add(node, Dropout.kind, {"rate": _decimal(rate)}, self.sources(node)[:1])

    def op_Sum(self, node: Any, a: dict[str, Any]) -> None:
        self.add(node, Add.kind, {})

    def op_Add(self, node: Any, a: dict[str, Any]) -> None:
        if len(self.sources(node)) != 2:
            raise ImportRefused(f"node '{node.name}': Add of a constant (a bias) outside a layer is not supported")
        self.add(node, Add.kind, {})

    def op_Concat(self, node: Any, a: dict[str, Any]) -> None:
        if a.get("axis") not in (1, -1 if len(self.shapes.get(node.input[0], (0, 0))) == 1 else 1):
            raise ImportRefused(f"node '{node.name}': Concat over axis {a.get('axis')}; cnnspec concatenates channels")
        self.add(node, Concat.kind, {})


def _pair(values: list[int]) -> Any:
    return int(values[0]) if values[0] == values[1] else [int(values[0]), int(values[1])]


def import_onnx(model: onnx.ModelProto, name: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(spec YAML text, canonical weights) of an ONNX model made of supported operators."""
    import yaml

    if len(model.graph.output) != 1:
        raise ImportRefused(f"the model has {len(model.graph.output)} outputs; a spec has one")
    reader = _Reader(model)
    for node in model.graph.node:
        reader.read(node)
    input_shape = list(reader.shapes[reader.input_name])
    if not input_shape or any(d <= 0 for d in input_shape):
        raise ImportRefused(f"the input '{reader.input_name}' needs a fixed shape after the batch axis, got {input_shape}")
    output = reader.producer[model.graph.output[0].name]
    if not reader.layers or output != reader.layers[-1]["name"]:
        raise ImportRefused(f"the model's output comes from '{output}', not from its last node; a spec ends at its output")
    lines = [f"name: {yaml.safe_dump(name or model.graph.name or 'imported', default_style=None).splitlines()[0]}",
             f"description: imported from ONNX ({model.producer_name or 'unknown producer'}) by cnnspec import",
             f"input: {{shape: {input_shape}}}", "layers:"]
    previous = INPUT
    for layer in reader.layers:
        args = yaml.safe_dump(layer["args"], default_flow_style=True, width=10**6).strip()
        lines.append(f"  - {layer['kind']}: {args}")
        lines.append(f"    name: {layer['name']}")
        if layer["inputs"] != [previous]:
            lines.append(f"    inputs: [{', '.join(layer['inputs'])}]")
        previous = layer["name"]
    return "\n".join(lines) + "\n", reader.weights


# ---- export artifacts (see cnnspec.exporting) ----------------------------------------------


class OnnxArtifact:
    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], options: dict[str, Any]) -> None:
        opset = int(options.get("opset") or DEFAULT_OPSET)
        self.model = to_onnx(graph, weights, opset)
        check(self.model)
        try:  # onnxruntime may trail the onnx package's newest opset
            run(self.model, np.zeros((1, *graph.input_shape), np.float32))
        except Exception as exc:  # onnxruntime's own exception types
            import re

            import onnxruntime

            found = re.search(r"official support for domain \S+ is till opset \d+", str(exc))
            reason = found.group(0) if found else str(exc).strip()[:200] or type(exc).__name__
            raise ExportRefused(f"onnxruntime {onnxruntime.__version__} cannot run opset {opset}: {reason}") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        return next(iter(run(self.model, x).values()))

    def save(self, path: Any, metadata: dict[str, str]) -> None:
        for key, value in metadata.items():
            self.model.metadata_props.add(key=key, value=value)
        onnx.save(self.model, str(path))


def load_onnx(path: Any) -> Callable[[np.ndarray], np.ndarray]:
    model = onnx.load(str(path))
    check(model)
    source = model.SerializeToString()
    return lambda x: next(iter(run(source, x).values()))


EXPORTS: dict[str, Callable[[Graph, dict[str, np.ndarray], dict[str, Any]], Any]] = {"onnx": OnnxArtifact}
LOADERS: dict[str, Callable[[Any], Callable[[np.ndarray], np.ndarray]]] = {"onnx": load_onnx}
