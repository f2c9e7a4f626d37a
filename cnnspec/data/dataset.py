"""Data sets for training and evaluation: the built-in ones, array files, image folders and manifests, split and fitted."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnnspec.data import BadImage, Listing, list_source
from cnnspec.data.decode import image_shape
from cnnspec.data.errors import DataError
from cnnspec.data.loader import ImageStream, available_cores, batches
from cnnspec.data.transforms import Transform, fit_images
from cnnspec.spec.training import DataConfig, FitMode, resolve_preset

# Where to put the files of data sets people ask for by name.
WELL_KNOWN = {
    "mnist": "put the MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) in a directory",
    "fashion-mnist": "put the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) in a directory",
    "cifar10": "unpack cifar-10-python.tar.gz (the directory cifar-10-batches-py, with data_batch_1 ... test_batch)",
    "cifar-10": "unpack cifar-10-python.tar.gz (the directory cifar-10-batches-py, with data_batch_1 ... test_batch)",
    "flowers": "unpack the images into one folder per class (flowers/daisy/*.jpg, flowers/rose/*.jpg, ...)",
    "imagenet": "arrange the images as class folders (root/train/CLASS/*.JPEG and root/val/CLASS/*.JPEG)",
}


# Image files are decoded once into memory when the decoded set fits this and a quarter of
# the available memory; larger sets are streamed.
IN_MEMORY_LIMIT = 2 * 2**30


_DEFAULT_CONFIG = DataConfig()


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray | ImageStream  # N x C x H x W, uint8 (0..255) or float32
    y_train: np.ndarray  # N, int64
    x_val: np.ndarray | ImageStream
    y_val: np.ndarray
    classes: list[str]
    skipped: tuple[str, ...] = ()  # "file: reason" for each sample left out while loading
    config: DataConfig = _DEFAULT_CONFIG  # as used: its preset applied (``resolve_preset``)
    named: bool = True  # False: the labels are bare integers (IDX, .npz), the class names made up from them

    @property
    def residence(self) -> str:
        if isinstance(self.x_train, ImageStream):
            workers = self.x_train.workers
            where = f"streamed, decoded by {workers} worker{'s' if workers != 1 else ''}" if workers else "streamed, decoded in this process"
            if self.x_train.transform.crop_scale is not None:
                where += ", random resized crops from each file at full size"
            return where
        return "in memory"

    def transforms(self, shape: tuple[int, ...]) -> str:
        """What training and validation do to an image, in words (the run's second line)."""
        config = self.config
        try:
            train, val = Transform.training(config, shape), Transform.evaluation(config, shape)
        except DataError:  # not an image input
            return "none"
        extra = [f"pad-and-crop {config.augment.random_crop}" if config.augment.random_crop else "", "flips" if config.augment.hflip else ""]
        return f"train: {', '.join([train.describe(), *filter(None, extra)])}; val: {val.describe()} (preset {config.preset})"

    def training_batches(self, order: np.ndarray, size: int, seed: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, images) of the training set in ``order``, each image with its own
        random transform (seeded by ``seed`` and its position): a stream's workers apply
        it; images held in memory get it here. A streamed batch is the stream's buffer,
        valid until the next is asked for."""
        transform = None
        if not isinstance(self.x_train, ImageStream) and self.config.augment.per_sample:
            transform = Transform.training(self.config, self.x_train.shape[1:])
        return batches(self.x_train, order, size, transform, seed, views=True)

    def skipped_so_far(self) -> list[str]:
        """Samples left out while loading, and those a stream has met since."""
        streams = [x for x in (self.x_train, self.x_val) if isinstance(x, ImageStream)]
        return [*self.skipped, *(entry for stream in streams for entry in stream.skipped)]


def load_dataset(config: DataConfig, shape: tuple[int, ...], num_classes: int | None, seed: int, whole: bool = False) -> Dataset:
    """The data ``config.source`` names, fitted to ``shape``, checked against the
    network's ``num_classes`` (None: the caller sizes the network to the data).

    ``whole``: a test set, all of it in the validation arrays (training ones empty): its
    own validation or test part where it has one (``val/`` beside ``train/``, a
    manifest's ``split: val`` rows, MNIST's t10k files), else every sample."""
    source = config.source
    if source == "digits":
        config = resolve_preset(config, shape, image_files=False)
        raw = _digits(config, seed)
    elif source == "synthetic":
        config = resolve_preset(config, shape, image_files=False)
        raw = _synthetic(shape, num_classes or 10, seed)  # sized to the data: ten classes
    else:
        path = Path(source).expanduser()
        hint = WELL_KNOWN.get(source.lower().replace("_", "-"))
        if not path.exists() and hint is not None:
            raise DataError(f"cnnspec downloads nothing: {hint}, then pass --data DIR")
        if not path.exists():
            raise DataError(
                f"data '{source}' not found: give 'digits', 'synthetic', or a path to an IDX directory, "
                "image class folders, a manifest (.csv or .jsonl), tar shards, CIFAR-10 python batches or an .npz file "
                "(nothing is downloaded)"
            )
        if whole:
            path = test_part(path)
        kind = source_kind(path)
        config = resolve_preset(config, shape, image_files=kind == "files")
        raw = _from_path(path, kind, shape, config, seed, whole)
    dataset = replace(_fit(raw, shape, config), config=config)
    if config.limit is not None:
        head = dataset.x_train.head(config.limit) if isinstance(dataset.x_train, ImageStream) else dataset.x_train[: config.limit]
        dataset = replace(dataset, x_train=head, y_train=dataset.y_train[: config.limit])
    found = int(max(dataset.y_train.max(initial=0), dataset.y_val.max(initial=0))) + 1
    if num_classes is None:
        return replace(dataset, classes=dataset.classes + [str(i) for i in range(len(dataset.classes), found)])
    if found > num_classes:
        raise DataError(
            f"data '{dataset.name}' has {found} classes but the network outputs {num_classes}: "
            "--classes auto (train.classes: auto) gives the network a new output layer that fits the data"
        )
    classes = dataset.classes + [str(i) for i in range(len(dataset.classes), num_classes)]
    return replace(dataset, classes=classes[:num_classes])


def absolute_source(source: str) -> str:
    """``source`` as a run records it: an existing path made absolute, so that the run's
    data is found from any working directory; names (digits, synthetic) as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if source not in ("digits", "synthetic") and path.exists() else source


def recorded_source(source: str, run: Path) -> str:
    """The data a run at ``run`` recorded, found again: as recorded, else (older runs
    recorded the path as typed) relative to the run folder; a path found nowhere is an
    error that says where it came from and how to point elsewhere."""
    path = Path(source).expanduser()
    if source in ("digits", "synthetic") or path.exists() or source.lower().replace("_", "-") in WELL_KNOWN:
        return source
    beside = run / path
    if not path.is_absolute() and beside.exists():
        return str(beside)
    raise DataError(f"data '{source}' (recorded in {run / 'run.json'} when the run was trained) is not found from "
                    f"{Path.cwd()}: pass --data PATH to evaluate on it where it is now")


def by_class_name(dataset: Dataset, classes: list[str]) -> Dataset:
    """``dataset``'s validation labels as indices into ``classes`` (a run's), matched by
    name: a test folder may hold any subset of the classes, in any order. A class with
    images that ``classes`` does not know is an error that names it. Data whose labels are
    bare integers (IDX, .npz: no names to match) keep them as indices into ``classes``;
    a label past the run's last class is an error."""
    if not dataset.named:
        top = int(dataset.y_val.max(initial=-1))
        if top >= len(classes):
            raise DataError(f"data '{dataset.name}' has label {top} but the run has {len(classes)} classes "
                            f"(its labels are bare integers, read as indices into the run's classes)")
        return replace(dataset, classes=list(classes))
    present = sorted({dataset.classes[i] if i < len(dataset.classes) else str(i) for i in np.unique(dataset.y_val).tolist()})
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in present if name not in index]
    if unknown:
        shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
        raise DataError(f"data '{dataset.name}' has class(es) the run was not trained on: {', '.join(unknown)}; "
                        f"the run's classes are {shown} (labels are matched by class name)")
    names = list(dataset.classes) + [str(i) for i in range(len(dataset.classes), int(dataset.y_val.max(initial=-1)) + 1)]
    mapping = np.array([index.get(name, -1) for name in names], np.int64)
    return replace(dataset, y_val=mapping[dataset.y_val], classes=list(classes))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): ``fraction`` of the samples (at least one) for
    validation, drawn from each class in proportion to its size (largest remainders get
    the rounding), each class's draw seeded; both orders shuffled. A class of one sample
    stays in training."""
    rng = np.random.default_rng(seed)
    total = max(1, round(len(labels) * fraction))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (total / max(len(labels), 1))
    share = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - share), kind="stable")[: total - int(share.sum())]:
        share[i] += 1
    share = np.minimum(share, np.maximum(counts - 1, 0))  # every class keeps a training sample
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, share, strict=True)] or [np.zeros(0, int)])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return rng.permutation(train), rng.permutation(val)


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Training and validation arrays, the split stratified by class (``stratified_split``)."""
    train, val = stratified_split(y, fraction, seed)
    return x[train], y[train], x[val], y[val]


