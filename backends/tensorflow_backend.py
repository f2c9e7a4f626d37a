"""The TensorFlow backend: a Graph lowered to a Keras 3 functional model, and a session.

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
the way) are permuted with it. Losses and optimizers follow PyTorch's definitions, with
PyTorch's state names, as the NumPy backend's do, so checkpoints and optimizer state
move between all three backends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.keras_layers import (
    NO_PADDING,
    ChannelAffine,
    DivisorAvgPool2D,
    GroupedConv2D,
    LocalResponseNorm,
    PaddedMaxPool2D,
    Reorder,
    TorchBatchNorm,
    window_counts,
)
from cnnspec.backends.protocol import BackendError
from cnnspec.backends.tf_quiet import chatter_filtered, keras, tf
from cnnspec.graph.dag import Graph, Node
from cnnspec.graph.tuning import frozen_norm_layers, multipliers
from cnnspec.layers import Layer
from cnnspec.layers.activation import ELU, Activation, LeakyReLU, PReLU, ReLU, ReLU6, Sigmoid, Softmax, Tanh
from cnnspec.layers.base import Padding4
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.core import ChannelShuffle, Dense, Dropout, Flatten, ZeroPadding2d
from cnnspec.layers.merge import Add, Concat
from cnnspec.layers.norm import LRN, Affine, BatchNorm
from cnnspec.layers.pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, Pool2d
from cnnspec.layers.window import resolve_padding
from cnnspec.spec.grammar import INPUT
from cnnspec.spec.training import OptimizerConfig, TrainConfig

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


# ---- lowerings -----------------------------------------------------------------------------


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
}
_ACTIVATION_LAYERS: dict[type[Activation], Callable[[Any, str], keras.layers.Layer]] = {
    ReLU: lambda a, name: keras.layers.ReLU(name=name),
    ReLU6: lambda a, name: keras.layers.ReLU(max_value=6.0, name=name),
    LeakyReLU: lambda a, name: keras.layers.LeakyReLU(negative_slope=a.negative_slope, name=name),
    ELU: lambda a, name: keras.layers.ELU(alpha=a.alpha, name=name),
    Sigmoid: lambda a, name: keras.layers.Activation(keras.activations.sigmoid, name=name),
    Tanh: lambda a, name: keras.layers.Activation(keras.activations.tanh, name=name),
    Softmax: lambda a, name: keras.layers.Softmax(axis=-1, name=name),  # channels (NHWC) or features
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
    assert isinstance(layer, Dropout)
    seed = b.seed + b.graph.nodes.index(node)
    return Value(keras.layers.Dropout(layer.rate, seed=seed, name=node.name)(inputs[0].tensor), inputs[0].perm)


def _zero_padding(b: Builder, node: Node, inputs: list[Value]) -> Value:
    layer = node.layer
    assert isinstance(layer, ZeroPadding2d) and not isinstance(layer.padding, str)
    return Value(keras.layers.ZeroPadding2D(layer.padding, name=node.name)(inputs[0].tensor))


def _canonical_vector(node: Node, index: int, value: Value) -> Any:
    if value.perm is None:
        return value.tensor
    return Reorder(_inverse(value.perm).tolist(), name=f".{node.name}.order{index}")(value.tensor)


def _add(b: Builder, node: Node, inputs: list[Value]) -> Value:
    first = inputs[0].perm
    if all(v.perm is None for v in inputs) or (first is not None and all(v.perm is not None and np.array_equal(v.perm, first) for v in inputs)):
        return Value(keras.layers.Add(name=node.name)([value.tensor for value in inputs]), first)
    tensors = [_canonical_vector(node, i, value) for i, value in enumerate(inputs)]
    return Value(keras.layers.Add(name=node.name)(tensors))


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
        ZeroPadding2d: _zero_padding,
        Affine: _affine,
        ChannelShuffle: _channel_shuffle,
        Add: _add,
        Concat: _concat,
        GlobalAvgPool2d: _global_pool,
        GlobalMaxPool2d: _global_pool,
        LRN: _lrn,
    }
)
_ACTIVATION_KINDS: tuple[type[Layer], ...] = (*_ACTIVATION_LAYERS, PReLU)
for _kind in _ACTIVATION_KINDS:
    LOWERINGS[_kind] = _activation_layer


# ---- the network ---------------------------------------------------------------------------


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


# ---- losses and optimizers: PyTorch's definitions --------------------------------------------


def _cross_entropy(smoothing: float) -> Callable[[Any, Any], Any]:
    def loss(outputs: Any, targets: Any) -> Any:  # (N, K), (N,) -> mean
        if not smoothing:
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, outputs))
        classes = tf.shape(outputs)[1]
        target = tf.one_hot(targets, classes) * (1 - smoothing) + smoothing / tf.cast(classes, outputs.dtype)
        return -tf.reduce_mean(tf.reduce_sum(target * tf.nn.log_softmax(outputs), axis=1))

    return loss


def _mse(outputs: Any, targets: Any) -> Any:
    return tf.reduce_mean(tf.square(outputs - tf.one_hot(targets, tf.shape(outputs)[1])))


def _multi_margin(outputs: Any, targets: Any) -> Any:
    """PyTorch's MultiMarginLoss (p=1, margin=1): sum_i!=y max(0, 1 - x_y + x_i) / classes."""
    correct = tf.gather(outputs, targets, axis=1, batch_dims=1)[:, None]
    others = 1.0 - tf.one_hot(targets, tf.shape(outputs)[1])
    return tf.reduce_mean(tf.reduce_mean(tf.nn.relu(1.0 - correct + outputs) * others, axis=1))


