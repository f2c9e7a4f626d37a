"""Forward and backward of every layer kind, on NumPy (or CuPy) arrays.

Each op is a small class: ``forward`` keeps what ``backward`` needs; ``backward`` takes
the gradient of the output and returns the gradients of the inputs, and fills
``self.grads`` for the op's weights. Layout: activations N x C x H x W, weights as in
checkpoints. Convolution is im2col (a strided view, one copy) and a BLAS matrix product;
the backward loops only over kernel positions, never over pixels or batch items.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray


def xp_of(array: Array) -> Any:
    """The array module (numpy or cupy) an array belongs to."""
    module = type(array).__module__
    if module.startswith("cupy"):
        import cupy

        return cupy
    return np


def windows(x: Array, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out: tuple[int, int]) -> Array:
    """A view (N, C, Ho, Wo, KH, KW) of every window of a padded (N, C, H, W) array."""
    xp = xp_of(x)
    n, c = x.shape[:2]
    sn, sc, sh, sw = x.strides
    shape = (n, c, out[0], out[1], kernel[0], kernel[1])
    strides = (sn, sc, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1])
    return xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)


def pad_to(
    x: Array, padding: tuple[tuple[int, int], tuple[int, int]], kernel: tuple[int, int], stride: tuple[int, int],
    dilation: tuple[int, int], out: tuple[int, int], value: float = 0.0,
) -> Array:
    """Pad (N, C, H, W) by ``padding``, plus at the bottom/right whatever the windows of
    an ``out``-sized output still need (ceil rounding)."""
    xp = xp_of(x)
    (top, bottom), (left, right) = padding
    h, w = x.shape[2:]
    need_h = (out[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (out[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    bottom = max(bottom, need_h - h - top)
    right = max(right, need_w - w - left)
    if not (top or bottom or left or right):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def scatter_windows(
    grad_windows: Array, padded_shape: tuple[int, ...], stride: tuple[int, int], dilation: tuple[int, int]
) -> Array:
    """The adjoint of ``windows``: add (N, C, Ho, Wo, KH, KW) back into a padded array."""
    xp = xp_of(grad_windows)
    out = xp.zeros(padded_shape, dtype=grad_windows.dtype)
    n, c, ho, wo, kh, kw = grad_windows.shape
    if stride == (kh, kw) and dilation == (1, 1):  # windows tile without overlap: one transpose
        out[:, :, : ho * kh, : wo * kw] = grad_windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho * kh, wo * kw)
        return out
    for i in range(kh):  # kernel positions only
        for j in range(kw):
            rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (ho - 1) + 1, stride[0])
            cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (wo - 1) + 1, stride[1])
            out[:, :, rows, cols] += grad_windows[:, :, :, :, i, j]
    return out


def crop(x: Array, padding: tuple[tuple[int, int], tuple[int, int]], size: tuple[int, int]) -> Array:
    (top, _), (left, _) = padding
    return x[:, :, top : top + size[0], left : left + size[1]]


# ---- ops -------------------------------------------------------------------------------------


class Op(abc.ABC):
    """Base of the ops: weights by local name, and their gradients after backward."""

    needs_input_grad = True  # False for an op reading only the network input: skip that work

    def __init__(self) -> None:
        self._saved: Any = None  # what forward keeps for backward
        self.weights: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.state: dict[str, Array] = {}  # non-trainable (batchnorm running statistics)

    @abc.abstractmethod
    def forward(self, inputs: list[Array], training: bool) -> Array:
        """The output; keeps what backward needs."""

    @abc.abstractmethod
    def backward(self, grad: Array) -> list[Array]:
        """Gradients of the inputs; fills self.grads for the weights."""

    def bind(self, weights: dict[str, Array]) -> None:
        self.weights = weights


class Conv2d(Op):
    def __init__(self, padding: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                 groups: int, out: tuple[int, int], bias: bool) -> None:
        super().__init__()
        self.padding, self.kernel, self.stride, self.dilation = padding, kernel, stride, dilation
        self.groups, self.out, self.bias = groups, out, bias

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]  # (N, C, H, W)
        padded = pad_to(x, self.padding, self.kernel, self.stride, self.dilation, self.out)
        out = self._forward_nhwc(x, padded) if self.groups == 1 else self._forward_grouped(x, padded)
        if self.bias:
            out += self.weights["bias"][None, :, None, None]
        return out

    # groups == 1: channels-last columns, so each window row copies C contiguous floats
    def _forward_nhwc(self, x: Array, padded: Array) -> Array:
        xp = xp_of(x)
        n, c = x.shape[:2]
        ho, wo = self.out
        kh, kw = self.kernel
        weight = self.weights["weight"]  # (F, C, KH, KW)
        f = weight.shape[0]
        nhwc = xp.ascontiguousarray(padded.transpose(0, 2, 3, 1))  # (N, Hp, Wp, C)
        sn, sh, sw, sc = nhwc.strides
        view = xp.lib.stride_tricks.as_strided(
            nhwc, shape=(n, ho, wo, kh, kw, c),
            strides=(sn, sh * self.stride[0], sw * self.stride[1], sh * self.dilation[0], sw * self.dilation[1], sc),
        )
        cols = view.reshape(n * ho * wo, kh * kw * c)  # one copy, in runs of C
        kernels = weight.transpose(2, 3, 1, 0).reshape(kh * kw * c, f)  # (KH*KW*C, F)
        out = cols @ kernels  # (N*Ho*Wo, F)
        self._saved = (cols, x.shape, padded.shape)
        return out.reshape(n, ho, wo, f).transpose(0, 3, 1, 2)

    def _backward_nhwc(self, grad: Array) -> Array | None:
        xp = xp_of(grad)
        cols, x_shape, padded_shape = self._saved
        n, c, h, w = x_shape
        ho, wo = self.out
        kh, kw = self.kernel
        weight = self.weights["weight"]
        f = weight.shape[0]
        grad_mat = grad.transpose(0, 2, 3, 1).reshape(n * ho * wo, f)  # (N*Ho*Wo, F)
        self.grads["weight"] = (cols.T @ grad_mat).reshape(kh, kw, c, f).transpose(3, 2, 0, 1)
        if not self.needs_input_grad:
            return None
        grad_cols = (grad_mat @ weight.transpose(2, 3, 1, 0).reshape(kh * kw * c, f).T).reshape(n, ho, wo, kh, kw, c)
        grad_padded = xp.zeros((n, padded_shape[2], padded_shape[3], c), dtype=grad.dtype)
        for i in range(kh):  # kernel positions only
            for j in range(kw):
                rows = slice(i * self.dilation[0], i * self.dilation[0] + self.stride[0] * (ho - 1) + 1, self.stride[0])
                columns = slice(j * self.dilation[1], j * self.dilation[1] + self.stride[1] * (wo - 1) + 1, self.stride[1])
                grad_padded[:, rows, columns, :] += grad_cols[:, :, :, i, j, :]
        return crop(grad_padded.transpose(0, 3, 1, 2), self.padding, (h, w))

    # groups > 1: (groups, N*Ho*Wo, C/g*KH*KW) columns and a batched product
    def _forward_grouped(self, x: Array, padded: Array) -> Array:
        xp = xp_of(x)
        n, c = x.shape[:2]
        g = self.groups
        weight = self.weights["weight"]  # (F, C/g, KH, KW)
        f = weight.shape[0]
        view = windows(padded, self.kernel, self.stride, self.dilation, self.out)  # (N, C, Ho, Wo, KH, KW)
        ho, wo = self.out
        k = (c // g) * self.kernel[0] * self.kernel[1]
        cols = view.reshape(n, g, c // g, ho, wo, *self.kernel).transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, n * ho * wo, k)
        out = xp.matmul(cols, weight.reshape(g, f // g, k).transpose(0, 2, 1))  # (g, N*Ho*Wo, F/g)
        self._saved = (cols, x.shape, padded.shape)
        return out.reshape(g, n, ho, wo, f // g).transpose(1, 0, 4, 2, 3).reshape(n, f, ho, wo)

    def _backward_grouped(self, grad: Array) -> Array | None:
        xp = xp_of(grad)
        cols, x_shape, padded_shape = self._saved
        n, c, h, w = x_shape
        g = self.groups
        weight = self.weights["weight"]
        f = weight.shape[0]
        ho, wo = self.out
        k = cols.shape[2]
        grad_mat = grad.reshape(n, g, f // g, ho, wo).transpose(1, 0, 3, 4, 2).reshape(g, n * ho * wo, f // g)
        self.grads["weight"] = xp.matmul(cols.transpose(0, 2, 1), grad_mat).transpose(0, 2, 1).reshape(weight.shape)
        if not self.needs_input_grad:
            return None
        grad_cols = xp.matmul(grad_mat, weight.reshape(g, f // g, k))  # (g, N*Ho*Wo, K)
        grad_windows = grad_cols.reshape(g, n, ho, wo, c // g, *self.kernel).transpose(1, 0, 4, 2, 3, 5, 6)
        grad_padded = scatter_windows(grad_windows.reshape(n, c, ho, wo, *self.kernel), padded_shape, self.stride, self.dilation)
        return crop(grad_padded, self.padding, (h, w))

    def backward(self, grad: Array) -> list[Array]:
        if self.bias:
            self.grads["bias"] = grad.sum(axis=(0, 2, 3))
        grad_input = self._backward_nhwc(grad) if self.groups == 1 else self._backward_grouped(grad)
        self._saved = None
        return [grad_input]


class Pool2d(Op):
    def __init__(self, is_max: bool, padding: Any, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int],
                 count_include_pad: bool) -> None:
        super().__init__()
        self.is_max, self.padding, self.kernel, self.stride, self.out = is_max, padding, kernel, stride, out
        self.count_include_pad = count_include_pad

    def forward(self, inputs: list[Array], training: bool) -> Array:
        xp = xp_of(inputs[0])
        x = inputs[0]
        n, c, h, w = x.shape
        one = (1, 1)
        if self.is_max:
            padded = pad_to(x, self.padding, self.kernel, self.stride, one, self.out, value=-np.inf)
            view = windows(padded, self.kernel, self.stride, one, self.out).reshape(n, c, *self.out, -1)
            index = view.argmax(axis=-1)
            self._saved = (index, x.shape, padded.shape)
            return xp.take_along_axis(view, index[..., None], axis=-1)[..., 0]
        padded = pad_to(x, self.padding, self.kernel, self.stride, one, self.out)
        sums = windows(padded, self.kernel, self.stride, one, self.out).sum(axis=(-2, -1))
        counts = self._counts(xp, x.dtype, (h, w), padded.shape)
        self._saved = (counts, x.shape, padded.shape)
        return sums / counts

    def _counts(self, xp: Any, dtype: Any, size: tuple[int, int], padded_shape: tuple[int, ...]) -> Array:
        """Per output, how many pixels its window averages over (PyTorch's divisor:
        padding counts or not, the overhang of ceil rounding never does)."""
        (top, bottom), (left, right) = self.padding
        mask = xp.zeros((1, 1, *padded_shape[2:]), dtype=dtype)
        if self.count_include_pad:
            mask[:, :, : top + size[0] + bottom, : left + size[1] + right] = 1
        else:
            mask[:, :, top : top + size[0], left : left + size[1]] = 1
        return windows(mask, self.kernel, self.stride, (1, 1), self.out).sum(axis=(-2, -1))

    def backward(self, grad: Array) -> list[Array]:
        xp = xp_of(grad)
        saved, x_shape, padded_shape = self._saved
        kh, kw = self.kernel
        if self.is_max:
            positions = xp.arange(kh * kw).reshape(kh, kw)
            grad_windows = (saved[..., None, None] == positions) * grad[..., None, None]
        else:
            grad_windows = xp.broadcast_to((grad / saved)[..., None, None], (*grad.shape, kh, kw))
        grad_padded = scatter_windows(grad_windows, padded_shape, self.stride, (1, 1))
        self._saved = None
        return [crop(grad_padded, self.padding, x_shape[2:])]


class GlobalPool(Op):
    def __init__(self, is_max: bool, keepdims: bool) -> None:
        super().__init__()
        self.is_max, self.keepdims = is_max, keepdims

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        self._x = x
        out = x.max(axis=(2, 3), keepdims=True) if self.is_max else x.mean(axis=(2, 3), keepdims=True)
        self._out = out
        return out if self.keepdims else out[:, :, 0, 0]

    def backward(self, grad: Array) -> list[Array]:
        grad = grad.reshape(*grad.shape[:2], 1, 1)
        x = self._x
        if self.is_max:
            hits = x == self._out
            return [hits * (grad / hits.sum(axis=(2, 3), keepdims=True))]
        return [xp_of(x).broadcast_to(grad / (x.shape[2] * x.shape[3]), x.shape).copy()]


class Dense(Op):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._x = inputs[0]  # (N, in)
        out = inputs[0] @ self.weights["weight"].T  # (N, units)
        return out + self.weights["bias"] if self.bias else out

    def backward(self, grad: Array) -> list[Array]:
        self.grads["weight"] = grad.T @ self._x
        if self.bias:
            self.grads["bias"] = grad.sum(axis=0)
        return [grad @ self.weights["weight"]]


class Flatten(Op):
    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._shape = inputs[0].shape
        return inputs[0].reshape(len(inputs[0]), -1)

    def backward(self, grad: Array) -> list[Array]:
        return [grad.reshape(self._shape)]


class Dropout(Op):
    def __init__(self, rate: float, rng: Any) -> None:
        super().__init__()
        self.rate, self.rng = rate, rng

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        if not training or self.rate == 0:
            self._mask = None
            return x
        xp = xp_of(x)
        keep = xp.asarray(self.rng.random(x.shape) >= self.rate)
        self._mask = keep.astype(x.dtype) / (1 - self.rate)  # inverted dropout
        return x * self._mask

    def backward(self, grad: Array) -> list[Array]:
        return [grad if self._mask is None else grad * self._mask]


class DropPath(Dropout):
    """Dropout of whole samples: one draw per batch item."""

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        if not training or self.rate == 0:
            self._mask = None
            return x
        keep = xp_of(x).asarray(self.rng.random((x.shape[0], *([1] * (x.ndim - 1)))) >= self.rate)
        self._mask = keep.astype(x.dtype) / (1 - self.rate)
        return x * self._mask


class BatchNorm(Op):
    """PyTorch's semantics: normalise by the biased batch variance, keep the unbiased
    one in the running statistics, running = (1 - momentum) * running + momentum * batch."""

    def __init__(self, eps: float, momentum: float) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        if training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            count = x.size // x.shape[1]
            m = self.momentum
            self.state["running_mean"] *= 1 - m
            self.state["running_mean"] += m * mean
            self.state["running_var"] *= 1 - m
            self.state["running_var"] += m * var * (count / max(count - 1, 1))
        else:
            mean, var = self.state["running_mean"], self.state["running_var"]
        inv_std = 1.0 / xp_of(x).sqrt(var + self.eps)
        normalized = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self._saved = (normalized, inv_std, axes, shape, training)
        return normalized * self.weights["weight"].reshape(shape) + self.weights["bias"].reshape(shape)

    def backward(self, grad: Array) -> list[Array]:
        normalized, inv_std, axes, shape, training = self._saved
        self.grads["weight"] = (grad * normalized).sum(axis=axes)
        self.grads["bias"] = grad.sum(axis=axes)
        grad_norm = grad * self.weights["weight"].reshape(shape)
        if not training:
            return [grad_norm * inv_std.reshape(shape)]
        mean_grad = grad_norm.mean(axis=axes, keepdims=True)
        mean_grad_norm = (grad_norm * normalized).mean(axis=axes, keepdims=True)
        return [(grad_norm - mean_grad - normalized * mean_grad_norm) * inv_std.reshape(shape)]


class LayerNorm(Op):
    """Over axis 1 (the channels at each position, or a vector's features), then a scale
    and shift per channel."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def _per_channel(self, array: Array, ndim: int) -> Array:
        return array.reshape(1, -1, *([1] * (ndim - 2)))

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        centred = x - x.mean(axis=1, keepdims=True)
        self._inverse = 1 / xp_of(x).sqrt((centred * centred).mean(axis=1, keepdims=True) + self.eps)
        self._normal = centred * self._inverse
        return self._normal * self._per_channel(self.weights["weight"], x.ndim) + self._per_channel(self.weights["bias"], x.ndim)

    def backward(self, grad: Array) -> list[Array]:
        normal, axes = self._normal, tuple(i for i in range(grad.ndim) if i != 1)
        self.grads["weight"] = (grad * normal).sum(axis=axes)
        self.grads["bias"] = grad.sum(axis=axes)
        d_normal = grad * self._per_channel(self.weights["weight"], grad.ndim)
        mean_d = d_normal.mean(axis=1, keepdims=True)
        mean_dn = (d_normal * normal).mean(axis=1, keepdims=True)
        return [self._inverse * (d_normal - mean_d - normal * mean_dn)]


class Affine(Op):
    """y = weight[c] * x + bias[c] over the channel axis (axis 1) of a map or vector."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = self._x = inputs[0]
        shape = (1, -1, *([1] * (x.ndim - 2)))
        y = x * self.weights["weight"].reshape(shape)
        return y + self.weights["bias"].reshape(shape) if self.bias else y

    def backward(self, grad: Array) -> list[Array]:
        axes = tuple(i for i in range(grad.ndim) if i != 1)
        self.grads["weight"] = (grad * self._x).sum(axis=axes)
        if self.bias:
            self.grads["bias"] = grad.sum(axis=axes)
        return [grad * self.weights["weight"].reshape(1, -1, *([1] * (grad.ndim - 2)))]


class ChannelShuffle(Op):
    """Output channel i is input channel order[i]; the gradient goes back the same way."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.order = np.asarray(order)
        self.inverse = np.argsort(self.order)

    def forward(self, inputs: list[Array], training: bool) -> Array:
        return inputs[0][:, self.order]

    def backward(self, grad: Array) -> list[Array]:
        return [grad[:, self.inverse]]


def _channel_window_sum(x: Array, before: int, after: int) -> Array:
    """sum over channels c-before .. c+after (zero outside), by a cumulative sum."""
    xp = xp_of(x)
    padded = xp.pad(x, ((0, 0), (before + 1, after), (0, 0), (0, 0)))
    cumulative = xp.cumsum(padded, axis=1)
    return cumulative[:, before + after + 1 :] - cumulative[:, : -(before + after + 1) or None][:, : x.shape[1]]


class LRN(Op):
    """b_c = a_c / (k + alpha/size * sum_{c' near c} a_c'^2)^beta, as PyTorch's
    LocalResponseNorm (window: size//2 channels before, (size-1)//2 after)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        before, after = self.size // 2, (self.size - 1) // 2
        denominator = self.k + self.alpha / self.size * _channel_window_sum(x * x, before, after)
        self._saved = (x, denominator)
        return x * denominator**-self.beta

    def backward(self, grad: Array) -> list[Array]:
        x, denominator = self._saved
        before, after = self.size // 2, (self.size - 1) // 2
        direct = grad * denominator**-self.beta
        # each a_j appears in the denominators of channels j-after .. j+before
        through = _channel_window_sum(grad * x * denominator ** (-self.beta - 1), after, before)
        return [direct - 2 * self.beta * self.alpha / self.size * x * through]


class ZeroPad(Op):
    def __init__(self, padding: tuple[tuple[int, int], tuple[int, int]]) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._size = inputs[0].shape[2:]
        return xp_of(inputs[0]).pad(inputs[0], ((0, 0), (0, 0), *self.padding))

    def backward(self, grad: Array) -> list[Array]:
        return [crop(grad, self.padding, self._size)]


class Add(Op):
    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._count = len(inputs)
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total

    def backward(self, grad: Array) -> list[Array]:
        return [grad] * self._count


class SeparableLinear(Op):
    """y = rows @ x @ columns^T on every map: adaptive average pooling (an average over a
    rectangle is one over its rows, then its columns) and upsampling (nearest and bilinear
    interpolation are separable too)."""

    def __init__(self, rows: Array, columns: Array) -> None:
        super().__init__()
        self.rows, self.columns = rows, columns

    def forward(self, inputs: list[Array], training: bool) -> Array:
        x = inputs[0]
        rows, columns = (xp_of(x).asarray(m, dtype=x.dtype) for m in (self.rows, self.columns))
        return rows @ x @ columns.T  # (h, H) @ (N, C, H, W) @ (W, w)

    def backward(self, grad: Array) -> list[Array]:
        rows, columns = (xp_of(grad).asarray(m, dtype=grad.dtype) for m in (self.rows, self.columns))
        return [rows.T @ grad @ columns]


class Slice(Op):
    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._shape = inputs[0].shape
        return inputs[0][:, self.start : self.stop]

    def backward(self, grad: Array) -> list[Array]:
        full = xp_of(grad).zeros(self._shape, grad.dtype)
        full[:, self.start : self.stop] = grad
        return [full]


class Multiply(Op):
    """A product of two tensors; a C x 1 x 1 gate broadcasts, and its gradient sums over H x W."""

    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._a, self._b = inputs
        return self._a * self._b

    def backward(self, grad: Array) -> list[Array]:
        return [_unbroadcast(grad * self._b, self._a.shape), _unbroadcast(grad * self._a, self._b.shape)]


def _unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    axes = tuple(i for i, (g, s) in enumerate(zip(grad.shape, shape, strict=True)) if s == 1 and g != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class Concat(Op):
    def forward(self, inputs: list[Array], training: bool) -> Array:
        self._splits = [x.shape[1] for x in inputs]
        return xp_of(inputs[0]).concatenate(inputs, axis=1)

    def backward(self, grad: Array) -> list[Array]:
        bounds = np.cumsum(self._splits)[:-1].tolist()
        return xp_of(grad).split(grad, bounds, axis=1)
