"""How one image becomes one network input, for evaluation and for training.

A ``Transform`` is built from the spec's ``train.data`` for one purpose. The evaluation
transform is deterministic: it fits the image to the input by ``fit`` (pad, resize, or
``crop``: the shorter side to ``resize``, then the centre, as the ImageNet recipe
evaluates). The training transform adds the random parts that need each sample on its
own: a random resized crop cut from the image at full size, and colour jitter. Whole-batch
augmentations that are cheap on arrays (flips, pad-and-crop) stay in the harness.

Every resize is one Pillow call with a ``box`` (the region of the stored image that
becomes the input). For training, a JPEG is decoded at the smallest draft scale that still
holds that region at the input's resolution, so cutting a 224 crop from a 4000-pixel photo
decodes it at 1/8 when the crop is large and at full size when it is small. Evaluation,
predict and embeddings decode at full size: what they do is a few lines of plain Pillow
(``cnnspec.data.recipe``), which an exported model's users can repeat exactly.

The random draws of a sample come from its own generator, seeded by (seed, epoch,
sample), so results do not depend on the number of workers, on which worker decodes a
sample, or on where a resumed run starts. Without a generator, a training transform
prepares an image as evaluation does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnspec.data.decode import decode_image, image_shape, to_array
from cnnspec.data.errors import DataError
from cnnspec.data.fit import fit_rule, letterbox_size, resize_box

if TYPE_CHECKING:
    from cnnspec.spec.training import DataConfig

Box = tuple[float, float, float, float]  # left, top, right, bottom in the stored image's pixels

CROP_FRACTION = 0.875  # the ImageNet recipe: resize to 256, keep the central 224


def sample_generator(seed: Sequence[int], position: int) -> np.random.Generator:
    """The random generator of sample ``position`` under ``seed`` (the run's seed and epoch)."""
    return np.random.default_rng([*seed, position, 0x7A5F])


@dataclass(frozen=True)
class Transform:
    shape: tuple[int, int, int]  # C x H x W of the network input
    fit: str = "auto"  # auto | pad | resize | crop
    resize: int | None = None  # fit crop: the shorter side before the centre crop
    crop_scale: tuple[float, float] | None = None  # random resized crop: fraction of the area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: width / height
    jitter: tuple[float, float, float] | None = None  # brightness, contrast, saturation amounts
    hflip: bool = False  # flip with probability 1/2 (drawn here only when the transform is random)
    draft: bool = False  # a large JPEG decoded at a reduced scale (1/2, 1/4, 1/8): training, where it pays

    def __post_init__(self) -> None:
        if self.fit == "crop" and self.shorter_side < max(self.shape[1:]):

            raise DataError(f"fit: crop resizes the shorter side to {self.shorter_side}, smaller than the {self.shape[1]}x{self.shape[2]} input; make resize at least {max(self.shape[1:])}")

    @classmethod
    def evaluation(cls, config: DataConfig, shape: tuple[int, ...]) -> Transform:
        return cls(image_shape(shape), config.fit, config.resize)

    @classmethod
    def training(cls, config: DataConfig, shape: tuple[int, ...]) -> Transform:
        crop, jitter = config.augment.random_resized_crop, config.augment.color_jitter
        amounts = None if jitter is None else (jitter.brightness, jitter.contrast, jitter.saturation)
        return cls(
            image_shape(shape),
            config.fit,
            config.resize,
            None if crop is None else crop.scale,
            (3 / 4, 4 / 3) if crop is None else crop.ratio,
            amounts if amounts and any(amounts) else None,
            config.augment.hflip,
            draft=True,
        )

    @property
    def random(self) -> bool:
        """Whether each sample needs its own random draws (then flips are drawn here too;
        flips alone are drawn for the whole batch, where they are cheaper)."""
        return self.crop_scale is not None or self.jitter is not None

    @property
    def shorter_side(self) -> int:
        return self.resize if self.resize is not None else round(max(self.shape[1:]) / CROP_FRACTION)

    def describe(self) -> str:
        height, width = self.shape[1:]
        if self.crop_scale is not None:
            text = f"random resized crops to {height}x{width} (scale {self.crop_scale[0]:g}-{self.crop_scale[1]:g})"
        elif self.fit == "crop":
            text = f"shorter side to {self.shorter_side}, centre {height}x{width} (aspect ratio kept)"
        elif self.fit == "letterbox":
            text = f"longer side to fit {height}x{width}, centred on black (aspect ratio kept, nothing cut)"
        elif self.fit == "auto":
            text = f"fit auto to {height}x{width} (pad when at most 25% smaller, else resize)"
        else:
            text = f"fit {self.fit} to {height}x{width}" + (" (aspect ratio not kept)" if self.fit == "resize" else " (centred on black)")
        if self.jitter:
            named = zip(("brightness", "contrast", "saturation"), self.jitter, strict=True)
            text += ", colour jitter (" + ", ".join(f"{name} {amount:g}" for name, amount in named if amount) + ")"
        return text

    # ---- files ------------------------------------------------------------------------

    def from_file(self, data: bytes, rng: np.random.Generator | None = None) -> np.ndarray:
        """The input for one image file (uint8 C x H x W), raising ``BadImage`` when unusable."""
        from PIL import Image

        channels, height, width = self.shape
        box: Box | None = None

        def plan(size: tuple[int, int]) -> float | None:
            nonlocal box
            box = self._box(size, rng)
            return None if box is None or not self.draft else max(width / (box[2] - box[0]), height / (box[3] - box[1]))

        image, stored = decode_image(data, channels, plan)
        padded = box is None
        if box is not None:
            fx, fy = image.width / stored[0], image.height / stored[1]  # the draft scale, if any
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
            size = (width, height)
            if self.fit == "letterbox" and (self.crop_scale is None or rng is None):
                size, padded = letterbox_size(stored, (width, height)), True
            image = image.resize(size, Image.Resampling.BILINEAR, box=box)
        array = to_array(image, channels, contiguous=False)  # copied once, into the caller's batch
        if padded:
            array = fit_images(array[None], self.shape, "pad")[0]  # pads, or keeps what already fits
        return self._random_colour_and_flip(array, rng)

    def _box(self, size: tuple[int, int], rng: np.random.Generator | None) -> Box | None:
        """The region of an image of ``size`` (width, height) that becomes the input, or
        None when it is used as it is (kept or padded)."""
        w, h = size
        height, width = self.shape[1:]
        if self.crop_scale is not None and rng is not None:
            return random_resized_box(w, h, self.crop_scale, self.crop_ratio, rng)
        if self.fit == "crop":
            scale = self.shorter_side / min(w, h)
            cw, ch = min(w, width / scale), min(h, height / scale)
            return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        rule = fit_rule((h, w), (height, width), self.fit)
        return (0.0, 0.0, float(w), float(h)) if rule in ("resize", "letterbox") else None

    # ---- arrays -----------------------------------------------------------------------

    def from_array(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The random parts on one image already at the input's shape (C x H x W, uint8 or
        float): data held in memory. Without ``rng``, the image itself."""
        if rng is None:
            return image
        if self.crop_scale is not None:
            height, width = image.shape[1:]
            box = random_resized_box(width, height, self.crop_scale, self.crop_ratio, rng)
            image = resize_box(image, box, (height, width))
        return self._random_colour_and_flip(image, rng)

    def _random_colour_and_flip(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None or not self.random:
            return image
        if self.jitter is not None:
            image = color_jitter(image, self.jitter, rng)
        if self.hflip and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return image


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop box: ten tries at a random area fraction in ``scale``
    and a log-uniform aspect ratio in ``ratio`` that fits the image, else the central crop
    of the nearest allowed aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return (float(left), float(top), float(left + w), float(top + h))
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (float(left), float(top), float(left + w), float(top + h))


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's convert("L")


def color_jitter(image: np.ndarray, amounts: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation of one C x H x W image, each scaled by a factor
    in [1 - amount, 1 + amount], in a random order (as torchvision's ColorJitter): blends
    with black, with the mean grey, and with the image's own grey. uint8 stays uint8
    (rounded, clipped to 0..255); float images are not clipped."""
    factors = [rng.uniform(1 - a, 1 + a) if a else 1.0 for a in amounts]
    x = image.astype(np.float32)
    for which in rng.permutation(3):
        factor = np.float32(factors[which])
        if factor == 1:
            continue
        if which == 0:
            x = x * factor
        elif which == 1:
            mean = _grey(x).mean()
            x = (x - mean) * factor + mean
        elif len(x) >= 3:
            grey = _grey(x)
            x = (x - grey) * factor + grey
        if image.dtype == np.uint8:
            x = np.clip(x, 0, 255)
    return _like(x, image.dtype)


def _grey(x: Any) -> np.ndarray:
    grey: np.ndarray = x[0] if len(x) < 3 else np.tensordot(_LUMA, x[:3], axes=1)
    return grey


def _like(x: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8) if dtype == np.uint8 else x.astype(dtype)


def fit_images(images: np.ndarray, shape: tuple[int, ...], fit: str = "auto", resize: int | None = None) -> np.ndarray:
    """Images (an N x C x H x W array) at ``shape``: channels converted (grey <-> RGB),
    then padded (centred, with zeros), resized (bilinear) or cropped (the shorter side to
    ``resize``, then the centre): what ``Transform.from_file`` does to a file."""
    if len(shape) != 3:
        raise DataError(f"image data needs a C x H x W input, but the spec's input is {shape}")
    channels, height, width = shape
    x = images
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = np.repeat(x, channels, axis=1)
        elif channels == 1 and x.shape[1] in (3, 4):
            luminance = x[:, :3].astype(np.float32).transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114], np.float32)
            x = luminance[:, None].round().astype(x.dtype) if x.dtype == np.uint8 else luminance[:, None]
        else:
            raise DataError(f"images have {x.shape[1]} channels; the spec's input has {channels}")
    h, w = x.shape[2:]
    rule = fit_rule((h, w), (height, width), fit)
    if rule == "keep":
        return x
    if rule == "pad":
        if h > height or w > width:
            raise DataError(f"images of {h}x{w} cannot be padded to {height}x{width}; use fit: resize")
        top, left = (height - h) // 2, (width - w) // 2
        padded = np.zeros((len(x), x.shape[1], height, width), dtype=x.dtype)
        padded[:, :, top : top + h, left : left + w] = x
        return padded
    if rule == "letterbox":
        inner_w, inner_h = letterbox_size((w, h), (width, height))
        inner = np.stack([resize_box(image, (0.0, 0.0, float(w), float(h)), (inner_h, inner_w)) for image in x])
        return fit_images(inner, shape, "pad")
    box = Transform((channels, height, width), fit, resize)._box((w, h), None)
    assert box is not None  # resize and crop always name a region
    out = np.empty((len(x), x.shape[1], height, width), dtype=np.float32 if x.dtype != np.uint8 else np.uint8)
    for i, image in enumerate(x):
        out[i] = resize_box(image, box, (height, width))
    return out
