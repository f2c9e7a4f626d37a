"""Keras models (``.keras``, and full-model ``.h5``) read back as a spec and canonical weights.

The model is loaded with Keras' safe mode (no ``Lambda`` code runs) and not compiled.
Its wiring is read from ``get_config()``, Sequential or functional, with nested models
inlined; each layer becomes spec layers through ``CONVERTERS``, a table keyed by the Keras
class name. A layer no converter takes is refused by name and class.

Keras computes channels-last (N x H x W x C) and flattens a map as (h, w, c); a spec is
channels-first and flattens as (c, h, w). A map's layout is converted at the boundary.
A flattened vector keeps Keras' order inside Keras and a ``perm`` here: the canonical
position of each Keras position, which the layers that read it (dense, batchnorm,
concat) apply to their weights, so that the imported spec computes the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends import (
    keras_layers,  # noqa: F401  (registers cnnspec's own layers, so its exports load)
    keras_modern,
)
from cnnspec.backends.import_common import ImportRefused, Layer, decimal, layer_name, pair, rounding, spec_text
from cnnspec.backends.tf_quiet import keras
from cnnspec.errors import did_you_mean
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
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.core import Dense, Dropout, DropPath, Flatten, ZeroPadding2d
from cnnspec.layers.merge import Add, Concat
from cnnspec.layers.norm import Affine, BatchNorm
from cnnspec.layers.pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from cnnspec.spec.grammar import INPUT

Shape = tuple[int, ...]  # Keras' shape, without the batch axis: (H, W, C) or (F,)


@dataclasses.dataclass(frozen=True)
class Value:
    """A Keras tensor as the spec sees it: the layer that computes it, its Keras shape,
    and for vectors in Keras' flatten order, ``perm[i]`` = canonical position of Keras
    position i (None: the same order)."""

    layer: str
    shape: Shape
    perm: np.ndarray | None = None

    @property
    def is_map(self) -> bool:
        return len(self.shape) == 3

    def canonical_shape(self) -> list[int]:
        return [self.shape[2], self.shape[0], self.shape[1]] if self.is_map else list(self.shape)


def load(path: Path) -> Any:
    """The Keras model in ``path``, loaded safely and not compiled."""
    if path.name.lower().endswith(".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                holds_model = "model_config" in f.attrs
        except OSError:
            raise ImportRefused("not an HDF5 file (a Keras .h5 model is one)") from None
        if not holds_model:
            raise ImportRefused("this .h5 file holds weights only, not a model; import it with --spec NAME_OR_FILE")
    else:
        import zipfile

        if not zipfile.is_zipfile(path):
            raise ImportRefused("not a .keras file (a zip archive of the model's config and weights)")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError, ... with its reason
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(f"Keras cannot load it safely: {reason}") from None


@dataclasses.dataclass
class Reader:
    """Spec layers and canonical weights, written as the Keras layers are read."""

    layers: list[Layer] = dataclasses.field(default_factory=list)
    by_name: dict[str, Layer] = dataclasses.field(default_factory=dict)
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    frozen: list[str] = dataclasses.field(default_factory=list)  # layers Keras does not train
    channels_first: bool = False  # the model takes N x C x H x W and permutes it first
    frozen_source: bool = False  # the Keras layer being read does not train

    def add(self, source: str, kind: str, args: dict[str, Any], inputs: list[Value], shape: Shape,
            perm: np.ndarray | None = None, weights: dict[str, np.ndarray] | None = None) -> Value:
        name = layer_name(source, kind, self.by_name)
        layer = {"kind": kind, "args": args, "name": name, "inputs": [v.layer for v in inputs]}
        self.layers.append(layer)
        self.by_name[name] = layer
        for key, array in (weights or {}).items():
            self.weights[f"{name}.{key}"] = np.ascontiguousarray(array, dtype=np.float32)
        if weights and self.frozen_source:
            self.frozen.append(name)
        return Value(name, shape, perm)

    # ---- models: the wiring ----

    def model(self, model: Any, inputs: list[Value]) -> Value:
        """Read ``model`` (Sequential or functional) with ``inputs`` bound to its inputs."""
        if isinstance(model, keras.Sequential):
            value = inputs[0]
            for layer in model.layers:
                value = self.layer(layer, [value])
            return value
        config = model.get_config()
        values: dict[tuple[str, int, int], Value] = {}
        for history, value in zip(_histories(config["input_layers"]), inputs, strict=True):
            values[history] = value
        for entry in config["layers"]:
            nodes = entry.get("inbound_nodes") or []
            if entry["class_name"] == "InputLayer" or not nodes:
                continue
            if len(nodes) > 1:
                raise ImportRefused(f"layer '{entry['name']}' is called {len(nodes)} times (shared weights); a spec layer runs once")
            reads = [values[h] for h in _histories([nodes[0].get("args", []), nodes[0].get("kwargs", {})])]
            if str(entry.get("module", "")).startswith("keras.src.ops"):  # arithmetic on tensors, not a layer
                constants = [a for a in nodes[0].get("args", []) if not _histories(a)]
                values[(entry["name"], 0, 0)] = keras_modern.operation(self, entry, reads, constants)
                continue
            values[(entry["name"], 0, 0)] = self.layer(model.get_layer(entry["name"]), reads)
        return values[_histories(config["output_layers"])[0]]  # one output: _input_value checked

    def layer(self, layer: Any, inputs: list[Value]) -> Value:
        if isinstance(layer, keras.Model):  # a model used as a layer: its layers, inline
            return self.model(layer, inputs)
        if isinstance(layer, keras.layers.InputLayer):
            return inputs[0]
        cls = type(layer).__name__
        convert = CONVERTERS.get(cls)
        if convert is None:
            hint = did_you_mean(cls, CONVERTERS)
            if type(layer).__module__.startswith("cnnspec."):
                hint += " (a layer of cnnspec's own Keras export: import its ONNX export instead, which reads every cnnspec layer)"
            raise ImportRefused(f"layer '{layer.name}': Keras {cls} has no cnnspec layer kind{hint}; "
                                f"supported: {', '.join(sorted(CONVERTERS))}")
        config = layer.get_config()
        if config.get("data_format", "channels_last") != "channels_last":
            raise ImportRefused(f"layer '{layer.name}': {cls} with data_format={config['data_format']!r}; import reads channels_last models")
        # Keras' non-trainable layers (a frozen base; preprocessing) stay frozen in the spec
        self.frozen_source = not layer.trainable or cls in ("Rescaling", "Normalization")
        try:
            return convert(self, layer, config, inputs)
        except ImportRefused as exc:
            raise ImportRefused(f"layer '{layer.name}' ({cls}): {exc}") from None


def _histories(tree: Any) -> list[tuple[str, int, int]]:
    """Every Keras tensor reference in a config tree, in order: (layer, node, index)."""
    if isinstance(tree, dict):
        if tree.get("class_name") == "__keras_tensor__":
            name, node, index = tree["config"]["keras_history"]
            return [(name, int(node), int(index))]
        return [h for value in tree.values() for h in _histories(value)]
    if isinstance(tree, (list, tuple)):
        if len(tree) == 3 and isinstance(tree[0], str) and all(isinstance(v, int) for v in tree[1:]):
            return [(tree[0], int(tree[1]), int(tree[2]))]  # input_layers / output_layers entries
        return [h for value in tree for h in _histories(value)]
    return []


# ---- converters: one Keras class each ----------------------------------------------------------

Converter = Callable[[Reader, Any, dict[str, Any], list[Value]], Value]


def _activation_arg(name: Any) -> Any:
    """A Keras activation (as its config names it) as a spec ``activation:`` value."""
    if isinstance(name, dict):  # a serialised function: {"class_name": "function", "config": ReLU.kind, ...}
        name = name.get("config") if isinstance(name.get("config"), str) else name.get("class_name")
    # Keras names these as cnnspec does; Keras' leaky_relu function slopes 0.2
    known: dict[str, Any] = {"linear": None} | {cls.kind: cls.kind for cls in (ReLU, ReLU6, Sigmoid, Tanh, Softmax, ELU, SiLU, HardSigmoid, HardSwish, GELU)}
    known[LeakyReLU.kind] = {LeakyReLU.kind: {"negative_slope": 0.2}}
    # Keras 3's names for the same functions (its hard_sigmoid is relu6(x + 3) / 6, PyTorch's)
    known |= {"swish": SiLU.kind, "hard_silu": HardSwish.kind}
    if name not in known:
        raise ImportRefused(f"activation {name!r} has no cnnspec kind{did_you_mean(str(name), known)}; "
                            f"supported: {', '.join(known)}")
    return known[name]


def _map_of(value: Value, what: str) -> Shape:
    if not value.is_map:
        raise ImportRefused(f"{what} needs a feature map, got a vector of {value.shape[0]}")
    return value.shape


def _output_shape(layer: Any, value: Value) -> Shape:
    return tuple(int(d) for d in layer.compute_output_shape((1, *value.shape))[1:])


def _window_args(config: dict[str, Any], size: Shape, kernel: Any, stride: Any, dilation: Any = (1, 1)) -> dict[str, Any]:
    """padding and rounding of a Keras window: 'same' as the spec's 'same' (TensorFlow's
    rule), 'valid' as none, rounded down as Keras does."""
    if config["padding"] == "same":
        return {"padding": "same"}
    if config["padding"] != "valid":
        raise ImportRefused(f"padding {config['padding']!r}; supported: 'valid', 'same'")
    mode = rounding(size, kernel, stride, [0, 0, 0, 0], dilation, False)
    return {} if mode == "exact" else {"rounding": mode}


def _conv_args(config: dict[str, Any], value: Value, filters: int, groups: int, activation: Any = None) -> dict[str, Any]:
    size = _map_of(value, "a convolution")
    kernel, stride = config["kernel_size"], config["strides"]
    dilation = config.get("dilation_rate", (1, 1))
    args: dict[str, Any] = {"filters": int(filters), "kernel": pair(kernel)}
    if tuple(stride) != (1, 1):
        args["stride"] = pair(stride)
    args |= _window_args(config, size[:2], kernel, stride, dilation)
    if tuple(dilation) != (1, 1):
        args["dilation"] = pair(dilation)
    if groups != 1:
        args["groups"] = int(groups)
    if not config.get("use_bias", True):
        args["bias"] = False
    if activation is not None:
        args["activation"] = activation
    return args


def _conv(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    kernel, *bias = layer.get_weights()  # (kh, kw, in/groups, out)
    args = _conv_args(config, inputs[0], config["filters"], config.get("groups", 1), _activation_arg(config["activation"]))
    weights = {"weight": kernel.transpose(3, 2, 0, 1)} | ({"bias": bias[0]} if bias else {})
    return r.add(layer.name, Conv2d.kind, args, inputs, _output_shape(layer, inputs[0]), weights=weights)


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    """Keras' depthwise kernel (kh, kw, C, m) as a grouped convolution's (C*m, 1, kh, kw):
    output channel c*m + j reads input channel c."""
    kh, kw, channels, multiplier = kernel.shape
    return kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)


def _depthwise_conv(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    kernel, *bias = layer.get_weights()
    channels = inputs[0].shape[2] if inputs[0].is_map else 0
    args = _conv_args(config, inputs[0], channels * config["depth_multiplier"], channels, _activation_arg(config["activation"]))
    weights = {"weight": _depthwise(kernel)} | ({"bias": bias[0]} if bias else {})
    return r.add(layer.name, Conv2d.kind, args, inputs, _output_shape(layer, inputs[0]), weights=weights)


def _separable_conv(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """A depthwise convolution (stride, padding, dilation; no bias) then a pointwise one."""
    depthwise, pointwise, *bias = layer.get_weights()
    channels = inputs[0].shape[2] if inputs[0].is_map else 0
    multiplier = config["depth_multiplier"]
    args = _conv_args(config, inputs[0], channels * multiplier, channels) | {"bias": False}
    shape = _output_shape(layer, inputs[0])
    step = r.add(f"{layer.name}_depthwise", Conv2d.kind, args, inputs, (*shape[:2], channels * multiplier),
                 weights={"weight": _depthwise(depthwise)})
    point: dict[str, Any] = {"filters": int(config["filters"]), "kernel": 1}
    if not config.get("use_bias", True):
        point["bias"] = False
    if (activation := _activation_arg(config["activation"])) is not None:
        point["activation"] = activation
    weights = {"weight": pointwise.transpose(3, 2, 0, 1)} | ({"bias": bias[0]} if bias else {})
    return r.add(layer.name, Conv2d.kind, point, [step], shape, weights=weights)


def _dense(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """Dense on a vector; Dense on a map acts on each position's channels, a 1x1 convolution."""
    kernel, *bias = layer.get_weights()  # (in, units)
    value, units = inputs[0], int(config["units"])
    activation = _activation_arg(config["activation"])
    args: dict[str, Any] = {"units": units}
    if value.is_map:
        args = {"filters": units, "kernel": 1}
        weight = kernel.T.reshape(units, -1, 1, 1)
        kind = Conv2d.kind
    elif len(value.shape) == 1:
        weight = np.empty((units, kernel.shape[0]), np.float32)
        weight[:, value.perm if value.perm is not None else slice(None)] = kernel.T
        kind = Dense.kind
    else:
        raise ImportRefused(f"Dense on a tensor of shape {value.shape}; supported: a vector or an H x W x C map")
    if not config.get("use_bias", True):
        args["bias"] = False
    if activation is not None:
        args["activation"] = activation
    weights = {"weight": weight} | ({"bias": bias[0]} if bias else {})
    return r.add(layer.name, kind, args, inputs, _output_shape(layer, value), weights=weights)


