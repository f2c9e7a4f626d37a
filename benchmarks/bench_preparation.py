"""How image files meet the input: which fit, and whether reduced-size JPEG decoding pays
(run by hand: `python benchmarks/bench_preparation.py [--seeds N]`).

1. Fit. A folder of generated JPEGs of mixed sizes (40 to 160 pixels a side, aspect
   ratios 0.6 to 1.6), each a small circle, square or triangle (a quarter to under half of the shorter side across) anywhere on a noisy background, whose
   class is its shape (a stretched circle is an ellipse: the aspect ratio carries the
   class). A small CNN at 3 x 48 x 48 trains on it with each fit (same data, same seed):
   crop (the shorter side to 48, then the centre), letterbox (the longer side to 48, the
   rest black), resize (stretched to 48 x 48), and auto as it was before (decided per
   image: pad when at most 25% smaller, else stretch),
   for 6 epochs; the validation accuracy is read after the last.
2. Decoding. 200 photo-like 1600 x 1200 JPEGs fitted to 64 x 64 and 224 x 224: seconds
   per image with Pillow's draft mode (decoding at 1/2, 1/4 or 1/8) and at full size, and
   the mean and largest pixel difference between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SPEC = """
name: shapes_net
input: {shape: [3, 48, 48]}
defaults:
  conv2d: {activation: relu, padding: same}
layers:
  - conv2d: {filters: 16, kernel: 3}
  - maxpool2d: {kernel: 2}
  - conv2d: {filters: 32, kernel: 3}
  - maxpool2d: {kernel: 2}
  - conv2d: {filters: 64, kernel: 3}
  - global_avgpool2d: {}
  - dense: {units: 3}
train: {epochs: 6, batch_size: 32, optimizer: {name: adam, lr: 0.003}}
"""


def shapes_folder(root: Path, count: int, seed: int) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(count):
        kind = ("circle", "square", "triangle")[i % 3]
        side = int(rng.integers(40, 161))
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        w, h = (side, max(24, int(side / aspect))) if aspect >= 1 else (max(24, int(side * aspect)), side)
        image = Image.fromarray(rng.integers(40, 200, (h, w, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        r = rng.uniform(0.12, 0.22) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.jpg", quality=90)
    return root


@contextlib.contextmanager
def per_image_auto(active: bool) -> Iterator[None]:
    """``fit: auto`` as it was before image files were given one rule: decided per image
    (pad when at most 25% smaller, else stretch)."""
    import cnnspec.data.dataset as data

    original = data.resolve_preset
    if active:
        data.resolve_preset = lambda config, shape, image_files: original(config, shape, False)  # type: ignore[assignment]
    try:
        yield
    finally:
        data.resolve_preset = original


def fit_accuracy(seeds: int) -> None:
    import cnnspec

    graph = cnnspec.parse_spec(SPEC)
    print("fit on a mixed-size folder (val accuracy after 6 epochs, 900 images, 20% held out)")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(seeds):
            folder = shapes_folder(Path(scratch) / f"shapes-{seed}", 900, seed)
            for fit, extra in (("crop", {"data.resize": 48}), ("letterbox", {}), ("resize", {}), ("auto", {})):
                started = time.perf_counter()
                with per_image_auto(fit == "auto"):
                    result = cnnspec.train(graph, "torch", out=Path(scratch) / f"run-{seed}-{fit}", seed=seed,
                                           **{"data.source": str(folder), "data.fit": fit, "data.workers": 0, **extra})
                accuracy = result.final["val_accuracy"]
                results.setdefault(fit, []).append(accuracy)
                print(f"  seed {seed}  fit {fit:<7} val_accuracy {accuracy:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    for fit, values in results.items():
        print(f"fit {fit:<7} mean val_accuracy {np.mean(values):.3f} over {len(values)} seed(s)")


def decoding(count: int = 200) -> None:
    from PIL import Image

    from cnnspec.data.transforms import Transform

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (40, 54, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((1600, 1200), Image.Resampling.BICUBIC)
        from io import BytesIO

        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    print(f"decoding {count} JPEGs of 1600 x 1200")
    for size in (64, 224):
        timings, arrays = {}, {}
        for draft in (True, False):
            transform = Transform((3, size, size), "crop", size, draft=draft)
            started = time.perf_counter()
            arrays[draft] = np.stack([transform.from_file(b) for b in blobs])
            timings[draft] = (time.perf_counter() - started) / count
        difference = np.abs(arrays[True].astype(np.int16) - arrays[False].astype(np.int16))
        print(f"  {size} x {size}: draft {timings[True] * 1e3:.1f} ms, full {timings[False] * 1e3:.1f} ms an image "
              f"(full / draft {timings[False] / timings[True]:.1f}x); pixels differ by {difference.mean():.2f} on average, {difference.max()} at most (of 255)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--skip-decoding", action="store_true")
    args = parser.parse_args()
    if not args.skip_decoding:
        decoding()
    if not args.skip_fit:
        fit_accuracy(args.seeds)


if __name__ == "__main__":
    main()
