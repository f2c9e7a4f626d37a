"""What convolution and pooling share: padding resolution and the 2-D output size."""

from __future__ import annotations

import dataclasses

from cnnspec.calculators import Rounding, SizeError, conv_out_size, pool_out_size, same_padding
from cnnspec.layers.base import Padding4, ShapeError, format_shape


def resolve_padding(
    padding: Padding4 | str,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> Padding4:
    """Explicit ((top, bottom), (left, right)) padding for 'same', 'valid' or numbers."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return (
            same_padding(size[0], kernel[0], stride[0], dilation[0]),
            same_padding(size[1], kernel[1], stride[1], dilation[1]),
        )
    assert not isinstance(padding, str)
    return padding


def window_out(
    shape: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: Padding4,
    dilation: tuple[int, int],
    rounding: Rounding,
    *,
    pool: bool,
) -> tuple[int, int]:
    """(H, W) out of a window over a (C, H, W) input; a SizeError becomes a ShapeError."""
    size = shape[1:]
    rule = pool_out_size if pool else conv_out_size
    out = []
    for axis, name in enumerate(("height", "width")):
        try:
            out.append(
                rule(size[axis], kernel[axis], stride[axis], padding[axis], dilation[axis], rounding).size
            )
        except SizeError as exc:
            symmetric = size[0] == size[1] and kernel[0] == kernel[1] and padding[0] == padding[1]
            message = ("" if symmetric else f"{name}: ") + str(exc)
            if "exceeds" in message:
                raise ShapeError(f"{message} (input {format_shape(shape)}, padding {_padding_text(padding)})", "kernel") from None
            raise ShapeError(message, "rounding" if "rounding" in message else None) from None
    return out[0], out[1]


def _padding_text(padding: Padding4) -> str:
    (top, bottom), (left, right) = padding
    if top == bottom == left == right:
        return str(top)
    return f"[[{top}, {bottom}], [{left}, {right}]]"


def covering_padding(
    padding: Padding4,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out: tuple[int, int],
) -> Padding4:
    """``padding`` grown at the bottom/right so that windows at ``stride`` cover an
    ``out``-sized output: ceil rounding's overhang as explicit padding, for frameworks
    that only round down."""
    grown = []
    for axis in range(2):
        before, after = padding[axis]
        span = dilation[axis] * (kernel[axis] - 1) + 1
        needed = (out[axis] - 1) * stride[axis] + span - size[axis] - before
        grown.append((before, max(after, needed)))
    return (grown[0], grown[1])


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """A conv or pool window with everything resolved, for lowerings: input and output
    H x W, kernel, stride, dilation, the padding as given (numbers, 'same' resolved), and
    that padding grown to cover ceil rounding's overhang."""

    size: tuple[int, int]
    out: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    given: Padding4
    covering: Padding4


def window_geometry(
    padding: Padding4 | str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
) -> WindowGeometry:
    size, out = (input_shape[1], input_shape[2]), (output_shape[1], output_shape[2])
    given = resolve_padding(padding, size, kernel, stride, dilation)
    return WindowGeometry(size, out, kernel, stride, dilation, given, covering_padding(given, size, kernel, stride, dilation, out))
