"""The run folder: its layout, where a checkpoint is, and what a run records about itself.

A run directory holds everything needed to evaluate, resume or export a run:

    spec.yaml            the spec as given
    run.json             the resolved training config, backend, normalisation, classes
    metrics.jsonl        one JSON object per epoch
    events.out.tfevents.*  the same, for TensorBoard (tensorboard --logdir runs/)
    checkpoints/epoch-NNNN/{weights,optimizer}.safetensors, state.json
    checkpoints/latest.json   which checkpoint is the newest complete one
    checkpoints/mid-epoch/    the newest checkpoint inside the current epoch, for --resume
    curves.png           learning curves
    final.json           the final metrics
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

from cnnspec.errors import TrainingError
from cnnspec.graph.dag import Graph
from cnnspec.runs.files import (
    DamagedFile,
    check_sealed,
    read_state,
)

MID_EPOCH = "mid-epoch"  # the one checkpoint inside an epoch; latest.json never points at it


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def latest(self) -> Path | None:
        pointer = self.checkpoints / "latest.json"
        try:
            return self.checkpoints / str(json.loads(pointer.read_text())["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            # No pointer (it is written after each folder is complete: a crash in between
            # leaves the folder), or a damaged one: the newest complete folder is the latest.
            epochs = self.epochs()
            return epochs[0] if epochs else None

    def best(self) -> Path | None:
        """The checkpoint with the best early-stopping monitor so far (None before the first)."""
        try:
            folder = self.checkpoints / str(json.loads((self.checkpoints / "best.json").read_text())["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return folder if folder.is_dir() else None

    def epochs(self) -> list[Path]:
        """The complete checkpoints, newest first."""
        return sorted((p for p in self.checkpoints.glob("epoch-*") if p.is_dir()), reverse=True)

    def newest_intact(self, excluding: Path | None = None) -> tuple[Path | None, list[str]]:
        """The newest checkpoint whose files are all as written (the one inside an epoch
        first, when it is ahead of the complete ones), and what is wrong with each newer one."""
        epochs = self.epochs()
        candidates = list(epochs)
        mid = self.checkpoints / MID_EPOCH
        if mid.is_dir():
            try:
                ahead = not epochs or read_state(mid / "state.json")["epoch"] >= read_state(epochs[0] / "state.json")["epoch"]
            except DamagedFile:
                ahead = True  # checked below, where what is wrong with it is said
            if ahead:
                candidates.insert(0, mid)
        damaged: list[str] = []
        for folder in candidates:
            if folder == excluding:
                continue
            problem = checkpoint_problem(folder)
            if problem is None:
                return folder, damaged
            damaged.append(problem)
        return None, damaged

    @staticmethod
    def pinned(path: Path) -> tuple[Path, str]:
        """``RUN@best`` -> (RUN, "best"); ``RUN@latest`` likewise; any other path -> (path, "")."""
        base, at, which = str(path).rpartition("@")
        return (Path(base), which) if at and which in ("best", "latest") else (path, "")

    @staticmethod
    def find(path: Path) -> tuple[RunDir, Path]:
        """A run directory (its latest checkpoint), ``RUN@best`` or ``RUN@latest``, or one of
        its checkpoint folders -> (run, checkpoint folder)."""
        path = Path(path)
        base, which = RunDir.pinned(path)
        if which and (base / "run.json").exists():
            run = RunDir(base)
            chosen = run.best() if which == "best" else run.latest()
            if chosen is None:
                raise TrainingError(f"{path}: the run has no {which} checkpoint yet")
            return run, chosen
        if (path / "weights.safetensors").exists() and (path.parent.parent / "run.json").exists():
            return RunDir(path.parent.parent), path
        if (path / "run.json").exists():
            run = RunDir(path)
            latest = run.latest()
            if latest is None:
                raise TrainingError(f"{path}: the run has no checkpoint yet")
            return run, latest
        raise TrainingError(f"{path}: not a cnnspec run directory or checkpoint (no run.json)")


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder's files, or None when they are as written."""
    try:
        check_sealed(folder)
        read_state(folder / "state.json")
        for name in ("weights.safetensors", "optimizer.safetensors"):
            if not (folder / name).is_file():
                raise DamagedFile(f"{folder / name}: missing")
    except DamagedFile as exc:
        return str(exc)
    return None


def default_run_dir(graph: Graph) -> Path:
    return Path("runs") / f"{graph.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def command_line() -> list[str]:
    """The command that is running, as run.json records it."""
    import sys

    return ["cnnspec", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith(("cnnspec", "__main__.py")) else list(sys.argv)