LOSSES: dict[str, Callable[[TrainConfig], Callable[[Any, Any], Any]]] = {
    "cross_entropy": lambda c: _cross_entropy(c.label_smoothing),
    "mse": lambda c: _mse,
    "hinge": lambda c: _multi_margin,
}

SLOTS: dict[str, Callable[[OptimizerConfig], tuple[str, ...]]] = {
    "sgd": lambda c: ("momentum_buffer",) if c.momentum else (),
    "adagrad": lambda c: ("sum",),
    "rmsprop": lambda c: ("square_avg", "momentum_buffer") if c.momentum else ("square_avg",),
    "adadelta": lambda c: ("square_avg", "acc_delta"),
    "adam": lambda c: ("exp_avg", "exp_avg_sq"),
    "adamw": lambda c: ("exp_avg", "exp_avg_sq"),
}


class TorchOptimizer:
    """torch.optim's single-tensor updates on Keras-layout variables, with its state
    names; zero-initialised slots give the same first step as PyTorch's lazy ones."""

    def __init__(self, config: OptimizerConfig, variables: dict[str, Any], multipliers: dict[str, tuple[float, float]] | None = None) -> None:
        self.config, self.variables = config, variables
        self.multipliers = multipliers or {}  # (lr, weight decay) multipliers by name
        self.lr = tf.Variable(config.lr, trainable=False, dtype=tf.float32, name="lr")
        self.step = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="step")
        self.slots = {
            name: {slot: tf.Variable(tf.zeros_like(v), trainable=False, name=f"{slot}") for slot in SLOTS[config.name](config)}
            for name, v in variables.items()
        }

    def apply(self, grads: list[Any]) -> None:  # traced inside the training step
        c = self.config
        step = self.step.assign_add(1.0)
        for (name, p), g in zip(self.variables.items(), grads, strict=True):
            s = self.slots[name]
            lr_mult, decay_mult = self.multipliers.get(name, (1.0, 1.0))
            lr, weight_decay = self.lr * lr_mult if lr_mult != 1.0 else self.lr, c.weight_decay * decay_mult
            if c.name == "adamw":
                p.assign(p * (1 - lr * weight_decay))
            elif weight_decay:
                g = g + weight_decay * p
            if c.name == "sgd":
                if c.momentum:
                    buffer = s["momentum_buffer"].assign(s["momentum_buffer"] * c.momentum + g)
                    g = g + c.momentum * buffer if c.nesterov else buffer
                p.assign_sub(lr * g)
            elif c.name == "adagrad":
                total = s["sum"].assign_add(g * g)
                p.assign_sub(lr * g / (tf.sqrt(total) + c.eps))
            elif c.name == "rmsprop":
                average = tf.sqrt(s["square_avg"].assign(s["square_avg"] * c.alpha + (1 - c.alpha) * g * g)) + c.eps
                if c.momentum:
                    p.assign_sub(lr * s["momentum_buffer"].assign(s["momentum_buffer"] * c.momentum + g / average))
                else:
                    p.assign_sub(lr * g / average)
            elif c.name == "adadelta":
                square = s["square_avg"].assign(s["square_avg"] * c.rho + (1 - c.rho) * g * g)
                delta = tf.sqrt(s["acc_delta"] + c.eps) / tf.sqrt(square + c.eps) * g
                s["acc_delta"].assign(s["acc_delta"] * c.rho + (1 - c.rho) * delta * delta)
                p.assign_sub(lr * delta)
            else:  # adam, adamw
                beta1, beta2 = c.betas
                m = s["exp_avg"].assign(s["exp_avg"] * beta1 + (1 - beta1) * g)
                v = s["exp_avg_sq"].assign(s["exp_avg_sq"] * beta2 + (1 - beta2) * g * g)
                denominator = tf.sqrt(v) / tf.sqrt(1 - tf.pow(beta2, step)) + c.eps
                p.assign_sub(lr / (1 - tf.pow(beta1, step)) * m / denominator)


