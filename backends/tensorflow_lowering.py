"""A Graph lowered to a Keras 3 functional model: one lowering per layer kind, in ``LOWERINGS``.

Specs and checkpoints are channels-first; TensorFlow on CPU computes channels-last. The
Keras model therefore takes and returns the canonical layout (N x C x H x W in, N x
classes out) and runs NHWC inside: one transpose at the input, one at the output when
that is a feature map. Each spec layer becomes a Keras layer of the same name (Keras'
own layers where their meaning is exactly the spec's; small custom layers for what Keras
lacks, in ``keras_layers``). Helper layers are named '.<layer>.<what>', which no spec
name can be.

Weights cross the boundary through ``Binding``s, one per canonical weight name, each a
Keras variable with the pair of functions that convert its layout: conv O x I x H x W
<-> H x W x I x O; dense out x in <-> in x out. A flatten of an NHWC map orders features
H, W, C instead of C, H, W; the vector then carries that permutation until a dense layer
consumes it, and the rows of that dense kernel (and any batchnorm or PReLU parameters on
the way) are permuted with it. """

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnspec.backends.keras_layers import (
    NO_PADDING,
    ChannelAffine,
    ChannelSlice,
    ClipAffine,
    DivisorAvgPool2D,
    Gelu,
    GroupedConv2D,
    LocalResponseNorm,
    PaddedMaxPool2D,
    Reorder,
    SeparableLinear,
    TorchBatchNorm,
    TransposedConv2D,
    window_counts,
)
from cnnspec.backends.protocol import BackendError
from cnnspec.backends.tf_quiet import keras, tf
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
from cnnspec.layers.window import resolve_padding
from cnnspec.spec.grammar import INPUT

Array = np.ndarray


Convert = Callable[[Array], Array]


def _same(a: Array) -> Array:
    return a


@dataclasses.dataclass(frozen=True)
class Binding:
    """A canonical weight as a Keras variable: ``to_keras`` maps the canonical array to
    the variable's layout, ``from_keras`` back (both pure permutations or reshapes, so
    they carry gradients and optimizer slots too)."""

    variable: Any
    to_keras: Convert = _same
    from_keras: Convert = _same


@dataclasses.dataclass(frozen=True)
class Value:
    """A node's output: NHWC for feature maps; for vectors, ``perm[i]`` is the canonical
    feature at position i (None: canonical order)."""

    tensor: Any
    perm: Array | None = None


def _inverse(perm: Array) -> Array:
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return inverse


class Builder:
    """Collects the Keras layers and weight bindings while a graph is lowered."""

    def __init__(self, graph: Graph, seed: int) -> None:
        self.graph, self.seed = graph, seed
        self.bindings: dict[str, Binding] = {}

    def bind(self, name: str, variable: Any, to_keras: Convert = _same, from_keras: Convert = _same) -> None:
        self.bindings[name] = Binding(variable, to_keras, from_keras)

    def bind_vector(self, name: str, variable: Any, perm: Array | None) -> None:
        """A per-feature parameter of a vector in ``perm`` order (batchnorm, PReLU)."""
        if perm is None:
            self.bind(name, variable)
        else:
            inverse = _inverse(perm)
            self.bind(name, variable, lambda a: a[..., perm], lambda a: a[..., inverse])


Lowering = Callable[[Builder, Node, list[Value]], Value]


LOWERINGS: dict[type[Layer], Lowering] = {}


# Activations Keras computes exactly as the spec defines them, by name, inside conv2d/dense.
_INLINE: dict[type[Activation], Callable[[Any], Any]] = {
    ReLU: keras.activations.relu, Sigmoid: keras.activations.sigmoid, Tanh: keras.activations.tanh,
    SiLU: keras.activations.silu, HardSwish: keras.activations.hard_silu,
}


