"""``cnnspec predict``: the top classes of every input, whatever some of them hold.

Inputs are image files, folders (searched recursively for images), globs and ``.npy``
batches (N x C x H x W, or one C x H x W image, in [0, 1]). One unreadable input costs
only itself: every other input is scored, and the bad one is reported with its reason in
``error`` (as Spark's scoring output does), so a caller decides what a failure means.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import Session

STREAM_FILES = 64  # from this many image files, predict decodes them in worker processes while it computes
GLOB_CHARACTERS = "*?["


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each input as the files it stands for, in order: a folder's images (recursively,
    sorted), a glob's matches (sorted; ``**`` crosses folders), or the path itself (a
    missing file stays, to be reported with the others). A folder with no images or a
    glob with no match is an error: nothing would be scored for it."""
    from cnnspec.data.errors import DataError
    from cnnspec.data.sources import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        text = str(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{text}: a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))}), searched recursively")
            files += found
        elif not path.exists() and any(c in text for c in GLOB_CHARACTERS):
            matched = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True) if Path(m).is_file())
            if not matched:
                raise DataError(f"{text}: no files match this pattern")
            files += matched
        else:
            files.append(path)
    return files


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _read_batch(item: Path, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """A .npy batch at the raw pixel scale; ValueError with the reason when it cannot be one."""
    try:
        batch = np.load(item, allow_pickle=False).astype(np.float32, copy=False)
    except OSError as exc:
        raise ValueError(_reason(exc)) from None
    except ValueError as exc:
        raise ValueError(f"not a .npy array ({exc})") from None
    if batch.ndim == len(shape):
        batch = batch[None]
    if tuple(batch.shape[1:]) != shape:
        raise ValueError(f"batch is {batch.shape}, the network takes N x {' x '.join(map(str, shape))}")
    batch /= np.float32(scale)  # back to the raw pixel scale, in place: one copy in memory
    return batch


def _streamed(scorer: Any, files: list[Path]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Outputs of the readable ``files`` by position, decoded by the streaming loader's
    workers while the engine computes, and the reason for each file that is not readable."""
    from cnnspec.data.loader import ImageStream, available_cores
    from cnnspec.data.sources import Sample

    stream = ImageStream([Sample(str(f), 0) for f in files], scorer._transform, workers=min(available_cores(), 4), strict=False)
    outputs: dict[int, np.ndarray] = {}
    try:
        for index, x in stream.batches(np.arange(len(files)), scorer.batch_size, views=True):
            for position, row in zip(index.tolist(), scorer.outputs(x), strict=True):
                outputs[position] = row
    finally:
        stream.close()
    reasons: dict[str, str] = {}
    for entry in stream.skipped:  # "file: reason"
        name, _, reason = entry.partition(": ")
        reasons[name] = reason or "unreadable"
    return outputs, {i: reasons.get(str(f), "unreadable") for i, f in enumerate(files) if i not in outputs}


def predict(path: Path, inputs: list[Path], open_session: Callable[..., Session], *, top: int = 5, device: str = "auto",
            runtime: str = "backend", said: Callable[[str], None] | None = None, batch_size: int | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """A result for every image of ``inputs`` (``expand_inputs``), in order: ``input``,
    ``top`` (class, index, probability; best first), ``row`` (its row of the raw outputs
    returned beside) and ``error`` (None, or why the input could not be read, with ``top``
    empty and ``row`` None). ``said`` hears which runtime computes them."""
    from cnnspec.data.errors import DataError
    from cnnspec.inference.scorer import Scorer

    files = expand_inputs(inputs)
    if not files:
        raise DataError("no inputs to score")
    scorer = Scorer(path, open_session, device, batch_size)
    shape = scorer.loaded.graph.input_shape
    images = [f for f in files if f.suffix.lower() != ".npy"]
    streamed = len(images) >= STREAM_FILES and scorer._transform is not None
    batches: dict[int, np.ndarray | str] = {}  # each .npy input's pixels, or why it cannot be read
    for position, item in enumerate(files):
        if item.suffix.lower() == ".npy":
            try:
                batches[position] = _read_batch(item, shape, scorer.loaded.normalization.scale)
            except ValueError as exc:
                batches[position] = str(exc)
    scorer.use_runtime(runtime, len(images) + sum(len(b) for b in batches.values() if isinstance(b, np.ndarray)))
    if said is not None:
        said(f"runtime: {scorer.runtime}" + (f"; {len(images)} files decoded by the streaming loader's workers" if streamed else ""))
    stream_out, stream_bad = _streamed(scorer, images) if streamed else ({}, {})
    picture = iter(range(len(images)))
    pixels: list[np.ndarray] = []  # image files read here, computed together at the end
    rows: list[tuple[str, np.ndarray | int | None, str | None]] = []  # (name, its outputs or its index in pixels, error)
    for at, item in enumerate(files):
        batch = batches.get(at)
        if isinstance(batch, str):
            rows.append((str(item), None, batch))
            continue
        if batch is not None:
            rows += [(f"{item}[{i}]", output, None) for i, output in enumerate(scorer.outputs(batch))]
            continue
        position = next(picture)
        if streamed:
            rows.append((str(item), None, f"cannot read image ({stream_bad[position]})") if position in stream_bad else (str(item), stream_out[position], None))
            continue
        try:
            pixels.append(scorer.prepare(item.read_bytes()))
            rows.append((str(item), len(pixels) - 1, None))
        except (OSError, ValueError) as exc:  # BadImage is a ValueError; an input that is no image is a TrainingError, raised
            rows.append((str(item), None, f"cannot read image ({_reason(exc)})"))
    computed = scorer.outputs(np.stack(pixels)) if pixels else None
    good = [i for i, (_, _, error) in enumerate(rows) if error is None]
    width = scorer.loaded.graph.output_shape[0]
    chosen: list[np.ndarray] = [computed[v] if isinstance(v, int) and computed is not None else v for _, v, _ in (rows[i] for i in good)]  # type: ignore[misc]
    outputs = np.stack(chosen) if chosen else np.zeros((0, width), np.float32)
    indices, probabilities = scorer.ranked(outputs, top)
    row_of = {position: row for row, position in enumerate(good)}
    results: list[dict[str, Any]] = []
    for position, (name, _, error) in enumerate(rows):
        if error is not None:
            results.append({"input": name, "top": [], "row": None, "error": error})
            continue
        row = row_of[position]
        entries = [{"class": scorer.classes[i], "index": int(i), "probability": float(p)} for i, p in zip(indices[row], probabilities[row], strict=True)]
        results.append({"input": name, "top": entries, "row": row, "error": None})
    return results, outputs
