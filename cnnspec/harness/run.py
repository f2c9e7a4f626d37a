"""Training, evaluation and prediction over the backend protocol.

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
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.data.decode import BadImage
from cnnspec.data.loader import ImageStream
from cnnspec.data.loader import batches as image_batches
from cnnspec.data.transforms import sample_generator
from cnnspec.diagnostics import plural
from cnnspec.distributed import SINGLE, Group, check_batch, evaluation_share, local_order, steps
from cnnspec.errors import CnnspecError
from cnnspec.graph import Graph
from cnnspec.harness import bottleneck, linear_head, plots, tuning
from cnnspec.harness.checkpoint_files import load_weights, save_weights
from cnnspec.harness.config import Normalize, TrainConfig, phase_plan
from cnnspec.harness.data import Dataset, absolute_source, by_class_name, load_dataset, recorded_source, test_part
from cnnspec.harness.events import EventLog
from cnnspec.harness.protocol import Backend, Session
from cnnspec.harness.schedule import Plateau, after_epoch, learning_rate
from cnnspec.harness.weights import (
    DamagedFile,
    check_sealed,
    check_weights,
    initial_weights,
    load_arrays,
    read_state,
    save_arrays,
    seal,
    write_json,
    write_text,
)
from cnnspec.reporting import versions
from cnnspec.strictjson import strict_json

OPTIMIZER_SLOTS = {"sgd": 1, "adagrad": 1, "rmsprop": 2, "adadelta": 2, "adam": 2, "adamw": 2}


class TrainingError(CnnspecError, RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Normalization:
    scale: float  # applied first: 1/255 for uint8 data
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """N x C x H x W (uint8 or float) -> normalised float32."""
        out = x.astype(np.float32) * np.float32(self.scale)
        if out.ndim == 4:
            out -= np.asarray(self.mean, np.float32)[:, None, None]
            out /= np.asarray(self.std, np.float32)[:, None, None]
        return out


def normalization_for(config: TrainConfig, x_train: np.ndarray | ImageStream) -> Normalization:
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    channels = x_train.shape[1]
    mode = config.data.normalize
    if mode == "none":
        return Normalization(1.0, (0.0,) * channels, (1.0,) * channels)
    if mode == "unit":
        return Normalization(scale, (0.0,) * channels, (1.0,) * channels)
    if mode == "standard":
        if isinstance(x_train, ImageStream):  # 1,000 images, evenly spaced, estimate a large set well
            picked = x_train.load(np.unique(np.linspace(0, len(x_train) - 1, min(len(x_train), 1_000)).astype(np.int64)))[1]
        else:
            picked = x_train[:: max(1, len(x_train) // 10_000)]
        if not len(picked):
            unread = "; ".join(x_train.skipped[:3]) if isinstance(x_train, ImageStream) else "the set is empty"
            raise TrainingError(f"no training image could be read to measure the normalisation ({unread})")
        sample = picked.astype(np.float64) * scale
        axes = (0, 2, 3) if sample.ndim == 4 else (0,)
        mean, std = sample.mean(axis=axes), sample.std(axis=axes)
        return Normalization(scale, tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std))
    if len(mode.mean) != channels or len(mode.std) != channels:
        raise TrainingError(f"normalize: mean and std need {channels} values (one per input channel)")
    return Normalization(scale, tuple(mode.mean), tuple(mode.std))


# ---- progress ------------------------------------------------------------------------------


class Progress:
    """A rich bar per epoch on a terminal; one plain line per epoch otherwise."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, emoji=False)
        self.live = self.console.is_terminal and not quiet
        self._bar: Any = None

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=batches, stats="")

    def step(self, loss: float, accuracy: float, images_per_second: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, stats=f"loss {loss:.4f} acc {accuracy:.4f} {images_per_second:,.0f} img/s")

    def end_epoch(self, row: dict[str, float], epochs: int) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if not self.quiet:
            self.console.print(
                f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_accuracy']:.4f}  "
                f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.3g}  "
                f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s",
                markup=False,
                soft_wrap=True,
            )

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)


# ---- batches -----------------------------------------------------------------------------


