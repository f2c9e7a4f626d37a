"""Transposed convolution on NumPy (or CuPy) arrays, forward and backward, as what it is:
a stride-1 convolution of the input spread out by the stride (zeros between pixels),
padded by kernel - 1 less the rows the layer crops at each side (``ConvTranspose2d.crops``), with
the kernel flipped and its input and output channels swapped. The convolution is
``numpy_ops.Conv2d``; the backward keeps every stride-th pixel of its input gradient."""

from __future__ import annotations

from typing import Any

from cnnspec.backends.numpy_ops import Array, Conv2d, Op, xp_of


def conv_kernel(weight: Array, groups: int) -> Array:
    """I x O/g x KH x KW (a transposed convolution's) as O x I/g x KH x KW, flipped."""
    channels, per_group, kh, kw = weight.shape
    grouped = weight.reshape(groups, channels // groups, per_group, kh, kw).transpose(0, 2, 1, 3, 4)
    return grouped.reshape(groups * per_group, channels // groups, kh, kw)[:, :, ::-1, ::-1]


def transposed_kernel(grad: Array, groups: int) -> Array:
    """The inverse of ``conv_kernel``, for the weight's gradient."""
    filters, per_group, kh, kw = grad.shape
    grouped = grad[:, :, ::-1, ::-1].reshape(groups, filters // groups, per_group, kh, kw).transpose(0, 2, 1, 3, 4)
    return grouped.reshape(groups * per_group, filters // groups, kh, kw)


class ConvTranspose2d(Op):
    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], crops: tuple[tuple[int, int], tuple[int, int]],
                 groups: int, out: tuple[int, int], bias: bool) -> None:
        super().__init__()
        (kh, kw), ((top, bottom), (left, right)) = kernel, crops
        self.stride, self.groups, self.bias = stride, groups, bias
        around = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
        self.inner = Conv2d(around, kernel, (1, 1), (1, 1), groups, out, bias)

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        n, c, h, w = x.shape
        sh, sw = self.stride
        spread = x if self.stride == (1, 1) else xp_of(x).zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), dtype=x.dtype)
        if self.stride != (1, 1):
            spread[:, :, ::sh, ::sw] = x
        self.inner.weights = {"weight": xp_of(x).ascontiguousarray(conv_kernel(self.weights["weight"], self.groups))}
        if self.bias:
            self.inner.weights["bias"] = self.weights["bias"]
        self.inner.needs_input_grad = self.needs_input_grad
        return self.inner.forward([spread], training)

    def backward(self, grad: Array) -> list[Array]:
        (spread,) = self.inner.backward(grad)
        self.grads["weight"] = transposed_kernel(self.inner.grads["weight"], self.groups)
        if self.bias:
            self.grads["bias"] = self.inner.grads["bias"]
        if spread is None:
            return [None]
        return [spread[:, :, :: self.stride[0], :: self.stride[1]]]


def lower(layer: Any, shapes: list[tuple[int, ...]], out: tuple[int, ...], rng: Any) -> ConvTranspose2d:
    return ConvTranspose2d(layer.kernel, layer.stride, layer.crops(*shapes[0][1:]), layer.groups, (out[1], out[2]), layer.bias)
