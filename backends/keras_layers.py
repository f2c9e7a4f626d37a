"""Keras layers for what Keras lacks, each matching the spec's (PyTorch's) definition:
-inf padding for max pooling, PyTorch's average-pool divisor, grouped convolution with
gradients on CPU, LRN of even size, batchnorm with the unbiased running variance, a
feature reorder, PyTorch's transposed convolution, adaptive average pooling, a channel slice, a hard sigmoid of any slope and GELU in both forms. All are registered for serialization under the 'cnnspec' package, so a
saved ``.keras`` model loads where cnnspec is installed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnspec.backends.tf_quiet import keras, tf
from cnnspec.layers.base import Padding4

NO_PADDING: Padding4 = ((0, 0), (0, 0))


def _padding4(padding: Sequence[Sequence[int]]) -> Padding4:
    """((top, bottom), (left, right)) from lists too (a config read back from JSON)."""
    (top, bottom), (left, right) = padding
    return ((int(top), int(bottom)), (int(left), int(right)))


def _spatial_padding(padding: Padding4) -> list[list[int]]:
    return [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]


@keras.saving.register_keras_serializable(package="cnnspec")
class GroupedConv2D(keras.layers.Layer):
    """Convolution in ``groups`` independent channel groups (depthwise where each group is
    one channel), with explicit padding, and
    stride together with dilation (TensorFlow's CPU kernels have no gradient for grouped
    convolution, and Keras refuses stride > 1 with dilation > 1). Kernel H x W x I/g x O."""

    def __init__(self, filters: int, kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]],
                 dilation_rate: Sequence[int], groups: int, use_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.groups, self.use_bias = filters, groups, use_bias
        self.kernel_size, self.strides, self.dilation_rate = tuple(kernel_size), tuple(strides), tuple(dilation_rate)
        self.padding = _padding4(padding)

    def build(self, input_shape: Any) -> None:
        channels = input_shape[-1] // self.groups
        self.kernel = self.add_weight(shape=(*self.kernel_size, channels, self.filters), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias") if self.use_bias else None

    def call(self, x: Any) -> Any:  # (N, H, W, C) -> (N, H', W', F)
        if self.padding != NO_PADDING:
            x = tf.pad(x, _spatial_padding(self.padding))
        both = max(self.strides) > 1 and max(self.dilation_rate) > 1
        strides = (1, 1) if both else self.strides
        if self.groups > 1 and self.groups == x.shape[-1]:  # depthwise: one op, not one per channel
            kh, kw = self.kernel_size
            kernel = tf.reshape(self.kernel, (kh, kw, self.groups, self.filters // self.groups))  # filter c*m + j
            y = tf.nn.depthwise_conv2d(x, kernel, (1, *strides, 1), "VALID", dilations=self.dilation_rate)
            if both:
                y = y[:, :: self.strides[0], :: self.strides[1], :]
            return y if self.bias is None else tf.nn.bias_add(y, self.bias)
        inputs = tf.split(x, self.groups, axis=-1) if self.groups > 1 else [x]
        kernels = tf.split(self.kernel, self.groups, axis=-1) if self.groups > 1 else [self.kernel]
        parts = [tf.nn.convolution(xg, kg, strides, "VALID", dilations=self.dilation_rate) for xg, kg in zip(inputs, kernels, strict=True)]
        y = tf.concat(parts, axis=-1) if self.groups > 1 else parts[0]
        if both:  # a stride-1 dilated convolution, then every stride-th output
            y = y[:, :: self.strides[0], :: self.strides[1], :]
        return y if self.bias is None else tf.nn.bias_add(y, self.bias)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding,
            "dilation_rate": self.dilation_rate, "groups": self.groups, "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package="cnnspec")
class PaddedMaxPool2D(keras.layers.Layer):
    """Max pooling over an input padded with -inf (padding never wins a window), as
    PyTorch and the spec define it; Keras' padding is 'valid' or 'same' only."""

    def __init__(self, pool_size: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_size, self.strides = tuple(pool_size), tuple(strides)
        self.padding = _padding4(padding)

    def call(self, x: Any) -> Any:  # (N, H, W, C) -> (N, H', W', C)
        x = tf.pad(x, _spatial_padding(self.padding), constant_values=-np.inf)
        return tf.nn.max_pool2d(x, self.pool_size, self.strides, "VALID")

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}


