"""A layer's outputs for every image of a collection: features, saved or streamed."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import Session
from cnnspec.data.dataset import load_dataset
from cnnspec.data.loader import ImageStream
from cnnspec.data.loader import batches as image_batches
from cnnspec.data.normalization import Normalization
from cnnspec.errors import TrainingError
from cnnspec.inference.engines import inference_engine, open_run_session
from cnnspec.runs.files import (
    save_arrays,
)
from cnnspec.runs.loading import LoadedRun, load_run


@dataclasses.dataclass(frozen=True)
class Features:
    values: np.ndarray  # N x (the layer's output shape), float32
    labels: np.ndarray  # N, int64
    classes: list[str]
    names: list[str]  # each image's file (or "source[i]" for array data)
    layer: str


@dataclasses.dataclass(frozen=True)
class Collection:
    """Every image of a data source, both splits in the source's order, prepared as
    evaluation prepares them: what features and embeddings are computed over."""

    images: np.ndarray | ImageStream
    labels: np.ndarray
    classes: list[str]
    names: list[str]  # each image's file, or "source[i]" for array data
    samples: list[Any] | None  # the files' samples (None for array data)

    def content(self, position: int) -> bytes:
        """The bytes an image comes from (its file, or its pixels): what a content hash covers."""
        if self.samples is not None:
            data: bytes = self.samples[position].read()
            return data
        assert isinstance(self.images, np.ndarray)
        return self.images[position].tobytes()


def collection(loaded: LoadedRun, data: str) -> Collection:
    from cnnspec.data import list_source
    from cnnspec.data.dataset import source_kind
    from cnnspec.data.errors import DataError
    from cnnspec.data.loader import ImageStream, available_cores
    from cnnspec.data.transforms import Transform
    from cnnspec.spec.training import resolve_preset

    config = loaded.config.data.model_copy(update={"source": data})
    source = Path(data).expanduser()
    listing = list_source(source) if source.exists() and source_kind(source) == "files" else None
    if listing is not None:
        samples = [*listing.train, *(listing.val or [])]
        config = resolve_preset(config, loaded.graph.input_shape, image_files=True)
        workers = available_cores() if config.workers is None else config.workers
        stream = ImageStream(samples, Transform.evaluation(config, loaded.graph.input_shape), workers=workers, strict=config.strict)
        return Collection(stream, np.array([s.label for s in samples], np.int64), listing.classes, [s.name for s in samples], samples)
    dataset = load_dataset(config, loaded.graph.input_shape, None, loaded.config.seed)
    if isinstance(dataset.x_train, ImageStream) or isinstance(dataset.x_val, ImageStream):
        raise DataError(f"{data}: expected array data here")
    images = np.concatenate([dataset.x_train, dataset.x_val])
    names = [f"{dataset.name}[{i}]" for i in range(len(images))]
    return Collection(images, np.concatenate([dataset.y_train, dataset.y_val]), dataset.classes, names, None)


def check_layer(loaded: LoadedRun, layer: str) -> None:
    from cnnspec.errors import did_you_mean

    names = [node.name for node in loaded.graph.nodes]
    if layer not in names:
        raise TrainingError(f"--layer: '{loaded.graph.name}' has no layer '{layer}'{did_you_mean(layer, names)} (`cnnspec check` lists them)")


def layer_outputs_on_disk(
    folder: Path, session: Any, norm: Normalization, images: np.ndarray | ImageStream, layer: str, shape: tuple[int, ...], batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``layer_outputs`` written batch by batch into a memory-mapped .npy in ``folder``
    (the file unlinked once mapped), in the order delivered; and the positions delivered."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"bottleneck-{layer}-", suffix=".npy", dir=folder)
    os.close(handle)
    mapped = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(len(images), *shape))
    os.unlink(name)  # the mapping keeps the space until the process lets go of it
    filled, kept = 0, []
    for index, x in image_batches(images, np.arange(len(images)), batch_size, views=True):
        values = np.asarray(session.activations(norm.apply(x), [layer])[layer], np.float32)
        mapped[filled: filled + len(values)] = values
        filled += len(values)
        kept.append(index)
    return mapped[:filled], (np.concatenate(kept) if kept else np.zeros(0, np.int64))


def layer_outputs(
    session: Any, norm: Normalization, images: np.ndarray | ImageStream, layer: str, batch_size: int, positions: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``layer``'s output (float32) for the images at ``positions`` (default: all), and
    the positions delivered (an unreadable file is left out); ``session`` is a backend's
    session or an inference engine built to give that layer (``inference_engine``)."""
    order = np.arange(len(images)) if positions is None else positions
    outputs, kept = [], []
    for index, x in image_batches(images, order, batch_size, views=True):
        if not len(index):  # every image of the batch unreadable
            continue
        outputs.append(np.asarray(session.activations(norm.apply(x), [layer])[layer], np.float32))
        kept.append(index)
        if progress is not None:
            progress(len(index))
    if not outputs:
        return np.zeros((0,), np.float32), np.zeros(0, np.int64)
    return np.concatenate(outputs), np.concatenate(kept)


def features(path: Path, open_session: Callable[..., Session], data: str, layer: str, *, device: str = "auto", batch_size: int | None = None,
             runtime: str = "backend", said: Callable[[str], None] | None = None) -> Features:
    """The output of ``layer`` for every image of ``data`` (both splits, in the source's
    order), each image prepared as evaluation prepares it: bottleneck features for a
    classifier of your own, or for similarity search. ``runtime`` as for ``predict``."""
    loaded = load_run(path)
    check_layer(loaded, layer)
    items = collection(loaded, data)
    engine, which = inference_engine(loaded, lambda: open_run_session(loaded, open_session, device), device, runtime, len(items.names), (layer,))
    if said is not None:
        said(f"runtime: {which}")
    values, delivered = layer_outputs(engine, loaded.normalization, items.images, layer, batch_size or loaded.config.batch_size)
    if not len(delivered):
        raise TrainingError(f"no image of {data} could be read")
    return Features(values, items.labels[delivered], items.classes, [items.names[i] for i in delivered], layer)


def save_features(result: Features, out: Path, run: Path) -> None:
    """One safetensors file: ``features``, ``labels``, and ``paths`` (UTF-8, one per line,
    as bytes: any number of them), with the class names, layer and run in its metadata."""
    paths = np.frombuffer("\n".join(result.names).encode(), np.uint8)
    metadata = {"classes": json.dumps(result.classes), "layer": result.layer, "run": str(run), "count": str(len(result.labels))}
    save_arrays(out, {"features": result.values, "labels": result.labels, "paths": paths}, metadata)