def batches(count: int, size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    indices = np.arange(count) if order is None else order
    for start in range(0, count, size):
        yield indices[start : start + size]


def augment(x: np.ndarray, index: np.ndarray, config: TrainConfig, seed: tuple[int, ...]) -> np.ndarray:
    """Random crop after zero padding, and horizontal flips, on an N x C x H x W batch
    (a new array: the batch given may be a stream's buffer). Each image's draws come from
    the generator of (``seed``, its position), so an image is augmented the same way
    whatever batch, process or resumed run it is trained in."""
    spec = config.data.augment
    generators = [sample_generator((*seed, 1), int(i)) for i in index]
    if spec.random_crop:
        pad = spec.random_crop
        _, _, h, w = x.shape
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        offsets = [g.integers(0, 2 * pad + 1, size=2).tolist() for g in generators]
        x = np.stack([padded[i, :, top : top + h, left : left + w] for i, (top, left) in enumerate(offsets)])
    if spec.hflip and not spec.per_sample:  # with per-sample transforms, each sample's flip is drawn with them
        flip = np.array([g.random() < 0.5 for g in generators], bool)
        x = x.copy()
        x[flip] = x[flip, :, :, ::-1]
    return x


# ---- the run directory -------------------------------------------------------------------


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


MID_EPOCH = "mid-epoch"  # the one checkpoint inside an epoch; latest.json never points at it


def save_checkpoint(run: RunDir, epoch: int, session: Session, state: dict[str, Any], *, best: bool = False,
                    keep: int | str | None = 1, frozen: AbstractSet[str] = frozenset()) -> Path:
    """A complete checkpoint folder, then the pointers to it (``latest.json``; ``best.json``
    when ``best``): a crash at any moment leaves the previous checkpoint intact and
    pointed to. Only the newest ``keep`` epoch checkpoints stay, and the best ("all" or
    None: every one). The arrays named in ``frozen`` are written once for the whole run
    (``checkpoint_files``)."""
    from cnnspec.harness.checkpoint_files import unused_shared

    name = f"epoch-{epoch:04d}"
    final = _write_checkpoint(run, name, session, state, frozen)
    write_json(run.checkpoints / "latest.json", {"checkpoint": name, "epoch": epoch})
    if best:
        write_json(run.checkpoints / "best.json", {"checkpoint": name, "epoch": epoch})
    shutil.rmtree(run.checkpoints / MID_EPOCH, ignore_errors=True)  # the epoch it was inside is complete
    if isinstance(keep, int):
        kept = {final, run.best()}
        for folder in run.epochs()[keep:]:
            if folder not in kept:
                shutil.rmtree(folder, ignore_errors=True)
    for path in unused_shared(run.checkpoints):
        path.unlink(missing_ok=True)
    return final


def _write_checkpoint(run: RunDir, name: str, session: Session, state: dict[str, Any], frozen: AbstractSet[str] = frozenset()) -> Path:
    """The checkpoint folder ``name``, complete or not at all: written as a staging folder
    and renamed. A write that fails (disk full, no permission, read-only) removes the
    staging folder and says which checkpoint is still intact."""
    staging = run.checkpoints / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        sealed = save_weights(staging, session.get_weights(), frozen)
        arrays, meta = session.optimizer_state()
        save_arrays(staging / "optimizer.safetensors", arrays)
        write_json(staging / "state.json", {**state, "optimizer": meta})
        seal(staging, [*sealed, "optimizer.safetensors", "state.json"])  # loading checks them (and the shared frozen arrays)
        final = run.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        intact, _ = run.newest_intact()
        kept = f"the newest intact checkpoint is {intact}" if intact else "no checkpoint was written before"
        where = exc.filename or staging
        raise TrainingError(
            f"could not write checkpoint {name} ({where}: {exc.strerror or exc}); training stopped and {kept}. "
            f"Free space or fix the folder's permissions, then: cnnspec train --resume {run.path}"
        ) from None
    return final


# ---- training ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    session: Session

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def estimate_memory(graph: Graph, config: TrainConfig, workspace_per_sample: int = 0) -> tuple[int, int]:
    """(fixed bytes, bytes per sample) of a training step: weights, gradients and
    optimizer slots; every activation kept for the backward pass, and its gradient; and
    whatever else the backend keeps per sample (the NumPy backend's im2col columns)."""
    slots = OPTIMIZER_SLOTS[config.optimizer.name]
    fixed = (graph.params * (2 + slots) + graph.non_trainable) * 4
    return fixed, 2 * graph.activation_bytes + workspace_per_sample


def system_available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


def _starting_weights(graph: Graph, seed: int, init: Path | None, progress: Progress, data: Dataset | None = None,
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
    from cnnspec.load import classifier_name

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


def _normalised_as_pretrained(data: Dataset, init: Path, progress: Progress) -> Dataset:
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


def train(
    graph: Graph,
    config: TrainConfig,
    backend_module: Backend,
    backend: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    out: Path | None = None,
    resume: Path | None = None,
    init: Path | None = None,
    keep_head: bool = False,
    quiet: bool = False,
    group: Group = SINGLE,
) -> TrainResult:
    """Train ``graph`` and write its run directory. In a ``group`` (a distributed run:
    ``backend_module`` makes its sessions), every process runs this with the same
    arguments; each trains its share of every batch, and rank 0 alone writes."""
    lead = group.rank == 0
    progress = Progress(quiet or not lead)
    for warning in graph.warnings:  # what `cnnspec check` warns about, said again where it matters
        progress.message(str(warning))
    run = RunDir(Path(group.broadcast(str(resume if resume is not None else (out or default_run_dir(graph))))))
    check_batch(config.batch_size, group.size)
    if group.local_size > 1 and config.data.workers is None:  # the host's cores are shared by its processes
        from cnnspec.data.loader import available_cores

        config = config.model_copy(update={"data": config.data.model_copy(update={"workers": max(1, available_cores() // group.local_size)})})
    plan = phase_plan(config)
    config = plan[0][2].model_copy(update={key: getattr(config, key) for key in ("freeze", "lr_mult", "decay_mult", "optimizer")})  # epochs: the phases'
    for *_, phase_config in plan:
        tuning.multipliers(graph, phase_config)  # a freeze or lr_mult pattern that names nothing fails before any work
    sized_by_data = config.classes != "spec"
    synthetic = config.data.source == "synthetic"  # made to fit the network: as many classes as it outputs
    data = load_dataset(config.data, graph.input_shape, graph.output_shape[0] if synthetic and not sized_by_data else None, config.seed)
    graph, data = _sized_to_data(graph, data, config.classes) if sized_by_data else (graph, _fits_the_spec(graph, data))
    spec_source = graph.source  # the spec as written is what the run keeps
    if config.loss == "cross_entropy":
        from cnnspec.load import logits_graph

        graph = logits_graph(graph)  # the loss takes logits: an output softmax is left to predict and exports
    if init is not None and resume is None:
        data = _normalised_as_pretrained(data, init, progress)
    config = config.model_copy(update={"data": data.config})  # the preset applied: what the run records and does
    plan = [(first, end, c.model_copy(update={"data": data.config})) for first, end, c in plan]
    _report_skipped(progress, list(data.skipped))
    reported = set(data.skipped)  # each unusable sample is said once, however many streams meet it
    norm = normalization_for(config, data.x_train)
    workspace = backend_module.workspace_bytes(graph)
    per_process = config.model_copy(update={"batch_size": config.batch_size // group.size})
    check_memory(graph, per_process, *backend_module.available_memory(device), workspace)  # before allocating anything

    plateau = Plateau(lr=config.optimizer.lr)
    history: list[dict[str, float]] = []
    start_epoch, best, bad_epochs = 0, math.inf, 0
    latest, damaged = run.newest_intact() if resume is not None else (None, [])
    partial: dict[str, Any] | None = None
    if resume is not None and latest is None:
        if damaged:
            raise TrainingError(f"{resume}: no intact checkpoint to resume from ({'; '.join(damaged[:3])})")
        raise TrainingError(f"{resume}: nothing to resume (no checkpoint; train it again instead)")
    for problem in damaged:
        progress.message(f"{problem}: skipped")
    if latest is not None:
        weights = load_weights(latest)
        check_weights(graph, weights, str(latest))
        state = read_state(latest / "state.json")
        start_epoch, best, bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        plateau = Plateau(**state["plateau"])
        history = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()][:start_epoch]
        partial = state if "step" in state else None
        if start_epoch >= config.epochs and partial is None:
            raise TrainingError(f"{run.path} is finished: {start_epoch} of {plural(config.epochs, 'epoch')} trained; "
                                f"--epochs N (more than {start_epoch}) with --resume trains on")
        where = f"step {state['step']} of epoch {start_epoch + 1}" if partial else latest.name
        progress.message(f"resuming {run.path} from {where}" + (", the newest intact checkpoint" if damaged else ""))
    else:
        taken = lead and run.path.exists() and any(run.path.iterdir())
        if group.broadcast(taken):  # rank 0 decides for all: it may create the folder before another process looks
            raise TrainingError(f"{run.path} exists and is not empty: choose another --out, or --resume it")
        weights = _starting_weights(graph, config.seed, init, progress, data, keep_head)
    phase = _phase_at(plan, start_epoch)
    cache = run.path / ".cache" if lead else None
    opened = _PhaseSession.open(graph, plan[phase][2], backend_module, weights, data, norm, device, precision, compile, cache)
    session = opened.session
    solving, unsolved = _classifier_solve(graph, config, plan, opened, group) if latest is None else (None, "")
    if solving is not None:  # one solve in place of the epochs
        config = config.model_copy(update={"epochs": 1, "phases": []})
        plan = [(0, 1, config)]
    if latest is None and lead:
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.path / "spec.yaml", spec_source)
        write_json(
            run.path / "run.json",
            {
                "spec": graph.name,
                "backend": backend,
                "device": session.device,
                "precision": session.precision,
                "data": data.name,
                "classes": data.classes,
                "class_names": data.named,
                "skipped": list(data.skipped[:100]),
                "normalization": dataclasses.asdict(norm),
                "train": _recorded(config).model_dump(mode="json"),
                "init": None if init is None else str(init),
                "processes": group.size,
                "created": datetime.now().isoformat(timespec="seconds"),
                "command": command_line(),
                "versions": versions(),
            },
        )
        seal(run.path, ["spec.yaml", "run.json"])  # every later reader checks them
    elif latest is not None and lead:
        _record_resumption(run, config)
    if latest is not None and (partial is not None or _phase_at(plan, max(start_epoch - 1, 0)) == phase):  # a new phase starts a new optimizer
        session.load_optimizer_state(load_arrays(latest / "optimizer.safetensors"), state["optimizer"])
    if lead:
        write_text(run.path / "metrics.jsonl", "".join(strict_json(row) + "\n" for row in history))
    events = EventLog(run.path, start_epoch) if lead else None  # flushed each epoch; its thread is a daemon
    progress.message(
        f"training {graph.name} on {backend} ({session.device}, {session.precision}): {len(data.x_train)} train / "
        f"{len(data.x_val)} val images from {data.name} ({data.residence}), {'the classifier solved' if solving is not None else plural(config.epochs, 'epoch')} -> {run.path}"
    )
    if group.size > 1:
        progress.message(_group_line(graph, config, group, session.device))
    progress.message(f"transforms: {data.transforms(graph.input_shape)}")
    progress.message(_phase_line(graph, plan, phase, opened.note))
    if unsolved:
        progress.message(unsolved)

    for epoch in range(start_epoch, config.epochs):
        if _phase_at(plan, epoch) != phase:  # the next phase: its own frozen layers and a fresh optimizer
            phase = _phase_at(plan, epoch)
            opened = _PhaseSession.open(graph, plan[phase][2], backend_module, session.get_weights(), data, norm, device, precision, compile, cache)
            session = opened.session
            progress.message(_phase_line(graph, plan, phase, opened.note))
        phase_config = plan[phase][2]
        lr = learning_rate(config.schedule, phase_config.optimizer.lr, epoch, config.epochs, plateau)
        session.set_learning_rate(lr)
        epoch_state = {"epoch": epoch, "best": best, "bad_epochs": bad_epochs, "plateau": dataclasses.asdict(plateau)}
        if solving is not None:
            row = _solve_classifier(session, solving, opened.data, config, progress, run if lead else None)
        else:
            row = _train_epoch(session, opened.data, opened.norm, phase_config, epoch, progress, run, epoch_state, partial, group, graph)
        partial = None
        val = _evaluate_arrays(
            session, opened.data.x_val, opened.data.y_val, opened.norm, config.batch_size, config.top_k, graph.output_shape[0], group
        )
        skipped = list(dict.fromkeys([*data.skipped_so_far(), *opened.data.skipped_so_far()]))
        row = {"epoch": epoch + 1, **row, "val_loss": val["loss"], "val_accuracy": val["accuracy"], f"val_top{val['k']}": val["top_k"], "lr": lr,
               "skipped_samples": len(skipped)}
        history.append(row)
        met = [entry for entry in skipped if entry not in reported]  # by a stream, during this epoch
        _report_skipped(progress, met)
        reported.update(met)
        if lead:
            with open(run.path / "metrics.jsonl", "a") as stream:
                stream.write(strict_json(row) + "\n")
        if events is not None:
            events.epoch(row)
        after_epoch(config.schedule, plateau, val["loss"])
        monitored = val["loss"] if config.early_stopping.monitor == "val_loss" else -val["accuracy"]
        improved = monitored < best - config.early_stopping.min_delta
        if improved:
            best, bad_epochs = monitored, 0
        else:
            bad_epochs += 1
        state = {"epoch": epoch + 1, "best": best, "bad_epochs": bad_epochs, "plateau": dataclasses.asdict(plateau)}
        if lead:
            save_checkpoint(run, epoch + 1, session, state, best=improved, keep=config.keep, frozen=_frozen_weights(graph, phase_config))
            plots.learning_curves(history, run.path / "curves.png", f"{graph.name} ({backend})")
        progress.end_epoch(row, config.epochs)
        patience = config.early_stopping.patience
        if patience is not None and bad_epochs >= patience:
            progress.message(f"early stopping: {config.early_stopping.monitor} did not improve for {plural(patience, 'epoch')}")
            break
    if history and lead:
        write_json(run.path / "final.json", history[-1])
    if events is not None:
        events.close()
    return TrainResult(run.path, history, session)


def _classifier_solve(graph: Graph, config: TrainConfig, plan: list[tuple[int, int, TrainConfig]], opened: _PhaseSession,
                      group: Group) -> tuple[Graph | None, str]:
    """The head to solve in place of the epochs (``train.solve``, set by ``--head-only``),
    or None and, when a solve was asked for, why it cannot be."""
    if config.solve is None:
        return None, ""
    cut = bottleneck.bottleneck(graph, config) if config.bottleneck_cache else None
    if len(plan) > 1:
        why = "the run has phases"
    elif group.size > 1:
        why = "a distributed run trains by steps"
    elif cut is None or not isinstance(opened.session, bottleneck.HeadSession):
        why = bottleneck.why_not(graph, config) if config.bottleneck_cache else "bottleneck_cache is off"
    else:
        head = bottleneck.head_graph(graph, cut)
        why = linear_head.why_not(head, config)
        if not why:
            return head, ""
    return None, f"classifier solve off ({why}): the optimizer trains it for {plural(config.epochs, 'epoch')}"


def _solve_classifier(session: Session, head: Graph, data: Dataset, config: TrainConfig, progress: Progress, run: RunDir | None) -> dict[str, float]:
    """The epoch of a run whose classifier is solved: the solve on the cached training
    features, its weights set, and what the solver did recorded in run.json."""
    assert config.solve is not None
    node = head.nodes[-1]
    x = linear_head.features(session, head, np.asarray(data.x_train), config.batch_size)
    solved = linear_head.solve(x, data.y_train, head.output_shape[0], config.solve, node.name, bias=bool(getattr(node.layer, "bias", True)))
    session.set_weights({f"{node.name}.weight": solved.weight} | ({f"{node.name}.bias": solved.bias} if solved.bias is not None else {}))
    progress.message(
        f"classifier '{node.name}' solved: L-BFGS, {plural(solved.iterations, 'iteration')}, {'converged' if solved.converged else 'NOT converged: ' + solved.message}; "
        f"multinomial logistic regression on {len(x):,} x {x.shape[1]:,} features, L2 with C = {solved.c:g}; train loss {solved.loss:.4f}, "
        f"train accuracy {solved.accuracy:.4f} ({solved.seconds:.2f} s)"
    )
    if run is not None:
        record = json.loads((run.path / "run.json").read_text())
        record["solve"] = solved.record(len(x))
        write_json(run.path / "run.json", record)
        seal(run.path, ["spec.yaml", "run.json"])
    return {"train_loss": solved.loss, "train_accuracy": solved.accuracy, "seconds": solved.seconds, "images_per_second": len(x) / max(solved.seconds, 1e-9)}


def _group_line(graph: Graph, config: TrainConfig, group: Group, device: str) -> str:
    """How the processes share the work, and what that means for batch norm."""
    share = config.batch_size // group.size
    line = f"distributed: {group.size} processes ({group.local_size} on this host), each {share} of every batch of {config.batch_size}"
    from cnnspec.layers.norm import BatchNorm

    if any(isinstance(node.layer, BatchNorm) for node in graph.nodes):
        if config.distributed.sync_batchnorm:
            line += f"; batch norm statistics synchronised over all {group.size} processes"
        else:
            line += (f"; batch norm: each process normalises with its own {share} images' statistics"
                     + (" (sync_batchnorm needs CUDA)" if device.startswith("cpu") else " (sync_batchnorm: on to share them)"))
    return line


def _phase_at(plan: list[tuple[int, int, TrainConfig]], epoch: int) -> int:
    """The phase that trains ``epoch`` (the last one past the end)."""
    return next((i for i, (_, end, _) in enumerate(plan) if epoch < end), len(plan) - 1)


def _phase_line(graph: Graph, plan: list[tuple[int, int, TrainConfig]], phase: int, note: str) -> str:
    first, end, config = plan[phase]
    where = f"phase {phase + 1}/{len(plan)}, epochs {first + 1}-{end}: " if len(plan) > 1 else ""
    return where + _parameters_line(graph, config) + (f"\n{note}" if note else "")


@dataclasses.dataclass(frozen=True)
class _PhaseSession:
    """The session a phase trains with, and the data and normalisation it takes: the
    images, or the cached outputs of the frozen body."""

    session: Session
    data: Dataset
    norm: Normalization
    note: str

    @classmethod
    def open(
        cls, graph: Graph, config: TrainConfig, backend_module: Backend, weights: dict[str, np.ndarray], data: Dataset, norm: Normalization,
        device: str, precision: str, compile: bool, cache: Path | None = None,
    ) -> _PhaseSession:
        session = backend_module.open_session(graph, config, device=device, precision=precision, compile=compile)
        session.set_weights(weights)
        cut = bottleneck.bottleneck(graph, config) if config.bottleneck_cache else None
        if cut is not None:  # the session trains the head, on the body's outputs computed once
            return cls(*_cache_bottleneck(graph, config, backend_module, session, data, norm, cut, device, precision, cache))
        off = f"bottleneck cache off: {bottleneck.why_not(graph, config)}; every epoch runs the frozen layers too" if config.freeze and config.bottleneck_cache else ""
        return cls(session, data, norm, off)


def _cache_bottleneck(
    graph: Graph, config: TrainConfig, backend_module: Backend, session: Session, data: Dataset, norm: Normalization,
    cut: str, device: str, precision: str, cache: Path | None = None,
) -> tuple[Session, Dataset, Normalization, str]:
    """The output of ``cut`` (the frozen body's last layer) for every image, computed once
    by the full network; a session that trains the head alone on it; and the identity
    normalisation (the images were normalised on their way through the body). The outputs
    stay in memory when they fit the data pipeline's budget, else (or with
    ``data.stream: always``) they go to memory-mapped files in ``cache``, unlinked at once
    so that the space returns when the process ends, however it ends."""
    from cnnspec.harness.data import IN_MEMORY_LIMIT

    head = bottleneck.head_graph(graph, cut)
    head_session = backend_module.open_session(head, bottleneck.head_config(graph, head, config), device=device, precision=precision)
    weights = session.get_weights()
    mine = set(head.weights())
    head_session.set_weights({name: weights[name] for name in mine})
    values = math.prod(graph[cut].output_shape)
    needed = (len(data.x_train) + len(data.x_val)) * values * 4
    budget = min(IN_MEMORY_LIMIT, (system_available_memory() or IN_MEMORY_LIMIT * 4) // 4)
    on_disk = cache is not None and (config.data.stream == "always" or needed > budget)
    cached = []
    for images, labels in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        if on_disk:
            assert cache is not None
            outputs, kept = _layer_outputs_on_disk(cache, session, norm, images, cut, graph[cut].output_shape, config.batch_size)
        else:
            outputs, kept = layer_outputs(session, norm, images, cut, config.batch_size)
        if not len(kept):
            raise TrainingError(f"no image of {data.name} could be read to compute the bottleneck features")
        cached.append((outputs, labels[kept]))
    (x_train, y_train), (x_val, y_val) = cached
    layers = f"{len(head.nodes)} layer{'s' if len(head.nodes) != 1 else ''}"
    where = f"on disk in {cache}, memory-mapped" if on_disk else "in memory"
    note = (
        f"bottleneck: every layer up to '{cut}' is frozen, so its outputs ({values:,} values an image, "
        f"{(x_train.nbytes + x_val.nbytes) / 2**20:,.1f} MiB, {where}) were computed once; each epoch trains the {layers} after it"
    )
    features = dataclasses.replace(data, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    identity = Normalization(1.0, (0.0,), (1.0,))
    return bottleneck.HeadSession(head_session, {n: a for n, a in weights.items() if n not in mine}), features, identity, note


def _fits_the_spec(graph: Graph, data: Dataset) -> Dataset:
    """The data, when its classes are as many as the spec's outputs; otherwise an error
    that says how to make them fit (a 10-unit head on 3 classes trains, silently, a
    classifier whose 7 extra outputs never win)."""
    found, width = len(data.classes), graph.output_shape[0]
    if found == width:
        return data
    shown = ", ".join(data.classes[:6]) + (", ..." if found > 6 else "")
    fixes = "--classes auto (train.classes: auto) gives the network a new output layer sized to the data"
    if found < width:
        fixes += f"; --classes {width} keeps {width} outputs for {found} classes"
    raise TrainingError(f"the data '{data.name}' has {found} classes ({shown}) but {graph.name}'s output layer '{graph.output}' has "
                        f"{width} units: {fixes}; or change the spec's last layer")


def _sized_to_data(graph: Graph, data: Dataset, classes: str | int) -> tuple[Graph, Dataset]:
    """The network with an output layer as wide as ``classes`` asks (auto: the data's
    class count), and the data's class names padded to it."""
    from cnnspec.load import with_output_width

    found = len(data.classes)
    width = found if classes == "auto" else int(classes)
    if width < found:
        shown = ", ".join(data.classes[:6]) + (", ..." if found > 6 else "")
        raise TrainingError(f"--classes {classes} (train.classes), but the data '{data.name}' has {found} classes ({shown}); use --classes auto")
    try:
        resized = with_output_width(graph, width)
    except ValueError as exc:
        raise TrainingError(f"--classes {classes}: {exc}") from None
    return resized, dataclasses.replace(data, classes=data.classes + [str(i) for i in range(found, width)])


def command_line() -> list[str]:
    """The command that is running, as run.json records it."""
    import sys

    return ["cnnspec", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith(("cnnspec", "__main__.py")) else list(sys.argv)


def _record_resumption(run: RunDir, config: TrainConfig) -> None:
    """run.json after --resume: the epochs the run now trains to, and each resumption
    (when, the command, the versions), resealed."""
    record = json.loads((run.path / "run.json").read_text())
    record["train"]["epochs"] = config.epochs
    record.setdefault("resumed", []).append({"at": datetime.now().isoformat(timespec="seconds"), "epochs": config.epochs,
                                             "command": command_line(), "versions": versions()})
    write_json(run.path / "run.json", record)
    seal(run.path, ["spec.yaml", "run.json"])


def _parameters_line(graph: Graph, config: TrainConfig) -> str:
    return f"parameters: {tuning.summary(graph, config)}"


def _frozen_weights(graph: Graph, config: TrainConfig) -> set[str]:
    """The arrays of the layers ``config`` freezes: candidates to write once for the run
    (by content, so arrays that change anyway, as batch norm statistics may, still are)."""
    frozen = tuning.frozen_layers(graph, config)
    return {name for name in graph.weights() if tuning.owner(name) in frozen}


def _report_skipped(progress: Progress, entries: list[str]) -> None:
    if entries:
        shown = "; ".join(entries[:3]) + ("; ..." if len(entries) > 3 else "")
        progress.message(f"skipped {len(entries)} sample(s) that cannot be used ({shown}); --strict (train.data.strict) makes this an error")


def _train_epoch(
    session: Session,
    data: Dataset,
    norm: Normalization,
    config: TrainConfig,
    epoch: int,
    progress: Progress,
    run: RunDir,
    epoch_state: dict[str, Any] | None = None,
    partial: dict[str, Any] | None = None,
    group: Group = SINGLE,
    graph: Graph | None = None,
) -> dict[str, float]:
    """One epoch; with ``partial`` (a mid-epoch checkpoint's state), the rest of one. Inside
    the epoch, a checkpoint is written every ``checkpoint_steps`` steps or
    ``checkpoint_minutes`` minutes, holding the step and the sums so far, so that resuming
    from it ends exactly as an uninterrupted run. In a group, each process trains its share
    of every global batch and the sums are the group's."""
    # Seeded by (seed, epoch): a resumed run, and every process of a group, sees the same order.
    order = np.random.default_rng([config.seed, epoch]).permutation(len(data.x_train))
    size, total = config.batch_size, len(order)
    progress.start_epoch(epoch + 1, config.epochs, steps(total, size))
    loss_sum, correct, seen, step = 0.0, 0, 0, 0
    if partial is not None:
        step = partial["step"]
        loss_sum, correct, seen = partial["sums"]
    mine, share = local_order(order[step * size :], size, group.rank, group.size)
    stream = data.training_batches(mine, share, (config.seed, epoch))
    nothing = (np.zeros(0, np.int64), np.zeros((0, *data.x_train.shape[1:]), data.x_train.dtype))
    augmenting = config.data.augment.random_crop or config.data.augment.hflip
    every_replica_check = config.distributed.check_replicas if group.size > 1 else None
    started = last_saved = time.perf_counter()
    for _ in range(steps(total - step * size, size)):
        index, x = next(stream, nothing)  # a process whose share of the last batch is empty still takes part
        if augmenting and len(index):
            x = augment(x, index, config, (config.seed, epoch))
        batch_loss, batch_correct = 0.0, 0
        if len(index) or group.size > 1:  # a batch with no readable image is skipped; in a group, taken part in
            batch_loss, batch_correct = session.train_step(session.inputs(x, norm.scale, norm.mean, norm.std), data.y_train[index])
        batch_loss, batch_correct, count = group.all_sum([batch_loss, batch_correct, len(index)])
        if not math.isfinite(batch_loss):
            latest = run.latest()
            kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
            raise TrainingError(
                f"the loss became {batch_loss} in epoch {epoch + 1} after {seen} images; training stopped and {kept}. "
                f"Try a lower learning rate (now {config.optimizer.lr:g}) or clip_grad_norm"
            )
        loss_sum, correct, seen, step = loss_sum + batch_loss, correct + int(batch_correct), seen + int(count), step + 1
        if every_replica_check is not None and graph is not None and step % every_replica_check == 0:
            check_replicas(graph, session, group, f"step {step} of epoch {epoch + 1}")
        now = time.perf_counter()
        progress.step(loss_sum / max(seen, 1), correct / max(seen, 1), seen / max(now - started, 1e-9))
        every_steps, every_minutes = config.checkpoint_steps, config.checkpoint_minutes
        due = (every_steps is not None and step % every_steps == 0) or (every_minutes is not None and now - last_saved >= 60 * every_minutes)
        if due and epoch_state is not None and group.rank == 0 and step * size < total:
            _write_checkpoint(run, MID_EPOCH, session, {**epoch_state, "step": step, "sums": [loss_sum, correct, seen]}, _frozen_weights(graph, config) if graph is not None else frozenset())
            last_saved = now
    if not seen:
        raise TrainingError(f"no training image of {data.name} could be read this epoch: {data.skipped_so_far()[:3]}")
    seconds = time.perf_counter() - started
    seen_now = seen - (partial["sums"][2] if partial else 0)
    return {
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "seconds": seconds,
        "images_per_second": seen_now / seconds,
    }


def check_replicas(graph: Graph, session: Session, group: Group, when: str) -> None:
    """Every process holds the same parameters (batch-norm running statistics aside: each
    process updates them from its own share until rank 0's are broadcast at the next
    step), or the run stops, naming the processes that differ."""
    import hashlib

    trainable = {name for name, spec in graph.weights().items() if spec.trainable}
    digest = hashlib.blake2b(digest_size=16)
    for name, array in sorted(session.get_weights().items()):
        if name in trainable:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    digests = group.all_gather(digest.hexdigest())
    differing = [rank for rank, value in enumerate(digests) if value != digests[0]]
    if differing:
        raise TrainingError(f"after {when}, the weights of rank(s) {', '.join(map(str, differing))} differ from rank 0's: the replicas diverged")


# ---- evaluation and prediction -------------------------------------------------------------


def _evaluate_arrays(
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


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    run: RunDir
    checkpoint: Path
    graph: Graph
    config: TrainConfig
    info: dict[str, Any]
    normalization: Normalization
    spec: Graph  # as written; ``graph`` is what trains and predicts: without an output softmax under cross-entropy (``logits_graph``)


def _recorded(config: TrainConfig) -> TrainConfig:
    """``config`` as run.json keeps it: the data's path absolute (found from anywhere)."""
    return config.model_copy(update={"data": config.data.model_copy(update={"source": absolute_source(config.data.source)})})


def _evaluation_file(run: Path, data_name: str, suffix: str) -> Path:
    """Where an evaluation on other data than the run's writes: its own file, named after
    the data, never over the run's own confusion.png."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data_name).strip("-") or "data"
    return run / "evaluations" / f"confusion-{slug}{suffix}"


def load_run(path: Path, *, checked: bool = True) -> LoadedRun:
    """A run, and its latest checkpoint (or the one ``path`` names), refused when a file of
    that checkpoint is not as written (``checked``; resuming chooses its own checkpoint)."""
    from cnnspec.load import logits_graph, parse_spec

    run, checkpoint = RunDir.find(path)
    problem = checkpoint_problem(checkpoint) if checked else None
    if problem is not None:
        intact, _ = run.newest_intact(excluding=checkpoint)
        use = f"{intact} is intact: use it (e.g. cnnspec eval {intact})" if intact else "no other checkpoint of the run is intact"
        raise DamagedFile(f"{problem}; {use}")
    check_sealed(run.path)
    record = run.path / "run.json"
    try:
        info = json.loads(record.read_text())
        norm = info["normalization"]
        normalization = Normalization(float(norm["scale"]), tuple(float(m) for m in norm["mean"]), tuple(float(v) for v in norm["std"]))
        classes = info["classes"]
        if not isinstance(classes, list) or not isinstance(info["backend"], str):
            raise TypeError("classes or backend")
        config = TrainConfig.model_validate(info["train"])
    except (ValueError, UnicodeDecodeError):
        raise DamagedFile(f"{record}: not valid JSON, or not a cnnspec run record") from None
    except (KeyError, TypeError) as exc:
        raise DamagedFile(f"{record}: not a cnnspec run record ({exc} missing or of the wrong type)") from None
    spec = parse_spec((run.path / "spec.yaml").read_bytes(), str(run.path / "spec.yaml"))
    graph = logits_graph(spec) if config.loss == "cross_entropy" else spec
    return LoadedRun(run, checkpoint, graph, config, info, normalization, spec)


def open_run_session(loaded: LoadedRun, open_session: Callable[..., Session], device: str) -> Session:
    session = open_session(loaded.graph, loaded.config, device=device)
    weights = load_weights(loaded.checkpoint)
    check_weights(loaded.graph, weights, str(loaded.checkpoint))
    session.set_weights(weights)
    return session


class _EngineSession:
    """An inference engine (``inference_engine``) where evaluation wants a session: inputs
    normalised on the host, the loss computed from the engine's logits as the NumPy
    backend computes it."""

    def __init__(self, engine: Any, config: TrainConfig) -> None:
        from cnnspec.backends.numpy_backend import LOSSES

        self._engine, self._loss, self._smoothing = engine, LOSSES[config.loss], config.label_smoothing

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
        return Normalization(scale, mean, std).apply(x)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        logits = np.asarray(self._engine.predict(x), np.float32)
        loss, _ = self._loss(logits, y, self._smoothing)
        return float(loss) * len(x), logits


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
    result = _evaluate_arrays(evaluator, dataset.x_val, dataset.y_val, loaded.normalization, config.batch_size, config.top_k, width)
    png = confusion_png or (loaded.run.path / "confusion.png" if data is None else _evaluation_file(loaded.run.path, dataset.name, ".png"))
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


RUNTIMES = ("auto", "backend", "onnxruntime")


AUTO_RUNTIME_IMAGES = 64  # from this many images, building the ONNX engine once pays (benchmarks/bench_runtime.py)


def _gpu_may_be_used(device: str) -> bool:
    """Whether ``device`` may put the backend on a GPU, answered without importing a
    framework: asked for by name, or ``auto`` on a machine with an NVIDIA device node."""
    return device != "cpu" and (device != "auto" or Path("/dev/nvidiactl").exists())


def _cache_folders(loaded: LoadedRun) -> tuple[Path, Path]:
    """Where a run's inference engines are cached: RUN/.runtime; and, for a run this user
    cannot write (shared, read-only), a folder of the user's own in the temp dir."""
    import hashlib

    key = hashlib.sha256(str(loaded.run.path.resolve()).encode()).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return loaded.run.path / ".runtime", Path(tempfile.gettempdir()) / f"cnnspec-runtime-{user}" / key


def runtime_folder(loaded: LoadedRun) -> Path:
    """The run's engine cache (``_cache_folders``), created: its own if writable, else the fallback."""
    own, fallback = _cache_folders(loaded)
    try:
        own.mkdir(exist_ok=True)
        if os.access(own, os.W_OK):
            return own
    except OSError:
        pass
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _extra_outputs(loaded: LoadedRun, layers: tuple[str, ...]) -> tuple[str, ...]:
    """``layers`` an engine outputs besides the network's own output, each once, in order."""
    return tuple(layer for layer in dict.fromkeys(layers) if layer != loaded.graph.output)


def _engine_file(loaded: LoadedRun, layers: tuple[str, ...]) -> str:
    """The cached engine's file name: the checkpoint's, then '+layer' for each extra output."""
    return loaded.checkpoint.name + "".join(f"+{layer}" for layer in _extra_outputs(loaded, layers)) + ".onnx"


def chosen_runtime(loaded: LoadedRun, device: str, runtime: str, images: int, layers: tuple[str, ...] = ()) -> str:
    """``backend`` or ``onnxruntime``: what ``inference_engine`` uses for ``runtime``
    (``auto`` decided as it says), without building or opening anything."""
    import importlib.util

    if runtime not in RUNTIMES:
        raise TrainingError(f"--runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    name = _engine_file(loaded, layers)
    usable = importlib.util.find_spec("onnxruntime") is not None and not _gpu_may_be_used(device)
    built = usable and any((folder / name).exists() for folder in _cache_folders(loaded))
    return "onnxruntime" if usable and (built or images >= AUTO_RUNTIME_IMAGES) else "backend"


def inference_engine(loaded: LoadedRun, session: Callable[[], Session], device: str, runtime: str, images: int,
                     layers: tuple[str, ...] = ()) -> tuple[Any, str]:
    """(what computes the outputs, in words which) for ``runtime``: ``backend`` (the
    session, its outputs checked against the NumPy backend the first time it serves a
    checkpoint), ``onnxruntime`` (the run's ONNX lowering, built once per checkpoint and
    set of ``layers`` into RUN/.runtime/, verified against the NumPy backend as ``export``
    verifies, checked by its checksum when reused), or ``auto``: onnxruntime where it is
    installed, the backend would run on the CPU, and either its engine is built already or
    ``images`` are enough to pay for building it; else the backend. ``layers`` are the
    layer outputs wanted besides the network's (``activations``). ``session`` opens the
    backend's session, only when it is the engine (onnxruntime never imports its framework)."""
    runtime = chosen_runtime(loaded, device, runtime, images, layers)
    if runtime == "backend":
        opened = session()
        return opened, f"{backend_of(opened)} backend ({opened.device}), {_verified(loaded, opened)}"
    from cnnspec.backends import import_module

    onnx_backend = import_module("onnx_backend", "onnx", "--runtime onnxruntime")
    path, how = onnx_engine(loaded, layers)
    return onnx_backend.RuntimeSession(str(path)), f"onnxruntime, {path} {how}"


def onnx_engine(loaded: LoadedRun, layers: tuple[str, ...] = ()) -> tuple[Path, str]:
    """The run's ONNX lowering for its checkpoint, giving ``layers``' outputs besides the
    network's: reused from the engine cache while its checksum holds, else built and
    verified against the NumPy backend (``export``). (its path, "reused" or how it was built)"""
    from cnnspec.exporting import check_export, export

    path = runtime_folder(loaded) / _engine_file(loaded, layers)
    try:
        check_export(path)  # a damaged cache is rebuilt, never used
        if not path.exists():
            raise DamagedFile(f"{path}: missing")
        return path, "reused"
    except DamagedFile:
        weights = load_weights(loaded.checkpoint)
        report = export(loaded.graph, weights, "onnx", path, weights_from=str(loaded.checkpoint), outputs=_extra_outputs(loaded, layers))
        return path, f"built and verified against {report.reference} ({report.max_rel_error:.1e} relative)"


def backend_of(session: Session) -> str:
    """The name of the backend a session comes from ('torch' for cnnspec.backends.torch_backend)."""
    return type(session).__module__.rsplit(".", 1)[-1].removesuffix("_backend")


LOW_PRECISION_TOLERANCE = 3e-2  # relative, for a bf16 or fp16 session (fp32: export's TOLERANCE)


def _verified(loaded: LoadedRun, session: Session) -> str:
    """Check ``session``'s outputs against the NumPy backend's on a fixed batch, once per
    checkpoint, backend, device and precision (remembered in the run's engine folder);
    raise if they differ. Returns what was found, in words."""
    backend, precision = backend_of(session), str(getattr(session, "precision", "fp32"))
    if backend == "numpy" and session.device == "cpu":
        return "the reference"
    weights_file = loaded.checkpoint / "weights.safetensors"
    stat = weights_file.stat()
    key = f"{loaded.checkpoint.name}|{backend}|{session.device}|{precision}"
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    folder = runtime_folder(loaded)
    record = folder / "verified.json"
    try:
        known = json.loads(record.read_text()) if record.exists() else {}
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("weights") == stamp and isinstance(entry.get("max_rel_error"), float):
        return f"verified against numpy ({entry['max_rel_error']:.1e} relative)"
    from cnnspec.agreement import TOLERANCE, agreement
    from cnnspec.backends import load_backend

    reference = load_backend("numpy").open_session(loaded.graph, TrainConfig(), device="cpu", precision="fp32")
    reference.set_weights(load_weights(loaded.checkpoint))
    x = np.random.default_rng(0).standard_normal((2, *loaded.graph.input_shape)).astype(np.float32)
    expected = np.asarray(reference.predict(x), np.float32)
    got = np.asarray(session.predict(x), np.float32)
    _, relative = agreement(got, expected)
    tolerance = TOLERANCE if precision == "fp32" else LOW_PRECISION_TOLERANCE
    if not relative <= tolerance:
        raise TrainingError(f"the {backend} backend ({session.device}, {precision}) computes {loaded.checkpoint.name}'s outputs "
                            f"{relative:.1e} relative away from the NumPy reference (> {tolerance:g}): not used; try --runtime onnxruntime or --backend numpy")
    known[key] = {"weights": stamp, "max_rel_error": relative}
    try:
        write_json(record, known)
    except OSError:
        pass  # checked again next time
    return f"verified against numpy ({relative:.1e} relative)"


class Scorer:
    """A trained run ready to score images: each file prepared exactly as evaluation
    prepares it (``Transform.from_file``), normalised as in training. ``predict`` and the
    Spark UDFs both score through it, so their numbers are the same."""

    def __init__(self, path: Path, open_session: Callable[..., Session], device: str = "auto", batch_size: int | None = None) -> None:
        from cnnspec.data.decode import image_shape
        from cnnspec.data.transforms import Transform

        self.loaded = load_run(path)
        self.device = device
        self.batch_size = batch_size or self.loaded.config.batch_size  # images per engine call
        self._open_session = open_session
        self._session: Session | None = None  # opened on first use: an onnxruntime engine never needs it
        self._engine: Any = None
        self.runtime = ""
        self.classes: list[str] = self.loaded.info["classes"]
        self._shape = self.loaded.graph.input_shape
        self._transform = Transform(image_shape(self._shape), self.loaded.config.data.fit, self.loaded.config.data.resize) if len(self._shape) == 3 else None

    def prepare(self, content: bytes) -> np.ndarray:
        """An image file's bytes -> C x H x W uint8 pixels at the network's input."""
        if self._transform is None:
            from cnnspec.data.decode import image_shape

            image_shape(self._shape)  # raises: the input is not an image
        assert self._transform is not None
        return self._transform.from_file(content)

    @property
    def session(self) -> Session:
        """The run's backend session, opened with the checkpoint's weights on first use."""
        if self._session is None:
            self._session = open_run_session(self.loaded, self._open_session, self.device)
        return self._session

    @property
    def engine(self) -> Any:
        """What computes outputs: the session, unless ``use_runtime`` chose another."""
        if self._engine is None:
            self._engine = self.session
            self.runtime = f"{backend_of(self.session)} backend ({self.session.device})"
        return self._engine

    def use_runtime(self, runtime: str, images: int, layers: tuple[str, ...] = ()) -> str:
        """Choose the engine (``inference_engine``), one that also gives ``layers``'
        outputs (for ``embeddings``); returns which, in words."""
        self._engine, self.runtime = inference_engine(self.loaded, lambda: self.session, self.device, runtime, images, layers)
        return self.runtime

    def read_inputs(self, inputs: list[Path]) -> tuple[list[np.ndarray], list[str]]:
        """Image files (fitted to the input as evaluation fits them) and .npy batches (N x C
        x H x W in [0, 1]) as raw-scale pixel batches, with a name for each image."""
        from cnnspec.harness.data import DataError

        shape = self.loaded.graph.input_shape
        arrays, names = [], []
        for item in inputs:
            if item.suffix == ".npy":
                try:
                    batch = np.load(item, allow_pickle=False).astype(np.float32, copy=False)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{item}: not a .npy array ({exc})") from None
                if batch.ndim == 3:
                    batch = batch[None]
                if tuple(batch.shape[1:]) != shape:
                    raise TrainingError(f"{item}: batch is {batch.shape}, the network takes N x {' x '.join(map(str, shape))}")
                batch /= np.float32(self.loaded.normalization.scale)  # back to the raw pixel scale, in place: one copy in memory
                arrays.append(batch)
                names += [f"{item}[{i}]" for i in range(len(batch))]
            else:
                try:
                    arrays.append(self.prepare(item.read_bytes())[None].astype(np.float32))
                except (BadImage, OSError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    raise DataError(f"{item}: cannot read image ({reason})") from None
                names.append(str(item))
        return arrays, names

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels (N x C x H x W, uint8 or float on the 0..255 scale) -> network outputs,
        normalised a batch at a time (memory stays one batch above the input's)."""
        if not len(x):
            return np.zeros((0, self.loaded.graph.output_shape[0]), np.float32)
        step = self.batch_size
        return np.concatenate([self.engine.predict(self.loaded.normalization.apply(x[i : i + step])) for i in range(0, len(x), step)])

    def embeddings(self, x: np.ndarray, layer: str) -> np.ndarray:
        """``layer``'s output for raw pixels, flattened: N x D float32."""
        values, _ = layer_outputs(self.engine, self.loaded.normalization, x, layer, self.batch_size)
        return values.reshape(len(values), -1)

    @staticmethod
    def ranked(outputs: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, probabilities), N x k each, best first."""
        probabilities = _softmax(outputs)
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(top, outputs.shape[1])]
        return best, np.take_along_axis(probabilities, best, axis=1)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ---- features ----------------------------------------------------------------------------


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
    from cnnspec.data.loader import ImageStream, available_cores
    from cnnspec.data.transforms import Transform
    from cnnspec.harness.config import resolve_preset
    from cnnspec.harness.data import DataError, source_kind

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
    from cnnspec.diagnostics import did_you_mean

    names = [node.name for node in loaded.graph.nodes]
    if layer not in names:
        raise TrainingError(f"--layer: '{loaded.graph.name}' has no layer '{layer}'{did_you_mean(layer, names)} (`cnnspec check` lists them)")


def _layer_outputs_on_disk(
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
