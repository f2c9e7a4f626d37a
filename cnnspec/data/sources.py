"""Sources of image files, listed without opening a single image.

- class folders: ``root/CLASS/*.jpg``, with ``train/`` and ``val/`` inside when present;
- a manifest: CSV with a header naming ``path`` and ``label`` (and optionally ``split``:
  train or val), or JSON Lines with those keys; paths are relative to the manifest;
- tar shards in the WebDataset convention: ``shard-000000.tar`` holding ``KEY.jpg`` and
  ``KEY.cls`` (the label, a class index) for each sample; a ``.tar`` file or a folder of
  them. Members are located by offset, so a sample is read with one seek.

Labels that are all non-negative integers name classes ``"0" ... "max"``; other labels are
class names, sorted. Problems found while listing (a manifest row whose file is missing, a
class folder with no images, a shard sample with no label) are kept in ``Listing.skipped``
for the caller to count and show; a malformed manifest row is a ``DataError`` naming its line.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cnnspec.data.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl"})


@dataclass(frozen=True, slots=True)
class Sample:
    """Where one image's bytes are: a file, or ``size`` bytes at ``offset`` in a tar shard.
    Small (slots, the path as a string): a stream holds one per image of the data set."""

    path: str
    label: int
    member: str | None = None
    offset: int = 0
    size: int = 0

    @property
    def name(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"

    def read(self) -> bytes:
        with open(self.path, "rb") as stream:
            if self.member is None:
                return stream.read()
            stream.seek(self.offset)
            return stream.read(self.size)


@dataclass(frozen=True)
class Listing:
    name: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample] | None  # None: the source has no validation split of its own
    skipped: list[str] = field(default_factory=list)  # "name: reason", found while listing


def list_source(path: Path) -> Listing | None:
    """The listing of an image source at ``path``, or None when ``path`` is not one."""

    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _manifest(path)
    if path.is_file() and path.suffix.lower() == ".tar":
        return _shards([path], path.name)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
        if shards:
            return _shards(shards, path.name)
        return _class_folders(path)
    if path.is_file():
        return None
    raise DataError(f"{path}: no such file or folder")


# ---- class folders -------------------------------------------------------------------------


def _class_folders(path: Path) -> Listing:

    train_root, val_root = path / "train", path / "val"
    split = train_root.is_dir() and val_root.is_dir()
    roots = [train_root, val_root] if split else [path]
    classes = sorted(p.name for p in roots[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{path}: no class folders found (expected {path}/CLASS/*.jpg, or train/ and val/ with class folders inside)"
        )
    listed: list[list[Sample]] = []
    skipped: list[str] = []
    if split:  # a validation class that training lacks: said, not dropped silently
        extra = sorted(p.name for p in val_root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in classes)
        skipped += [f"{val_root / name}: train/ has no class '{name}': its images are not validated" for name in extra]
    for root in roots:
        samples: list[Sample] = []
        for label, name in enumerate(classes):
            folder = root / name
            files = _image_files(folder) if folder.is_dir() else []
            if not files:
                skipped.append(f"{folder}: class folder has no images")
            samples += [Sample(f, label) for f in files]
        if not samples:
            raise DataError(f"{root}: no images found in the class folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
        listed.append(samples)
    return Listing(f"folders:{path.name}", classes, listed[0], listed[1] if split else None, skipped)


def _image_files(folder: Path) -> list[str]:
    """The image files of ``folder`` and its subfolders (hidden ones left out), sorted,
    as torchvision's ImageFolder finds them. ``os.walk`` lists with ``os.scandir``, which
    knows file types from the directory itself: no stat call per file."""
    found: list[str] = []
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(root, name) for name in files if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and not name.startswith(".")]
    return sorted(found)


# ---- manifests -----------------------------------------------------------------------------


def _manifest(path: Path) -> Listing:
    """Two passes over the rows (labels first, then samples), so that only the samples are
    held: a manifest of millions of rows costs its samples, not its text twice."""

    rows = _jsonl_rows if path.suffix.lower() == ".jsonl" else _csv_rows
    labels = {label for _, _, label, _ in rows(path)}
    if not labels:
        raise DataError(f"{path}: the manifest lists no images")
    index, classes = _class_index(labels)
    root = path.parent
    train: list[Sample] = []
    val: list[Sample] = []
    skipped: list[str] = []
    has_val = False
    for line, file, label, split in rows(path):
        has_val |= split is not None
        target = os.path.join(root, file)
        if not os.path.isfile(target):
            skipped.append(f"{path}:{line}: {target}: no such file")
            continue
        (val if split == "val" else train).append(Sample(target, index[label]))
    if not train and not val:
        raise DataError(f"{path}: none of the manifest's images exists (first: {skipped[0] if skipped else '-'})")
    return Listing(f"manifest:{path.name}", classes, train, val if has_val else None, skipped)


def _csv_rows(path: Path) -> Iterable[tuple[int, str, str, str | None]]:

    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise DataError(f"{path}:1: a CSV manifest's header names the columns 'path' and 'label' (and optionally 'split'); got {header}")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: {len(row)} fields where the header has {len(header)} ({', '.join(header)})")
            record = dict(zip(header, (cell.strip() for cell in row), strict=True))
            yield _checked(path, line, record.get("path"), record.get("label"), record.get("split"))


def _jsonl_rows(path: Path) -> Iterable[tuple[int, str, str, str | None]]:

    with open(path, encoding="utf-8-sig") as stream:
        for line, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line}: not a JSON object ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line}: each line is a JSON object with 'path' and 'label'")
            label = record.get("label")
            yield _checked(path, line, record.get("path"), None if label is None else str(label), record.get("split"))


def _checked(path: Path, line: int, file: object, label: object, split: object) -> tuple[int, str, str, str | None]:

    if not isinstance(file, str) or not file:
        raise DataError(f"{path}:{line}: the row has no 'path'")
    if not isinstance(label, str) or not label:
        raise DataError(f"{path}:{line}: the row has no 'label'")
    if split in ("", None):
        split = None
    elif split not in ("train", "val"):
        raise DataError(f"{path}:{line}: split is 'train' or 'val', got {split!r}")
    return line, file, label, split if isinstance(split, str) else None


def _class_index(labels: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Each label's class index, and the class names: integer labels keep their numbers
    (classes "0" ... "max"); other labels are names, sorted."""
    names = set(labels)
    if all(name.isdigit() for name in names):
        return {n: int(n) for n in names}, [str(i) for i in range(max(int(n) for n in names) + 1)]
    classes = sorted(names)
    return {name: i for i, name in enumerate(classes)}, classes