def window_counts(given: Padding4, covering: Padding4, size: tuple[int, int], kernel: tuple[int, int],
                  stride: tuple[int, int], out: tuple[int, int], count_include_pad: bool) -> np.ndarray:
    """PyTorch's average-pool divisor per output (Ho x Wo): the window's pixels inside the
    image, plus its padding when ``count_include_pad``; ceil rounding's overhang never counts."""
    (top, bottom), (left, right) = given
    padded = (top + size[0] + covering[0][1], left + size[1] + covering[1][1])
    mask = np.zeros(padded)
    if count_include_pad:
        mask[: top + size[0] + bottom, : left + size[1] + right] = 1
    else:
        mask[top : top + size[0], left : left + size[1]] = 1
    counts = np.empty(out)
    for i in range(out[0]):
        for j in range(out[1]):
            counts[i, j] = mask[i * stride[0] : i * stride[0] + kernel[0], j * stride[1] : j * stride[1] + kernel[1]].sum()
    return counts


@keras.saving.register_keras_serializable(package="cnnspec")
class DivisorAvgPool2D(keras.layers.Layer):
    """Average pooling with PyTorch's divisor (``window_counts``): padding counted or not,
    ceil rounding's overhang never. Keras divides by the full window ('valid') or by the
    pixels inside the image ('same'), which fit only some of these cases."""

    def __init__(self, pool_size: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]], divisor: Sequence[Sequence[float]],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_size, self.strides = tuple(pool_size), tuple(strides)
        self.padding = _padding4(padding)
        self.divisor = [list(map(float, row)) for row in divisor]
        window = self.pool_size[0] * self.pool_size[1]
        self._scale = tf.constant((window / np.asarray(self.divisor))[None, :, :, None], tf.float32)  # (1, Ho, Wo, 1)

    def call(self, x: Any) -> Any:  # (N, H, W, C) -> (N, H', W', C)
        x = tf.pad(x, _spatial_padding(self.padding))
        return tf.nn.avg_pool2d(x, self.pool_size, self.strides, "VALID") * self._scale

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding,
                                       "divisor": self.divisor}


