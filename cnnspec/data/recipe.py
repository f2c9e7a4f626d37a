"""What ``predict`` does to an image file, as plain Pillow and NumPy a user can run.

An exported model's users prepare images in their own code. ``preparation_code`` writes
that code for a run: a ``prepare(path)`` function whose pixels are the ones ``predict``
computes (Pillow's calls in the same order: open, turn upright, convert, one bilinear
resize of a box), so a model served elsewhere gives predict's probabilities. A test runs
the generated code against predict on JPEG, PNG, greyscale and RGBA files of many sizes.
"""

from __future__ import annotations

MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _fit_lines(fit: str, shorter_side: int, height: int, width: int, mode: str) -> list[str]:
    """The lines that take ``image`` (upright, converted) to the input's size."""
    resize = [f"image = image.resize(({width}, {height}), Image.Resampling.BILINEAR, box=box)"]
    pad = [
        f"if width > {width} or height > {height}:",
        f"    raise ValueError(f\"{{path}}: {{width}}x{{height}} is larger than the {width}x{height} input\")",
        f"canvas = Image.new(\"{mode}\", ({width}, {height}))  # black",
        f"canvas.paste(image, (({width} - width) // 2, ({height} - height) // 2))",
        "image = canvas",
    ]
    if fit == "crop":
        return [
            f"scale = {shorter_side} / min(width, height)  # the shorter side to {shorter_side}",
            f"crop_width, crop_height = min(width, {width} / scale), min(height, {height} / scale)",
            "box = ((width - crop_width) / 2, (height - crop_height) / 2, (width + crop_width) / 2, (height + crop_height) / 2)",
            *[line + f"  # the centre {height} x {width}" for line in resize],
        ]
    if fit == "letterbox":
        return [
            f"if (width, height) != ({width}, {height}):",
            f"    scale = min({width} / width, {height} / height)  # the longer side fills the input",
            f"    inner = (max(1, min({width}, round(width * scale))), max(1, min({height}, round(height * scale))))",
            "    image = image.resize(inner, Image.Resampling.BILINEAR, box=(0, 0, width, height))",
            f"    canvas = Image.new(\"{mode}\", ({width}, {height}))  # black",
            f"    canvas.paste(image, (({width} - inner[0]) // 2, ({height} - inner[1]) // 2))",
            "    image = canvas",
        ]
    if fit == "resize":
        return [f"if (width, height) != ({width}, {height}):", "    box = (0, 0, width, height)", *("    " + line for line in resize)]
    if fit == "pad":
        return [f"if (width, height) != ({width}, {height}):", *("    " + line for line in pad)]
    # auto, as runs trained before crop became the default for image files recorded it
    small = f"width <= {width} and height <= {height} and {height} - height <= {height // 4} and {width} - width <= {width // 4}"
    return [
        f"if (width, height) == ({width}, {height}):",
        "    pass",
        f"elif {small}:  # at most 25% smaller: padded",
        *("    " + line for line in pad),
        "else:  # resized to the input, the aspect ratio not kept",
        "    box = (0, 0, width, height)",
        *("    " + line for line in resize),
    ]


def preparation_code(fit: str, shorter_side: int, shape: tuple[int, int, int], normalization: tuple[float, list[float], list[float]] | None = None,
                     name: str = "the network") -> str:
    """Python source of ``prepare(path)``: one image file as a 1 x C x H x W float32 batch,
    pixels in [0, 1] (``normalization`` None: what predict's .npy inputs and an export with
    its preprocessing take), or normalised as in training ((scale, mean, std): an export
    made with --no-preprocessing)."""
    channels, height, width = shape
    mode = MODES[channels]
    body = [
        "with Image.open(path) as opened:",
        f"    image = ImageOps.exif_transpose(opened).convert(\"{mode}\")  # upright; alpha dropped, grey or colour as the input",
        "width, height = image.size",
        *_fit_lines(fit, shorter_side, height, width, mode),
        "pixels = np.asarray(image, np.float32) / 255  # H x W" + (" x C" if channels > 1 else ""),
        "pixels = " + ("pixels[None, None]" if channels == 1 else "pixels.transpose(2, 0, 1)[None]") + "  # 1 x C x H x W, in [0, 1]",
    ]
    if normalization is not None:
        scale, mean, std = normalization
        body += [
            f"pixels = pixels * 255 * {scale!r}  # the training scale",
            f"mean = np.array({[float(m) for m in mean]!r}, np.float32)[:, None, None]",
            f"std = np.array({[float(s) for s in std]!r}, np.float32)[:, None, None]",
            "pixels = (pixels - mean) / std",
        ]
    body.append("return pixels.astype(np.float32)")
    returned = "normalised as in training" if normalization is not None else "pixels in [0, 1]"
    lines = [
        f'"""How cnnspec prepares an image file for {name}: plain Pillow and NumPy, the same',
        'pixels as `cnnspec predict` (16-bit images: cnnspec scales 65535 to 255 first)."""',
        "",
        "import numpy as np",
        "from PIL import Image, ImageOps",
        "",
        "",
        "def prepare(path):",
        f'    """One image file -> a 1 x {channels} x {height} x {width} float32 batch, {returned}."""',
        *("    " + line if line else "" for line in body),
        "",
    ]
    return "\n".join(lines)


def run_preparation_code(config: object, shape: tuple[int, ...], normalization: tuple[float, list[float], list[float]] | None = None,
                         name: str = "the network") -> str:
    """``preparation_code`` for a run's ``train.data`` settings (its fit and resize)."""
    from cnnspec.data.decode import image_shape
    from cnnspec.data.transforms import Transform

    data = config.data  # type: ignore[attr-defined]
    transform = Transform(image_shape(shape), data.fit, data.resize)
    return preparation_code(transform.fit, transform.shorter_side, transform.shape, normalization, name)