def _digits(config: DataConfig, seed: int) -> Dataset:
    # The CSV inside scikit-learn, read without importing sklearn (which takes a second).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'digits' data ships with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (table[:, :64] * (255.0 / 16.0)).round().astype(np.uint8).reshape(-1, 1, 8, 8)
    y = table[:, 64].astype(np.int64)
    x_train, y_train, x_val, y_val = _split(x, y, config.validation, seed)
    return Dataset("digits", x_train, y_train, x_val, y_val, [str(i) for i in range(10)])


def _synthetic(shape: tuple[int, ...], num_classes: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(1024 + 256, *shape), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=len(x)).astype(np.int64)
    return Dataset("synthetic", x[:1024], y[:1024], x[1024:], y[1024:], [str(i) for i in range(num_classes)], named=False)


def source_kind(path: Path) -> str:
    """npz, idx, cifar10, or files (class folders, a manifest, tar shards)."""
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if any(n.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for n in names):
            return "idx"
        if "data_batch_1" in names or "test_batch" in names:
            return "cifar10"
    return "files"


def test_part(path: Path) -> Path:
    """The folder of ``path`` that a test set's evaluation reads: ``val/`` (or ``test/``)
    where it holds class folders beside ``train/`` or alone, else ``path`` itself."""
    if not path.is_dir():
        return path
    for name in ("val", "test"):
        part = path / name
        if part.is_dir() and any(child.is_dir() and not child.name.startswith(".") for child in part.iterdir()):
            return part
    return path


