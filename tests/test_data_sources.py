"""Image sources a user brings: messy class folders, manifests and tar shards; every file
is read correctly or skipped and counted, and one function prepares an image everywhere."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnspec.data import BadImage, Transform, decode, list_source
from cnnspec.data.dataset import load_dataset, load_images
from cnnspec.data.errors import DataError
from cnnspec.data.transforms import fit_images
from cnnspec.spec.training import DataConfig


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def halves() -> Image.Image:
    """20 wide, 10 high: red left half, blue right half (tells rotations apart)."""
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10, 0] = 255
    array[:, 10:, 2] = 255
    return Image.fromarray(array)


def test_exif_rotated_photo_is_turned_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show rotated 90 degrees clockwise
    upright = decode(jpeg_bytes(halves(), exif=exif.tobytes()), 3)
    assert upright.shape == (3, 20, 10)  # tall now
    top, bottom = upright[:, :8].reshape(3, -1).mean(axis=1), upright[:, 12:].reshape(3, -1).mean(axis=1)
    assert top[0] > 200 and top[2] < 60  # red on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_modes_are_converted() -> None:
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    assert decode(png_bytes(sixteen), 1).tolist() == [[[0, 128, 255]]]
    assert decode(png_bytes(sixteen), 3)[:, 0, 2].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink: white
    assert decode(jpeg_bytes(cmyk), 3).min() >= 250
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert decode(png_bytes(rgba), 3)[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
    grey = Image.new("L", (3, 2), 77)
    assert decode(png_bytes(grey), 3).shape == (3, 2, 3) and decode(png_bytes(grey), 3).max() == 77
    palette = Image.new("RGB", (2, 2), (200, 0, 0)).convert("P")  # the web palette's nearest red, 204
    assert decode(png_bytes(palette), 3)[:, 0, 0].tolist() == [204, 0, 0]
    assert decode(png_bytes(palette), 1)[0, 0, 0] == 61  # ITU-R 601 luma, 0.299 x 204


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file named photo.jpg\n", "not an image"),
        (jpeg_bytes(halves())[:300], "truncated or corrupt"),
    ],
)
def test_unusable_files_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        decode(data, 3)


def test_large_jpegs_decode_at_reduced_scale_never_below_the_target() -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3)).astype(np.uint8))
    reduced = decode(jpeg_bytes(big), 3, size_hint=(56, 56))
    assert reduced.shape == (3, 60, 80)  # 1/8 scale: the smallest that still covers 56x56
    assert decode(jpeg_bytes(big), 3, size_hint=(300, 300)).shape == (3, 480, 640)  # 1/2 would be too small
    assert Transform((3, 56, 56), "resize").from_file(jpeg_bytes(big)).shape == (3, 56, 56)


def messy_folder(root: Path) -> dict[str, int]:
    """Class folders holding every kind of file a real collection has; returns how many
    usable images each class holds."""
    rng = np.random.default_rng(0)
    cat, dog, empty = root / "cat", root / "dog", root / "empty"
    for folder in (cat, dog, empty):
        folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3)).astype(np.uint8)).save(cat / f"ok{i}.jpg")
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(cat / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (32, 32))).astype(np.uint16)).save(dog / "sixteen.png")
    Image.new("L", (32, 32), 90).save(dog / "grey.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(dog / "alpha.png")
    (dog / "zero.jpg").write_bytes(b"")
    (dog / "notes.jpg").write_text("not an image")
    (dog / "cut.jpg").write_bytes(jpeg_bytes(halves())[:200])
    (dog / "readme.txt").write_text("ignored: not an image suffix")
    return {"cat": 5, "dog": 3, "empty": 0}


def test_a_messy_folder_is_read_with_bad_files_skipped_and_counted(tmp_path: Path) -> None:
    usable = messy_folder(tmp_path)
    data = load_dataset(DataConfig(source=str(tmp_path), validation=0.25), (3, 16, 16), 3, 0)
    assert data.classes == ["cat", "dog", "empty"]
    labels = np.concatenate([data.y_train, data.y_val])
    assert np.bincount(labels, minlength=3).tolist() == [usable["cat"], usable["dog"], 0]
    reasons = {Path(entry.split(":")[0]).name: entry for entry in data.skipped}
    assert set(reasons) == {"empty", "zero.jpg", "notes.jpg", "cut.jpg"}
    assert "class folder has no images" in reasons["empty"]
    assert "empty file" in reasons["zero.jpg"] and "not an image" in reasons["notes.jpg"] and "truncated" in reasons["cut.jpg"]
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (3, 16, 16)


def test_strict_makes_the_first_bad_file_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "fine.png")
    (tmp_path / "a" / "zero.jpg").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "also-fine.png")
    with pytest.raises(DataError, match=r"zero\.jpg: empty file"):
        load_dataset(DataConfig(source=str(tmp_path), strict=True), (3, 8, 8), 1, 0)
    assert len(load_dataset(DataConfig(source=str(tmp_path), validation=0.5), (3, 8, 8), 1, 0).skipped) == 1  # a readable one validates


def test_csv_manifest_with_names_splits_and_a_missing_file(tmp_path: Path) -> None:
    images = tmp_path / "anywhere" / "deep"
    images.mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), 40 * i).save(images / f"{i}.png")
    rows = ["path,label,split"] + [f"anywhere/deep/{i}.png,{'sun' if i % 2 else 'moon'},{'val' if i >= 4 else 'train'}" for i in range(6)]
    rows.append("anywhere/deep/gone.png,sun,train")
    manifest = tmp_path / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    data = load_dataset(DataConfig(source=str(manifest)), (1, 8, 8), 2, 0)
    assert data.classes == ["moon", "sun"]
    assert data.y_train.tolist() == [0, 1, 0, 1] and data.y_val.tolist() == [0, 1]
    assert data.x_val[:, 0, 0, 0].tolist() == [160, 200]
    assert data.skipped == (f"{manifest}:8: {images / 'gone.png'}: no such file",)


def test_jsonl_manifest_with_integer_labels(tmp_path: Path) -> None:
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"{i}.png", "label": 2 * (i % 2)}) + "\n" for i in range(5)))
    listing = list_source(manifest)
    assert listing is not None and listing.classes == ["0", "1", "2"]
    assert [s.label for s in listing.train] == [0, 2, 0, 2, 0] and listing.val is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "path,label\na.png,cat\nb.png\n", r"m\.csv:3: 1 fields where the header has 2"),
        ("m.csv", "file,class\na.png,cat\n", r"m\.csv:1: a CSV manifest's header names the columns 'path' and 'label'"),
        ("m.csv", "path,label,split\na.png,cat,test\n", r"m\.csv:2: split is 'train' or 'val', got 'test'"),
        ("m.jsonl", '{"path": "a.png", "label": 1}\n{"path": "b.png", "label": \n', r"m\.jsonl:2: not a JSON object"),
        ("m.jsonl", '{"path": "a.png"}\n', r"m\.jsonl:1: the row has no 'label'"),
    ],
)
def test_malformed_manifest_rows_are_errors_naming_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(source=str(tmp_path / name)), (3, 8, 8), 2, 0)


def write_shard(path: Path, samples: list[tuple[str, bytes | None, int | None]]) -> None:
    with tarfile.open(path, "w") as shard:
        for key, image, label in samples:
            for suffix, payload in ((".png", image), (".cls", None if label is None else str(label).encode())):
                if payload is not None:
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(payload)
                    shard.addfile(info, io.BytesIO(payload))


def test_tar_shards_are_read_by_offset(tmp_path: Path) -> None:
    pictures = {f"s{i:03d}": Image.new("L", (6, 6), 30 * i) for i in range(7)}
    write_shard(tmp_path / "shard-000000.tar", [(k, png_bytes(pictures[k]), i % 3) for i, k in enumerate(list(pictures)[:4])])
    write_shard(
        tmp_path / "shard-000001.tar",
        [(k, png_bytes(pictures[k]), i % 3) for i, k in enumerate(list(pictures)[4:], start=4)] + [("orphan", png_bytes(pictures["s000"]), None)],
    )
    listing = list_source(tmp_path)
    assert listing is not None and listing.classes == ["0", "1", "2"]
    assert [s.member for s in listing.train] == [f"s{i:03d}.png" for i in range(7)]
    assert [s.label for s in listing.train] == [i % 3 for i in range(7)]
    assert all(decode(s.read(), 1)[0, 0, 0] == 30 * i for i, s in enumerate(listing.train))
    assert listing.skipped == [f"{tmp_path / 'shard-000001.tar'}:orphan.png: no orphan.cls with a class index beside it"]
    data = load_dataset(DataConfig(source=str(tmp_path / "shard-000000.tar")), (1, 6, 6), 3, 0)
    assert len(data.x_train) + len(data.x_val) == 4


def test_a_file_is_prepared_for_prediction_exactly_as_for_training(tmp_path: Path) -> None:
    """The 28x28 digit as a PNG file meets a 32x32 input the way the array does (padded,
    fit: auto), and a resize-fitted run resizes both the same way."""
    digit = np.random.default_rng(1).integers(0, 256, (28, 28)).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    for fit in ("auto", "pad", "resize"):
        from_file = load_images([tmp_path / "digit.png"], (1, 32, 32), fit)
        np.testing.assert_array_equal(from_file, fit_images(digit[None, None], (1, 32, 32), fit))
    assert load_images([tmp_path / "digit.png"], (1, 32, 32))[0, 0, 2:30, 2:30].tolist() == digit.tolist()


def test_unreadable_prediction_input_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.png: cannot read image \(empty file"):
        load_images([tmp_path / "zero.png"], (1, 8, 8))


def test_training_on_a_messy_folder_says_what_it_skipped(tmp_path: Path) -> None:
    """As a user runs it: the run goes on, names the first bad files and counts them in
    metrics.jsonl; with --strict it stops at the first, exit 1 and no traceback."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    messy_folder(tmp_path / "photos")
    spec = tmp_path / "small.yaml"
    spec.write_text(
        "name: small\ninput: {shape: [3, 16, 16]}\nlayers:\n  - conv2d: {filters: 4, kernel: 3, activation: relu}\n"
        "  - global_avgpool2d: {}\n  - dense: {units: 3}\n"
    )
    command = [sys.executable, "-m", "cnnspec", "train", str(spec), "--data", "photos", "--epochs", "1", "--set", "data.validation=0.25"]
    result = subprocess.run([*command, "--out", "run"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "skipped 4 sample(s) that cannot be used" in result.stdout + result.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert row["skipped_samples"] == 4
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["skipped"]) == 4
    strict = subprocess.run([*command, "--out", "strict", "--strict"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "class folder has no images (strict" in strict.stderr and not (tmp_path / "strict").exists()


def photo_folder(root: Path, per_class: int = 12, broken: bool = True) -> None:
    rng = np.random.default_rng(3)
    for name in ("ant", "bee", "cow"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(14, 30)), int(rng.integers(14, 30)))
            Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    if broken:
        (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_stream_gives_the_batches_memory_gives_whatever_the_workers(tmp_path: Path, workers: int) -> None:
    from cnnspec.data.loader import ImageStream, batches

    photo_folder(tmp_path)
    shape = (3, 16, 16)
    held = load_dataset(DataConfig(source=str(tmp_path), stream="never", workers=0), shape, 3, 0)
    streamed = load_dataset(DataConfig(source=str(tmp_path), stream="always", workers=workers), shape, 3, 0)
    assert isinstance(streamed.x_train, ImageStream) and isinstance(held.x_train, np.ndarray)
    assert held.residence == "in memory" and streamed.residence.startswith("streamed")
    assert [entry.split(":")[0] for entry in held.skipped] == [str(tmp_path / "bee" / "broken.png")]
    order = np.random.default_rng(5).permutation(len(streamed.x_train))
    got = list(batches(streamed.x_train, order, 7))
    delivered = np.concatenate([index for index, _ in got])
    assert len(delivered) == len(held.x_train) == len(order) - (streamed.skipped_so_far() != [])
    # the in-memory set was decoded in file order without the broken file: map positions to it
    names = [s.name for s in streamed.x_train.samples]
    held_names = [name for name in names if not name.endswith("broken.png")]
    for index, images in got:
        for position, image in zip(index, images, strict=True):
            np.testing.assert_array_equal(image, held.x_train[held_names.index(names[position])])
    np.testing.assert_array_equal(streamed.y_train[delivered], [held.y_train[held_names.index(names[p])] for p in delivered])
    assert streamed.skipped_so_far() == list(held.skipped)


def test_a_stream_stops_at_a_bad_file_when_strict(tmp_path: Path) -> None:
    from cnnspec.data.loader import batches

    photo_folder(tmp_path)
    streamed = load_dataset(DataConfig(source=str(tmp_path), stream="always", workers=2, strict=True, validation=0.5), (3, 8, 8), 3, 0)
    with pytest.raises(DataError, match=r"broken\.png: not an image"):
        for split in (streamed.x_train, streamed.x_val):
            list(batches(split, np.arange(len(split)), 4))


def test_streamed_training_equals_training_from_memory(tmp_path: Path) -> None:
    """Same seed, same batches: the streamed run's losses equal the in-memory run's. (A file
    that turns out unreadable changes a stream's batches from the point it is met, since
    only decoding finds it; the same in every run with the same seed.)"""
    torch = pytest.importorskip("torch")
    import cnnspec

    torch.set_num_threads(1)
    photo_folder(tmp_path / "photos", per_class=10, broken=False)
    graph = cnnspec.parse_spec(
        "name: tiny\ninput: {shape: [3, 12, 12]}\nlayers:\n  - conv2d: {filters: 4, kernel: 3, activation: relu}\n"
        "  - global_avgpool2d: {}\n  - dense: {units: 3}\n",
        "tiny.yaml",
    )
    runs = {}
    for stream, workers in (("never", 0), ("always", 2)):
        runs[stream] = cnnspec.train(
            graph, "torch", out=tmp_path / stream, quiet=True, epochs=2, batch_size=8,
            **{"data.source": str(tmp_path / "photos"), "data.stream": stream, "data.workers": workers, "data.augment.hflip": True},
        )
    for a, b in zip(runs["never"].history, runs["always"].history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


@pytest.mark.parametrize("stream", ["never", "always"])
def test_a_folder_of_nothing_readable_is_an_error_not_a_crash(tmp_path: Path, stream: str) -> None:
    import subprocess
    import sys

    for name in ("a", "b"):
        (tmp_path / "bad" / name).mkdir(parents=True)
        (tmp_path / "bad" / name / "x.jpg").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--data", "bad", "--epochs", "1", "--workers", "0", "--set", f"data.stream={stream}", "--classes", "auto", "--out", "run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "x.jpg: empty file" in result.stderr and "be read" in result.stderr


def test_resizing_a_decoded_colour_image_equals_resizing_its_array() -> None:
    """A file is resized as one Pillow image; array data is resized per channel:
    the same bilinear filter, so the same pixels."""
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3)).astype(np.uint8))
    data = png_bytes(photo)
    for shape in ((3, 16, 16), (3, 50, 61), (1, 16, 16)):
        np.testing.assert_array_equal(Transform(shape, "resize").from_file(data), fit_images(decode(data, shape[0])[None], shape, "resize")[0])


def test_a_plain_script_can_stream_and_leaves_no_shared_memory(tmp_path: Path) -> None:
    """A user's script with no `if __name__ == "__main__"` guard: its workers must not run
    the script again, and every shared buffer is gone once its stream is."""
    import os
    import subprocess
    import sys

    photo_folder(tmp_path / "photos", per_class=6, broken=False)
    script = tmp_path / "mine.py"
    script.write_text(
        "import gc, os\nimport numpy as np\nfrom cnnspec.spec.training import DataConfig\n"
        "from cnnspec.data.dataset import load_dataset\nfrom cnnspec.data.loader import batches\n"
        "for round_ in range(3):\n"
        "    data = load_dataset(DataConfig(source='photos', stream='always', workers=2), (3, 8, 8), 3, 0)\n"
        "    seen = sum(len(i) for i, _ in batches(data.x_train, np.arange(len(data.x_train)), 4))\n"
        "    del data; gc.collect()\n"
        "    print(seen, sum(name.startswith('psm') for name in os.listdir('/dev/shm')))\n"
    )
    before = sum(name.startswith("psm") for name in os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(14), str(before)] * 3  # 18 photos, 4 held out; no buffer left behind
    assert "leaked" not in result.stderr
