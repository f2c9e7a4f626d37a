"""``cnnspec calc``: the output-size formula worked through step by step."""

from __future__ import annotations

from collections.abc import Callable

from cnnspec.calculators import Rounding, SizeError, conv_out_size, pool_out_size


def conv_walkthrough(
    size: int, kernel: int, stride: int, padding: int, dilation: int, rounding: Rounding
) -> tuple[bool, list[str]]:
    """(fits, lines) for a convolution along one axis."""
    lines = [
        "conv output size (CS231n; PyTorch Conv2d docs):",
        "  out = (N + 2P - D(F-1) - 1) / S + 1",
        f"      = ({size} + 2*{padding} - {dilation}*({kernel}-1) - 1) / {stride} + 1",
    ]
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1
    return _finish(lines, numerator, stride, lambda: conv_out_size(size, kernel, stride, (padding, padding), dilation, rounding).size, rounding)


def pool_walkthrough(size: int, kernel: int, stride: int, padding: int, rounding: Rounding) -> tuple[bool, list[str]]:
    """(fits, lines) for a pooling window along one axis."""
    lines = [
        "pool output size (CS231n; PyTorch MaxPool2d docs):",
        "  out = (N + 2P - F) / S + 1",
        f"      = ({size} + 2*{padding} - {kernel}) / {stride} + 1",
    ]
    numerator = size + 2 * padding - kernel
    result = _finish(lines, numerator, stride, lambda: pool_out_size(size, kernel, stride, (padding, padding), 1, rounding).size, rounding)
    if rounding == "ceil" and result[0]:
        result[1].append("  (ceil mode drops a last window that would start inside the right padding, as PyTorch does)")
    return result


def _finish(lines: list[str], numerator: int, stride: int, compute: Callable[[], int], rounding: Rounding) -> tuple[bool, list[str]]:
    lines.append(f"      = {numerator} / {stride} + 1")
    try:
        out = compute()
    except SizeError as exc:
        lines.append(f"error: {exc}")
        return False, lines
    whole = numerator % stride == 0
    if whole:
        lines.append(f"      = {out}")
    else:
        exact = numerator / stride + 1
        lines.append(f"      = {exact:.2f}, not a whole number: the window does not tile the input")
        lines.append(f"      -> {out} with rounding {rounding}")
    return True, lines
