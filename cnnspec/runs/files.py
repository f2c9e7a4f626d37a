"""Files a run writes: atomic text, JSON and safetensors, their SHA-256 seal, and the checks that read them back."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.errors import CnnspecError
from cnnspec.graph.weights import Weights
from cnnspec.strictjson import strict_json


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``: a
    reader (or a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make run files private, unlike every other file
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, strict_json(value, indent=2) + "\n")


def save_arrays(path: Path, arrays: Weights, metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    atomic_write(path, lambda p: save_file(contiguous, str(p), metadata=metadata))


class DamagedFile(CnnspecError, ValueError):
    """A file cnnspec wrote no longer holds what it wrote (truncated, flipped bytes,
    missing); the message names it."""


def load_arrays(path: Path) -> Weights:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except FileNotFoundError:
        raise DamagedFile(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        if path.is_dir():
            raise DamagedFile(f"{path}: a folder, not a safetensors file") from None
        raise DamagedFile(f"{path}: not a readable safetensors file ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None


CHECKSUMS = "checksums.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: Path, names: list[str]) -> None:
    """Record the SHA-256 of each of ``names`` in ``folder/checksums.json``."""
    write_json(folder / CHECKSUMS, {"sha256": {name: sha256(folder / name) for name in names}})


def check_sealed(folder: Path) -> None:
    """Raise DamagedFile naming the first file of ``folder`` whose content differs from
    what was recorded when it was written, or that is missing. A folder written before
    cnnspec recorded checksums passes (its files are still checked as they load)."""
    manifest = folder / CHECKSUMS
    if not manifest.exists():
        return
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
        items = [(str(name), str(digest)) for name, digest in recorded.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise DamagedFile(f"{manifest}: the checksum list is damaged") from None
    for name, digest in items:
        path = folder / name
        if not path.is_file():
            raise DamagedFile(f"{path}: missing")
        if sha256(path) != digest:
            raise DamagedFile(f"{path}: damaged (its SHA-256 differs from the one recorded when it was written)")


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, or DamagedFile."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedFile(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedFile(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise DamagedFile(f"{path}: not a cnnspec checkpoint state (no epoch)")
    for holder in (state, state.get("plateau")):  # "nothing yet" is written as null (strict JSON), read as infinity
        if isinstance(holder, dict) and "best" in holder and holder["best"] is None:
            holder["best"] = math.inf
    return state
