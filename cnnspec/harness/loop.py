"""The epoch loop: train, validate, checkpoint, schedule, stop; one loop for one process or many."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.group import SINGLE, Group, check_batch, local_order, steps
from cnnspec.backends.protocol import Backend, Session
from cnnspec.data.dataset import Dataset, load_dataset
from cnnspec.data.normalization import Normalization, normalization_for
from cnnspec.data.transforms import sample_generator
from cnnspec.errors import TrainingError, plural
from cnnspec.graph import tuning
from cnnspec.graph.dag import Graph
from cnnspec.graph.weights import check_weights
from cnnspec.harness import plots
from cnnspec.harness.events import EventLog
from cnnspec.harness.memory import check_memory
from cnnspec.harness.phases import (
    PhaseSession,
    classifier_solve,
    group_line,
    phase_at,
    phase_line,
    solve_classifier,
)
from cnnspec.harness.schedule import Plateau, after_epoch, learning_rate
from cnnspec.harness.starting import normalised_as_pretrained, starting_weights
from cnnspec.inference.evaluation import evaluate_arrays
from cnnspec.runs.checkpoints import save_checkpoint, write_checkpoint
from cnnspec.runs.files import (
    load_arrays,
    read_state,
    seal,
    write_json,
    write_text,
)
from cnnspec.runs.folder import MID_EPOCH, RunDir, command_line, default_run_dir
from cnnspec.runs.loading import as_recorded
from cnnspec.runs.progress import Progress
from cnnspec.runs.versions import versions
from cnnspec.runs.weight_files import load_weights
from cnnspec.spec.training import TrainConfig, phase_plan
from cnnspec.strictjson import strict_json


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


EpochHook = Callable[[Path, dict[str, float]], "str | None"]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    session: Session

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


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
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train ``graph`` and write its run directory. In a ``group`` (a distributed run:
    ``backend_module`` makes its sessions), every process runs this with the same
    arguments; each trains its share of every batch, and rank 0 alone writes.
    ``on_epoch(run folder, metrics row)`` is called (on rank 0, after each epoch's
    checkpoint) and stops the run when it returns a reason: a study's pruner."""
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
        from cnnspec.graph.load import logits_graph

        graph = logits_graph(graph)  # the loss takes logits: an output softmax is left to predict and exports
    if init is not None and resume is None:
        data = normalised_as_pretrained(data, init, progress)
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
        weights = starting_weights(graph, config.seed, init, progress, data, keep_head)
    phase = phase_at(plan, start_epoch)
    cache = run.path / ".cache" if lead else None
    opened = PhaseSession.open(graph, plan[phase][2], backend_module, weights, data, norm, device, precision, compile, cache)
    session = opened.session
    solving, unsolved = classifier_solve(graph, config, plan, opened, group) if latest is None else (None, "")
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
                "train": as_recorded(config).model_dump(mode="json"),
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
    if latest is not None and (partial is not None or phase_at(plan, max(start_epoch - 1, 0)) == phase):  # a new phase starts a new optimizer
        session.load_optimizer_state(load_arrays(latest / "optimizer.safetensors"), state["optimizer"])
    if lead:
        write_text(run.path / "metrics.jsonl", "".join(strict_json(row) + "\n" for row in history))
    events = EventLog(run.path, start_epoch) if lead else None  # flushed each epoch; its thread is a daemon
    progress.message(
        f"training {graph.name} on {backend} ({session.device}, {session.precision}): {len(data.x_train)} train / "
        f"{len(data.x_val)} val images from {data.name} ({data.residence}), {'the classifier solved' if solving is not None else plural(config.epochs, 'epoch')} -> {run.path}"
    )
    layout = getattr(session, "layout", None)  # the torch backend says which memory layout it chose, and why
    if layout:
        progress.message(f"layout: {layout}")
    if group.size > 1:
        progress.message(group_line(graph, config, group, session.device))
    progress.message(f"transforms: {data.transforms(graph.input_shape)}")
    progress.message(phase_line(graph, plan, phase, opened.note))
    if unsolved:
        progress.message(unsolved)

    for epoch in range(start_epoch, config.epochs):
        if phase_at(plan, epoch) != phase:  # the next phase: its own frozen layers and a fresh optimizer
            phase = phase_at(plan, epoch)
            opened = PhaseSession.open(graph, plan[phase][2], backend_module, session.get_weights(), data, norm, device, precision, compile, cache)
            session = opened.session
            progress.message(phase_line(graph, plan, phase, opened.note))
        phase_config = plan[phase][2]
        lr = learning_rate(config.schedule, phase_config.optimizer.lr, epoch, config.epochs, plateau)
        session.set_learning_rate(lr)
        epoch_state = {"epoch": epoch, "best": best, "bad_epochs": bad_epochs, "plateau": dataclasses.asdict(plateau)}
        if solving is not None:
            row = solve_classifier(session, solving, opened.data, config, progress, run if lead else None)
        else:
            row = _train_epoch(session, opened.data, opened.norm, phase_config, epoch, progress, run, epoch_state, partial, group, graph)
        partial = None
        val = evaluate_arrays(
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
        stop = group.broadcast(on_epoch(run.path, row) if lead and on_epoch is not None else None)
        if stop:
            progress.message(f"stopped after epoch {epoch + 1}: {stop}")
            break
        patience = config.early_stopping.patience
        if patience is not None and bad_epochs >= patience:
            progress.message(f"early stopping: {config.early_stopping.monitor} did not improve for {plural(patience, 'epoch')}")
            break
    if history and lead:
        write_json(run.path / "final.json", history[-1])
    if events is not None:
        events.close()
    return TrainResult(run.path, history, session)


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
    from cnnspec.graph.load import with_output_width

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


def _record_resumption(run: RunDir, config: TrainConfig) -> None:
    """run.json after --resume: the epochs the run now trains to, and each resumption
    (when, the command, the versions), resealed."""
    record = json.loads((run.path / "run.json").read_text())
    record["train"]["epochs"] = config.epochs
    record.setdefault("resumed", []).append({"at": datetime.now().isoformat(timespec="seconds"), "epochs": config.epochs,
                                             "command": command_line(), "versions": versions()})
    write_json(run.path / "run.json", record)
    seal(run.path, ["spec.yaml", "run.json"])


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
            write_checkpoint(run, MID_EPOCH, session, {**epoch_state, "step": step, "sums": [loss_sum, correct, seen]}, _frozen_weights(graph, config) if graph is not None else frozenset())
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