# ---- tar shards ----------------------------------------------------------------------------


def _shards(shards: list[Path], name: str) -> Listing:
    """Each shard's headers are read in order (the data is skipped over); labels (.cls) are
    small and read as they pass."""

    images: list[tuple[Path, str, int, int]] = []  # shard, member, offset, size
    labels: dict[tuple[Path, str], str] = {}
    skipped: list[str] = []
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r:") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, _, suffix = member.name.partition(".")
                    suffix = "." + suffix.lower()
                    if suffix in IMAGE_SUFFIXES:
                        images.append((shard, member.name, member.offset_data, member.size))
                    elif suffix == ".cls":
                        stream = archive.extractfile(member)
                        labels[(shard, key)] = stream.read(64).decode("utf-8", "replace").strip() if stream else ""
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{shard}: not a readable tar shard ({exc})") from None
    known: list[tuple[Path, str, int, int, str]] = []
    for shard, image, offset, size in images:
        key = image.partition(".")[0]
        label = labels.get((shard, key))
        if label is None or not label.isdigit():
            skipped.append(f"{shard}:{image}: no {key}.cls with a class index beside it")
            continue
        known.append((shard, image, offset, size, label))
    if not known:
        raise DataError(f"{name}: the tar shards hold no image with a label (KEY.jpg beside KEY.cls)")
    index, classes = _class_index(label for *_, label in known)
    samples = [Sample(str(shard), index[label], member, offset, size) for shard, member, offset, size, label in known]
    return Listing(f"shards:{name}", classes, samples, None, skipped)
