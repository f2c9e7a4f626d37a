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
from typing import Any

import numpy as np

from cnnspec.harness.config import FitMode


class BadImage(ValueError):
    """The bytes are not an image that can be used; the message says why."""


def prepare(data: bytes, shape: tuple[int, ...], fit: FitMode = "auto") -> np.ndarray:
    """The network input for one image file: decoded, channels converted, then padded or
    resized to ``shape`` (C x H x W) by ``fit`` exactly as array data is (the rule is
    ``fit_rule``; Pillow's bilinear resize of an RGB image equals that of each channel)."""
    from PIL import Image

    from cnnspec.harness.data import fit_images, fit_rule

    channels, height, width = _image_shape(shape)
    image = _decode_image(data, channels, (height, width))
    if fit_rule((image.height, image.width), (height, width), fit) == "resize":
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = _to_array(image, channels)
    fitted: np.ndarray = fit_images(array[None], shape, fit)[0]  # pads, or keeps what already fits
    return fitted


def decode(data: bytes, channels: int, size_hint: tuple[int, int] | None = None) -> np.ndarray:
    """``data`` as a uint8 ``channels`` x H x W array at its own size, upright.

    With ``size_hint`` (H, W), a JPEG much larger than it is decoded at a reduced scale
    (1/2, 1/4 or 1/8, never below the hint: Pillow's draft mode), which is several times
    faster and what the resize that follows would throw away anyway.
    """
    return _to_array(_decode_image(data, channels, size_hint), channels)


def _decode_image(data: bytes, channels: int, size_hint: tuple[int, int] | None) -> Any:
    """The upright 8-bit Pillow image (mode L, RGB or RGBA for 1, 3 or 4 channels)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if size_hint is not None and opened.format == "JPEG":
                opened.draft("L" if channels == 1 else "RGB", (size_hint[1], size_hint[0]))
            opened.load()
            upright = ImageOps.exif_transpose(opened) or opened
            return _eight_bit(upright, channels)
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow recognises no image format in it)") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"truncated or corrupt image ({exc})") from None


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    from cnnspec.harness.data import DataError

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


def _to_array(image: Any, channels: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))