# ---- devices and the session -----------------------------------------------------------------


class DeviceError(BackendError):
    """The device asked for is not there; the message says what is."""


def _gpus() -> list[Any]:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # take GPU memory as needed, not all of it at start-up
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    return gpus


def resolve_device(device: str) -> tuple[str, str]:
    """(TensorFlow device string, cnnspec's name for it): the same names as torch's."""
    if device == "cpu":
        return "/CPU:0", "cpu"
    if device == "auto":
        return ("/GPU:0", "cuda:0") if _gpus() else ("/CPU:0", "cpu")
    if device == "cuda" or device.startswith("cuda:"):
        index_text = device.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")
        count = len(_gpus())
        if count == 0:
            raise DeviceError(f"device '{device}' asked for, but TensorFlow {tf.__version__} sees no GPU")
        index = int(index_text)
        if index >= count:
            raise DeviceError(f"device '{device}' asked for, but there are {count} GPU(s): cuda:0 .. cuda:{count - 1}")
        return f"/GPU:{index}", f"cuda:{index}"
    if device == "mps":
        raise DeviceError("device 'mps' asked for, but the tensorflow backend has no MPS (Apple GPU) support; use cpu")
    raise DeviceError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


class TensorFlowSession:
    """One network on one device with its optimizer: the harness's Session protocol."""

    def __init__(self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> None:
        if precision not in ("auto", "fp32"):
            raise BackendError(f"the tensorflow backend trains in fp32 only, not '{precision}': use --precision fp32, or --backend torch for bf16 and fp16")
        self._tf_device, self.device = resolve_device(device)
        self.precision = "fp32"
        self.config = config
        with tf.device(self._tf_device):
            self.network = KerasNetwork(graph, config.seed)
            scaled = multipliers(graph, config)
            variables = {name: self.network.bindings[name].variable for name in self.network.trainable if name in scaled}
            self.optimizer = TorchOptimizer(config.optimizer, variables, scaled)
        for name in frozen_norm_layers(graph, config):  # inference mode while training: running statistics stay
            self.network.model.get_layer(name).frozen = True
        self._variables = list(variables.values())
        self._loss = LOSSES[config.loss](config)
        spec = [tf.TensorSpec((None, *graph.input_shape), tf.float32), tf.TensorSpec((None,), tf.int64)]
        jit = True if compile else None
        self._train = tf.function(self._train_step, input_signature=spec, jit_compile=jit)
        self._evaluate = tf.function(self._evaluate_step, input_signature=spec, jit_compile=jit)
        self._predict = tf.function(lambda x: self.network.model(x, training=False), input_signature=spec[:1], jit_compile=jit)

    @property
    def model(self) -> keras.Model:
        return self.network.model

    def get_weights(self) -> dict[str, Array]:
        return self.network.get_weights()

    def set_weights(self, weights: dict[str, Array]) -> None:
        self.network.set_weights(weights)

    def _train_step(self, x: Any, y: Any) -> Any:  # (N, C, H, W), (N,) -> [summed loss, correct]
        with tf.GradientTape() as tape:
            outputs = self.network.model(x, training=True)
            loss = self._loss(outputs, y)
        grads = tape.gradient(loss, self._variables)
        clip = self.config.clip_grad_norm
        if clip is not None:  # torch.nn.utils.clip_grad_norm_
            scale = tf.minimum(clip / (tf.linalg.global_norm(grads) + 1e-6), 1.0)
            grads = [g * scale for g in grads]
        self.optimizer.apply(grads)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs, axis=1), y), tf.float32))
        return tf.stack([loss * tf.cast(tf.shape(x)[0], tf.float32), correct])

    def _evaluate_step(self, x: Any, y: Any) -> tuple[Any, Any]:
        outputs = self.network.model(x, training=False)
        return self._loss(outputs, y) * tf.cast(tf.shape(x)[0], tf.float32), outputs

    def inputs(self, x: Array, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        """Raw pixels to the session's device as they are, normalised there in float32 (the
        operations of ``Normalization.apply``)."""
        with tf.device(self._tf_device):
            out = tf.cast(tf.convert_to_tensor(x), tf.float32) * tf.constant(scale, tf.float32)
            if len(x.shape) == 4:
                out = (out - tf.reshape(tf.constant(mean, tf.float32), (-1, 1, 1))) / tf.reshape(tf.constant(std, tf.float32), (-1, 1, 1))
            return out

    def train_step(self, x: Array, y: Array) -> tuple[float, int]:
        with tf.device(self._tf_device):
            loss_sum, correct = self._train(x, y).numpy()  # one device sync per step
        return float(loss_sum), int(correct)

    def evaluate(self, x: Array, y: Array) -> tuple[float, Array]:
        with tf.device(self._tf_device):
            loss, outputs = self._evaluate(x, y)
        return float(loss), outputs.numpy()

    def predict(self, x: Array) -> Array:
        with tf.device(self._tf_device):
            return self._predict(x).numpy()

    def activations(self, x: Array, layers: Collection[str] | None = None) -> dict[str, Array]:
        with tf.device(self._tf_device):
            values = self.network.activations(x)
        return values if layers is None else {name: value for name, value in values.items() if name in layers}

    def gradients(self, x: Array, direction: Array) -> tuple[dict[str, Array], dict[str, Array]]:
        with tf.device(self._tf_device):
            return self.network.gradients(x, direction)

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.lr.assign(lr)

    def optimizer_state(self) -> tuple[dict[str, Array], dict[str, Any]]:
        arrays: dict[str, Array] = {}
        step = np.asarray(self.optimizer.step.numpy(), np.float32)
        for name, slots in self.optimizer.slots.items():
            convert = self.network.bindings[name].from_keras
            for slot, variable in slots.items():
                arrays[f"{name}::{slot}"] = convert(variable.numpy())
            if self.config.optimizer.name != "sgd":
                arrays[f"{name}::step"] = step
        return arrays, {"param_groups": [{"lr": float(self.optimizer.lr.numpy())}], "step": float(step)}

    def load_optimizer_state(self, arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        steps = [float(np.asarray(a).reshape(-1)[0]) for key, a in arrays.items() if key.endswith("::step")]
        for key, array in arrays.items():
            name, slot = key.split("::")
            if slot == "step":
                continue
            if name not in self.optimizer.slots or slot not in self.optimizer.slots[name]:
                raise KeyError(f"optimizer state '{key}' does not belong to this model and optimizer")
            convert = self.network.bindings[name].to_keras
            self.optimizer.slots[name][slot].assign(np.ascontiguousarray(convert(np.asarray(array, np.float32))))
        self.optimizer.step.assign(max(steps, default=float(meta.get("step", 0.0))))
        if meta.get("param_groups"):
            self.optimizer.lr.assign(meta["param_groups"][0]["lr"])

    def available_memory(self) -> int | None:
        return None  # TensorFlow reports what it uses, not what is free


def open_session(graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> TensorFlowSession:
    return TensorFlowSession(graph, config, device, precision, compile)


def workspace_bytes(graph: Graph) -> int:
    return 0  # oneDNN and cuDNN convolve without keeping im2col columns


def available_memory(device: str) -> tuple[str, int | None]:
    """(resolved device, None): TensorFlow cannot say how much GPU memory is free."""
    return resolve_device(device)[1], None



# ---- export artifacts (see cnnspec.exporting) ----------------------------------------------


class _KerasArtifact:
    def __init__(self, graph: Graph, weights: dict[str, Array], options: dict[str, Any]) -> None:
        _gpus()
        with tf.device("/CPU:0"):
            network = KerasNetwork(graph)
            network.set_weights(weights)
        self.model = network.model

    def run(self, x: Array) -> Array:
        return self.model(x, training=False).numpy()


class SavedModelArtifact(_KerasArtifact):
    """A TensorFlow SavedModel (a directory) serving N x C x H x W float32 -> outputs."""

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        import json

        self.model.export(str(path), format="tf_saved_model", verbose=False)
        (path / "cnnspec.json").write_text(json.dumps(metadata, indent=2) + "\n")


class KerasFileArtifact(_KerasArtifact):
    """A Keras 3 ``.keras`` file; its custom layers load where cnnspec is installed."""

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        self.model.save(str(path))


class TFLiteArtifact(_KerasArtifact):
    def __init__(self, graph: Graph, weights: dict[str, Array], options: dict[str, Any]) -> None:
        super().__init__(graph, weights, options)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the converter's chatter
                warnings.simplefilter("ignore")
                self.content = tf.lite.TFLiteConverter.from_keras_model(self.model).convert()
        except Exception as exc:  # the converter raises many kinds; say which, write nothing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"TensorFlow's TFLite converter failed for '{graph.name}': {first}") from None
        self._runner = _tflite_runner(self.content)

    def run(self, x: Array) -> Array:
        return self._runner(x)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        path.write_bytes(self.content)


def _tflite_runner(content: bytes) -> Callable[[Array], Array]:
    def run(x: Array) -> Array:
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (LiteRT replaces it)
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(x.shape))
        with chatter_filtered():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def _load_savedmodel(path: Path) -> Callable[[Array], Array]:
    loaded = tf.saved_model.load(str(path))
    return lambda x: loaded.serve(tf.constant(x)).numpy()


def _load_keras(path: Path) -> Callable[[Array], Array]:
    model = keras.saving.load_model(str(path))
    return lambda x: model(x, training=False).numpy()


EXPORTS: dict[str, Callable[[Graph, dict[str, Array], dict[str, Any]], Any]] = {
    "savedmodel": SavedModelArtifact,
    "keras": KerasFileArtifact,
    "tflite": TFLiteArtifact,
}
LOADERS: dict[str, Callable[[Path], Callable[[Array], Array]]] = {
    "savedmodel": _load_savedmodel,
    "keras": _load_keras,
    "tflite": lambda path: _tflite_runner(path.read_bytes()),
}


def load_keras_weights(graph: Graph, path: Path) -> dict[str, Array]:
    """Canonical weights from a Keras ``.weights.h5`` saved from the model this backend
    builds for ``graph`` (the same layer names; Keras' layout converted back)."""
    network = KerasNetwork(graph)
    network.model.load_weights(str(path))
    return network.get_weights()
