"""Learning rate by epoch, computed by the harness so every backend follows the same
schedule (the formulas are PyTorch's ``lr_scheduler`` ones)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnspec.spec.training import ScheduleConfig


@dataclass
class Plateau:
    """Reduce-on-plateau state, saved in checkpoints."""

    lr: float
    best: float = math.inf
    bad_epochs: int = 0


def learning_rate(schedule: ScheduleConfig, base_lr: float, epoch: int, epochs: int, plateau: Plateau) -> float:
    """The rate for 0-based ``epoch``: a linear warm-up, then the schedule."""
    if epoch < schedule.warmup_epochs:
        return base_lr * (epoch + 1) / (schedule.warmup_epochs + 1)
    t = epoch - schedule.warmup_epochs
    if schedule.name == "step":
        return base_lr * schedule.gamma ** (t // schedule.step_size)
    if schedule.name == "exponential":
        return base_lr * schedule.gamma**t
    if schedule.name == "cosine":
        span = max(epochs - schedule.warmup_epochs, 1)
        return schedule.min_lr + (base_lr - schedule.min_lr) * (1 + math.cos(math.pi * t / span)) / 2
    if schedule.name == "plateau":
        return plateau.lr
    return base_lr


def after_epoch(schedule: ScheduleConfig, plateau: Plateau, val_loss: float) -> None:
    """Let reduce-on-plateau see this epoch's validation loss."""
    if schedule.name != "plateau":
        return
    if val_loss < plateau.best:
        plateau.best, plateau.bad_epochs = val_loss, 0
        return
    plateau.bad_epochs += 1
    if plateau.bad_epochs >= schedule.patience:
        plateau.lr = max(plateau.lr * schedule.factor, schedule.min_lr)
        plateau.bad_epochs = 0
