"""One image file's bytes to a uint8 C x H x W array at the spec's input size.

Real folders hold more than clean RGB JPEGs. What is read correctly: EXIF-rotated photos
(turned upright), CMYK, palette, grayscale, alpha (dropped, as torchvision's loader does)
and 16-bit images (scaled to 8 bits), converted to the spec's channels. What is refused
with a ``BadImage`` naming the reason, so the caller can skip and count it: zero-byte
files, files that are not images (a text file named ``.jpg``), truncated or corrupt files,
and decompression bombs.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnspec.data.errors import DataError

_ORIENTATION = 0x0112  # the EXIF tag


class BadImage(ValueError):
    """The bytes are not an image that can be used; the message says why."""


def decode(data: bytes, channels: int, size_hint: tuple[int, int] | None = None) -> np.ndarray:
    """``data`` as a uint8 ``channels`` x H x W array at its own size, upright.

    With ``size_hint`` (H, W), a JPEG much larger than it is decoded at a reduced scale
    (1/2, 1/4 or 1/8, never below the hint: Pillow's draft mode), which is several times
    faster and what the resize that follows would throw away anyway.
    """
    plan = None if size_hint is None else (lambda size: max(size_hint[1] / size[0], size_hint[0] / size[1]))
    return to_array(decode_image(data, channels, plan)[0], channels)


def decode_image(data: bytes, channels: int, plan: Callable[[tuple[int, int]], float | None] | None = None) -> tuple[Any, tuple[int, int]]:
    """The upright 8-bit Pillow image (mode L, RGB or RGBA for 1, 3 or 4 channels), and the
    upright (width, height) of the image as stored.

    ``plan`` is told that stored size before any pixel is decoded and answers the scale the
    image may be reduced to (0.3: any size down to 30% in each direction will do; None or
    1: full size); a JPEG is then decoded at the smallest of 1/2, 1/4 and 1/8 that keeps
    it (Pillow's draft mode). The returned image may therefore be smaller than the stored one.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if opened.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # turned a quarter: upright is the other way round
                width, height = height, width
            scale = plan((width, height)) if plan is not None else None
            if scale is not None and scale < 1 and opened.format == "JPEG":
                opened.draft("L" if channels == 1 else "RGB", (math.ceil(opened.width * scale), math.ceil(opened.height * scale)))
            opened.load()
            upright = ImageOps.exif_transpose(opened) or opened
            return _eight_bit(upright, channels), (width, height)
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow recognises no image format in it)") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise BadImage(f"truncated or corrupt image ({exc})") from None


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:

    if len(shape) != 3 or shape[0] not in (1, 3, 4):
        raise DataError(f"image files need a C x H x W input with 1, 3 or 4 channels, but the spec's input is {shape}")
    return shape[0], shape[1], shape[2]


def _eight_bit(image: Any, channels: int) -> Any:
    """16-bit and 32-bit grey images scaled to 8 bits (65535 -> 255); every mode converted
    to L, RGB or RGBA (CMYK, palette, YCbCr, LA, ...; alpha dropped for RGB)."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F" and values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    return image if image.mode == mode else image.convert(mode)


def to_array(image: Any, channels: int, contiguous: bool = True) -> np.ndarray:
    """The Pillow image as C x H x W; ``contiguous=False`` leaves the channels-first view
    of Pillow's pixels to a caller that copies it anyway."""
    array = np.asarray(image, dtype=np.uint8)
    if channels == 1:
        return array[None]
    return np.ascontiguousarray(array.transpose(2, 0, 1)) if contiguous else array.transpose(2, 0, 1)
