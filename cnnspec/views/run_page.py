"""The report page of a run: results first, mistakes by file, curves, the network folded last."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.runs.versions import versions
from cnnspec.views.inspect_page import STYLE, escape, image_picture, png_uri

MISTAKES = 12


@dataclasses.dataclass(frozen=True)
class Evaluation:
    classes: list[str]
    labels: np.ndarray  # N
    probabilities: np.ndarray  # N x K
    seconds: float
    data: str

    @property
    def predicted(self) -> np.ndarray:
        return np.asarray(self.probabilities.argmax(axis=1))

    def confusion(self) -> np.ndarray:
        matrix = np.zeros((len(self.classes), len(self.classes)), np.int64)
        np.add.at(matrix, (self.labels, self.predicted), 1)
        return matrix


def _evaluate(run: Path, backend: str | None, device: str, data: str | None) -> tuple[Any, Evaluation, np.ndarray | Any, np.ndarray]:
    from cnnspec.backends import load_backend
    from cnnspec.data.loader import batches
    from cnnspec.inference.evaluation import evaluation_data
    from cnnspec.inference.scorer import Scorer
    from cnnspec.runs.loading import load_run

    loaded = load_run(run)
    scorer = Scorer(run, load_backend(backend or loaded.info["backend"]).open_session, device)
    config = loaded.config
    dataset = evaluation_data(loaded, data, stream=True)  # image files keep their names, for the mistakes
    start = time.perf_counter()
    outputs, kept = [], []
    for positions, x in batches(dataset.x_val, np.arange(len(dataset.x_val)), config.batch_size):  # an unreadable file is left out
        outputs.append(scorer.outputs(np.asarray(x)))
        kept.append(positions)
    seconds = time.perf_counter() - start
    logits = np.concatenate(outputs) if outputs else np.zeros((0, loaded.graph.output_shape[0]), np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    delivered = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    evaluation = Evaluation(loaded.info["classes"], np.asarray(dataset.y_val)[delivered], shifted / shifted.sum(axis=1, keepdims=True), seconds, dataset.name)
    return loaded, evaluation, dataset.x_val, delivered


def _figure_png(draw: Any) -> str:
    """A plots.* function's PNG, as a data: URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _lr_png(history: list[dict[str, Any]]) -> str:
    from cnnspec.harness.plots import _pyplot

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot([row["epoch"] for row in history], [row["lr"] for row in history], "-o")
    axis.set(xlabel="epoch", ylabel="learning rate", title="learning rate per epoch")
    if len({row["lr"] for row in history}) > 1 and min(row["lr"] for row in history) > 0:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{escape(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


OPTIMIZER_OPTIONS = {  # what each optimizer reads of train.optimizer
    "sgd": {"momentum", "nesterov"}, "adam": {"betas", "eps"}, "adamw": {"betas", "eps"},
    "rmsprop": {"momentum", "alpha", "eps"}, "adagrad": {"eps"}, "adadelta": {"rho", "eps"},
}


def _applying(train: dict[str, Any]) -> dict[str, Any]:
    """The ``train:`` settings without the optimizer options its optimizer does not read
    (momentum, rho and alpha for Adam)."""
    optimizer = dict(train.get("optimizer") or {})
    reads = OPTIMIZER_OPTIONS.get(str(optimizer.get("name")))
    if reads is None:
        return train
    every = set().union(*OPTIMIZER_OPTIONS.values())
    return {**train, "optimizer": {k: v for k, v in optimizer.items() if k not in every or k in reads}}


def _image_names(images: Any, data: str) -> list[str]:
    """Each validation image's file (a stream's samples), or its place in array data."""
    samples = getattr(images, "samples", None)
    if samples is not None:
        return [str(sample.name) for sample in samples]
    return [f"{data}[{i}]" for i in range(len(images))]


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _flat(f"{prefix}.{key}" if prefix else str(key), inner)]
    return [(prefix, value)]


def report(run: Path, *, backend: str | None = None, device: str = "auto", data: str | None = None, mistakes: int = MISTAKES) -> tuple[str, dict[str, Any]]:
    """(the page, its figures)."""
    from cnnspec.harness import plots

    loaded, evaluation, images, delivered = _evaluate(run, backend, device, data)
    graph, info = loaded.graph, loaded.info
    history = [json.loads(line) for line in (loaded.run.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    matrix = evaluation.confusion()
    counts = matrix.sum(axis=1)
    per_class = [float(matrix[i, i] / counts[i]) if counts[i] else None for i in range(len(evaluation.classes))]
    count = len(evaluation.labels)
    accuracy = float(np.trace(matrix) / count) if count else 0.0
    wrong = np.flatnonzero(evaluation.predicted != evaluation.labels)
    confidence = evaluation.probabilities[wrong, evaluation.predicted[wrong]]
    worst = wrong[np.argsort(-confidence, kind="stable")][:mistakes]
    train_seconds = sum(float(row.get("seconds", 0.0)) for row in history)
    names = [_image_names(images, evaluation.data)[int(p)] for p in delivered]
    figures: dict[str, Any] = {
        "spec": graph.name, "run": str(loaded.run.path), "checkpoint": loaded.checkpoint.name, "data": evaluation.data,
        "params": graph.params, "macs": graph.macs, "epochs": len(history), "history": history,
        "evaluation": {"images": count, "accuracy": accuracy, "per_class_accuracy": dict(zip(evaluation.classes, per_class, strict=True)),
                       "confusion_matrix": matrix.tolist(), "seconds": evaluation.seconds,
                       "images_per_second": count / evaluation.seconds if evaluation.seconds > 0 else None},
        "mistakes": [{"index": int(i), "file": names[int(i)], "true": evaluation.classes[int(evaluation.labels[i])], "predicted": evaluation.classes[int(evaluation.predicted[i])],
                      "probability": float(evaluation.probabilities[i, evaluation.predicted[i]])} for i in worst],
        "training": {"seconds": train_seconds, "images_per_second": [row.get("images_per_second") for row in history]},
        "environment": {"run": {"backend": info.get("backend"), "device": info.get("device"), "precision": info.get("precision"),
                                "processes": info.get("processes", 1), "created": info.get("created"), **(info.get("versions") or {})},
                        "report": {"machine": platform.machine(), "system": platform.system(), **versions()}},
    }
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cnnspec report: {escape(graph.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(graph.name)}: run report</h1>",
             f"<p>Run <code>{escape(loaded.run.path)}</code>, checkpoint <code>{escape(loaded.checkpoint.name)}</code>, trained on "
             f"{escape(info.get('data'))} with the {escape(info.get('backend'))} backend ({escape(info.get('device'))}, {escape(info.get('precision'))}); "
             f"{len(history)} epochs. Validation now: <b>{accuracy:.4f}</b> accuracy on {count:,} images of {escape(evaluation.data)}.</p>"]
    parts.append("<h2>Evaluation</h2>")
    title = f"{graph.name}: {evaluation.data} ({count} images)"
    parts.append(f"<figure><img alt='confusion matrix' src='{_figure_png(lambda p: plots.confusion_matrix(matrix, evaluation.classes, p, title))}'></figure>")
    parts.append(_table(["class", "images", "accuracy"],
                        [[c, int(counts[i]), "-" if a is None else f"{a:.4f}"] for i, (c, a) in enumerate(zip(evaluation.classes, per_class, strict=True))], {1, 2}))
    parts.append(f"<h2>Most confident mistakes</h2><p>{len(wrong):,} of {count:,} validation images are misclassified; the "
                 f"{len(worst)} the network was surest of:</p>")
    scale = float(loaded.normalization.scale)
    samples_named = getattr(images, "samples", None) is not None
    for entry, i in zip(figures["mistakes"], worst, strict=True):
        at = int(delivered[int(i)])
        pixels = images.load(np.array([at]))[1][0] if samples_named else images[at]  # type: ignore[union-attr]  # a stream decodes the one image
        picture = image_picture(np.asarray(pixels, np.float32), scale)
        parts.append(f"<figure><img alt='mistake {entry['index']}' src='{png_uri(picture)}' width='96'><figcaption title='{escape(entry['file'])}'>{escape('/'.join(Path(entry['file']).parts[-2:]) if samples_named else entry['file'])}: "
                     f"{escape(entry['true'])}, taken for {escape(entry['predicted'])} ({entry['probability']:.3f})</figcaption></figure>")
    if history:
        parts.append("<h2>Learning curves</h2>")
        parts.append(f"<figure><img alt='learning curves' src='{_figure_png(lambda p: plots.learning_curves(history, p, graph.name))}'></figure>")
        parts.append(f"<figure><img alt='learning rate' src='{_lr_png(history)}'></figure>")
        parts.append(_table(["epoch", "train loss", "train accuracy", "val loss", "val accuracy", "learning rate", "seconds", "images/s"],
                            [[r["epoch"], f"{r['train_loss']:.4f}", f"{r['train_accuracy']:.4f}", f"{r['val_loss']:.4f}", f"{r['val_accuracy']:.4f}",
                              f"{r['lr']:.3g}", f"{r.get('seconds', 0):.1f}", f"{r.get('images_per_second', 0):,.0f}"] for r in history],
                            set(range(8))))
    parts.append("<h2>Hyperparameters</h2>" + _table(["setting", "value"], [[k, json.dumps(v)] for k, v in _flat("", _applying(info.get("train", {})))]))
    e = figures["evaluation"]
    parts.append("<h2>Timings</h2>" + _table(["", "seconds", "images/s"], [
        ["training (all epochs)", f"{train_seconds:.1f}", f"{np.mean([r.get('images_per_second', 0) for r in history]):,.0f}" if history else "-"],
        ["this evaluation", f"{e['seconds']:.2f}", f"{e['images_per_second']:,.0f}" if e["images_per_second"] else "-"]], {1, 2}))
    environment = figures["environment"]
    parts.append("<h2>Environment</h2>" + _table(["", "setting", "value"],
                                                 [[side, k, v] for side in ("run", "report") for k, v in environment[side].items() if v is not None]))
    parts.append(f"<h2>Network</h2><details><summary>{len(graph.nodes)} layers, {graph.params:,} parameters, {graph.macs:,} MACs (open)</summary>" + _table(
        ["layer", "kind", "output", "params", "MACs"],
        [[n.name, n.kind, "x".join(map(str, n.output_shape)), f"{n.params:,}", f"{n.macs:,}"] for n in graph.nodes]
        + [["total", "", "x".join(map(str, graph.output_shape)), f"{graph.params:,}", f"{graph.macs:,}"]], {3, 4}) + "</details>")
    embedded = json.dumps(figures).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='cnnspec-figures'>{embedded}</script></body></html>")
    return "\n".join(parts), figures