_ACTIVATION_LAYERS: dict[type[Activation], Callable[[Any, str], keras.layers.Layer]] = {
    ReLU: lambda a, name: keras.layers.ReLU(name=name),
    ReLU6: lambda a, name: keras.layers.ReLU(max_value=6.0, name=name),
    LeakyReLU: lambda a, name: keras.layers.LeakyReLU(negative_slope=a.negative_slope, name=name),
    ELU: lambda a, name: keras.layers.ELU(alpha=a.alpha, name=name),
    Sigmoid: lambda a, name: keras.layers.Activation(keras.activations.sigmoid, name=name),
    Tanh: lambda a, name: keras.layers.Activation(keras.activations.tanh, name=name),
    Softmax: lambda a, name: keras.layers.Softmax(axis=-1, name=name),  # channels (NHWC) or features
    SiLU: lambda a, name: keras.layers.Activation(keras.activations.silu, name=name),
    HardSwish: lambda a, name: keras.layers.Activation(keras.activations.hard_silu, name=name),
    HardSigmoid: lambda a, name: ClipAffine(a.alpha, a.beta, name=name),  # Keras 3's hard_sigmoid only for 1/6
    GELU: lambda a, name: Gelu(a.approximate != "none", name=name),
}


def _apply_activation(b: Builder, activation: Activation, name: str, value: Value) -> Value:
    """``activation`` as a Keras layer called ``name``; PReLU binds '<name>.weight'."""
    if not isinstance(activation, PReLU):
        return Value(_ACTIVATION_LAYERS[type(activation)](activation, name)(value.tensor), value.perm)
    rank = len(value.tensor.shape) - 1
    shared = list(range(1, rank + 1)) if not activation.channelwise else list(range(1, rank))
    layer = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(activation.init), shared_axes=shared or None, name=name)
    tensor = layer(value.tensor)
    shape = tuple(layer.alpha.shape)  # (1, 1, C) or (1, 1, 1) for maps; (F,) or (1,) for vectors
    if activation.channelwise and value.perm is not None:
        b.bind_vector(f"{name}.weight", layer.alpha, value.perm)
    else:
        b.bind(f"{name}.weight", layer.alpha, lambda a: a.reshape(shape), lambda a: a.reshape(-1))
    return Value(tensor, value.perm)


def _activation_layer(b: Builder, node: Node, inputs: list[Value]) -> Value:
    assert isinstance(node.layer, Activation)
    return _apply_activation(b, node.layer, node.name, inputs[0])


def _fused(activation: Activation | None) -> Callable[[Any], Any] | None:
    """The Keras activation to fuse into conv2d/dense, if the spec's is one of them."""
    return None if activation is None else _INLINE.get(type(activation))


def _then_activation(b: Builder, node: Node, activation: Activation | None, value: Value) -> Value:
    if activation is None or _fused(activation) is not None:
        return value
    return _apply_activation(b, activation, f"{node.name}.activation", value)


def _conv_to_keras(a: Array) -> Array:
    return a.transpose(2, 3, 1, 0)  # O x I x H x W -> H x W x I x O


def _conv_from_keras(a: Array) -> Array:
    return a.transpose(3, 2, 0, 1)


