"""Declared transforms: the ImageNet recipe (random resized crops and flips for training,
shorter side then centre crop for evaluation), colour jitter, and the preset that turns
them on for photos; each sample's draws seeded, so runs repeat whatever the workers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.data import Transform, decode
from cnnspec.data.dataset import load_dataset, load_images
from cnnspec.data.errors import DataError
from cnnspec.data.loader import ImageStream, batches
from cnnspec.data.transforms import color_jitter, fit_images, random_resized_box, sample_generator
from cnnspec.spec.training import DataConfig, resolve_preset


def encoded(array: np.ndarray, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def smooth(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: random colours on a coarse grid, bilinearly enlarged."""
    coarse = np.random.default_rng(seed).integers(0, 256, (max(2, height // 32), max(2, width // 32), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def test_random_resized_boxes_keep_to_the_declared_area_and_aspect() -> None:
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        left, top, right, bottom = random_resized_box(400, 300, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert all(v == int(v) for v in (left, top, right, bottom))
        areas.append((right - left) * (bottom - top) / (400 * 300))
        aspects.append((right - left) / (bottom - top))
    areas_, aspects_ = np.array(areas), np.array(aspects)
    assert areas_.min() >= 0.07 and areas_.max() <= 1.0
    assert aspects_.min() >= 0.74 and aspects_.max() <= 1.35
    assert areas_.min() < 0.1 and areas_.max() > 0.9  # the whole range is used
    # A strip no box of ratio 3/4..4/3 with area >= 8% fits in ten tries: the central crop
    # of the nearest allowed aspect, as torchvision falls back to.
    assert random_resized_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), np.random.default_rng(1)) == (493.0, 0.0, 506.0, 10.0)


def test_evaluation_crop_is_resize_then_centre_crop() -> None:
    """fit: crop at 224 is torchvision's Resize(256) + CenterCrop(224): one resize with a box
    gives the pixels of resizing the whole image and cutting the centre out."""
    photo = smooth(512, 640)
    got = Transform((3, 224, 224), "crop").from_file(encoded(photo))
    whole = np.asarray(Image.fromarray(photo).resize((320, 256), Image.Resampling.BILINEAR))  # shorter side 512 -> 256
    expected = whole[16:240, 48:272].transpose(2, 0, 1)
    assert got.shape == (3, 224, 224)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # A custom shorter side, and a non-square input, keep the centre.
    tall = Transform((3, 64, 32), "crop", resize=80).from_file(encoded(photo))
    assert tall.shape == (3, 64, 32)
    with pytest.raises(DataError, match="make resize at least 224"):
        Transform((3, 224, 224), "crop", resize=200)


def test_arrays_and_files_are_cropped_alike() -> None:
    photo = smooth(120, 90, seed=4)
    from_file = Transform((3, 56, 56), "crop", resize=64).from_file(encoded(photo))
    from_array = fit_images(photo.transpose(2, 0, 1)[None], (3, 56, 56), "crop", 64)[0]
    assert np.abs(from_file.astype(int) - from_array.astype(int)).max() <= 1


def test_large_jpegs_are_cropped_from_a_reduced_decode_without_visible_loss() -> None:
    """The draft scale is chosen for the region kept: a centre crop of a 2000x1600 photo is
    decoded at 1/4 and differs from the full decode by under 2 levels on average; a small
    random crop (a tenth of the area) is decoded at a scale that still holds it."""
    photo = smooth(1600, 2000, seed=5)
    jpeg, lossless = encoded(photo, "JPEG", quality=95), encoded(photo)
    crop = Transform((3, 224, 224), "crop")
    assert np.abs(crop.from_file(jpeg).astype(int) - crop.from_file(lossless).astype(int)).mean() < 2.0
    rrc = Transform((3, 224, 224), "crop", crop_scale=(0.1, 0.1))
    small, reference = rrc.from_file(jpeg, np.random.default_rng(3)), rrc.from_file(lossless, np.random.default_rng(3))
    assert np.abs(small.astype(int) - reference.astype(int)).mean() < 2.0


def test_crops_see_an_exif_rotated_photo_upright() -> None:
    """A landscape stored as portrait with EXIF orientation 6: the crop is taken from the
    upright image (red on top), also when the JPEG is decoded at reduced scale."""
    wide = np.zeros((400, 800, 3), np.uint8)
    wide[:, :400, 0] = 255
    wide[:, 400:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(wide, "JPEG", quality=95, exif=exif.tobytes())
    upright = decode(data, 3)
    assert upright.shape == (3, 800, 400)
    out = Transform((3, 64, 64), "crop").from_file(data)  # shorter side 400 -> 73, centre of a tall image
    top, bottom = out[:, :16].reshape(3, -1).mean(axis=1), out[:, 48:].reshape(3, -1).mean(axis=1)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    box_rng = np.random.default_rng(0)
    for _ in range(20):  # random crops land inside the upright image and keep its colours
        crop = Transform((3, 32, 32), crop_scale=(0.05, 0.2)).from_file(data, box_rng)
        assert crop[1].max() < 60  # no green anywhere: red or blue only


class Fixed:
    """A generator that draws fixed numbers, to pin colour jitter's factors and order."""

    def __init__(self, factors: list[float], order: list[int]) -> None:
        self.factors, self.order = iter(factors), order

    def uniform(self, low: float, high: float) -> float:
        return next(self.factors)

    def permutation(self, n: int) -> np.ndarray:
        return np.array(self.order)


def test_colour_jitter_blends_as_torchvision_does() -> None:
    image = np.stack([np.full((4, 4), 200), np.full((4, 4), 100), np.full((4, 4), 40)]).astype(np.uint8)
    image[:, 0, 0] = (10, 20, 30)
    bright = color_jitter(image, (0.5, 0.0, 0.0), Fixed([1.5], [0, 1, 2]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(bright, np.clip(np.rint(image * 1.5), 0, 255).astype(np.uint8))
    grey = color_jitter(image, (0.0, 0.0, 1.0), Fixed([0.0], [2, 1, 0]))  # type: ignore[arg-type]
    luma = np.rint(0.299 * image[0].astype(float) + 0.587 * image[1] + 0.114 * image[2])
    for channel in grey:
        np.testing.assert_allclose(channel, luma, atol=1)  # saturation 0: the image's own grey
    flat = color_jitter(image, (0.0, 1.0, 0.0), Fixed([0.0], [1, 0, 2]))  # type: ignore[arg-type]
    assert np.ptp(flat) <= 1  # contrast 0: the mean grey everywhere
    # Order matters once values clip: brightness x2 then contrast x0.5 is not the reverse.
    a = color_jitter(image, (1.0, 0.5, 0.0), Fixed([2.0, 0.5], [0, 1, 2]))  # type: ignore[arg-type]
    b = color_jitter(image, (1.0, 0.5, 0.0), Fixed([2.0, 0.5], [1, 0, 2]))  # type: ignore[arg-type]
    assert not np.array_equal(a, b)
    floats = color_jitter(image.astype(np.float32) / 255, (0.5, 0.0, 0.0), Fixed([1.5], [0, 1, 2]))  # type: ignore[arg-type]
    assert floats.dtype == np.float32 and floats.max() == pytest.approx(1.5 * 200 / 255)  # floats are not clipped


def test_preset_imagenet_fills_what_the_user_left_unset() -> None:
    auto = resolve_preset(DataConfig(), (3, 224, 224), image_files=True)
    assert auto.preset == "imagenet" and auto.fit == "crop" and auto.augment.hflip
    assert auto.augment.random_resized_crop is not None and auto.augment.random_resized_crop.scale == (0.08, 1.0)
    assert not isinstance(auto.normalize, str) and auto.normalize.mean == [0.485, 0.456, 0.406]
    assert resolve_preset(auto, (3, 224, 224), image_files=True) == auto  # a recorded run resolves to itself
    for shape, files in (((3, 64, 64), True), ((3, 224, 224), False), ((1, 224, 224), True), ((3, 224, 160), True)):
        assert resolve_preset(DataConfig(), shape, image_files=files).preset == "none", shape
    mine = DataConfig.model_validate({"preset": "imagenet", "fit": "resize", "augment": {"hflip": False}, "normalize": "unit"})
    mine = resolve_preset(mine, (3, 32, 32), image_files=False)
    assert (mine.fit, mine.augment.hflip, mine.normalize) == ("resize", False, "unit")
    assert mine.augment.random_resized_crop is not None


def test_spec_errors_in_transforms_point_at_their_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\ninput: {shape: [3, 32, 32]}\nlayers:\n  - dense: {units: 3}\ntrain:\n  data:\n    augment:\n"
        "      random_resized_crop: {scale: [0.9, 0.1]}\n"
    )
    with pytest.raises(cnnspec.SpecError) as caught:
        cnnspec.load_spec(spec)
    assert "bad.yaml:8" in str(caught.value) and "[low, high]" in str(caught.value)


def folder(root: Path, per_class: int, size: tuple[int, int] = (40, 56)) -> Path:
    rng = np.random.default_rng(7)
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(size[0], size[1], size=2))
            Image.fromarray(smooth(h, w, seed=int(rng.integers(1 << 30)))).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def test_per_sample_draws_repeat_whatever_the_workers_and_change_by_epoch(tmp_path: Path) -> None:
    root = folder(tmp_path / "photos", 10)
    config = DataConfig.model_validate({"source": str(root), "stream": "always", "augment": {"random_resized_crop": True, "color_jitter": {"saturation": 0.4}}})
    runs = {}
    for workers in (0, 2):
        data = load_dataset(config.model_copy(update={"workers": workers}), (3, 24, 24), 2, 0)
        assert isinstance(data.x_train, ImageStream) and "random resized crops" in data.residence
        order = np.random.default_rng(1).permutation(len(data.x_train))
        runs[workers] = [np.concatenate([x.copy() for _, x in data.training_batches(order, 4, (0, epoch))]) for epoch in (0, 1)]
    np.testing.assert_array_equal(runs[0][0], runs[2][0])
    np.testing.assert_array_equal(runs[0][1], runs[2][1])
    assert not np.array_equal(runs[0][0], runs[0][1])  # a new epoch, new crops
    plain = np.concatenate([x for _, x in batches(data.x_train, order, 4)])  # no seed: prepared as for evaluation
    assert not np.array_equal(plain, runs[0][0])
    np.testing.assert_array_equal(plain, np.concatenate([x for _, x in batches(data.x_train, order, 4)]))


def test_jitter_on_held_images_equals_jitter_in_the_workers(tmp_path: Path) -> None:
    """Colour jitter needs no full-size file: a set held in memory gets it in the training
    process, a streamed one in the workers, with the same draws and the same pixels
    (flips too, drawn per sample alongside)."""
    root = folder(tmp_path / "photos", 6)
    settings = {"source": str(root), "fit": "resize", "augment": {"hflip": True, "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}}}
    got = {}
    for stream in ("never", "always"):
        data = load_dataset(DataConfig.model_validate({**settings, "stream": stream, "workers": 2}), (3, 20, 20), 2, 0)
        got[stream] = np.concatenate([x.copy() for _, x in data.training_batches(np.arange(len(data.x_train)), 3, (5, 2))])
    np.testing.assert_array_equal(got["never"], got["always"])
    plain = load_dataset(DataConfig.model_validate({**settings, "augment": {}, "stream": "never"}), (3, 20, 20), 2, 0).x_train
    assert isinstance(plain, np.ndarray)
    mirrored = [bool(np.abs(g.astype(int) - p[:, :, ::-1]).sum() < np.abs(g.astype(int) - p).sum()) for g, p in zip(got["never"], plain, strict=True)]
    assert 0 < sum(mirrored) < len(mirrored)  # some flipped, some not


def test_random_resized_crops_of_held_arrays(tmp_path: Path) -> None:
    """Array data (an .npz here) is cropped from the images held at the input size."""
    x = np.stack([smooth(32, 32, seed=i).transpose(2, 0, 1) for i in range(12)])
    np.savez(tmp_path / "set.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    config = DataConfig.model_validate({"source": str(tmp_path / "set.npz"), "augment": {"random_resized_crop": {"scale": [0.25, 0.5]}}})
    data = load_dataset(config, (3, 32, 32), 2, 0)
    (index, crops), = list(data.training_batches(np.arange(12), 12, (0, 0)))
    assert crops.shape == (12, 3, 32, 32) and crops.dtype == np.uint8
    for i, crop in zip(index, crops, strict=True):
        box = random_resized_box(32, 32, (0.25, 0.5), (3 / 4, 4 / 3), sample_generator((0, 0), int(i)))
        from cnnspec.data.fit import resize_box

        np.testing.assert_array_equal(crop, resize_box(x[i], box, (32, 32)))
    assert not np.array_equal(crops, x)


def test_a_photo_run_uses_the_imagenet_recipe_and_predicts_with_its_centre_crop(tmp_path: Path) -> None:
    """A square RGB input of 224 on image files gets the preset: training streams random
    resized crops, validation and prediction take the centre crop of the shorter side at
    256, and the run records every resolved field, so `predict` on a training file gives
    exactly what `evaluate` computes for it."""
    pytest.importorskip("torch")
    root = folder(tmp_path / "photos", 6, size=(240, 320))
    graph = cnnspec.parse_spec(
        "name: tiny224\ninput: {shape: [3, 224, 224]}\nlayers:\n  - conv2d: {filters: 2, kernel: 8, stride: 8}\n"
        "  - global_avgpool2d: {}\n  - dense: {units: 2}\n",
        "tiny224.yaml",
    )
    result = cnnspec.train(graph, "torch", out=tmp_path / "run", quiet=True, epochs=1, batch_size=4, **{"data.source": str(root), "data.workers": 2})
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["train"]["data"]
    assert recorded["preset"] == "imagenet" and recorded["fit"] == "crop" and recorded["augment"]["random_resized_crop"]["scale"] == [0.08, 1.0]
    assert recorded["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    files = sorted((root / "ant").glob("*.jpg"))[:3]
    held = load_images(files, (3, 224, 224), "crop")
    expected = np.stack([Transform((3, 224, 224), "crop").from_file(f.read_bytes()) for f in files])
    np.testing.assert_array_equal(held, expected)
    predictions, outputs = cnnspec.predict(tmp_path / "run", files)
    assert [p["input"] for p in predictions] == [str(f) for f in files] and predictions[0]["top"][0]["class"] in ("ant", "bee")
    session = result.session
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    direct = session.predict(((expected / np.float32(255) - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
    assert_agrees(outputs, direct)
    assert math.isfinite(result.final["val_loss"])


def test_cli_transforms_line_and_set_switches(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = folder(tmp_path / "photos", 4)
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--data", str(root), "--epochs", "1", "--workers", "0", "--classes", "auto", "--out", "run",
         "--set", "data.augment.random_resized_crop=true", "--set", "data.augment.color_jitter.brightness=0.2", "--set", "data.augment.hflip=true"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "transforms: train: random resized crops to 32x32 (scale 0.08-1), colour jitter (brightness 0.2), flips; val: shorter side to 32, centre 32x32 (aspect ratio kept) (preset none)" in result.stderr
    assert "random resized crops from each file at full size" in result.stderr
