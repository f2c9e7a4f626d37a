"""How an image is fitted to the network's input: the rule for each fit mode, and the one resize of a box."""

from __future__ import annotations

import numpy as np


def fit_rule(size: tuple[int, int], target: tuple[int, int], fit: str) -> str:
    """keep, pad, resize or crop an H x W image for a ``target`` input: ``auto`` pads an
    image at most 25% smaller in each direction (MNIST's 28x28 into 32x32) and resizes the rest."""
    (h, w), (height, width) = size, target
    if fit == "crop":
        return "crop"
    if (h, w) == (height, width):
        return "keep"
    if fit == "letterbox":
        return "letterbox"
    small_enough = h <= height and w <= width and (height - h) <= height // 4 and (width - w) <= width // 4
    return "pad" if fit == "pad" or (fit == "auto" and small_enough) else "resize"


def resize_box(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The region ``box`` (left, top, right, bottom) of one C x H x W image resized to
    ``size`` (H, W), bilinear, channel by channel (the same pixels as Pillow resizing the
    whole colour image)."""
    from PIL import Image

    height, width = size
    out = np.empty((len(image), height, width), dtype=np.float32 if image.dtype != np.uint8 else np.uint8)
    for c, plane in enumerate(image):
        mode = "L" if plane.dtype == np.uint8 else "F"
        resized = Image.fromarray(plane if mode == "L" else plane.astype(np.float32), mode).resize((width, height), Image.Resampling.BILINEAR, box=box)
        out[c] = np.asarray(resized)
    return out


def letterbox_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of ``size`` scaled to fit inside ``target``, its aspect
    ratio kept: the longer side (relative to the target's) fills the input."""
    scale = min(target[0] / size[0], target[1] / size[1])
    return max(1, min(target[0], round(size[0] * scale))), max(1, min(target[1], round(size[1] * scale)))
