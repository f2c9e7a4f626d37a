"""ONNX: a Graph lowered to an ONNX model, built directly from the graph (no framework
in between). Reading ONNX models back into specs is ``onnx_import``.

ONNX computes channels-first, as specs do, so weights keep the canonical layout and
names: initializers are called '<layer>.weight' and so on. Each spec layer's output is
the tensor named after the layer. A layer that needs more than one ONNX node gets helper
nodes named '<layer>:<role>' (':' is not allowed in spec names), which is how
``onnx_import`` folds them back (a conv2d and its fused activation, a global pool that
drops its 1 x 1 axes). The batch axis is dynamic ('N').
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph, Node
from cnnspec.layers import Layer
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
from cnnspec.layers.base import Padding4
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
from cnnspec.spec.grammar import INPUT

MIN_OPSET = 13  # Softmax over one axis (channels) needs 13; Clip's min/max inputs 11
DEFAULT_OPSET = 17


class ExportRefused(CnnspecError, ValueError):
    """The format cannot represent this network; nothing was written."""


@dataclasses.dataclass
class Emitter:
    """Collects nodes and initializers while a graph is lowered."""

    weights: dict[str, np.ndarray]
    opset: int = DEFAULT_OPSET
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
    HardSigmoid: lambda a: ("HardSigmoid", {"alpha": a.alpha, "beta": a.beta}),
}


def _scalar(e: Emitter, name: str, value: float) -> str:
    return e.constant(name, np.array(value, np.float32))


def _emit_gelu(e: Emitter, activation: GELU, source: str, output: str, name: str) -> str:
    """Opset 20's Gelu; before it the chain torch's exporter writes: x * 0.5 * (1 + erf(x / sqrt 2)),
    or the tanh form's."""
    if e.opset >= 20:
        return e.node("Gelu", [source], output, name, approximate=activation.approximate)
    if activation.approximate != "none":
        cube = e.node("Mul", [e.node("Mul", [source, source], f"{name}:x2", f"{name}:x2"), source], f"{name}:x3", f"{name}:x3")
        inner = e.node("Add", [source, e.node("Mul", [cube, _scalar(e, f"{name}:k", 0.044715)], f"{name}:kx3", f"{name}:kx3")],
                       f"{name}:inner", f"{name}:inner")
        core = e.node("Tanh", [e.node("Mul", [inner, _scalar(e, f"{name}:c", math.sqrt(2 / math.pi))], f"{name}:u", f"{name}:u")],
                      f"{name}:core", f"{name}:core")
    else:
        core = e.node("Erf", [e.node("Div", [source, _scalar(e, f"{name}:sqrt2", math.sqrt(2))], f"{name}:scaled", f"{name}:scaled")],
                      f"{name}:core", f"{name}:core")
    one_plus = e.node("Add", [core, _scalar(e, f"{name}:one", 1.0)], f"{name}:one_plus", f"{name}:one_plus")
    half = e.node("Mul", [source, _scalar(e, f"{name}:half", 0.5)], f"{name}:half_x", f"{name}:half_x")
    return e.node("Mul", [half, one_plus], output, name)


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
    if isinstance(activation, SiLU):  # no operator before opset 24: the pair torch writes
        return e.node("Mul", [source, e.node("Sigmoid", [source], f"{name}:sigmoid", f"{name}:sigmoid")], output, name)
    if isinstance(activation, HardSwish):
        if e.opset >= 14:
            return e.node("HardSwish", [source], output, name)
        gate = e.node("HardSigmoid", [source], f"{name}:gate", f"{name}:gate", alpha=1 / 6, beta=0.5)
        return e.node("Mul", [source, gate], output, name)
    if isinstance(activation, GELU):
        return _emit_gelu(e, activation, source, output, name)
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


