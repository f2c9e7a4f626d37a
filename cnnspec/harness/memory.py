"""How much memory training needs, estimated before it starts, and the refusal when it will not fit."""

from __future__ import annotations

from cnnspec.data.resources import system_available_memory
from cnnspec.errors import TrainingError
from cnnspec.graph.dag import Graph
from cnnspec.spec.training import TrainConfig

OPTIMIZER_SLOTS = {"sgd": 1, "adagrad": 1, "rmsprop": 2, "adadelta": 2, "adam": 2, "adamw": 2}


def estimate_memory(graph: Graph, config: TrainConfig, workspace_per_sample: int = 0) -> tuple[int, int]:
    """(fixed bytes, bytes per sample) of a training step: weights, gradients and
    optimizer slots; every activation kept for the backward pass, and its gradient; and
    whatever else the backend keeps per sample (the NumPy backend's im2col columns)."""
    slots = OPTIMIZER_SLOTS[config.optimizer.name]
    fixed = (graph.params * (2 + slots) + graph.non_trainable) * 4
    return fixed, 2 * graph.activation_bytes + workspace_per_sample


def check_memory(graph: Graph, config: TrainConfig, device: str, free: int | None, workspace_per_sample: int = 0) -> None:
    """Refuse, with a batch size that fits, a run that cannot fit on ``device``."""
    # Without a figure from the device, host memory is the limit only on the CPU.
    available = free if free is not None else system_available_memory() if device == "cpu" else None
    if available is None:
        return
    fixed, per_sample = estimate_memory(graph, config, workspace_per_sample)
    budget = int(available * 0.9)
    need = fixed + per_sample * config.batch_size
    if need > budget:
        fits = (budget - fixed) // per_sample if budget > fixed else 0
        advice = f"--batch-size {fits} fits" if fits >= 1 else "even one sample does not fit; use a smaller input or model"
        raise TrainingError(
            f"training '{graph.name}' at batch size {config.batch_size} needs about {need / 2**30:.1f} GiB "
            f"({fixed / 2**30:.2f} GiB weights, gradients and optimizer state + {per_sample / 2**20:.1f} MiB per sample) "
            f"but {device} has {available / 2**30:.1f} GiB free: {advice}"
        )
