"""Output sizes of sliding windows (convolution and pooling) along one axis.

The formula (CS231n, "Convolutional Networks"; PyTorch ``Conv2d`` docs)::

    out = (N + P_before + P_after - D * (F - 1) - 1) / S + 1

With symmetric padding P_before = P_after = P this is the familiar
(N + 2P - D(F-1) - 1)/S + 1. When the division is not exact the window does not tile
the input; cnnspec then needs an explicit rounding mode instead of silently flooring.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from typing import Literal

Rounding = Literal["exact", "floor", "ceil"]
Fraction = fractions.Fraction


class SizeError(ValueError):
    """A window does not fit its input; the message says why with the numbers."""


@dataclass(frozen=True)
class WindowSize:
    """The worked result of one output-size computation along one axis."""

    size: int  # the output size after rounding
    exact: Fraction  # (N + Pb + Pa - D(F-1) - 1)/S + 1 before rounding
    padded: int  # N + Pb + Pa
    effective_kernel: int  # D(F-1) + 1


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Span of a dilated kernel: D(F-1) + 1."""
    return dilation * (kernel - 1) + 1


def conv_out_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    rounding: Rounding = "exact",
) -> WindowSize:
    """Output size of a convolution along one axis.

    ``rounding="exact"`` refuses a non-integer result; ``floor`` is what PyTorch and
    Keras compute; ``ceil`` is Caffe's convention.
    """
    return _window_out_size(size, kernel, stride, padding, dilation, rounding, pool=False)


def pool_out_size(
    size: int,
    kernel: int,
    stride: int,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    rounding: Rounding = "exact",
) -> WindowSize:
    """Output size of a pooling window along one axis.

    With ``ceil`` the last window may hang over the edge, as in Caffe and PyTorch's
    ``ceil_mode=True``; PyTorch then drops a last window that would start inside the
    right padding (``pooling_output_shape`` in ATen), and so does this function.
    """
    return _window_out_size(size, kernel, stride, padding, dilation, rounding, pool=True)


def _window_out_size(
    size: int,
    kernel: int,
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    rounding: Rounding,
    *,
    pool: bool,
) -> WindowSize:
    for label, value in (("size", size), ("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if value <= 0:
            raise SizeError(f"{label} must be positive, got {value}")
    before, after = padding
    if before < 0 or after < 0:
        raise SizeError(f"padding must be non-negative, got {padding}")
    padded = size + before + after
    span = effective_kernel(kernel, dilation)
    if span > padded:
        raise SizeError(f"kernel {_kernel_text(kernel, dilation)} exceeds padded input {padded}")
    exact = Fraction(padded - span, stride) + 1
    if rounding == "exact":
        if exact.denominator != 1:
            raise SizeError(
                f"window does not fit: ({size} + {before + after} - {span}) / {stride} + 1 "
                f"= {_mixed(exact)}; declare rounding: floor (what PyTorch and Keras 'valid' do) or rounding: ceil (Caffe)"
            )
        out = int(exact)
    elif rounding == "floor":
        out = exact.numerator // exact.denominator
    else:
        out = -((-exact.numerator) // exact.denominator)
        if pool and out > 1 and (out - 1) * stride >= size + before:
            out -= 1
    return WindowSize(size=out, exact=exact, padded=padded, effective_kernel=span)


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``padding="same"``: output ceil(N/S), extra padding at the end.

    From the TensorFlow guide "Convolution": pad_total = max((out-1)*S + D(F-1)+1 - N, 0),
    pad_before = pad_total // 2.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return (total // 2, total - total // 2)


def _kernel_text(kernel: int, dilation: int) -> str:
    if dilation == 1:
        return str(kernel)
    return f"{kernel} (dilation {dilation}, span {effective_kernel(kernel, dilation)})"


def _mixed(value: Fraction) -> str:
    """7/3 as '7/3 = 2.33'."""
    return f"{value.numerator}/{value.denominator} = {float(value):.2f}"


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """The input range [start, end) each of ``out`` outputs averages over ``size`` inputs,
    PyTorch's adaptive pooling rule: start = floor(i * size / out), end = ceil((i + 1) *
    size / out). Where ``out`` divides ``size`` the windows tile it (a pool with kernel and
    stride size / out); elsewhere neighbouring windows overlap by one."""
    if out < 1 or size < 1:
        raise SizeError(f"adaptive pooling of {size} inputs to {out} outputs: both must be positive")
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]