def _from_path(path: Path, kind: str, shape: tuple[int, ...], config: DataConfig, seed: int, whole: bool = False) -> Dataset:
    if kind == "idx":
        return _idx(path, config, seed, whole)
    if kind != "files":
        return {"npz": _npz, "cifar10": _cifar10}[kind](path, config, seed, whole)
    listing = list_source(path)
    if listing is None:
        raise DataError(
            f"{path}: a data file is an .npz (x_train, y_train, x_test, y_test), a manifest (.csv or .jsonl with "
            "path,label) or a tar shard (.tar)"
        )
    return _listed(listing, shape, config, seed, whole)


def _all_validated(dataset: Dataset) -> Dataset:
    """A data set with its own test part: that part, nothing to train on."""
    return replace(dataset, x_train=np.asarray(dataset.x_train)[:0], y_train=dataset.y_train[:0])


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format (yann.lecun.com/exdb/mnist): magic 0 0 type ndim, big-endian sizes."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def _find(path: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx{3 if kind == 'images' else 1}-ubyte"):
        for candidate in (path / name, path / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def _idx(path: Path, config: DataConfig, seed: int, whole: bool = False) -> Dataset:
    pairs = {}
    for prefix in ("train", "t10k"):
        images, labels = _find(path, prefix, "images"), _find(path, prefix, "labels")
        if images and labels:
            pairs[prefix] = (_read_idx(images)[:, None], _read_idx(labels).astype(np.int64))
    classes = [str(i) for i in range(10)]
    if "train" in pairs and "t10k" in pairs:
        (x_train, y_train), (x_val, y_val) = pairs["train"], pairs["t10k"]
    elif pairs:
        # Only one split (the MNIST test set alone, say): the last part validates, in
        # file order, so "first 8,000 train, last 2,000 validate" is reproducible.
        x, y = next(iter(pairs.values()))
        cut = 0 if whole else len(x) - round(len(x) * config.validation)
        x_train, y_train, x_val, y_val = x[:cut], y[:cut], x[cut:], y[cut:]
    else:
        raise DataError(f"{path}: no matching IDX image and label files (train-images-idx3-ubyte[.gz], ...)")
    dataset = Dataset(f"idx:{path.name}", x_train, y_train, x_val, y_val, classes, named=False)
    return _all_validated(dataset) if whole else dataset


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles; allow exactly what they hold (dicts, lists, bytes
    and NumPy arrays), so a hostile file cannot run code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load '{module}.{name}' from a data pickle")


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def _cifar10(path: Path, config: DataConfig, seed: int, whole: bool = False) -> Dataset:
    train = [_load_batch(p) for p in sorted(path.glob("data_batch_*"))]
    classes = [str(i) for i in range(10)]
    meta = path / "batches.meta"
    if meta.exists():
        names = _ArrayUnpickler(io.BytesIO(meta.read_bytes()), encoding="bytes").load().get(b"label_names")
        classes = [n.decode() for n in names] if names else classes
    if train and (path / "test_batch").exists():
        x_val, y_val = _load_batch(path / "test_batch")
        x_train, y_train = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    else:
        x, y = train[0] if train else _load_batch(path / "test_batch")
        x_train, y_train, x_val, y_val = _split(x, y, config.validation, seed) if not whole else (x[:0], y[:0], x, y)
    dataset = Dataset(f"cifar10:{path.name}", x_train, y_train, x_val, y_val, classes, named=meta.exists())
    return _all_validated(dataset) if whole else dataset


def _npz(path: Path, config: DataConfig, seed: int, whole: bool = False) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        missing = {"x_train", "y_train"} - set(archive.files)
        if missing:
            raise DataError(f"{path}: missing {', '.join(sorted(missing))} (expected x_train, y_train, x_test, y_test)")
        x_train, y_train = archive["x_train"], archive["y_train"].astype(np.int64).reshape(-1)
        if "x_test" in archive.files and "y_test" in archive.files:
            x_val, y_val = archive["x_test"], archive["y_test"].astype(np.int64).reshape(-1)
        elif whole:  # a test set with no test part: all of it
            x_train, y_train, x_val, y_val = x_train[:0], y_train[:0], x_train, y_train
        else:
            x_train, y_train, x_val, y_val = _split(x_train, y_train, config.validation, seed)
    classes = [str(i) for i in range(int(max(y_train.max(initial=0), y_val.max(initial=0))) + 1)]
    dataset = Dataset(f"npz:{path.name}", _channels_first(x_train, path), y_train, _channels_first(x_val, path), y_val, classes, named=False)
    return _all_validated(dataset) if whole else dataset


def _channels_first(x: np.ndarray, path: Path) -> np.ndarray:
    """N x H x W (grayscale), N x C x H x W, or N x H x W x C (C of 1, 3 or 4), to NCHW."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            return x
        if x.shape[3] in (1, 3, 4):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise DataError(f"{path}: images must be N x H x W, N x C x H x W or N x H x W x C, got shape {x.shape}")


def _listed(listing: Listing, shape: tuple[int, ...], config: DataConfig, seed: int, whole: bool = False) -> Dataset:
    """The samples of ``listing`` at ``shape``: decoded once into memory (in parallel) when
    they fit ``IN_MEMORY_LIMIT``, else streamed. Training images are streamed whatever
    their size when random resized crops are cut from them, since those need each file at
    full size every epoch (``stream: never`` crops the images held at the input size
    instead). Unreadable ones are skipped and counted (an error with ``strict``)."""
    from cnnspec.data.resources import system_available_memory

    skipped = list(listing.skipped)
    if config.strict and skipped:
        raise DataError(f"{skipped[0]} (strict: turn it off to skip and count such samples)")
    samples, val = listing.train, listing.val
    if whole:  # a test set: its own validation part, else every sample
        samples, val = [], (val if val else samples)
    elif not samples:
        raise DataError(f"{listing.name}: no training images (every sample is marked for validation); "
                        "eval --data reads such a test set whole")
    elif val is None:  # each class in proportion: a small folder's rare class still gets validated
        train_index, val_index = stratified_split(np.array([s.label for s in samples], dtype=np.int64), config.validation, seed)
        samples, val = [samples[i] for i in train_index], [samples[i] for i in val_index]
    samples = samples[: config.limit]  # before decoding: a smoke test decodes only what it uses
    workers = available_cores() if config.workers is None else config.workers
    train_transform, val_transform = Transform.training(config, shape), Transform.evaluation(config, shape)
    streams = [
        ImageStream(part, transform, workers=workers, strict=config.strict) for part, transform in ((samples, train_transform), (val, val_transform))
    ]
    labels = [np.array([s.label for s in part], dtype=np.int64) for part in (samples, val)]
    decoded = (len(samples) + len(val)) * int(np.prod(shape))
    budget = min(IN_MEMORY_LIMIT, (system_available_memory() or IN_MEMORY_LIMIT * 4) // 4)
    in_memory = config.stream == "never" or (config.stream == "auto" and decoded <= budget)
    held = [in_memory and not (split == 0 and train_transform.crop_scale is not None and config.stream != "never") for split in (0, 1)]
    x: list[np.ndarray | ImageStream] = list(streams)
    for split, name in enumerate(("training", "validation")):
        if not held[split] or not len(labels[split]):
            continue
        kept, x[split] = streams[split].load()
        skipped += streams[split].skipped
        labels[split] = labels[split][kept]
        if not len(kept):
            raise DataError(f"{listing.name}: none of the {name} images can be read ({len(skipped)} skipped; first: {skipped[0]})")
    if not len(labels[0]):  # a test set read whole: nothing to train on
        x[0] = np.zeros((0, *shape), np.uint8)
    return Dataset(listing.name, x[0], labels[0], x[1], labels[1], listing.classes, tuple(skipped), config)


def _fit(raw: Dataset, shape: tuple[int, ...], config: DataConfig) -> Dataset:
    """Array sources fitted to ``shape``; image files were prepared at ``shape`` already."""
    if isinstance(raw.x_train, ImageStream) or isinstance(raw.x_val, ImageStream):
        return raw
    fitted = (fit_images(x, shape, config.fit, config.resize) for x in (raw.x_train, raw.x_val))
    return replace(raw, x_train=next(fitted), x_val=next(fitted))


def load_images(paths: list[Path], shape: tuple[int, ...], fit: FitMode = "auto", resize: int | None = None) -> np.ndarray:
    """Image files for prediction, prepared exactly as evaluation prepares them."""
    from cnnspec.data.transforms import Transform

    transform = Transform(image_shape(shape), fit, resize)
    arrays = []
    for path in paths:
        try:
            arrays.append(transform.from_file(path.read_bytes()))
        except (BadImage, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DataError(f"{path}: cannot read image ({reason})") from None
    return np.stack(arrays)
