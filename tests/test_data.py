"""Every data source, on small files the tests write, and their refusals."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cnnspec.data.dataset import load_dataset
from cnnspec.data.errors import DataError
from cnnspec.data.transforms import fit_images
from cnnspec.spec.training import DataConfig

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_digits_ship_with_scikit_learn() -> None:
    data = load_dataset(DataConfig(), (1, 32, 32), 10, seed=0)
    assert len(data.x_train) + len(data.x_val) == 1797
    assert len(data.x_val) == round(1797 * 0.2)
    assert data.x_train.shape[1:] == (1, 32, 32) and data.x_train.dtype == np.uint8
    assert set(np.unique(data.y_train)) == set(range(10))
    assert data.x_train.max() == 255  # 0..16 scaled to the byte range
    again = load_dataset(DataConfig(), (1, 32, 32), 10, seed=0)
    assert np.array_equal(again.y_val, data.y_val)  # seeded
    assert not np.array_equal(load_dataset(DataConfig(), (1, 32, 32), 10, seed=1).y_val, data.y_val)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_with_both_splits(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (30, 28, 28)), compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 30), compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (7, 28, 28)), compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 7), compress)
    data = load_dataset(DataConfig(source=str(tmp_path)), (1, 28, 28), 10, 0)
    assert (len(data.x_train), len(data.x_val)) == (30, 7)


def test_idx_test_set_alone_splits_in_file_order(tmp_path: Path) -> None:
    images = np.arange(10 * 4 * 4).reshape(10, 4, 4) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10) % 3, True)
    data = load_dataset(DataConfig(source=str(tmp_path)), (1, 4, 4), 3, 0)
    assert np.array_equal(data.x_val[:, 0], images[8:])  # the last 20%, unshuffled
    assert data.y_train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.skipif(not MNIST.exists(), reason="the shared MNIST test set is not beside this checkout")
def test_real_mnist_test_set() -> None:
    data = load_dataset(DataConfig(source=str(MNIST)), (1, 32, 32), 10, 0)
    assert (len(data.x_train), len(data.x_val)) == (8000, 2000)
    assert data.x_train.shape[1:] == (1, 32, 32)  # 28x28 padded by 2 on each side
    assert data.x_train[:, :, :2].max() == 0
    counts = np.bincount(np.concatenate([data.y_train, data.y_val]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_corrupt_idx(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03rubbish")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        load_dataset(DataConfig(source=str(tmp_path)), (1, 28, 28), 10, 0)


@pytest.mark.parametrize(
    ("images", "expected_channels"),
    [((12, 8, 8), 1), ((12, 8, 8, 3), 3), ((12, 3, 8, 8), 3), ((12, 8, 8, 1), 1)],
)
def test_npz_layouts(tmp_path: Path, images: tuple[int, ...], expected_channels: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, images).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=rng.integers(0, 4, 12), x_test=x[:3], y_test=np.array([0, 1, 2]))
    data = load_dataset(DataConfig(source=str(tmp_path / "d.npz")), (expected_channels, 8, 8), 4, 0)
    assert data.x_train.shape == (12, expected_channels, 8, 8)
    if len(images) == 4 and images[3] == 3:  # N x H x W x C moved to channels-first
        assert np.array_equal(data.x_train[:, 1], x[..., 1])


def test_npz_refuses_pickles_and_missing_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_dataset(DataConfig(source=str(tmp_path / "bad.npz")), (1, 8, 8), 2, 0)
    np.savez(tmp_path / "short.npz", x_test=np.zeros((1, 8, 8)))
    with pytest.raises(DataError, match="missing x_train, y_train"):
        load_dataset(DataConfig(source=str(tmp_path / "short.npz")), (1, 8, 8), 2, 0)


def test_cifar10_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, count in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)):
        batch = {b"data": rng.integers(0, 256, (count, 3072)).astype(np.uint8), b"labels": rng.integers(0, 10, count).tolist()}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    names = [f"class{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    data = load_dataset(DataConfig(source=str(tmp_path)), (3, 32, 32), 10, 0)
    assert (len(data.x_train), len(data.x_val)) == (10, 5)
    assert data.classes[3] == "class3"


def test_hostile_cifar_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(DataError, match=r"refusing to load .(posix|os)\.system."):
        load_dataset(DataConfig(source=str(tmp_path)), (3, 32, 32), 10, 0)
    assert not marker.exists()


@pytest.mark.parametrize("split_folders", [True, False])
def test_class_folders(tmp_path: Path, split_folders: bool) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val") if split_folders else ("",):
        for name, count in (("rose", 3), ("daisy", 4)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = (20 + i, 17)  # sizes differ: every image is resized
                Image.fromarray(rng.integers(0, 256, (*size[::-1], 3)).astype(np.uint8)).save(folder / f"{i}.png")
            (folder / "notes.txt").write_text("not an image")
    data = load_dataset(DataConfig(source=str(tmp_path)), (1, 12, 12), 2, 0)
    assert data.classes == ["daisy", "rose"]
    total = len(data.x_train) + len(data.x_val)
    assert total == (14 if split_folders else 7)
    assert data.x_train.shape[1:] == (1, 12, 12)


def test_missing_data_and_too_many_classes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing is downloaded"):
        load_dataset(DataConfig(source=str(tmp_path / "flowers")), (3, 32, 32), 5, 0)
    with pytest.raises(DataError, match=r"downloads nothing: put the MNIST IDX files .* then pass --data DIR"):
        load_dataset(DataConfig(source="mnist"), (1, 28, 28), 10, 0)
    with pytest.raises(DataError, match="has 10 classes but the network outputs 5"):
        load_dataset(DataConfig(), (1, 8, 8), 5, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders found"):
        load_dataset(DataConfig(source=str(tmp_path / "empty")), (3, 8, 8), 2, 0)


def test_fit_pads_small_differences_and_resizes_large_ones() -> None:
    x = np.full((2, 1, 28, 28), 200, np.uint8)
    padded = fit_images(x, (1, 32, 32))
    assert padded.shape == (2, 1, 32, 32) and padded[0, 0, 2, 2] == 200 and padded[0, 0, 0, 0] == 0
    resized = fit_images(np.full((2, 1, 8, 8), 100, np.uint8), (1, 32, 32))
    assert resized.shape == (2, 1, 32, 32) and resized.min() == 100  # no border: resized
    rgb = fit_images(np.stack([np.full((4, 4), v, np.uint8) for v in (255, 0, 0)])[None], (1, 4, 4))
    assert rgb[0, 0, 0, 0] == round(0.299 * 255)
    grey_to_rgb = fit_images(np.ones((1, 1, 4, 4), np.uint8), (3, 4, 4))
    assert grey_to_rgb.shape == (1, 3, 4, 4)


def test_synthetic_and_limit() -> None:
    data = load_dataset(DataConfig(source="synthetic", limit=100), (3, 16, 16), 7, 0)
    assert data.x_train.shape == (100, 3, 16, 16)
    assert data.y_train.max() < 7
