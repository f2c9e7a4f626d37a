"""Learned-parameter counts, as PyTorch's ``parameters()`` counts them."""

from __future__ import annotations


def conv2d_params(
    in_channels: int, filters: int, kernel: tuple[int, int], groups: int = 1, bias: bool = True
) -> int:
    """Weights O x (I/groups) x KH x KW, plus one bias per filter."""
    kh, kw = kernel
    return filters * (in_channels // groups) * kh * kw + (filters if bias else 0)


def dense_params(in_features: int, units: int, bias: bool = True) -> int:
    """Weights out x in, plus one bias per unit."""
    return units * in_features + (units if bias else 0)


def batchnorm_params(channels: int, affine: bool = True) -> tuple[int, int]:
    """(learned, non-trainable): scale and shift; running mean and variance."""
    return (2 * channels if affine else 0, 2 * channels)


def affine_params(channels: int, bias: bool = True) -> int:
    """A scale per channel, and a shift when ``bias``."""
    return channels * (2 if bias else 1)
