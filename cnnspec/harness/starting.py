"""The weights a run starts from (seeded, a checkpoint, a pretrained run) and the report of what was taken."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from cnnspec.data.dataset import Dataset
from cnnspec.errors import TrainingError
from cnnspec.graph import tuning
from cnnspec.graph.dag import Graph
from cnnspec.graph.weights import initial_weights
from cnnspec.runs.files import (
    DamagedFile,
    load_arrays,
)
from cnnspec.runs.folder import RunDir, checkpoint_problem
from cnnspec.runs.progress import Progress
from cnnspec.runs.weight_files import load_weights
from cnnspec.spec.training import Normalize


def starting_weights(graph: Graph, seed: int, init: Path | None, progress: Progress, data: Dataset | None = None,
                      keep_head: bool = False) -> dict[str, np.ndarray]:
    """The seeded initial weights, with every array of ``init`` (a checkpoint: transfer
    learning) whose name and shape fit; says which stayed fresh. The classifier (the layer
    ``--classes`` resizes) is taken from a run only when ``data``'s class names are that
    run's, in order: a new task gets a new classifier (``keep_head``: whenever it fits)."""
    weights = initial_weights(graph, seed)
    if init is None:
        return weights
    recorded: tuple[list[str], bool] | None = None
    if _names_a_run(init):  # a run, RUN@best, or one of its checkpoints: its weights, checked as eval checks them
        run, checkpoint = RunDir.find(init)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise DamagedFile(problem)
        init = checkpoint / "weights.safetensors"
        recorded = _recorded_classes(run.path)
        loaded = load_weights(checkpoint)
    elif not init.exists():
        raise TrainingError(f"{init}: no such file; --init takes a checkpoint (.safetensors), a run directory, RUN@best or a checkpoint folder")
    else:
        loaded = load_arrays(init)
    taken = [name for name, array in loaded.items() if name in weights and array.shape == weights[name].shape]
    if not taken:
        raise TrainingError(f"{init}: none of its arrays fits '{graph.name}' (names and shapes differ)")
    fresh, why = _fresh_classifier(graph, taken, recorded, data, keep_head)
    taken = [name for name in taken if tuning.owner(name) != fresh]
    for name in taken:
        weights[name] = loaded[name].astype(np.float32)
    progress.message(f"initialised {len(taken)} of {len(weights)} arrays from {init}")
    for line in _init_report(weights, loaded, set(taken), {fresh: why} if fresh else {}):
        progress.message(f"  {line}")
    return weights


def _recorded_classes(run: Path) -> tuple[list[str], bool] | None:
    """The classes a run trained on, as its run.json lists them, and whether they are names
    (False: made up from bare integer labels); None where the record names none."""
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return None
    classes = record.get("classes") if isinstance(record, dict) else None
    if not isinstance(classes, list):
        return None
    return [str(name) for name in classes], record.get("class_names") is not False


def _fresh_classifier(graph: Graph, taken: list[str], recorded: tuple[list[str], bool] | None, data: Dataset | None,
                      keep_head: bool) -> tuple[str, str]:
    """(the classifier's name, why it starts fresh), or ('', '') when the init run's one is
    kept: the data's class names are the run's, in order, or ``keep_head`` says so. From a
    weights file (no class names to compare) the shape decides."""
    from cnnspec.graph.load import classifier_name

    try:
        name = classifier_name(graph)
    except ValueError:
        return "", ""
    if keep_head or data is None or recorded is None or not any(tuning.owner(w) == name for w in taken):
        return "", ""
    classes, named = recorded
    if not (named and data.named):
        return name, "the labels are bare integers, so nothing shows that the data's classes are the init run's; --keep-head keeps it"
    if list(data.classes) != classes:
        shown = [", ".join(names[:5]) + (" ..." if len(names) > 5 else "") for names in (data.classes, classes)]
        return name, f"the data's classes ({shown[0]}) are not the init run's ({shown[1]}): a new task; --keep-head keeps it"
    return "", ""


def _names_a_run(init: Path) -> bool:
    """``--init`` names a run, one of its checkpoint folders, or ``RUN@best`` / ``RUN@latest``
    (not a weights file)."""
    base, which = RunDir.pinned(init)
    return init.is_dir() or bool(which and base.is_dir())


def normalised_as_pretrained(data: Dataset, init: Path, progress: Progress) -> Dataset:
    """A run started from another run's weights normalises its inputs as that run did, unless
    ``data.normalize`` is set (or a preset set it): its body's first layer learnt that scale,
    and statistics measured on a few new images would shift every input it sees."""
    chosen = data.config
    if not _names_a_run(init) or chosen.normalize != "standard" or "normalize" in chosen.model_fields_set:
        return data
    run, _ = RunDir.find(init)
    try:
        stored = json.loads((run.path / "run.json").read_text())["normalization"]
        mean, std = [float(v) for v in stored["mean"]], [float(v) for v in stored["std"]]
    except (OSError, ValueError, KeyError, TypeError):
        return data  # an older or damaged run: the data's own statistics, as without --init
    if len(mean) != data.x_train.shape[1] or len(std) != len(mean) or min(std) <= 0:
        return data
    shown = ", ".join(f"{m:.3f}" for m in mean), ", ".join(f"{v:.3f}" for v in std)
    progress.message(f"normalisation: {run.path}'s (mean {shown[0]}, std {shown[1]}), as its weights were trained; data.normalize chooses another")
    return dataclasses.replace(data, config=chosen.model_copy(update={"normalize": Normalize(mean=mean, std=std)}))


def _init_report(weights: dict[str, np.ndarray], loaded: dict[str, np.ndarray], taken: set[str], fresh: dict[str, str] | None = None) -> list[str]:
    """Layers loaded, layers new (and why: a shape that differs, no array of that name, or
    ``fresh``'s reason by layer), and checkpoint arrays not used."""
    fresh = fresh or {}

    def listed(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    layers = list(dict.fromkeys(tuning.owner(name) for name in weights))
    whole = [n for n in layers if all(w in taken for w in weights if tuning.owner(w) == n)]
    lines = [f"loaded: {listed(whole)}"] if whole else []
    reasons = []
    for name in weights:
        if name in taken:
            continue
        if tuning.owner(name) in fresh:
            continue
        if name in loaded:
            shapes = ("x".join(map(str, loaded[name].shape)), "x".join(map(str, weights[name].shape)))
            reasons.append(f"{name} (checkpoint {shapes[0]}, network {shapes[1]})")
        else:
            reasons.append(f"{name} (not in the checkpoint)")
    if reasons:
        lines.append(f"new, freshly initialised: {listed(reasons)}")
    lines += [f"classifier '{layer}' starts fresh: {why}" for layer, why in fresh.items()]
    unused = [name for name in loaded if name not in weights]
    if unused:
        lines.append(f"not used (no such array in the network): {listed(unused)}")
    return lines