@keras.saving.register_keras_serializable(package="cnnspec")
class LocalResponseNorm(keras.layers.Layer):
    """PyTorch's LocalResponseNorm over channels (last axis): b = a / (k + alpha/size *
    sum a^2)^beta over size//2 channels before and (size-1)//2 after. Odd sizes use
    TensorFlow's fused op (depth_radius size//2, alpha/size); even sizes are asymmetric
    and sum the shifted squares."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, x: Any) -> Any:  # (N, H, W, C) -> (N, H, W, C)
        if self.size % 2:
            return tf.nn.local_response_normalization(x, self.size // 2, self.k, self.alpha / self.size, self.beta)
        channels = x.shape[-1]
        before, after = self.size // 2, (self.size - 1) // 2
        squares = tf.pad(tf.square(x), [[0, 0], [0, 0], [0, 0], [before, after]])
        total = tf.add_n([squares[..., i : i + channels] for i in range(self.size)])
        return x * tf.pow(self.k + self.alpha / self.size * total, -self.beta)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


@keras.saving.register_keras_serializable(package="cnnspec")
class TorchBatchNorm(keras.layers.Layer):
    """Batch normalisation over the last axis, as PyTorch defines it: running statistics
    move by ``momentum`` towards the batch's mean and *unbiased* variance (Keras' own layer
    uses the biased variance and 1 - momentum)."""

    frozen = False  # a frozen layer normalises with its running statistics, training or not

    def __init__(self, epsilon: float, momentum: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon, self.momentum = epsilon, momentum

    def build(self, input_shape: Any) -> None:
        shape = (input_shape[-1],)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=shape, initializer="ones", trainable=False, name="moving_variance")

    def call(self, x: Any, training: bool = False) -> Any:  # (N, [H, W,] C) -> same
        if not training or self.frozen:
            mean, variance = self.moving_mean, self.moving_variance
        else:
            axes = list(range(len(x.shape) - 1))
            mean, variance = tf.nn.moments(x, axes)
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
            unbiased = variance * count / tf.maximum(count - 1, 1)
            self.moving_mean.assign(self.moving_mean * (1 - self.momentum) + mean * self.momentum)
            self.moving_variance.assign(self.moving_variance * (1 - self.momentum) + unbiased * self.momentum)
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"epsilon": self.epsilon, "momentum": self.momentum}


@keras.saving.register_keras_serializable(package="cnnspec")
class ChannelAffine(keras.layers.Layer):
    """y = gamma * x + beta over the last axis (channels in NHWC, or features)."""

    def __init__(self, use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.use_bias = use_bias

    def build(self, input_shape: Any) -> None:
        shape = (input_shape[-1],)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta") if self.use_bias else None

    def call(self, x: Any) -> Any:
        y = x * self.gamma
        return y if self.beta is None else y + self.beta

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="cnnspec")
class Reorder(keras.layers.Layer):
    """Features gathered into another order (last axis): undoes a flatten's permutation
    where a vector must be canonical (a merge of differently ordered vectors, the output)."""

    def __init__(self, order: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = [int(i) for i in order]

    def call(self, x: Any) -> Any:  # (N, F) -> (N, F)
        return tf.gather(x, self.order, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"order": self.order}


@keras.saving.register_keras_serializable(package="cnnspec")
class TransposedConv2D(keras.layers.Layer):
    """A transposed convolution's full ('valid') result, cropped by ``crops`` ((top, bottom),
    (left, right); a negative one adds zero rows there): PyTorch's padding and output
    padding, and Keras' 'same', with groups. Kernel H x W x O/g x I (tf.nn.conv2d_transpose's,
    per group)."""

    def __init__(self, filters: int, kernel_size: Sequence[int], strides: Sequence[int], crops: Sequence[Sequence[int]],
                 groups: int, use_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.groups, self.use_bias = int(filters), int(groups), bool(use_bias)
        self.kernel_size, self.strides = tuple(map(int, kernel_size)), tuple(map(int, strides))
        self.crops = _padding4(crops)

    def build(self, input_shape: Any) -> None:
        shape = (*self.kernel_size, self.filters // self.groups, int(input_shape[-1]))
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias") if self.use_bias else None

    def call(self, x: Any) -> Any:  # (N, H, W, C) -> (N, H', W', F)
        h, w = int(x.shape[1]), int(x.shape[2])
        (kh, kw), (sh, sw), ((top, bottom), (left, right)) = self.kernel_size, self.strides, self.crops
        full = ((h - 1) * sh + kh, (w - 1) * sw + kw)
        shape = tf.stack([tf.shape(x)[0], full[0], full[1], self.filters // self.groups])
        inputs = tf.split(x, self.groups, axis=-1) if self.groups > 1 else [x]
        kernels = tf.split(self.kernel, self.groups, axis=-1) if self.groups > 1 else [self.kernel]
        parts = [tf.nn.conv2d_transpose(xg, kg, shape, (1, sh, sw, 1), "VALID") for xg, kg in zip(inputs, kernels, strict=True)]
        y = tf.concat(parts, axis=-1) if self.groups > 1 else parts[0]
        if bottom < 0 or right < 0:  # rows past every window: zeros there
            y = tf.pad(y, [[0, 0], [0, max(-bottom, 0)], [0, max(-right, 0)], [0, 0]])
        y = y[:, top : full[0] - bottom, left : full[1] - right, :]
        return y if self.bias is None else tf.nn.bias_add(y, self.bias)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
                "crops": self.crops, "groups": self.groups, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="cnnspec")
class SeparableLinear(keras.layers.Layer):
    """y = rows @ x @ columns^T over height and width (NHWC): adaptive average pooling and
    upsampling, whose weights along the two axes are separable."""

    def __init__(self, rows: Sequence[Sequence[float]], columns: Sequence[Sequence[float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows, self.columns = [list(map(float, r)) for r in rows], [list(map(float, c)) for c in columns]

    def call(self, x: Any) -> Any:
        rows, columns = tf.constant(self.rows, x.dtype), tf.constant(self.columns, x.dtype)
        return tf.einsum("ih,nhwc,jw->nijc", rows, x, columns)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows, "columns": self.columns}


@keras.saving.register_keras_serializable(package="cnnspec")
class ChannelSlice(keras.layers.Layer):
    """Channels (the last axis) ``start`` to ``stop``."""

    def __init__(self, start: int, stop: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x: Any) -> Any:
        return x[..., self.start : self.stop]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="cnnspec")
class ClipAffine(keras.layers.Layer):
    """clip(alpha * x + beta, 0, 1): a hard sigmoid of any slope (Keras 3's is 1/6 only)."""

    def __init__(self, alpha: float, beta: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def call(self, x: Any) -> Any:
        return tf.clip_by_value(self.alpha * x + self.beta, 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="cnnspec")
class Gelu(keras.layers.Layer):
    """GELU, the erf form or (``approximate``) the tanh one, as a layer that saves its form."""

    def __init__(self, approximate: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x: Any) -> Any:
        return keras.activations.gelu(x, approximate=self.approximate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "approximate": self.approximate}
