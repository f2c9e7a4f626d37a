"""Training phases: the session each phase opens, the cached bottleneck, the closed-form classifier."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from cnnspec.backends.group import Group
from cnnspec.backends.protocol import Backend, Session
from cnnspec.data.dataset import Dataset
from cnnspec.data.normalization import Normalization
from cnnspec.data.resources import system_available_memory
from cnnspec.errors import TrainingError, plural
from cnnspec.graph import tuning
from cnnspec.graph.dag import Graph
from cnnspec.harness import bottleneck, linear_head
from cnnspec.inference.features import layer_outputs, layer_outputs_on_disk
from cnnspec.runs.files import (
    seal,
    write_json,
)
from cnnspec.runs.folder import RunDir
from cnnspec.runs.progress import Progress
from cnnspec.spec.training import TrainConfig


def classifier_solve(graph: Graph, config: TrainConfig, plan: list[tuple[int, int, TrainConfig]], opened: PhaseSession,
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


def solve_classifier(session: Session, head: Graph, data: Dataset, config: TrainConfig, progress: Progress, run: RunDir | None) -> dict[str, float]:
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


def group_line(graph: Graph, config: TrainConfig, group: Group, device: str) -> str:
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


def phase_at(plan: list[tuple[int, int, TrainConfig]], epoch: int) -> int:
    """The phase that trains ``epoch`` (the last one past the end)."""
    return next((i for i, (_, end, _) in enumerate(plan) if epoch < end), len(plan) - 1)


def phase_line(graph: Graph, plan: list[tuple[int, int, TrainConfig]], phase: int, note: str) -> str:
    first, end, config = plan[phase]
    where = f"phase {phase + 1}/{len(plan)}, epochs {first + 1}-{end}: " if len(plan) > 1 else ""
    return where + _parameters_line(graph, config) + (f"\n{note}" if note else "")


@dataclasses.dataclass(frozen=True)
class PhaseSession:
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
    ) -> PhaseSession:
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
    from cnnspec.data.dataset import IN_MEMORY_LIMIT

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
            outputs, kept = layer_outputs_on_disk(cache, session, norm, images, cut, graph[cut].output_shape, config.batch_size)
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


def _parameters_line(graph: Graph, config: TrainConfig) -> str:
    return f"parameters: {tuning.summary(graph, config)}"
