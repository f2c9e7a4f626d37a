"""Pictures of a run: learning curves and a confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.harness.weights import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        loss_axis.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split)
        accuracy_axis.plot(epochs, [row[f"{split}_accuracy"] for row in history], style, label=split)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right" if axis is accuracy_axis else "upper right")
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write(path, lambda p: figure.savefig(p, dpi=100, format="png"))
    plt.close(figure)


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = range(len(classes))
    axis.set_xticks(ticks, classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    axis.set_yticks(ticks, classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    if len(classes) <= 20:
        limit = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8, color="white" if count > limit else "black")
    figure.tight_layout()
    atomic_write(path, lambda p: figure.savefig(p, dpi=100, format="png"))
    plt.close(figure)
