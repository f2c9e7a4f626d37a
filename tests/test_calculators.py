"""The pure arithmetic, pinned by cases computed by hand."""

from __future__ import annotations

import pytest

from cnnspec.calculators import (
    Fraction,
    ReceptiveField,
    SizeError,
    conv2d_macs,
    conv2d_params,
    conv_out_size,
    dense_macs,
    dense_params,
    pool_out_size,
    same_padding,
)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (32, 5, 1, (0, 0), 1, 28),  # LeNet c1: (32 - 5)/1 + 1
        (32, 5, 1, (2, 2), 1, 32),  # (32 + 4 - 5)/1 + 1
        (224, 3, 1, (1, 1), 1, 224),  # VGG
        (57, 1, 2, (0, 0), 1, 29),  # (57 - 1)/2 + 1
        (10, 3, 1, (0, 0), 2, 6),  # dilation 2: span 5, (10 - 5)/1 + 1
        (8, 3, 2, (1, 2), 1, 5),  # asymmetric: (8 + 3 - 3)/2 + 1
    ],
)
def test_conv_out_size_exact(size: int, kernel: int, stride: int, padding: tuple[int, int], dilation: int, expected: int) -> None:
    assert conv_out_size(size, kernel, stride, padding, dilation).size == expected


def test_non_integer_size_is_refused_with_the_fraction() -> None:
    with pytest.raises(SizeError, match=r"7/3 = 2\.33; declare rounding"):
        conv_out_size(7, 3, 3)  # the classic CS231n case


def test_rounding_floor_and_ceil() -> None:
    alexnet_conv1 = conv_out_size(224, 11, 4, (2, 2), rounding="floor")
    assert alexnet_conv1.exact == Fraction(221, 4)  # 55.25
    assert alexnet_conv1.size == 55
    assert conv_out_size(7, 3, 3, rounding="ceil").size == 3
    assert conv_out_size(7, 3, 3, rounding="floor").size == 2
    assert pool_out_size(112, 3, 2, rounding="ceil").size == 56  # GoogLeNet maxpool1: 55.5
    assert pool_out_size(112, 3, 2, rounding="floor").size == 55


def test_ceil_pool_drops_a_window_that_starts_in_padding() -> None:
    # (5 + 2 - 2)/2 + 1 = 3.5 -> 4, but the 4th window would start at 6 >= 5 + 1: PyTorch gives 3.
    assert pool_out_size(5, 2, 2, (1, 1), rounding="ceil").size == 3
    assert pool_out_size(6, 3, 2, (0, 0), rounding="ceil").size == 3  # 2.5 -> 3, window starts at 4 < 6


def test_kernel_larger_than_padded_input() -> None:
    with pytest.raises(SizeError, match="kernel 5 exceeds padded input 4"):
        conv_out_size(4, 5)
    with pytest.raises(SizeError, match=r"kernel 3 \(dilation 3, span 7\) exceeds padded input 6"):
        conv_out_size(4, 3, padding=(1, 1), dilation=3)
    assert conv_out_size(4, 5, padding=(1, 0)).size == 1


def test_non_positive_arguments() -> None:
    with pytest.raises(SizeError, match="stride must be positive, got 0"):
        conv_out_size(8, 3, 0)
    with pytest.raises(SizeError, match="padding must be non-negative"):
        conv_out_size(8, 3, 1, (-1, 0))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(5, 3, 1, (1, 1)), (4, 3, 2, (0, 1)), (5, 3, 2, (1, 1)), (224, 7, 2, (2, 3)), (6, 1, 4, (0, 0))],
)
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected
    out = conv_out_size(size, kernel, stride, expected, rounding="floor").size
    assert out == -(-size // stride)  # 'same' means ceil(N / S)


def test_parameter_counts() -> None:
    assert conv2d_params(1, 6, (5, 5)) == 156  # 6*1*25 + 6
    assert conv2d_params(3, 64, (7, 7), bias=False) == 9408  # ResNet conv1
    assert conv2d_params(32, 64, (3, 3), groups=4) == 64 * 8 * 9 + 64
    assert dense_params(400, 120) == 48120
    assert dense_params(512, 1000, bias=False) == 512000


def test_macs() -> None:
    assert conv2d_macs(1, 6, (5, 5), (28, 28)) == 117600  # 6 * 28*28 * 25
    assert conv2d_macs(32, 32, (3, 3), (10, 10), groups=32) == 100 * 32 * 9  # depthwise
    assert dense_macs(400, 120) == 48000


def test_receptive_field_through_lenet() -> None:
    field = ReceptiveField()
    for kernel, stride in ((5, 1), (2, 2), (5, 1), (2, 2)):
        field = field.through((kernel, kernel), (stride, stride))
    assert field.size == (16, 16)
    assert field.jump == (4, 4)
    assert ReceptiveField.merge([field, ReceptiveField((3, 5), (1, 1))]).size == (16, 16)
