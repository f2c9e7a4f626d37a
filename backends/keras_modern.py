"""Keras import of what the networks after 2016 add: ``Multiply`` (squeeze-and-excitation's
gate), ``LayerNormalization``, ConvNeXt's ``LayerScale`` and ``StochasticDepth``, the
decoders' ``Conv2DTranspose`` and ``UpSampling2D``, and the operation nodes Keras 3
writes for arithmetic on tensors (``x + 3.0``, ``x * (1 / 6)``: MobileNetV3's hard
sigmoid, as the Keras applications build it, which ``fuse_hard_sigmoid`` reads back as
one hard_sigmoid layer).

The converters take ``keras_import``'s reader and values; they are joined to its table
there, so this module never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnnspec.backends.import_common import ImportRefused, decimal, pair
from cnnspec.layers.activation import HardSigmoid, ReLU6
from cnnspec.layers.conv import ConvTranspose2d
from cnnspec.layers.core import DropPath
from cnnspec.layers.merge import Add, Multiply
from cnnspec.layers.norm import Affine, LayerNorm
from cnnspec.layers.pool import Upsample2d

Reader = Any  # keras_import.Reader
Value = Any  # keras_import.Value


def _same_order(inputs: list[Value], what: str) -> np.ndarray | None:
    if len({None if v.perm is None else v.perm.tobytes() for v in inputs}) > 1:
        raise ImportRefused(f"{what} vectors flattened in different orders")
    return inputs[0].perm


def _multiply(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    if len(inputs) != 2:
        raise ImportRefused(f"Multiply of {len(inputs)} tensors; supported: two")
    first, second = (v.shape for v in inputs)
    gate = len(first) == len(second) == 3 and (first[:2] == (1, 1) or second[:2] == (1, 1)) and first[2] == second[2]
    if first != second and not gate:
        raise ImportRefused(f"Multiply of {first} by {second}; supported: equal shapes, or a map by a 1 x 1 x C gate")
    shape = second if first[:2] == (1, 1) else first
    return r.add(layer.name, Multiply.kind, {}, inputs, shape, _same_order(inputs, "multiplies"))


def _channels_of(value: Value) -> int:
    return int(value.shape[-1])


def per_feature(value: Value, array: np.ndarray) -> np.ndarray:
    """A per-channel array of Keras' order in canonical order (a flattened vector's perm)."""
    if value.perm is None:
        return array
    out = np.empty_like(array)
    out[value.perm] = array
    return out


def _layer_norm(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    value = inputs[0]
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, len(value.shape)):
        raise ImportRefused(f"normalising over axis {config.get('axis')}; supported: the channel axis (-1)")
    if config.get("rms_scaling"):
        raise ImportRefused("rms_scaling (RMS normalisation); supported: layer normalisation")
    channels = _channels_of(value)
    gamma = np.asarray(layer.gamma) if config.get("scale", True) else np.ones(channels, np.float32)
    beta = np.asarray(layer.beta) if config.get("center", True) else np.zeros(channels, np.float32)
    eps = float(config.get("epsilon", 1e-3))
    args = {} if np.isclose(eps, 1e-5, rtol=1e-6) else {"eps": decimal(eps)}
    weights = {"weight": per_feature(value, gamma), "bias": per_feature(value, beta)}
    return r.add(layer.name, LayerNorm.kind, args, inputs, value.shape, value.perm, weights)


def _layer_scale(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """ConvNeXt's LayerScale: a learned scale per channel, starting at ``init_values``."""
    value = inputs[0]
    (gamma,) = layer.get_weights()
    if gamma.shape != (_channels_of(value),):
        raise ImportRefused(f"a scale of shape {gamma.shape} on {value.shape}; supported: one per channel")
    args = {"bias": False, "init": decimal(float(config.get("init_values", 1.0)))}
    return r.add(layer.name, Affine.kind, args, inputs, value.shape, value.perm, {"weight": per_feature(value, gamma)})


