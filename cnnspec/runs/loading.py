"""Loading a run: its spec, config, normalisation, classes and checked checkpoint."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from cnnspec.data.dataset import absolute_source
from cnnspec.data.normalization import Normalization
from cnnspec.graph.dag import Graph
from cnnspec.runs.files import (
    DamagedFile,
    check_sealed,
)
from cnnspec.runs.folder import RunDir, checkpoint_problem
from cnnspec.spec.training import TrainConfig


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    run: RunDir
    checkpoint: Path
    graph: Graph
    config: TrainConfig
    info: dict[str, Any]
    normalization: Normalization
    spec: Graph  # as written; ``graph`` is what trains and predicts: without an output softmax under cross-entropy (``logits_graph``)


def as_recorded(config: TrainConfig) -> TrainConfig:
    """``config`` as run.json keeps it: the data's path absolute (found from anywhere)."""
    return config.model_copy(update={"data": config.data.model_copy(update={"source": absolute_source(config.data.source)})})


def evaluation_file(run: Path, data_name: str, suffix: str) -> Path:
    """Where an evaluation on other data than the run's writes: its own file, named after
    the data, never over the run's own confusion.png."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data_name).strip("-") or "data"
    return run / "evaluations" / f"confusion-{slug}{suffix}"


def load_run(path: Path, *, checked: bool = True) -> LoadedRun:
    """A run, and its latest checkpoint (or the one ``path`` names), refused when a file of
    that checkpoint is not as written (``checked``; resuming chooses its own checkpoint)."""
    from cnnspec.graph.load import logits_graph, parse_spec

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
