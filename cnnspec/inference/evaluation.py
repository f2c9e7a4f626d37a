"""Evaluating a run on its validation data or a user's own folder: loss, accuracy, top-k, confusion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.group import SINGLE, Group, evaluation_share
from cnnspec.backends.protocol import Session
from cnnspec.data.dataset import Dataset, by_class_name, load_dataset, recorded_source, test_part
from cnnspec.data.loader import ImageStream
from cnnspec.data.loader import batches as image_batches
from cnnspec.data.normalization import Normalization
from cnnspec.errors import TrainingError
from cnnspec.harness import plots
from cnnspec.inference.engines import _EngineSession, inference_engine, open_run_session
from cnnspec.runs.loading import LoadedRun, evaluation_file, load_run


def batches(count: int, size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    indices = np.arange(count) if order is None else order
    for start in range(0, count, size):
        yield indices[start : start + size]


def evaluate_arrays(
    session: Session, images: np.ndarray | ImageStream, labels: np.ndarray, norm: Normalization, batch_size: int, top_k: int,
    classes: int, group: Group = SINGLE,
) -> dict[str, Any]:
    """Loss, accuracy, top-k and the confusion matrix over ``images``; in a group, each
    process evaluates its share and the sums are the group's (no image counted twice)."""
    k = min(top_k, classes)
    loss_sum, top_hits = 0.0, 0
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for index, x in image_batches(images, evaluation_share(len(images), group.rank, group.size), batch_size, views=True):
        if not len(index):
            continue
        batch_loss, logits = session.evaluate(session.inputs(x, norm.scale, norm.mean, norm.std), labels[index])
        y = labels[index]
        top = np.argsort(-logits, axis=1)[:, :k]
        np.add.at(matrix, (y, top[:, 0]), 1)
        loss_sum += batch_loss
        top_hits += int((top == y[:, None]).any(axis=1).sum())
    totals = group.all_sum(np.concatenate([[loss_sum, top_hits], matrix.ravel()]))
    loss_sum, top_hits = float(totals[0]), int(totals[1])
    matrix = totals[2:].round().astype(np.int64).reshape(classes, classes)
    count = int(matrix.sum())
    if not count:
        raise TrainingError("no validation image could be read")
    counts = matrix.sum(axis=1)
    return {
        "images": count,
        "loss": loss_sum / count,
        "accuracy": float(np.trace(matrix) / count),
        "k": k,
        "top_k": top_hits / count,
        "confusion": matrix,
        "per_class": [float(matrix[i, i] / counts[i]) if counts[i] else None for i in range(classes)],
    }


def evaluation_data(loaded: LoadedRun, data: str | None, said: Callable[[str], None] | None = None, *, stream: bool = False) -> Dataset:
    """What ``eval`` and ``report`` evaluate: the run's validation split, or ``data`` (a
    test set of one's own) read whole, its labels matched to the run's classes by name.
    ``stream``: image files stay a stream, which knows each image's file."""
    config = loaded.config.data
    if stream:
        config = config.model_copy(update={"stream": "always"})
    if data is None:
        config = config.model_copy(update={"source": recorded_source(config.source, loaded.run.path)})
        return load_dataset(config, loaded.graph.input_shape, loaded.graph.output_shape[0], loaded.config.seed)
    config = config.model_copy(update={"source": data})
    dataset = by_class_name(load_dataset(config, loaded.graph.input_shape, None, loaded.config.seed, whole=True), loaded.info["classes"])
    if said is not None:
        part = test_part(Path(data))
        said(f"data: {dataset.name} read whole ({len(dataset.y_val):,} images{f', its {part.name}/ part' if part != Path(data) else ''}); "
             + ("labels matched to the run's classes by name" if dataset.named else "its labels are bare integers, read as indices into the run's classes"))
    return dataset


def evaluate(
    path: Path, open_session: Callable[..., Session], *, data: str | None = None, device: str = "auto", confusion_png: Path | None = None,
    runtime: str = "backend", said: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    loaded = load_run(path)
    config = loaded.config
    classes = loaded.info["classes"]
    dataset = evaluation_data(loaded, data, said)
    opened: list[Session] = []

    def session() -> Session:
        opened.append(open_run_session(loaded, open_session, device))
        return opened[0]

    engine, which = inference_engine(loaded, session, device, runtime, len(dataset.x_val))
    if said is not None:
        said(f"runtime: {which}")
    evaluator: Any = engine if opened else _EngineSession(engine, config)
    width = loaded.graph.output_shape[0]
    result = evaluate_arrays(evaluator, dataset.x_val, dataset.y_val, loaded.normalization, config.batch_size, config.top_k, width)
    png = confusion_png or (loaded.run.path / "confusion.png" if data is None else evaluation_file(loaded.run.path, dataset.name, ".png"))
    plots.confusion_matrix(result["confusion"], classes, png, f"{loaded.graph.name}: {dataset.name} ({result['images']} images)")
    return {
        "run": str(loaded.run.path),
        "checkpoint": loaded.checkpoint.name,
        "data": dataset.name,
        "images": result["images"],
        "loss": result["loss"],
        "accuracy": result["accuracy"],
        "top_k": result["top_k"],  # one key whatever k is: a reader need not know the class count
        "k": result["k"],
        "per_class_accuracy": dict(zip(classes, result["per_class"], strict=True)),
        "confusion_matrix": result["confusion"].tolist(),
        "classes": classes,
        "confusion_png": str(png),
    }