def _adaptive_pool(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    """Exact for every size, as two products with constant averaging matrices: x @ columns^T,
    then rows @ that (ONNX's pools cannot overlap their windows as PyTorch's adaptive rule
    does where the size does not divide)."""
    layer = node.layer
    assert isinstance(layer, AdaptiveAvgPool2d)
    rows, columns = (np.array(m, np.float32) for m in layer.averaging(*graph.input_shapes(node)[0][1:]))
    across = e.node("MatMul", [inputs[0], e.constant(f"{node.name}:columns", columns.T.copy())], f"{node.name}:across",
                    f"{node.name}:across")
    return e.node("MatMul", [e.constant(f"{node.name}:rows", rows), across], node.name, node.name)


def _conv_transpose(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, ConvTranspose2d)  # ONNX's weight layout is PyTorch's, I x O/g x KH x KW
    weights = [e.weight(f"{node.name}.weight")] + ([e.weight(f"{node.name}.bias")] if layer.bias else [])
    ((top, bottom), (left, right)) = layer.crops(*graph.input_shapes(node)[0][1:])
    # ONNX crops pads from the full result plus output_padding rows (at the bottom and right):
    # PyTorch's padding as it says it, Keras' as the crops it makes
    extra = [top - bottom, left - right] if not isinstance(layer.padding, str) else [max(-bottom, 0), max(-right, 0)]
    output = e.node("ConvTranspose", [inputs[0], *weights], node.name, node.name, kernel_shape=list(layer.kernel),
                    strides=list(layer.stride), pads=[top, left, bottom + extra[0], right + extra[1]], output_padding=extra,
                    group=layer.groups)
    if isinstance(layer.padding, str):  # the spelling, for import to give it back
        e.nodes[-1].doc_string = f"{TRANSPOSED_PADDING_NOTE}{' '.join(map(str, [layer.padding, *(layer.output_padding or [])]))}"
    return output


TRANSPOSED_PADDING_NOTE = "Keras padding: "


def _upsample(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    """ONNX's Resize, in the coordinate mode that is PyTorch's rule for the layer's mode."""
    layer = node.layer
    assert isinstance(layer, Upsample2d)
    scales = e.constant(f"{node.name}:scales", np.array([1.0, 1.0, *layer.scale], np.float32))
    if layer.mode == "nearest":
        return e.node("Resize", [inputs[0], "", scales], node.name, node.name, mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return e.node("Resize", [inputs[0], "", scales], node.name, node.name, mode="linear",
                  coordinate_transformation_mode="align_corners" if layer.align_corners else "half_pixel")


def _slice(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, Slice)
    bounds = [e.constant(f"{node.name}:{what}", np.array([value], np.int64))
              for what, value in (("starts", layer.start), ("ends", layer.stop), ("axes", 1))]
    return e.node("Slice", [inputs[0], *bounds], node.name, node.name)


def _layer_norm(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    """LayerNormalization normalises the axes from ``axis`` on: a map's channels are moved
    last and back, as torch's exporter writes ConvNeXt's LayerNorm2d."""
    layer = node.layer
    assert isinstance(layer, LayerNorm)
    if e.opset < 17:
        raise ExportRefused(f"layer_norm '{node.name}': ONNX has LayerNormalization from opset 17; export with --opset 17 or later")
    scale, bias = e.weight(f"{node.name}.weight"), e.weight(f"{node.name}.bias")
    if len(node.output_shape) == 1:
        return e.node("LayerNormalization", [inputs[0], scale, bias], node.name, node.name, axis=-1, epsilon=layer.eps)
    last = e.node("Transpose", [inputs[0]], f"{node.name}:nhwc", f"{node.name}:nhwc", perm=[0, 2, 3, 1])
    normal = e.node("LayerNormalization", [last, scale, bias], f"{node.name}:normal", f"{node.name}:normal", axis=-1, epsilon=layer.eps)
    return e.node("Transpose", [normal], node.name, node.name, perm=[0, 3, 1, 2])


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


def _affine(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    """Mul and Add by per-channel constants (C x 1 x 1 for a map): what an exporter writes
    for a batch norm with its statistics folded in, and what import reads back."""
    layer = node.layer
    assert isinstance(layer, Affine)
    shape = graph.input_shapes(node)[0]
    per_channel = (shape[0], *([1] * (len(shape) - 1)))
    scaled = e.node("Mul", [inputs[0], e.weight(f"{node.name}.weight", per_channel)], node.name if not layer.bias else f"{node.name}:scaled",
                    node.name if not layer.bias else f"{node.name}:scale")
    return e.node("Add", [scaled, e.weight(f"{node.name}.bias", per_channel)], node.name, node.name) if layer.bias else scaled


def _channel_shuffle(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    """PyTorch's view, transpose, view, as ShuffleNet's exports write it (import reads it)."""
    layer = node.layer
    assert isinstance(layer, ChannelShuffle)
    channels, height, width = graph.input_shapes(node)[0]
    split = e.constant(f"{node.name}:split", np.array([0, layer.groups, channels // layer.groups, height, width], np.int64))
    merged = e.constant(f"{node.name}:merged", np.array([0, channels, height, width], np.int64))
    grouped = e.node("Reshape", [inputs[0], split], f"{node.name}:grouped", f"{node.name}:split")
    swapped = e.node("Transpose", [grouped], f"{node.name}:swapped", f"{node.name}:swap", perm=[0, 2, 1, 3, 4])
    return e.node("Reshape", [swapped, merged], node.name, node.name)


DROP_PATH_NOTE = "stochastic depth: whole samples dropped"


def _dropout(e: Emitter, node: Node, inputs: list[str], graph: Graph) -> str:
    layer = node.layer
    assert isinstance(layer, (Dropout, DropPath))  # an identity at inference; the rate is kept for import
    ratio = e.constant(f"{node.name}:ratio", np.array(layer.rate, np.float32))
    output = e.node("Dropout", [inputs[0], ratio], node.name, node.name)
    if isinstance(layer, DropPath):  # ONNX has no operator for it: a Dropout that says what it was
        e.nodes[-1].doc_string = DROP_PATH_NOTE
    return output


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
        LayerNorm: _layer_norm,
        Slice: _slice,
        AdaptiveAvgPool2d: _adaptive_pool,
        Upsample2d: _upsample,
        ConvTranspose2d: _conv_transpose,
        LRN: _lrn,
        ZeroPadding2d: _zero_padding,
        Affine: _affine,
        ChannelShuffle: _channel_shuffle,
        Dropout: _dropout,
        DropPath: _dropout,
        Add: lambda e, node, inputs, graph: e.node("Sum", inputs, node.name, node.name),
        Concat: lambda e, node, inputs, graph: e.node("Concat", inputs, node.name, node.name, axis=1),
        Multiply: lambda e, node, inputs, graph: e.node("Mul", inputs, node.name, node.name),  # the gate broadcasts
    }
)
_ACTIVATION_KINDS: tuple[type[Layer], ...] = (*_ACTIVATIONS, ReLU6, PReLU, SiLU, HardSwish, GELU)
for _kind in _ACTIVATION_KINDS:
    LOWERINGS[_kind] = _activation_layer


def to_onnx(graph: Graph, weights: dict[str, np.ndarray], opset: int = DEFAULT_OPSET,
            metadata: dict[str, str] | None = None, every_layer: bool = False, outputs: Sequence[str] = ()) -> onnx.ModelProto:
    """The graph as an ONNX model. Its outputs: the network's, then the layers named in
    ``outputs`` (an embedding layer, say), or with ``every_layer`` every layer's (for
    layer-by-layer comparison). Raises ExportRefused before building anything for a layer
    ONNX cannot represent, or an ``outputs`` name the graph does not have."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportRefused(f"opset {opset} is not supported: use {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")
    emitter = Emitter(weights, opset)
    for node in graph.nodes:
        lowering = LOWERINGS.get(type(node.layer))
        if lowering is None:
            raise ExportRefused(f"{node.kind} '{node.name}': ONNX export has no lowering for this layer kind")
        lowering(emitter, node, [source for source in node.inputs], graph)
    batch: list[int | str] = ["N"]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, batch + list(graph.input_shape))]
    unknown = [name for name in outputs if name not in {node.name for node in graph.nodes}]
    if unknown:
        raise ExportRefused(f"'{graph.name}' has no layer {unknown[0]!r} to make an output")
    names = [node.name for node in graph.nodes] if every_layer else list(dict.fromkeys([graph.output, *outputs]))
    shapes = {node.name: node.output_shape for node in graph.nodes}
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, batch + list(shapes[name])) for name in names]
    body = helper.make_graph(emitter.nodes, graph.name, inputs, results, list(emitter.initializers.values()))
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
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not a notice per initializer another exporter listed as an input
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


class RuntimeSession:
    """A verified ONNX file run by onnxruntime on the CPU: the inference engine behind
    ``--runtime onnxruntime``. ``predict`` gives the network's output (the file's first);
    ``activations`` the layers the file was built to output as well."""

    device = "cpu (onnxruntime)"

    def __init__(self, path: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.outputs = [output.name for output in self._session.get_outputs()]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(self.outputs[:1], {self._input: np.ascontiguousarray(x, np.float32)})[0])

    def activations(self, x: np.ndarray, layers: Collection[str]) -> dict[str, np.ndarray]:
        missing = [name for name in layers if name not in self.outputs]
        if missing:
            raise KeyError(f"this engine was not built to output layer {missing[0]!r}")
        names = list(layers)
        return dict(zip(names, self._session.run(names, {self._input: np.ascontiguousarray(x, np.float32)}), strict=True))


# ---- export artifacts (see cnnspec.exporting) ----------------------------------------------


def _outputs(values: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """What an export's ``run`` gives: the one output, or every output by name."""
    return next(iter(values.values())) if len(values) == 1 else values


class OnnxArtifact:
    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], options: dict[str, Any]) -> None:
        opset = int(options.get("opset") or DEFAULT_OPSET)
        self.model = to_onnx(graph, weights, opset, outputs=options.get("outputs", ()))
        check(self.model)
        try:  # onnxruntime may trail the onnx package's newest opset
            run(self.model, np.zeros((1, *graph.input_shape), np.float32))
        except Exception as exc:  # onnxruntime's own exception types
            import re

            import onnxruntime

            found = re.search(r"official support for domain \S+ is till opset \d+", str(exc))
            reason = found.group(0) if found else str(exc).strip()[:200] or type(exc).__name__
            raise ExportRefused(f"onnxruntime {onnxruntime.__version__} cannot run opset {opset}: {reason}") from None

    def run(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        return _outputs(run(self.model, x))

    def save(self, path: Any, metadata: dict[str, str]) -> None:
        for key, value in metadata.items():
            self.model.metadata_props.add(key=key, value=value)
        onnx.save(self.model, str(path))


def load_onnx(path: Any) -> Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]]:
    model = onnx.load(str(path))
    check(model)
    source = model.SerializeToString()
    return lambda x: _outputs(run(source, x))


EXPORTS: dict[str, Callable[[Graph, dict[str, np.ndarray], dict[str, Any]], Any]] = {"onnx": OnnxArtifact}
LOADERS: dict[str, Callable[[Any], Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]]]] = {"onnx": load_onnx}
