"""The NumPy backend: cnnspec's executable reference, forward and backward in NumPy.

Every layer kind lowers to an op in ``numpy_ops`` (activations: ``numpy_activations``) through ``LOWERINGS`` (keyed by layer
class). Losses and optimizers follow PyTorch's definitions exactly (same update from the
same state, and the same state names, so optimizer state moves between backends).
``--device cuda`` runs the same code on CuPy arrays when CuPy is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from cnnspec.backends import numpy_activations as acts
from cnnspec.backends import numpy_ops as ops
from cnnspec.backends import numpy_transposed
from cnnspec.backends.protocol import BackendError
from cnnspec.graph.dag import Graph
from cnnspec.graph.tuning import frozen_norm_layers, multipliers
from cnnspec.layers import Layer, Shape
from cnnspec.layers.activation import (
    ELU,
    GELU,
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
from cnnspec.layers.window import resolve_padding
from cnnspec.spec.grammar import INPUT
from cnnspec.spec.training import OptimizerConfig, TrainConfig

Array = Any
Lowering = Callable[[Any, list[Shape], Shape, Any], ops.Op]
LOWERINGS: dict[type[Layer], Lowering] = {}


def _activation(activation: Any, rng: Any) -> ops.Op:
    return LOWERINGS[type(activation)](activation, [], (), rng)


def _with_activation(op: ops.Op, activation: Any, rng: Any) -> ops.Op:
    return op if activation is None else acts.WithActivation(op, _activation(activation, rng))


def _conv(layer: Conv2d, shapes: list[Shape], out: Shape, rng: Any) -> ops.Op:
    padding = resolve_padding(layer.padding, shapes[0][1:], layer.kernel, layer.stride, layer.dilation)  # type: ignore[arg-type]
    op = ops.Conv2d(padding, layer.kernel, layer.stride, layer.dilation, layer.groups, (out[1], out[2]), layer.bias)
    return _with_activation(op, layer.activation, rng)


def _pool(layer: Pool2d, shapes: list[Shape], out: Shape, rng: Any) -> ops.Op:
    stride = layer.stride or layer.kernel
    padding = resolve_padding(layer.padding, shapes[0][1:], layer.kernel, stride)  # type: ignore[arg-type]
    include = getattr(layer, "count_include_pad", True)
    return ops.Pool2d(isinstance(layer, MaxPool2d), padding, layer.kernel, stride, (out[1], out[2]), include)


def _zero_padding(layer: ZeroPadding2d, shapes: list[Shape], out: Shape, rng: Any) -> ops.Op:
    assert not isinstance(layer.padding, str)
    return ops.ZeroPad(layer.padding)


LOWERINGS.update(
    {
        Conv2d: _conv,
        MaxPool2d: _pool,
        AvgPool2d: _pool,
        Dense: lambda layer, shapes, out, rng: _with_activation(ops.Dense(layer.bias), layer.activation, rng),
        GlobalAvgPool2d: lambda layer, shapes, out, rng: ops.GlobalPool(False, layer.keepdims),
        GlobalMaxPool2d: lambda layer, shapes, out, rng: ops.GlobalPool(True, layer.keepdims),
        Flatten: lambda layer, shapes, out, rng: ops.Flatten(),
        Dropout: lambda layer, shapes, out, rng: ops.Dropout(layer.rate, rng),
        DropPath: lambda layer, shapes, out, rng: ops.DropPath(layer.rate, rng),
        BatchNorm: lambda layer, shapes, out, rng: ops.BatchNorm(layer.eps, layer.momentum),
        LRN: lambda layer, shapes, out, rng: ops.LRN(layer.size, layer.alpha, layer.beta, layer.k),
        ZeroPadding2d: _zero_padding,
        Affine: lambda layer, shapes, out, rng: ops.Affine(layer.bias),
        LayerNorm: lambda layer, shapes, out, rng: ops.LayerNorm(layer.eps),
        ChannelShuffle: lambda layer, shapes, out, rng: ops.ChannelShuffle(layer.order(shapes[0][0])),
        Add: lambda layer, shapes, out, rng: ops.Add(),
        Concat: lambda layer, shapes, out, rng: ops.Concat(),
        Multiply: lambda layer, shapes, out, rng: ops.Multiply(),
        Slice: lambda layer, shapes, out, rng: ops.Slice(layer.start, layer.stop),
        ConvTranspose2d: numpy_transposed.lower,
        AdaptiveAvgPool2d: lambda layer, shapes, out, rng: ops.SeparableLinear(*map(np.array, layer.averaging(*shapes[0][1:]))),
        Upsample2d: lambda layer, shapes, out, rng: ops.SeparableLinear(*map(np.array, layer.matrices(*shapes[0][1:]))),
        ReLU: lambda layer, shapes, out, rng: acts.Elementwise(*acts.RECTIFIER),
        ReLU6: lambda layer, shapes, out, rng: acts.Elementwise(*acts.RECTIFIER6),
        Sigmoid: lambda layer, shapes, out, rng: acts.Elementwise(*acts.LOGISTIC),
        Tanh: lambda layer, shapes, out, rng: acts.Elementwise(*acts.HYPERBOLIC_TANGENT),
        SiLU: lambda layer, shapes, out, rng: acts.Elementwise(*acts.SWISH),
        HardSwish: lambda layer, shapes, out, rng: acts.Elementwise(*acts.HARD_SWISH),
        HardSigmoid: lambda layer, shapes, out, rng: acts.hard_sigmoid(layer.alpha, layer.beta),
        GELU: lambda layer, shapes, out, rng: acts.gelu(layer.approximate),
        LeakyReLU: lambda layer, shapes, out, rng: acts.leaky_relu(layer.negative_slope),
        ELU: lambda layer, shapes, out, rng: acts.elu(layer.alpha),
        PReLU: lambda layer, shapes, out, rng: acts.PReLU(),
        Softmax: lambda layer, shapes, out, rng: acts.Softmax(),
    }
)


class Network:
    """The graph as ops over one dict of named weights; forward, then backward."""

    def __init__(self, graph: Graph, xp: Any, dtype: Any, seed: int = 0, input_gradient: bool = True) -> None:
        """``input_gradient=False`` skips the gradient of the network input (training
        never needs it; the first convolution's col2im is then saved)."""
        self.xp, self.dtype = xp, dtype
        self.rng = np.random.default_rng(seed)  # dropout masks
        specs = graph.weights()
        self.weights: dict[str, Array] = {n: xp.asarray(np.zeros(s.shape), dtype=dtype) for n, s in specs.items()}
        self.trainable = [n for n, s in specs.items() if s.trainable]
        self.steps: list[tuple[str, ops.Op, tuple[str, ...]]] = []
        for node in graph.nodes:
            lowering = LOWERINGS.get(type(node.layer))
            if lowering is None:
                raise BackendError(f"the numpy backend has no lowering for layer kind '{node.kind}'")
            op = lowering(node.layer, graph.input_shapes(node), node.output_shape, self.rng)
            prefix = node.name + "."
            mine = {n[len(prefix):]: self.weights[n] for n in specs if n.startswith(prefix) and n[len(prefix):] in
                    node.layer.weights(graph.input_shapes(node))}
            op.bind({k: v for k, v in mine.items() if specs[prefix + k].trainable})
            op.state = {k: v for k, v in mine.items() if not specs[prefix + k].trainable}
            op.needs_input_grad = input_gradient or any(source != INPUT for source in node.inputs)
            self.steps.append((node.name, op, node.inputs))
        self.output = graph.output
        self.grads: dict[str, Array] = {}
        self.frozen_norms: set[str] = set()  # batch norm layers that stay in inference mode while training

    def activations(self, x: Array, training: bool) -> dict[str, Array]:
        """Every layer's output by name (and the input under 'input')."""
        values: dict[str, Array] = {INPUT: x}
        for name, op, inputs in self.steps:
            values[name] = op.forward([values[i] for i in inputs], training and name not in self.frozen_norms)
        return values

    def forward(self, x: Array, training: bool) -> Array:
        return self.activations(x, training)[self.output]

    def backward(self, grad: Array, outputs: dict[str, Array] | None = None) -> Array:
        """Gradients of every trainable weight (into self.grads) and of the input; with
        ``outputs``, each layer's output gradient goes there too, by name."""
        grads: dict[str, Array] = {self.output: grad}
        for name, op, inputs in reversed(self.steps):
            if name not in grads:
                continue  # its output does not reach the network's output
            if outputs is not None:
                outputs[name] = grads[name]
            for source, g in zip(inputs, op.backward(grads.pop(name)), strict=True):
                if g is not None:
                    grads[source] = grads[source] + g if source in grads else g
            for key, g in op.grads.items():
                self.grads[f"{name}.{key}"] = g
            op.grads = {}
        return grads.get(INPUT)


# ---- losses: value and gradient, both averaged over the batch, as PyTorch's ------------------


def _log_softmax(x: Array) -> Array:
    xp = ops.xp_of(x)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(outputs: Array, targets: Array, smoothing: float) -> tuple[float, Array]:
    xp = ops.xp_of(outputs)
    n, k = outputs.shape
    log_p = _log_softmax(outputs)
    target = xp.full(outputs.shape, smoothing / k, dtype=outputs.dtype)
    target[xp.arange(n), targets] += 1 - smoothing
    loss = float(-(target * log_p).sum() / n)
    return loss, (xp.exp(log_p) - target) / n


def mse(outputs: Array, targets: Array, smoothing: float) -> tuple[float, Array]:
    xp = ops.xp_of(outputs)
    one_hot = xp.zeros_like(outputs)
    one_hot[xp.arange(len(outputs)), targets] = 1
    diff = outputs - one_hot
    return float((diff * diff).mean()), 2 * diff / diff.size


def multi_margin(outputs: Array, targets: Array, smoothing: float) -> tuple[float, Array]:
    """PyTorch's MultiMarginLoss (p=1, margin=1): sum_i!=y max(0, 1 - x_y + x_i) / classes."""
    xp = ops.xp_of(outputs)
    n, k = outputs.shape
    rows = xp.arange(n)
    margins = 1 - outputs[rows, targets][:, None] + outputs
    margins[rows, targets] = 0
    active = (margins > 0).astype(outputs.dtype)
    grad = active / (n * k)
    grad[rows, targets] = -active.sum(axis=1) / (n * k)
    return float(xp.maximum(margins, 0).sum() / (n * k)), grad


LOSSES: dict[str, Callable[[Array, Array, float], tuple[float, Array]]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "hinge": multi_margin,
}


# ---- optimizers: torch.optim's single-tensor updates, and its state names ---------------------


class Optimizer:
    """torch.optim's updates; ``multipliers`` scale each array's learning rate and weight
    decay (arrays not in it are frozen: never updated, no state)."""

    def __init__(self, config: OptimizerConfig, multipliers: dict[str, tuple[float, float]] | None = None) -> None:
        self.config = config
        self.lr = config.lr
        self.multipliers = multipliers
        self.state: dict[str, dict[str, Array]] = {}

    def step(self, weights: dict[str, Array], grads: dict[str, Array], names: list[str]) -> None:
        for name in names:
            if name in grads and (self.multipliers is None or name in self.multipliers):
                self.update(name, weights[name], grads[name], self.state.setdefault(name, {}))

    def update(self, name: str, p: Array, g: Array, s: dict[str, Array]) -> None:
        lr_mult, decay_mult = (1.0, 1.0) if self.multipliers is None else self.multipliers[name]
        c, xp, lr = self.config, ops.xp_of(p), self.lr * lr_mult
        kind, weight_decay = c.name, c.weight_decay * decay_mult
        if kind == "adamw":
            p *= 1 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * p
        if kind == "sgd":
            if c.momentum:
                buffer = s.get("momentum_buffer")
                s["momentum_buffer"] = g.copy() if buffer is None else buffer * c.momentum + g
                g = g + c.momentum * s["momentum_buffer"] if c.nesterov else s["momentum_buffer"]
            p -= lr * g
            return
        s["step"] = s.get("step", xp.zeros((), dtype=p.dtype)) + 1
        step = float(s["step"])
        if kind == "adagrad":
            s["sum"] = s.get("sum", xp.zeros_like(p)) + g * g
            p -= lr * g / (xp.sqrt(s["sum"]) + c.eps)
        elif kind == "rmsprop":
            s["square_avg"] = s.get("square_avg", xp.zeros_like(p)) * c.alpha + (1 - c.alpha) * g * g
            average = xp.sqrt(s["square_avg"]) + c.eps
            if c.momentum:
                s["momentum_buffer"] = s.get("momentum_buffer", xp.zeros_like(p)) * c.momentum + g / average
                p -= lr * s["momentum_buffer"]
            else:
                p -= lr * g / average
        elif kind == "adadelta":
            s["square_avg"] = s.get("square_avg", xp.zeros_like(p)) * c.rho + (1 - c.rho) * g * g
            delta = xp.sqrt(s.get("acc_delta", xp.zeros_like(p)) + c.eps) / xp.sqrt(s["square_avg"] + c.eps) * g
            s["acc_delta"] = s.get("acc_delta", xp.zeros_like(p)) * c.rho + (1 - c.rho) * delta * delta
            p -= lr * delta
        else:  # adam, adamw
            beta1, beta2 = c.betas
            s["exp_avg"] = s.get("exp_avg", xp.zeros_like(p)) * beta1 + (1 - beta1) * g
            s["exp_avg_sq"] = s.get("exp_avg_sq", xp.zeros_like(p)) * beta2 + (1 - beta2) * g * g
            denominator = xp.sqrt(s["exp_avg_sq"]) / math.sqrt(1 - beta2**step) + c.eps
            p -= (lr / (1 - beta1**step)) * s["exp_avg"] / denominator


def clip_grad_norm(grads: dict[str, Array], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_: scale all gradients so their joint L2 norm <= max."""
    total = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for g in grads.values():
            g *= scale


# ---- the session ----------------------------------------------------------------------------


def _array_module(device: str) -> tuple[Any, str]:
    if device in ("auto", "cpu"):
        return np, "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        try:
            import cupy
        except ImportError:
            raise BackendError(
                "the numpy backend runs on a GPU through CuPy, which is not installed: pip install 'cnnspec[cupy]' "
                "(or cupy-cuda12x), or use --device cpu"
            ) from None
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= cupy.cuda.runtime.getDeviceCount():
            raise BackendError(f"device '{device}' asked for, but CuPy sees {cupy.cuda.runtime.getDeviceCount()} GPU(s)")
        cupy.cuda.Device(index).use()
        return cupy, f"cuda:{index}"
    raise BackendError(f"the numpy backend runs on cpu, or cuda through CuPy; not on '{device}'")


class NumpySession:
    def __init__(self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 compile: bool = False, dtype: Any = np.float32) -> None:
        if precision not in ("auto", "fp32"):
            raise BackendError(f"the numpy backend computes in fp32; precision '{precision}' is not available")
        self.xp, self.device = _array_module(device)
        self.precision = "fp32" if dtype == np.float32 else "fp64"
        self.config = config
        self.network = Network(graph, self.xp, dtype, config.seed, input_gradient=False)
        self._multipliers = multipliers(graph, config)
        self.optimizer = Optimizer(config.optimizer, self._multipliers)
        self.network.frozen_norms = frozen_norm_layers(graph, config)
        self._loss = LOSSES[config.loss]
        self._dtype = dtype

    @property
    def model(self) -> Network:
        return self.network

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: self._host(array) for name, array in self.network.weights.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, array in weights.items():
            if name not in self.network.weights:
                raise KeyError(f"no weight '{name}' in the numpy model")
            self.network.weights[name][...] = self.xp.asarray(array, dtype=self._dtype)

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Array:
        """Normalised on this backend's device (the GPU with CuPy), in float32 as
        ``Normalization.apply``, then in the session's dtype."""
        xp = self.xp
        out = xp.asarray(x).astype(xp.float32) * xp.float32(scale)
        if out.ndim == 4:
            out -= xp.asarray(mean, dtype=xp.float32)[:, None, None]
            out /= xp.asarray(std, dtype=xp.float32)[:, None, None]
        return out.astype(self._dtype, copy=False)

    def _host(self, array: Array) -> np.ndarray:
        return np.asarray(array.get() if hasattr(array, "get") else array, dtype=np.float32 if self._dtype == np.float32 else self._dtype)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        xp = self.xp
        inputs, targets = xp.asarray(x, dtype=self._dtype), xp.asarray(y)
        outputs = self.network.forward(inputs, training=True)
        loss, grad = self._loss(outputs, targets, self.config.label_smoothing)
        self.network.grads = {}
        self.network.backward(grad)
        self.network.grads = {name: g for name, g in self.network.grads.items() if name in self._multipliers}  # frozen: none
        if self.config.clip_grad_norm is not None:
            clip_grad_norm(self.network.grads, self.config.clip_grad_norm)
        self.optimizer.step(self.network.weights, self.network.grads, self.network.trainable)
        return loss * len(x), int((outputs.argmax(axis=1) == targets).sum())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        outputs = self.network.forward(self.xp.asarray(x, dtype=self._dtype), training=False)
        loss, _ = self._loss(outputs, self.xp.asarray(y), self.config.label_smoothing)
        return loss * len(x), self._host(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._host(self.network.forward(self.xp.asarray(x, dtype=self._dtype), training=False))

    def activations(self, x: np.ndarray, layers: Collection[str] | None = None) -> dict[str, np.ndarray]:
        values = self.network.activations(self.xp.asarray(x, dtype=self._dtype), training=False)
        return {name: self._host(value) for name, value in values.items() if name != INPUT and (layers is None or name in layers)}

    def gradients(self, x: np.ndarray, direction: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(every layer's output, and the input under 'input'; the gradient of
        sum(output * direction) with respect to each), evaluation mode."""
        network = self.network
        values = network.activations(self.xp.asarray(x, dtype=self._dtype), training=False)
        needed = [op.needs_input_grad for _, op, _ in network.steps]
        for _, op, _ in network.steps:
            op.needs_input_grad = True
        grads: dict[str, Array] = {}
        try:
            grads[INPUT] = network.backward(self.xp.asarray(direction, dtype=self._dtype), grads)
        finally:
            for (_, op, _), need in zip(network.steps, needed, strict=True):
                op.needs_input_grad = need
            network.grads = {}
        return ({name: self._host(v) for name, v in values.items()},
                {name: self._host(grads[name]) if name in grads else np.zeros_like(self._host(v)) for name, v in values.items()})

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.lr = lr

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"{name}::{slot}": self._host(value) for name, slots in self.optimizer.state.items() for slot, value in slots.items()}
        return arrays, {"param_groups": [{"lr": self.optimizer.lr}]}

    def load_optimizer_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.optimizer.state = {}
        for key, array in arrays.items():
            name, slot = key.split("::")
            value = self.xp.asarray(array, dtype=self._dtype)
            # a step count is a scalar; checkpoints hold it as one value (safetensors has no 0-d arrays)
            self.optimizer.state.setdefault(name, {})[slot] = value.reshape(()) if slot == "step" else value
        if meta.get("param_groups"):
            self.optimizer.lr = meta["param_groups"][0]["lr"]

    def available_memory(self) -> int | None:
        return None


def open_session(graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto", compile: bool = False) -> NumpySession:
    return NumpySession(graph, config, device, precision, compile)


def workspace_bytes(graph: Graph) -> int:
    """Per sample: each convolution keeps its im2col columns (Ho x Wo rows of
    C/groups x KH x KW values) for the backward pass, and builds their gradient, as
    large, during it."""
    total = 0
    for node in graph.nodes:
        if isinstance(node.layer, Conv2d):
            channels = graph.input_shapes(node)[0][0] // node.layer.groups
            _, height, width = node.output_shape
            total += height * width * channels * node.layer.kernel[0] * node.layer.kernel[1] * node.layer.groups * 4
    return 2 * total


def available_memory(device: str) -> tuple[str, int | None]:
    if device in ("auto", "cpu"):
        return "cpu", None
    xp, resolved = _array_module(device)
    free, _ = xp.cuda.runtime.memGetInfo()
    return resolved, int(free)
