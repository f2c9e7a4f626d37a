"""Multiply-accumulate counts (MACs). FLOPs = 2 x MACs.

One MAC per multiply-accumulate of a convolution or dense layer, bias excluded: the
convention of the figures torchvision publishes for its models (its "GFLOPS" column
counts MACs). Pooling, normalisation and activations cost nothing under it.
"""

from __future__ import annotations


def conv2d_macs(
    in_channels: int,
    filters: int,
    kernel: tuple[int, int],
    out_size: tuple[int, int],
    groups: int = 1,
) -> int:
    """Each output element sums (I/groups) x KH x KW products."""
    kh, kw = kernel
    oh, ow = out_size
    return oh * ow * filters * (in_channels // groups) * kh * kw


def dense_macs(in_features: int, units: int) -> int:
    return in_features * units