def _flatten(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    value = inputs[0]
    if not value.is_map:
        if len(value.shape) != 1:
            raise ImportRefused(f"flattening a tensor of shape {value.shape}; supported: an H x W x C map")
        return value  # already flat: Keras' Flatten changes nothing
    height, width, channels = value.shape
    # Keras position (h*W + w)*C + c holds canonical feature c*H*W + h*W + w.
    h, w, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    perm = (c * height * width + h * width + w).reshape(-1)
    same = bool(np.array_equal(perm, np.arange(perm.size)))
    return r.add(layer.name, Flatten.kind, {}, inputs, (perm.size,), None if same else perm)


def _reshape(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    target, value = tuple(config["target_shape"]), inputs[0]
    if len(target) == 1 and target[0] in (-1, int(np.prod(value.shape))):
        return _flatten(r, layer, config, inputs)
    pooled = r.by_name.get(value.layer)
    if target == (1, 1, *value.shape) and pooled is not None and pooled["kind"] in (GlobalAvgPool2d.kind, GlobalMaxPool2d.kind):
        pooled["args"]["keepdims"] = True  # EfficientNet's squeeze: pool, then Reshape to 1 x 1 x C
        return Value(value.layer, target)
    raise ImportRefused(f"Reshape to {target}; supported: a reshape to one axis (a flatten), or a global pool's C to 1 x 1 x C")


def _permute(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """Only as the first step of a channels-first model (cnnspec's own Keras export):
    the input is then N x C x H x W, the spec's own layout."""
    value = inputs[0]
    if tuple(config["dims"]) != (2, 3, 1) or value.layer != INPUT or r.layers:
        raise ImportRefused(f"Permute {tuple(config['dims'])}; supported: (2, 3, 1) on the model's input (channels first to last)")
    r.channels_first = True
    channels, height, width = value.shape
    return Value(INPUT, (height, width, channels))


def _pool(kind: str) -> Converter:
    def convert(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
        size = _map_of(inputs[0], "pooling")
        kernel = config["pool_size"]
        stride = config["strides"] or kernel
        args: dict[str, Any] = {"kernel": pair(kernel)}
        if tuple(stride) != tuple(kernel):
            args["stride"] = pair(stride)
        args |= _window_args(config, size[:2], kernel, stride)
        if kind == AvgPool2d.kind and args.get("padding") == "same":
            args["count_include_pad"] = False  # Keras averages over the window's part inside the map
        return r.add(layer.name, kind, args, inputs, _output_shape(layer, inputs[0]))

    return convert


def _global_pool(kind: str) -> Converter:
    def convert(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
        _map_of(inputs[0], "global pooling")
        keep = bool(config.get("keepdims", False))
        return r.add(layer.name, kind, {"keepdims": True} if keep else {}, inputs, _output_shape(layer, inputs[0]))

    return convert


def _batchnorm(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    value = inputs[0]
    axis = config["axis"]
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, len(value.shape)):
        raise ImportRefused(f"normalising axis {config['axis']}; supported: the channel axis (-1)")
    arrays = list(layer.get_weights())
    channels = value.shape[-1]
    gamma = arrays.pop(0) if config.get("scale", True) else np.ones(channels, np.float32)
    beta = arrays.pop(0) if config.get("center", True) else np.zeros(channels, np.float32)
    mean, variance = arrays
    momentum = 1.0 - float(config.get("momentum", 0.99))
    if not 0.0 < momentum <= 1.0:
        raise ImportRefused(f"momentum {config.get('momentum')}: its running statistics never change; supported: below 1")
    weights = {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": variance}
    weights = {key: keras_modern.per_feature(value, array) for key, array in weights.items()}
    args = {"eps": decimal(float(config["epsilon"])), "momentum": decimal(momentum)}
    return r.add(layer.name, BatchNorm.kind, args, inputs, value.shape, value.perm, weights)


def _affine_from(r: Reader, layer: Any, inputs: list[Value], scale: Any, shift: Any) -> Value:
    value = inputs[0]
    channels = value.shape[-1]
    scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (channels,))
    shift = np.broadcast_to(np.asarray(shift, np.float32).reshape(-1), (channels,))
    weights = {"weight": keras_modern.per_feature(value, scale.copy()), "bias": keras_modern.per_feature(value, shift.copy())}
    return r.add(layer.name, Affine.kind, {}, inputs, value.shape, value.perm, weights)


def _rescaling(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """y = x * scale + offset, scalars or one per channel: an affine layer."""
    return _affine_from(r, layer, inputs, config["scale"], config["offset"])


def _normalization(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """(x - mean) / max(sqrt(variance), epsilon) per channel: an affine layer."""
    if config.get("invert"):
        raise ImportRefused("invert=True (denormalising); supported: normalising")
    axis = config.get("axis", -1)
    if axis not in (-1, (-1,), [-1], len(inputs[0].shape), (len(inputs[0].shape),), [len(inputs[0].shape)]):
        raise ImportRefused(f"normalising axis {axis}; supported: the channel axis (-1)")
    mean, variance = (np.asarray(a, np.float64).reshape(-1) for a in (layer.mean, layer.variance))  # given or adapted
    deviation = np.maximum(np.sqrt(variance), keras.config.epsilon())
    return _affine_from(r, layer, inputs, 1.0 / deviation, -mean / deviation)


def _activation_layer(kind: str, args: dict[str, Any] | None = None) -> Converter:
    def convert(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
        return r.add(layer.name, kind, dict(args or {}), inputs, inputs[0].shape, inputs[0].perm)

    return convert


def _activation(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    arg = _activation_arg(config["activation"])
    if arg is None:
        return inputs[0]  # linear: nothing to compute
    kind, args = (arg, {}) if isinstance(arg, str) else next(iter(arg.items()))
    return _activation_layer(kind, args)(r, layer, config, inputs)


def _relu(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    top, slope, threshold = config.get("max_value"), float(config.get("negative_slope", 0.0)), float(config.get("threshold", 0.0))
    if threshold == 0.0 and slope == 0.0 and top in (None, 6, 6.0):
        return _activation_layer(ReLU.kind if top is None else ReLU6.kind)(r, layer, config, inputs)
    if threshold == 0.0 and top is None:
        return _activation_layer(LeakyReLU.kind, {"negative_slope": decimal(slope)})(r, layer, config, inputs)
    raise ImportRefused(f"ReLU with max_value={top}, negative_slope={slope}, threshold={threshold}; "
                        "supported: relu, relu6 (max_value 6), leaky_relu (negative_slope)")


def _leaky_relu(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    slope = decimal(float(config.get("negative_slope", config.get("alpha", 0.3))))
    return _activation_layer(LeakyReLU.kind, {"negative_slope": slope})(r, layer, config, inputs)


def _elu(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    return _activation_layer(ELU.kind, {"alpha": decimal(float(config.get("alpha", 1.0)))})(r, layer, config, inputs)


def _softmax(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    axis = config.get("axis", -1)
    if axis not in (-1, len(inputs[0].shape), [-1], (-1,)):
        raise ImportRefused(f"softmax over axis {axis}; supported: the channel axis (-1)")
    return _activation_layer(Softmax.kind)(r, layer, config, inputs)


def _prelu(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    (alpha,) = layer.get_weights()
    value = inputs[0]
    per_channel = alpha.reshape(-1) if alpha.size == value.shape[-1] and alpha.shape[:-1] == (1,) * (alpha.ndim - 1) else None
    if alpha.size == 1:
        args, weight = {"channelwise": False}, alpha.reshape(1)
    elif per_channel is not None and value.is_map:
        args, weight = {"channelwise": True}, per_channel
    else:
        raise ImportRefused(f"PReLU slopes of shape {alpha.shape}; supported: one, or one per channel (shared_axes=[1, 2])")
    return r.add(layer.name, PReLU.kind, args, inputs, value.shape, value.perm, {"weight": weight})


def _zero_padding(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    _map_of(inputs[0], "padding")
    (top, bottom), (left, right) = config["padding"]
    return r.add(layer.name, ZeroPadding2d.kind, {"padding": [[int(top), int(bottom)], [int(left), int(right)]]},
                 inputs, _output_shape(layer, inputs[0]))


def _add(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    if len({None if v.perm is None else v.perm.tobytes() for v in inputs}) > 1:
        raise ImportRefused("adds vectors flattened in different orders; flatten the sum instead")
    return r.add(layer.name, Add.kind, {}, inputs, inputs[0].shape, inputs[0].perm)


def _concatenate(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    rank = len(inputs[0].shape)
    if config.get("axis", -1) not in (-1, rank):
        raise ImportRefused(f"concatenating along axis {config['axis']}; supported: the channel axis (-1)")
    shape = (*inputs[0].shape[:-1], sum(v.shape[-1] for v in inputs))
    perm = None
    if rank == 1 and any(v.perm is not None for v in inputs):
        offsets = np.cumsum([0] + [v.shape[0] for v in inputs[:-1]])
        perm = np.concatenate([o + (v.perm if v.perm is not None else np.arange(v.shape[0])) for o, v in zip(offsets, inputs, strict=True)])
    return r.add(layer.name, Concat.kind, {}, inputs, shape, perm)


def _dropout(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """Dropout; of whole samples (``noise_shape`` (None, 1, 1, 1), EfficientNet's stochastic depth), drop_path."""
    noise = config.get("noise_shape")
    whole = noise is not None and len(noise) == len(inputs[0].shape) + 1 and all(d == 1 for d in noise[1:])
    kind = DropPath.kind if whole else Dropout.kind
    return r.add(layer.name, kind, {"rate": decimal(float(config["rate"]))}, inputs, inputs[0].shape, inputs[0].perm)


CONVERTERS: dict[str, Converter] = {
    "Conv2D": _conv,
    "DepthwiseConv2D": _depthwise_conv,
    "SeparableConv2D": _separable_conv,
    "Dense": _dense,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Permute": _permute,
    "MaxPooling2D": _pool(MaxPool2d.kind),
    "AveragePooling2D": _pool(AvgPool2d.kind),
    "GlobalAveragePooling2D": _global_pool(GlobalAvgPool2d.kind),
    "GlobalMaxPooling2D": _global_pool(GlobalMaxPool2d.kind),
    "BatchNormalization": _batchnorm,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Activation": _activation,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "Softmax": _softmax,
    "PReLU": _prelu,
    "ZeroPadding2D": _zero_padding,
    "Add": _add,
    "Concatenate": _concatenate,
    "Dropout": _dropout,
    **keras_modern.CONVERTERS,
    "Conv2DTranspose": keras_modern.conv_transpose(_activation_arg),
}


# ---- the whole model -------------------------------------------------------------------------


def _input_value(model: Any) -> Value:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ImportRefused(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; a spec has one of each")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        shown = ", ".join("?" if d is None else str(d) for d in shape)
        raise ImportRefused(f"the input needs a fixed height x width x channels shape, got ({shown})")
    return Value(INPUT, tuple(int(d) for d in shape))


@dataclasses.dataclass(frozen=True)
class Imported:
    text: str  # the spec
    weights: dict[str, np.ndarray]  # canonical
    channels_first: bool  # the Keras model takes the canonical layout as it is
    output_perm: np.ndarray | None  # the spec position of each Keras output position (None: the same)


def import_keras(model: Any, name: str) -> Imported:
    """The spec and canonical weights of a loaded Keras model."""
    source = _input_value(model)
    reader = Reader()
    output = reader.model(model, [source])
    keras_modern.fuse_hard_sigmoid(reader.layers, reader.weights, reader.frozen)
    if not reader.layers or output.layer != reader.layers[-1]["name"]:
        raise ImportRefused(f"the model's output comes from '{output.layer}', not from its last layer; a spec ends at its output")
    description = f"imported from Keras ({type(model).__name__} '{model.name}') by cnnspec import"
    shape = list(source.shape) if reader.channels_first else source.canonical_shape()
    train = {"freeze": reader.frozen} if reader.frozen else None
    return Imported(spec_text(name, description, shape, reader.layers, train), reader.weights, reader.channels_first, output.perm)


def predict(model: Any, imported: Imported, x: np.ndarray) -> np.ndarray:
    """The Keras model's output for canonical input ``x`` (N x C x H x W), canonical."""
    out = np.asarray(model(x if imported.channels_first else x.transpose(0, 2, 3, 1), training=False))
    if out.ndim == 4:
        return out.transpose(0, 3, 1, 2)
    if imported.output_perm is not None:
        canonical = np.empty_like(out)
        canonical[:, imported.output_perm] = out
        return canonical
    return out
