"""Initial weights and checkpoints, in the canonical layout, with NumPy only.

Initial weights are drawn here, from the spec's ``init`` arguments and the run's seed,
so every backend starts from the very same numbers. Checkpoints are safetensors files
(arrays only: loading one can never run code) written atomically.
"""

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
from cnnspec.graph import Graph
from cnnspec.layers.base import WeightSpec
from cnnspec.strictjson import strict_json

Weights = dict[str, np.ndarray]


def _he(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    # He et al. 2015: N(0, 2 / fan_in), for ReLU networks.
    return rng.normal(0.0, np.sqrt(2.0 / spec.fan_in), spec.shape)


def _xavier(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    # Glorot and Bengio 2010: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); Keras' default.
    bound = np.sqrt(6.0 / (spec.fan_in + spec.fan_out))
    return rng.uniform(-bound, bound, spec.shape)


def _uniform(rng: np.random.Generator, spec: WeightSpec) -> np.ndarray:
    bound = 1.0 / np.sqrt(spec.fan_in)
    return rng.uniform(-bound, bound, spec.shape)


INITIALIZERS: dict[str, Callable[[np.random.Generator, WeightSpec], np.ndarray]] = {
    "he": _he,
    "xavier": _xavier,
    "normal": lambda rng, spec: rng.normal(0.0, 0.01, spec.shape),
    "uniform": _uniform,
    "zeros": lambda rng, spec: np.zeros(spec.shape),
    "constant": lambda rng, spec: np.full(spec.shape, spec.value),
}


def initial_weights(graph: Graph, seed: int) -> Weights:
    """Every array of the network, float32, drawn in layer order from ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: INITIALIZERS[spec.init](rng, spec).astype(np.float32) for name, spec in graph.weights().items()}


def check_weights(graph: Graph, weights: Weights, source: str) -> None:
    """Raise ValueError naming the first missing, unexpected or misshapen array."""
    expected = graph.weights()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{source} does not match the spec '{graph.name}': {'; '.join(parts)}")
    for name, spec in expected.items():
        if tuple(weights[name].shape) != spec.shape:
            raise ValueError(f"{source}: '{name}' has shape {tuple(weights[name].shape)}, the spec needs {spec.shape}")


# ---- files -----------------------------------------------------------------------------


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


# ---- integrity: a SHA-256 of every file a folder's writer wrote ------------------------------

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
