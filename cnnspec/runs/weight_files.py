"""A checkpoint's weights on disk, frozen arrays written once.

A run whose body is frozen (``--head-only``, ``freeze:``) would write the same tens of
megabytes into every checkpoint. Instead, the arrays of frozen layers go into one file
beside the checkpoints, named by a digest of their content
(``checkpoints/frozen-<digest>.safetensors``), and each checkpoint's
``weights.safetensors`` holds the other arrays and names that file in its metadata. The
checkpoint's ``checksums.json`` covers the shared file too (as ``../frozen-...``), so a
damaged or missing one makes every checkpoint that uses it fail its check, by name.
Content addressing keeps this right whatever happens: arrays that did change (a phase
that unfroze them, batch norm statistics) give another digest and another file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np

from cnnspec.graph.weights import Weights
from cnnspec.runs.files import DamagedFile, load_arrays, save_arrays

FORMAT = "cnnspec-canonical-v1"
SHARED = "frozen"  # the metadata key naming the shared file
PREFIX = "frozen-"


def digest(arrays: Weights) -> str:
    """A digest of the arrays' names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=12)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.data)
    return h.hexdigest()


def save_weights(folder: Path, weights: Weights, frozen: AbstractSet[str]) -> list[str]:
    """``folder/weights.safetensors``: the arrays not in ``frozen``, and the frozen ones in
    the shared file of their digest beside ``folder`` (written once). Returns the files to
    seal, relative to ``folder``."""
    shared = {name: array for name, array in weights.items() if name in frozen}
    metadata = {"format": FORMAT}
    sealed = ["weights.safetensors"]
    if shared:
        name = f"{PREFIX}{digest(shared)}.safetensors"
        target = folder.parent / name
        if not target.is_file():
            save_arrays(target, shared, {"format": FORMAT})
        metadata[SHARED] = name
        sealed.append(f"../{name}")
    save_arrays(folder / "weights.safetensors", {k: v for k, v in weights.items() if k not in shared}, metadata)
    return sealed


def load_weights(checkpoint: Path) -> Weights:
    """Every array of a checkpoint: its own, and those of the shared file it names."""
    from safetensors import safe_open

    path = checkpoint / "weights.safetensors"
    weights = load_arrays(path)
    try:
        with safe_open(str(path), "numpy") as opened:
            shared = (opened.metadata() or {}).get(SHARED)
    except Exception:  # load_arrays has read it: this cannot fail but on a race
        shared = None
    if shared:
        if "/" in shared or not shared.startswith(PREFIX):
            raise DamagedFile(f"{path}: names a shared file '{shared}' that is not one of its run's")
        weights.update(load_arrays(checkpoint.parent / shared))
    return weights


def unused_shared(checkpoints: Path) -> list[Path]:
    """The shared files no checkpoint under ``checkpoints`` names any more."""
    named: set[str] = set()
    for folder in checkpoints.iterdir():
        sums = folder / "checksums.json"
        if folder.is_dir() and sums.is_file():
            named.update(Path(line).name for line in _sealed(sums) if line.startswith(f"../{PREFIX}"))
    return [path for path in checkpoints.glob(f"{PREFIX}*.safetensors") if path.name not in named]


def _sealed(sums: Path) -> list[str]:
    import json

    try:
        return list(json.loads(sums.read_text())["sha256"])
    except (ValueError, KeyError, TypeError, OSError):
        return []