def _is_tf_same(padding: Padding4, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int], out: tuple[int, int]) -> bool:
    """Whether TensorFlow's padding='same' gives exactly this padding and output size."""
    same = resolve_padding("same", size, kernel, stride, dilation)
    return padding == same and out == (-(-size[0] // stride[0]), -(-size[1] // stride[1]))


def _conv(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, Conv2d)
    g = layer.geometry(b.graph.input_shapes(node)[0], node.output_shape)
    padding, size, out = g.covering, g.size, g.out
    x = inputs[0].tensor
    both = max(layer.stride) > 1 and max(layer.dilation) > 1
    conv: keras.layers.Layer
    if layer.groups == 1 and not both:
        mode = "valid"
        if padding != NO_PADDING:
            if _is_tf_same(padding, size, layer.kernel, layer.stride, layer.dilation, out):
                mode = "same"
            else:
                x = keras.layers.ZeroPadding2D(padding, name=f".{node.name}.pad")(x)
        conv = keras.layers.Conv2D(
            layer.filters, layer.kernel, layer.stride, mode, dilation_rate=layer.dilation, use_bias=layer.bias,
            activation=_fused(layer.activation), kernel_initializer="zeros", name=node.name,
        )
    else:
        conv = GroupedConv2D(layer.filters, layer.kernel, layer.stride, padding, layer.dilation, layer.groups, layer.bias,
                             name=node.name)
    y = conv(x)
    if isinstance(conv, GroupedConv2D) and layer.activation is not None and _fused(layer.activation):
        y = keras.layers.Activation(_fused(layer.activation), name=f".{node.name}.activation")(y)
    b.bind(f"{node.name}.weight", conv.kernel, _conv_to_keras, _conv_from_keras)
    if layer.bias:
        b.bind(f"{node.name}.bias", conv.bias)
    return _then_activation(b, node, layer.activation, Value(y))


def _conv_transpose(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, ConvTranspose2d)
    conv = TransposedConv2D(layer.filters, layer.kernel, layer.stride, layer.crops(*b.graph.input_shapes(node)[0][1:]), layer.groups,
                            layer.bias, name=node.name)
    y = conv(inputs[0].tensor)  # canonical I x O/g x H x W <-> H x W x O/g x I
    b.bind(f"{node.name}.weight", conv.kernel, lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
    if layer.bias:
        b.bind(f"{node.name}.bias", conv.bias)
    return Value(y)


def _pool(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, Pool2d)
    g = layer.geometry(b.graph.input_shapes(node)[0], node.output_shape)
    given, padding, size, out, stride = g.given, g.covering, g.size, g.out, g.stride
    x = inputs[0].tensor
    if isinstance(layer, MaxPool2d):
        if padding == NO_PADDING:
            return Value(keras.layers.MaxPooling2D(layer.kernel, stride, "valid", name=node.name)(x))
        if _is_tf_same(padding, size, layer.kernel, stride, (1, 1), out):  # TF's 'same' ignores padding: -inf
            return Value(keras.layers.MaxPooling2D(layer.kernel, stride, "same", name=node.name)(x))
        return Value(PaddedMaxPool2D(layer.kernel, stride, padding, name=node.name)(x))
    assert isinstance(layer, AvgPool2d)
    counts = window_counts(given, padding, size, layer.kernel, stride, out, layer.count_include_pad)
    if np.all(counts == layer.kernel[0] * layer.kernel[1]):
        if padding != NO_PADDING:
            x = keras.layers.ZeroPadding2D(padding, name=f".{node.name}.pad")(x)
        return Value(keras.layers.AveragePooling2D(layer.kernel, stride, "valid", name=node.name)(x))
    return Value(DivisorAvgPool2D(layer.kernel, stride, padding, counts.tolist(), name=node.name)(x))


def _flatten(b: Builder, node: Node, inputs: list[Value]) -> Value:
    shape = b.graph.input_shapes(node)[0]
    tensor = keras.layers.Flatten(name=node.name)(inputs[0].tensor)
    if len(shape) == 1:
        return Value(tensor, inputs[0].perm)
    channels, height, width = shape
    # NHWC flattens (h, w, c); the canonical vector is (c, h, w).
    perm = np.arange(channels * height * width).reshape(channels, height, width).transpose(1, 2, 0).reshape(-1)
    return Value(tensor, None if np.array_equal(perm, np.arange(len(perm))) else perm)


def _dense(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, Dense)
    dense = keras.layers.Dense(layer.units, activation=_fused(layer.activation), use_bias=layer.bias,
                               kernel_initializer="zeros", name=node.name)
    tensor = dense(inputs[0].tensor)
    perm = inputs[0].perm
    if perm is None:
        b.bind(f"{node.name}.weight", dense.kernel, lambda a: a.T, lambda a: a.T)
    else:  # keras kernel row i multiplies input position i, which holds canonical feature perm[i]
        inverse = _inverse(perm)
        b.bind(f"{node.name}.weight", dense.kernel, lambda a: a.T[perm], lambda a: a[inverse].T)
    if layer.bias:
        b.bind(f"{node.name}.bias", dense.bias)
    return _then_activation(b, node, layer.activation, Value(tensor))


def _batchnorm(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, BatchNorm)
    norm = TorchBatchNorm(layer.eps, layer.momentum, name=node.name)
    tensor = norm(inputs[0].tensor)
    perm = inputs[0].perm
    for name, variable in (("weight", norm.gamma), ("bias", norm.beta), ("running_mean", norm.moving_mean),
                           ("running_var", norm.moving_variance)):
        b.bind_vector(f"{node.name}.{name}", variable, perm)
    return Value(tensor, perm)


def _separable(b: Builder, node: Node, inputs: list[Value]) -> Value:
    """Adaptive average pooling and upsampling: constant weights along height and width."""
    layer = node.layer
    assert isinstance(layer, (AdaptiveAvgPool2d, Upsample2d))
    size = b.graph.input_shapes(node)[0][1:]
    rows, columns = layer.averaging(*size) if isinstance(layer, AdaptiveAvgPool2d) else layer.matrices(*size)
    return Value(SeparableLinear(rows, columns, name=node.name)(inputs[0].tensor))


def _slice(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, Slice)  # a vector in Keras' flatten order is put in canonical order first
    return Value(ChannelSlice(layer.start, layer.stop, name=node.name)(_canonical_vector(node, 0, inputs[0])))


def _layer_norm(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, LayerNorm)  # channels last in NHWC: Keras' own layer, over axis -1
    norm = keras.layers.LayerNormalization(axis=-1, epsilon=layer.eps, name=node.name)
    tensor = norm(inputs[0].tensor)
    b.bind_vector(f"{node.name}.weight", norm.gamma, inputs[0].perm)
    b.bind_vector(f"{node.name}.bias", norm.beta, inputs[0].perm)
    return Value(tensor, inputs[0].perm)


def _affine(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, Affine)
    affine = ChannelAffine(layer.bias, name=node.name)
    tensor = affine(inputs[0].tensor)
    b.bind_vector(f"{node.name}.weight", affine.gamma, inputs[0].perm)
    if layer.bias:
        b.bind_vector(f"{node.name}.bias", affine.beta, inputs[0].perm)
    return Value(tensor, inputs[0].perm)


def _channel_shuffle(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, ChannelShuffle)
    return Value(Reorder(layer.order(b.graph.input_shapes(node)[0][0]), name=node.name)(inputs[0].tensor))  # NHWC: channels last


def _dropout(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, (Dropout, DropPath))
    seed = b.seed + b.graph.nodes.index(node)
    rank = len(inputs[0].tensor.shape)  # drop_path: one draw per sample, Keras' noise_shape
    noise = (None, *([1] * (rank - 1))) if isinstance(layer, DropPath) else None
    return Value(keras.layers.Dropout(layer.rate, noise_shape=noise, seed=seed, name=node.name)(inputs[0].tensor), inputs[0].perm)


def _zero_padding(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, ZeroPadding2d) and not isinstance(layer.padding, str)
    return Value(keras.layers.ZeroPadding2D(layer.padding, name=node.name)(inputs[0].tensor))


def _canonical_vector(node: Node, index: int, value: Value) -> Any:
    if value.perm is None:
        return value.tensor
    return Reorder(_inverse(value.perm).tolist(), name=f".{node.name}.order{index}")(value.tensor)


def _elementwise(merge: Callable[..., Any]) -> Lowering:
    """Add or Multiply: on the tensors as they are where every input is in one order, else
    each in canonical order first. A C x 1 x 1 gate is 1 x 1 x C in NHWC and broadcasts."""

    def lower(b: Builder, node: Node, inputs: list[Value]) -> Value:
        first = inputs[0].perm
        if all(v.perm is None for v in inputs) or (first is not None and all(v.perm is not None and np.array_equal(v.perm, first) for v in inputs)):
            return Value(merge(name=node.name)([value.tensor for value in inputs]), first)
        tensors = [_canonical_vector(node, i, value) for i, value in enumerate(inputs)]
        return Value(merge(name=node.name)(tensors))

    return lower


def _concat(b: Builder, node: Node, inputs: list[Value]) -> Value:
    tensor = keras.layers.Concatenate(axis=-1, name=node.name)([value.tensor for value in inputs])
    if all(value.perm is None for value in inputs) or len(b.graph.input_shapes(node)[0]) == 3:
        return Value(tensor)
    parts, offset = [], 0
    for value, shape in zip(inputs, b.graph.input_shapes(node), strict=True):
        parts.append(offset + (np.arange(shape[0]) if value.perm is None else value.perm))
        offset += shape[0]
    return Value(tensor, np.concatenate(parts))


def _global_pool(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, (GlobalAvgPool2d, GlobalMaxPool2d))
    kind = keras.layers.GlobalMaxPooling2D if isinstance(layer, GlobalMaxPool2d) else keras.layers.GlobalAveragePooling2D
    return Value(kind(keepdims=layer.keepdims, name=node.name)(inputs[0].tensor))


def _lrn(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, LRN)
    return Value(LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k, name=node.name)(inputs[0].tensor))


LOWERINGS.update(
    {
        Conv2d: _conv,
        MaxPool2d: _pool,
        AvgPool2d: _pool,
        Flatten: _flatten,
        Dense: _dense,
        BatchNorm: _batchnorm,
        Dropout: _dropout,
        DropPath: _dropout,
        ZeroPadding2d: _zero_padding,
        Affine: _affine,
        LayerNorm: _layer_norm,
        Slice: _slice,
        ConvTranspose2d: _conv_transpose,
        AdaptiveAvgPool2d: _separable,
        Upsample2d: _separable,
        ChannelShuffle: _channel_shuffle,
        Add: _elementwise(keras.layers.Add),
        Multiply: _elementwise(keras.layers.Multiply),
        Concat: _concat,
        GlobalAvgPool2d: _global_pool,
        GlobalMaxPool2d: _global_pool,
        LRN: _lrn,
    }
)


_ACTIVATION_KINDS: tuple[type[Layer], ...] = (*_ACTIVATION_LAYERS, PReLU)


for _kind in _ACTIVATION_KINDS:
    LOWERINGS[_kind] = _activation_layer


def _check_keras() -> None:
    if keras.backend.backend() != "tensorflow":
        raise BackendError(
            f"Keras is set to its '{keras.backend.backend()}' backend (KERAS_BACKEND); the tensorflow backend needs "
            "KERAS_BACKEND=tensorflow"
        )


class KerasNetwork:
    """The graph as a Keras functional model with canonical inputs and outputs, its
    weights bound by canonical name, and every node's output for verification."""

    def __init__(self, graph: Graph, seed: int = 0) -> None:
        _check_keras()
        self.graph = graph
        builder = Builder(graph, seed)
        inputs = keras.Input(shape=graph.input_shape, name="input")
        rank = len(graph.input_shape)  # C x H x W, or C x L; a vector stays as it is
        first = inputs if rank == 1 else keras.layers.Permute((*range(2, rank + 1), 1), name=".to_channels_last")(inputs)
        values: dict[str, Value] = {INPUT: Value(first)}
        for node in graph.nodes:
            lowering = LOWERINGS.get(type(node.layer))
            if lowering is None:
                raise BackendError(f"the tensorflow backend has no lowering for layer kind '{node.kind}'")
            values[node.name] = lowering(builder, node, [values[source] for source in node.inputs])
        self.values = {name: value for name, value in values.items() if name != INPUT}
        self.model = keras.Model(inputs, self._canonical(graph.output), name=re.sub(r"[^A-Za-z0-9_.>-]", "_", graph.name))  # Keras' scope-name rule
        self.bindings = builder.bindings
        specs = graph.weights()
        missing = set(specs) - set(self.bindings)
        if missing:
            raise BackendError(f"the tensorflow lowering left weights unbound: {', '.join(sorted(missing))}")
        self.trainable = [name for name in self.bindings if specs[name].trainable]
        self._probe: keras.Model | None = None

    def _canonical(self, name: str) -> Any:
        """A node's output in the canonical layout, as a Keras tensor."""
        value = self.values[name]
        rank = len(value.tensor.shape) - 1
        if rank > 1:  # channels-last -> channels-first
            return keras.layers.Permute((rank, *range(1, rank)), name=f".{name}.to_channels_first")(value.tensor)
        if value.perm is not None:
            return Reorder(_inverse(value.perm).tolist(), name=f".{name}.canonical")(value.tensor)
        return value.tensor

    def get_weights(self) -> dict[str, Array]:
        return {name: b.from_keras(np.asarray(b.variable.numpy(), np.float32)) for name, b in self.bindings.items()}

    def set_weights(self, weights: dict[str, Array]) -> None:
        for name, array in weights.items():
            binding = self.bindings.get(name)
            if binding is None:
                raise KeyError(f"no weight '{name}' in the tensorflow model")
            binding.variable.assign(np.ascontiguousarray(binding.to_keras(np.asarray(array, np.float32))))

    def _probed(self, x: Any) -> list[Any]:
        if self._probe is None:
            self._probe = keras.Model(self.model.input, [value.tensor for value in self.values.values()], name="probe")
        return list(self._probe(x, training=False))

    def _canonical_array(self, name: str, array: Array) -> Array:
        value = self.values[name]
        if array.ndim > 2:
            array = np.moveaxis(array, -1, 1)
        elif value.perm is not None:
            array = array[:, _inverse(value.perm)]
        return np.ascontiguousarray(array)

    def activations(self, x: Array) -> dict[str, Array]:
        """Every node's output (evaluation mode), canonical layout."""
        return {name: self._canonical_array(name, tensor.numpy()) for name, tensor in zip(self.values, self._probed(x), strict=True)}

    def gradients(self, x: Array, direction: Array) -> tuple[dict[str, Array], dict[str, Array]]:
        """(every node's output, and the input under 'input'; the gradient of
        sum(output * direction) with respect to each), canonical layout."""
        inputs = tf.convert_to_tensor(np.asarray(x, np.float32))
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = self._probed(inputs)
            output = outputs[list(self.values).index(self.graph.output)]
            value = self.values[self.graph.output]
            keras_direction = np.asarray(direction, np.float32)
            if keras_direction.ndim > 2:
                keras_direction = np.moveaxis(keras_direction, 1, -1)
            elif value.perm is not None:
                keras_direction = keras_direction[:, value.perm]
            score = tf.reduce_sum(output * keras_direction)
        grads = tape.gradient(score, [inputs, *outputs])
        values = {name: self._canonical_array(name, t.numpy()) for name, t in zip(self.values, outputs, strict=True)}
        gradients = {name: self._canonical_array(name, g.numpy()) if g is not None else np.zeros_like(values[name])
                     for name, g in zip(self.values, grads[1:], strict=True)}
        values[INPUT], gradients[INPUT] = np.asarray(x, np.float32), grads[0].numpy()  # the input as given, N x C x H x W
        return values, gradients


def build(graph: Graph, seed: int = 0) -> keras.Model:
    """The spec as a Keras model (canonical layout in and out) with cnnspec's seeded
    initial weights, the same arrays every backend starts from."""
    from cnnspec.graph.weights import initial_weights

    network = KerasNetwork(graph, seed)
    network.set_weights(initial_weights(graph, seed))
    return network.model
