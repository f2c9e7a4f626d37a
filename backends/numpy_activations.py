"""Activations on NumPy (or CuPy) arrays, forward and backward: element-wise ones as a
(function, derivative) pair, softmax over channels, PReLU with its slope's gradient, and
a conv2d or dense fused with its activation argument."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnspec.backends.numpy_ops import Array, Op, xp_of


class Elementwise(Op):
    """f(x) and f'(x) as two functions of (x, y): most derivatives are cheapest from y."""

    def __init__(self, function: Any, derivative: Any) -> None:
        super().__init__()
        self.function, self.derivative = function, derivative

    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._x = inputs[0]
        self._y = self.function(inputs[0])
        return self._y

    def backward(self, grad: Array) -> list[Array]:
        return [grad * self.derivative(self._x, self._y)]


def _sigmoid(x: Array) -> Array:
    xp = xp_of(x)
    return 0.5 * (xp.tanh(0.5 * x) + 1)  # stable for large |x|


# (function, derivative from x and y) pairs; the layer table picks them by class.
RECTIFIER = (lambda x: x * (x > 0), lambda x, y: (x > 0).astype(x.dtype))
RECTIFIER6 = (lambda x: xp_of(x).clip(x, 0, 6), lambda x, y: ((x > 0) & (x < 6)).astype(x.dtype))
LOGISTIC = (_sigmoid, lambda x, y: y * (1 - y))
HYPERBOLIC_TANGENT = (lambda x: xp_of(x).tanh(x), lambda x, y: 1 - y * y)


def _silu(x: Array) -> Array:
    return x * _sigmoid(x)


def _silu_derivative(x: Array, y: Array) -> Array:
    s = _sigmoid(x)
    return s * (1 + x * (1 - s))


def _hard_swish_derivative(x: Array, y: Array) -> Array:
    xp = xp_of(x)
    return xp.where(x < -3, 0.0, xp.where(x <= 3, x / 3 + 0.5, 1.0)).astype(x.dtype)  # PyTorch's, at the kinks too


SWISH = (_silu, _silu_derivative)
HARD_SWISH = (lambda x: x * xp_of(x).clip(x + 3, 0, 6) / 6, _hard_swish_derivative)


def hard_sigmoid(alpha: float, beta: float) -> Elementwise:
    def derivative(x: Array, y: Array) -> Array:
        inside = (alpha * x + beta > 0) & (alpha * x + beta < 1)
        return (alpha * inside).astype(x.dtype)

    return Elementwise(lambda x: xp_of(x).clip(alpha * x + beta, 0, 1), derivative)


def _erf(x: Array) -> Array:
    if xp_of(x) is not np:
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    from scipy.special import erf

    return erf(x).astype(x.dtype)


_TANH_SCALE = math.sqrt(2 / math.pi)


def gelu(approximate: str) -> Elementwise:
    """The erf form, x * Phi(x); or PyTorch's tanh approximation."""
    if approximate != "none":
        def tanh_form(x: Array) -> tuple[Array, Array]:
            t = xp_of(x).tanh(_TANH_SCALE * (x + 0.044715 * x**3))
            return t, 0.5 * (1 + t)

        def tanh_derivative(x: Array, y: Array) -> Array:
            t, half = tanh_form(x)
            return half + 0.5 * x * (1 - t * t) * _TANH_SCALE * (1 + 3 * 0.044715 * x * x)

        return Elementwise(lambda x: x * tanh_form(x)[1], tanh_derivative)

    def erf_derivative(x: Array, y: Array) -> Array:
        density = xp_of(x).exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return 0.5 * (1 + _erf(x / math.sqrt(2))) + x * density

    return Elementwise(lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), erf_derivative)


def leaky_relu(slope: float) -> Elementwise:
    return Elementwise(lambda x: xp_of(x).where(x > 0, x, slope * x), lambda x, y: xp_of(x).where(x > 0, 1.0, slope).astype(x.dtype))


def elu(alpha: float) -> Elementwise:
    def forward(x: Array) -> Array:
        xp = xp_of(x)
        return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0)))

    return Elementwise(forward, lambda x, y: xp_of(x).where(x > 0, 1.0, y + alpha).astype(x.dtype))


class Softmax(Op):
    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        xp = xp_of(x)
        e = xp.exp(x - x.max(axis=1, keepdims=True))
        self._y = e / e.sum(axis=1, keepdims=True)
        return self._y

    def backward(self, grad: Array) -> list[Array]:
        y = self._y
        return [y * (grad - (grad * y).sum(axis=1, keepdims=True))]


class PReLU(Op):
    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        self._x = x
        slope = self._slope(x)
        return xp_of(x).where(x > 0, x, slope * x)

    def _slope(self, x: Array) -> Array:
        weight = self.weights["weight"]
        return weight.reshape(1, -1, *([1] * (x.ndim - 2))) if weight.size > 1 else weight.reshape(())

    def backward(self, grad: Array) -> list[Array]:
        x = self._x
        negative = x <= 0
        axes = tuple(i for i in range(x.ndim) if i != 1) if self.weights["weight"].size > 1 else None
        self.grads["weight"] = (grad * x * negative).sum(axis=axes).reshape(self.weights["weight"].shape)
        return [xp_of(x).where(negative, grad * self._slope(x), grad)]


class WithActivation(Op):
    """A conv2d or dense and its activation argument, as one op with both weights."""

    def __init__(self, inner: Op, activation: Op) -> None:
        super().__init__()
        self.inner, self.activation = inner, activation

    def bind(self, weights: dict[str, Array]) -> None:
        self.inner.weights = {k: v for k, v in weights.items() if not k.startswith("activation.")}
        self.activation.weights = {k.removeprefix("activation."): v for k, v in weights.items() if k.startswith("activation.")}
        self.weights = weights

    def forward(self, inputs: list[Array], training: bool) -> Array:
        return self.activation.forward([self.inner.forward(inputs, training)], training)

    def backward(self, grad: Array) -> list[Array]:
        self.inner.needs_input_grad = self.needs_input_grad
        grads = self.inner.backward(self.activation.backward(grad)[0])
        self.grads = dict(self.inner.grads) | {f"activation.{k}": v for k, v in self.activation.grads.items()}
        return grads