def _stochastic_depth(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """ConvNeXt's StochasticDepth (keras.applications.convnext): whole samples of a residual
    branch dropped in training."""
    value = inputs[0]
    return r.add(layer.name, DropPath.kind, {"rate": decimal(float(config["drop_path_rate"]))}, inputs, value.shape, value.perm)


def _upsampling(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
    """UpSampling2D: nearest, or bilinear (Keras resizes with half-pixel centres: PyTorch's
    align_corners false)."""
    value, mode = inputs[0], config.get("interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise ImportRefused(f"interpolation {mode!r}; supported: 'nearest', 'bilinear'")
    size = [int(v) for v in config["size"]]
    shape = (value.shape[0] * size[0], value.shape[1] * size[1], value.shape[2])
    args: dict[str, Any] = {"scale": pair(size)} | ({"mode": mode} if mode != "nearest" else {})
    return r.add(layer.name, Upsample2d.kind, args, inputs, shape)


def conv_transpose(activation: Callable[[Any], Any]) -> Callable[[Reader, Any, dict[str, Any], list[Value]], Value]:
    """Conv2DTranspose, its 'same' and 'valid' as the spec says them; ``activation`` reads
    its activation (keras_import's rule), which follows as a layer of its own."""

    def convert(r: Reader, layer: Any, config: dict[str, Any], inputs: list[Value]) -> Value:
        if any(int(d) != 1 for d in config.get("dilation_rate", (1, 1))):
            raise ImportRefused(f"dilation_rate {config['dilation_rate']}; supported: 1")
        kernel, *bias = layer.get_weights()  # (kh, kw, out, in)
        args: dict[str, Any] = {"filters": int(config["filters"]), "kernel": pair(config["kernel_size"]),
                                "stride": pair(config["strides"]), "padding": config["padding"]}
        if config.get("output_padding") is not None:
            args["output_padding"] = pair(config["output_padding"])
        if not config.get("use_bias", True):
            args["bias"] = False
        shape = tuple(int(d) for d in layer.compute_output_shape((1, *inputs[0].shape))[1:])
        value = r.add(layer.name, ConvTranspose2d.kind, args, inputs, shape,
                      weights={"weight": kernel.transpose(3, 2, 0, 1)} | ({"bias": bias[0]} if bias else {}))
        then = activation(config.get("activation", "linear"))
        if then is None:
            return value
        kind, then_args = (then, {}) if isinstance(then, str) else next(iter(then.items()))
        return r.add(f"{layer.name}.activation", kind, dict(then_args), [value], shape)

    return convert


CONVERTERS: dict[str, Callable[[Reader, Any, dict[str, Any], list[Value]], Value]] = {
    "Multiply": _multiply,
    "LayerNormalization": _layer_norm,
    "LayerScale": _layer_scale,
    "StochasticDepth": _stochastic_depth,
    "UpSampling2D": _upsampling,
}


# ---- operation nodes: Keras 3's arithmetic on tensors in a functional model ----------------

_SCALAR: dict[str, Callable[[float, bool], tuple[float, float]]] = {  # (scale, shift) of x OP c, or c OP x
    "Add": lambda c, first: (1.0, c),
    "Subtract": lambda c, first: (1.0, -c) if first else (-1.0, c),
    "Multiply": lambda c, first: (c, 0.0),
    "Divide": lambda c, first: (1.0 / c, 0.0) if first else (np.nan, np.nan),
    "TrueDivide": lambda c, first: (1.0 / c, 0.0) if first else (np.nan, np.nan),
}


def operation(r: Reader, entry: dict[str, Any], inputs: list[Value], constants: list[Any]) -> Value:
    """An operation node: two tensors added or multiplied, or one tensor and a number (an
    affine layer with that scale and shift on every channel)."""
    op, name = entry["class_name"], entry["name"]
    if op in ("Add", "Multiply") and len(inputs) == 2 and not constants:
        kind = Add.kind if op == "Add" else Multiply.kind
        return r.add(name, kind, {}, inputs, inputs[0].shape if op == "Add" else max((v.shape for v in inputs), key=np.prod),
                     _same_order(inputs, "combines"))
    numbers = [c for c in constants if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if op not in _SCALAR or len(inputs) != 1 or len(numbers) != 1 or len(constants) != 1:
        raise ImportRefused(f"operation '{name}' (Keras ops.{op}) with {len(inputs)} tensors and {constants or 'no'} "
                            "constants; supported: add, subtract, multiply or divide of a tensor and a number, "
                            "add or multiply of two tensors")
    first = entry["inbound_nodes"][0]["args"][0] is not constants[0]
    scale, shift = _SCALAR[op](float(numbers[0]), first)
    if np.isnan(scale):
        raise ImportRefused(f"operation '{name}': a number divided by a tensor has no cnnspec kind")
    value, channels = inputs[0], _channels_of(inputs[0])
    weights = {"weight": np.full(channels, scale, np.float32)}
    args: dict[str, Any] = {}
    if shift:
        weights["bias"] = np.full(channels, shift, np.float32)
    else:
        args["bias"] = False
    r.frozen_source = True  # a constant of the model, not a weight Keras trains
    return r.add(name, Affine.kind, args, inputs, value.shape, value.perm, weights)


def _constant_affine(layer: dict[str, Any], weights: dict[str, np.ndarray], scale: float, shift: float | None) -> bool:
    if layer["kind"] != Affine.kind:
        return False
    weight, bias = weights.get(f"{layer['name']}.weight"), weights.get(f"{layer['name']}.bias")
    if weight is None or not np.allclose(weight, scale, rtol=1e-6):
        return False
    return bias is None if shift is None else bias is not None and bool(np.allclose(bias, shift, rtol=1e-6))


def fuse_hard_sigmoid(layers: list[dict[str, Any]], weights: dict[str, np.ndarray], frozen: list[str]) -> None:
    """``x + 3``, ReLU6, ``* (1/6)`` (three layers, as Keras 3's MobileNetV3 computes
    relu6(x + 3) / 6) become one hard_sigmoid layer, in place."""
    readers: dict[str, int] = {}
    for layer in layers:
        for source in layer["inputs"]:
            readers[source] = readers.get(source, 0) + 1
    by_name = {layer["name"]: layer for layer in layers}
    for last in list(layers):
        if not _constant_affine(last, weights, 1 / 6, None) or len(last["inputs"]) != 1:
            continue
        clip = by_name.get(last["inputs"][0])
        if clip is None or clip["kind"] != ReLU6.kind or readers.get(clip["name"]) != 1:
            continue
        shift = by_name.get(clip["inputs"][0])
        if shift is None or not _constant_affine(shift, weights, 1.0, 3.0) or readers.get(shift["name"]) != 1:
            continue
        last.update(kind=HardSigmoid.kind, args={}, inputs=shift["inputs"])
        for gone in (shift, clip):
            layers.remove(gone)
        for name in (shift["name"], last["name"]):
            weights.pop(f"{name}.weight", None)
            weights.pop(f"{name}.bias", None)
            if name in frozen:
                frozen.remove(name)
