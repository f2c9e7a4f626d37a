"""Pictures of a run: learning curves and a confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.runs.files import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation; with a learning-rate schedule
    (the rate changed), a third panel of the rate."""
    plt = _pyplot()
    epochs = [int(row["epoch"]) for row in history]
    rates = [float(row.get("lr", 0.0)) for row in history]
    scheduled = len(set(rates)) > 1
    figure, axes = plt.subplots(1, 3 if scheduled else 2, figsize=(15 if scheduled else 10, 4))
    loss_axis, accuracy_axis = axes[0], axes[1]
    for split, style in (("train", "-o"), ("val", "-s")):
        loss_axis.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split)
        accuracy_axis.plot(epochs, [row[f"{split}_accuracy"] for row in history], style, label=split)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.legend(loc="lower right" if axis is accuracy_axis else "upper right")
    if scheduled:
        axes[2].plot(epochs, rates, "-o", color="tab:green")
        axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log" if min(rates) > 0 else "linear")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.set_xlim(0.5, max(epochs, default=1) + 0.5)  # one epoch: a point at 1, not an axis from 0.96 to 1.04
        axis.set_xticks(range(1, max(epochs, default=1) + 1, max(1, len(epochs) // 10)))
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
