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


def same_walkthrough(size: int, kernel: int, stride: int, dilation: int, what: str) -> tuple[bool, list[str], tuple[int, int]]:
    """(fits, lines, (before, after)) for padding 'same' (TensorFlow's rule): the output is
    ceil(N / S), and the padding is what gives it, the odd pixel after."""
    span = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    before, after = total // 2, total - total // 2
    lines = [
        f"{what} output size with padding 'same' (TensorFlow's rule, Keras padding='same'):",
        f"  out = ceil(N / S) = ceil({size} / {stride}) = {out}",
        f"  padding = max((out - 1)*S + D(F-1) + 1 - N, 0) = max({out - 1}*{stride} + {span} - {size}, 0) = {total}",
        f"          = {before} before, {after} after" + (" (the odd pixel goes after, at the bottom and right)" if before != after else ""),
    ]
    return True, lines, (before, after)


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
    except SizeError as exc:  # its hint is in spec terms; here the option says it
        lines.append(f"error: {exc}".replace("declare rounding: floor", "add --rounding floor").replace("or rounding: ceil", "or --rounding ceil"))
        return False, lines
    whole = numerator % stride == 0
    if whole:
        lines.append(f"      = {out}")
    else:
        exact = numerator / stride + 1
        lines.append(f"      = {exact:.2f}, not a whole number: the window does not tile the input")
        lines.append(f"      -> {out} with rounding {rounding}")
    return True, lines
