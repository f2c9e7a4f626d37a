"""A search over a spec's ``tune:`` space with Optuna: sample, check statically, train with
per-epoch pruning, record; survives SIGKILL and shares its study among processes.

A study folder holds the journal (Optuna's file storage, safe for processes on one
machine; ``--storage URL`` for several), ``trials/NNNN/`` (ordinary run folders), and what
``summary`` writes from the journal. Samples over the budget or whose network does not
build are *infeasible*: told to Optuna as pruned without a value (so TPE learns to avoid
them), marked, and not counted against the study's total. A trial Hyperband stopped and
later promotes (``experiments.hyperband``) goes on in a new trial, from a copy of its run
folder, as a killed trial does from its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cnnspec.errors import CnnspecError
from cnnspec.experiments.hyperband import BRACKET, CONTINUES, Hyperband, continuations
from cnnspec.graph.dag import Graph
from cnnspec.graph.sampling import Infeasible, sampled_graph
from cnnspec.graph.search_space import Dimension, dimensions
from cnnspec.runs.files import write_json
from cnnspec.spec.tune_section import TuneConfig

JOURNAL = "study.journal"
LOCK = ".study.lock"
OWNERS = ".owners"  # in the study folder: NNNN, the process training that trial, host:pid
STATE = "cnnspec.state"  # a trial's user attribute: infeasible, failed (with REASON)
REASON = "cnnspec.reason"
MAX_REJECTIONS = 20  # infeasible samples per trained trial before the study gives up
FROM_EPOCH = "cnnspec.from_epoch"  # a continuation's user attribute: the epochs it took over


class TuneError(CnnspecError, RuntimeError):
    """A study that cannot go on: Optuna missing, a space that rarely fits its budget."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a process of a study needs to run trials."""

    graph: Graph
    tune: TuneConfig
    out: Path
    backend: str = "torch"
    device: str = "auto"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set, under every sample
    storage: str | None = None
    mlflow: str | None = None
    mlflow_parent: str | None = None
    worker: int = 0  # this process's place among --parallel workers

    @property
    def trials_dir(self) -> Path:
        return self.out / "trials"

    @property
    def epochs(self) -> int:
        return int(self.settings.get("epochs", self.graph.train.epochs))

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", self.graph.train.seed))


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError("cnnspec tune needs Optuna: pip install 'cnnspec[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(setup: Setup) -> Any:
    """The study (created on first use) in its storage, with the spec's sampler and pruner."""
    optuna = optuna_module()
    tune = setup.tune
    dims = dimensions(tune)
    # Each worker its own stream, and a resumed study a new one: the same seed would draw the samples it drew before.
    seed = setup.seed + setup.worker + 1000 * _trials_so_far(setup)
    if tune.sampler == "grid":

        class Grid(optuna.samplers.GridSampler):  # type: ignore[misc,name-defined]
            def after_trial(self, *_: Any) -> None:
                """Optuna's grid stops its study when the grid is done, which only works inside
                ``optimize()``; here ``next_trial`` ends the study when every point is taken."""

        sampler = Grid({d.key: d.values for d in dims}, seed=seed)
    elif tune.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    if tune.pruner == "hyperband":
        pruner: Any = Hyperband(setup.epochs, tune.direction == "maximize", reduction=3)
    elif tune.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(study_name=setup.graph.name, storage=storage(setup), sampler=sampler, pruner=pruner,
                               direction=tune.direction, load_if_exists=True)


def _trials_so_far(setup: Setup) -> int:
    """How many trials the study holds (0 when new), before its sampler is made."""
    optuna = optuna_module()
    try:
        return len(optuna.load_study(study_name=setup.graph.name, storage=storage(setup)).get_trials(deepcopy=False))
    except KeyError:  # no such study yet
        return 0


def storage(setup: Setup) -> Any:
    """``--storage`` (a database URL), or the journal file in the study folder."""
    if setup.storage is not None:
        return setup.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    setup.out.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(setup.out / JOURNAL)))


def state_of(trial: Any) -> str:
    """complete, pruned, infeasible, failed or running."""
    marked = trial.user_attrs.get(STATE)
    if marked:
        return str(marked)
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}[trial.state.name]


def counted(trials: list[Any]) -> int:
    """The trials the study's total counts: every one but the infeasible (and a promotion
    queued but not yet taken up)."""
    return sum(1 for t in trials if state_of(t) not in ("infeasible", "waiting"))


def folder_of(setup: Setup, number: int) -> Path:
    return setup.trials_dir / f"{number:04d}"


@contextlib.contextmanager
def study_lock(setup: Setup) -> Iterator[None]:
    """One process at a time decides what to run next (so the total holds exactly)."""
    setup.out.mkdir(parents=True, exist_ok=True)
    with open(setup.out / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(owner: Path) -> bool:
    """Whether the process that claimed a trial still runs: on this host, the same pid
    started at the same time and not a zombie (a SIGKILLed one nobody has reaped yet)."""
    try:
        host, pid, started = owner.read_text().strip().rsplit(":", 2)
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return True  # another machine's: not ours to take over
    return _process_start(int(pid)) == started


def _process_start(pid: int) -> str:
    """A process's start time (Linux: /proc; elsewhere whether it exists), '' when gone."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return ""
        return "" if fields[0] in ("Z", "X") else fields[19]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        pass
    return "alive"


def owner_mark(setup: Setup, number: int) -> Path:
    return setup.out / OWNERS / f"{number:04d}"


def _claim(mark: Path) -> None:
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}\n")


Report = Callable[[str, dict[str, Any]], None]  # (event, details): trial started / epoch / ended


def next_trial(study: Any, setup: Setup, total: int, rejected: list[int]) -> tuple[Any, Graph, bool] | None:
    """Under the study's lock: a killed trial to continue (same parameters, its own
    checkpoint), or a new sample that passes the static check; None when the study has
    its total. (Optuna trial, the network, whether it continues a run)"""
    optuna = optuna_module()
    dims = dimensions(setup.tune)
    with study_lock(setup):
        trials = study.get_trials(deepcopy=False)
        for frozen in trials:
            mark = owner_mark(setup, frozen.number)
            if frozen.state.name == "RUNNING" and not _alive(mark):
                _claim(mark)
                if CONTINUES in frozen.user_attrs and not _has_checkpoint(folder_of(setup, frozen.number)):
                    _take_over(setup, int(frozen.user_attrs[CONTINUES]), frozen.number)  # killed while copying
                graph = sampled_graph(setup.graph, frozen.params, setup.tune.budget, f"trial {frozen.number}")
                return optuna.trial.Trial(study, frozen._trial_id), graph, True
        configurations = len(trials) - len(continuations(trials))
        if counted(trials) >= total or (setup.tune.sampler == "grid" and configurations >= grid_points(dims)):
            return None
        if isinstance(study.pruner, Hyperband) and setup.tune.promote:
            origin = study.pruner.promotion(study.study_name, trials, lambda t: _has_checkpoint(folder_of(setup, t.number)))
            if origin is not None:
                _promote(study, origin)
        streak = 0
        while True:
            trial = study.ask()
            if CONTINUES in trial.user_attrs:  # a promotion, queued now (or by a process killed before it asked)
                return _continuation(study, setup, trial, dims)
            params = draw(trial, dims)
            checking = time.perf_counter()
            try:
                graph = sampled_graph(setup.graph, params, setup.tune.budget, f"trial {trial.number}")
            except Infeasible as exc:
                trial.set_user_attr(STATE, "infeasible")
                trial.set_user_attr(REASON, str(exc))
                trial.set_user_attr("check_seconds", time.perf_counter() - checking)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                rejected.append(trial.number)
                streak += 1
                if streak > MAX_REJECTIONS * max(total, 1):
                    raise TuneError(f"{streak} samples in a row were infeasible (last: {exc}): widen the budget or narrow the space") from None
                continue
            trial.set_user_attr("seed", int(setup.settings.get("seed", graph.train.seed)))
            _claim(owner_mark(setup, trial.number))
            return trial, graph, False


def _promote(study: Any, origin: Any) -> None:
    """Queue a trial that continues ``origin`` (a trial Hyperband stopped and now promotes):
    its parameters, bracket, seed and the epochs it takes over."""
    study.enqueue_trial(dict(origin.params), user_attrs={
        CONTINUES: origin.number, BRACKET: study.pruner.bracket(study.study_name, origin), FROM_EPOCH: origin.last_step,
        "seed": origin.user_attrs.get("seed"),
    })


def _continuation(study: Any, setup: Setup, trial: Any, dims: list[Dimension]) -> tuple[Any, Graph, bool]:
    """A queued promotion, asked: its parameters set, a copy of the run it continues."""
    draw(trial, dims)  # the queued parameters
    _claim(owner_mark(setup, trial.number))
    _take_over(setup, int(trial.user_attrs[CONTINUES]), trial.number)
    return trial, sampled_graph(setup.graph, trial.params, setup.tune.budget, f"trial {trial.number}"), True


def _take_over(setup: Setup, origin: int, number: int) -> None:
    """Trial ``number``'s folder: a copy of trial ``origin``'s (made aside, then renamed in),
    without its data cache or its MLflow run (the continuation logs a run of its own)."""
    target = folder_of(setup, number)
    aside = target.with_name(f".{target.name}.copying")
    for stale in (aside, target):
        _clear(stale)
    shutil.copytree(folder_of(setup, origin), aside, ignore=shutil.ignore_patterns(".cache", "mlflow.json"))
    os.replace(aside, target)


def grid_points(dims: list[Dimension]) -> int:
    """How many samples a grid over ``dims`` holds (the infeasible among them too)."""
    return math.prod(len(d.values) for d in dims)


def draw(trial: Any, dims: list[Dimension]) -> dict[str, Any]:
    """A value for every dimension, from Optuna's sampler."""
    params = {}
    for d in dims:
        if d.kind == "choice":
            params[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif d.kind in ("int", "log_int"):
            params[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), log=d.kind == "log_int")
        else:
            params[d.key] = trial.suggest_float(d.key, d.low, d.high, log=d.kind == "log_uniform")
    return params


def run_trial(study: Any, trial: Any, graph: Graph, setup: Setup, continues: bool, report: Report) -> str:
    """Train one trial in its folder, reporting each epoch to the pruner; tell Optuna how
    it ended. Returns its state."""
    from cnnspec import api
    from cnnspec.graph.sampling import split_sample

    optuna = optuna_module()
    folder = folder_of(setup, trial.number)
    params = trial.params
    metric, maximize = setup.tune.metric, setup.tune.direction == "maximize"
    values: list[float] = []
    pruned: list[str] = []

    def on_epoch(_: Path, row: dict[str, float]) -> str | None:
        value = float(row[metric])
        values.append(value)
        step = int(row["epoch"])
        with warnings.catch_warnings():  # an epoch retrained after a kill is reported again: Optuna keeps the first
            warnings.simplefilter("ignore")
            trial.report(value, step)
        report("epoch", {"number": trial.number, "epoch": step, "epochs": setup.epochs, "value": value})
        if trial.should_prune():
            pruned.append(f"pruned by {setup.tune.pruner} after epoch {step} ({metric} {value:.4g})")
            return pruned[0]
        return None

    _, settings = split_sample(params)
    overrides = {**setup.settings, **settings}
    if setup.mlflow is not None:
        overrides["track.mlflow"] = setup.mlflow
    origin = trial.user_attrs.get(CONTINUES)
    report("start", {"number": trial.number, "params": params, "continues": continues,
                     "promoted": None if origin is None else (int(origin), int(trial.user_attrs[FROM_EPOCH]))})
    if continues and (folder / "metrics.jsonl").is_file():  # epochs trained before the kill but not yet reported
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial.report(float(json.loads(line)[metric]), int(json.loads(line)["epoch"]))
    started = time.perf_counter()
    try:
        if continues and _has_checkpoint(folder):
            result = api.resume(folder, backend=setup.backend, device=setup.device, on_epoch=on_epoch, tracking_parent=setup.mlflow_parent)
        else:
            _clear(folder)
            result = api.train(graph, setup.backend, device=setup.device, out=folder, on_epoch=on_epoch, tracking_parent=setup.mlflow_parent, **overrides)
    except CnnspecError as exc:
        trial.set_user_attr(REASON, str(exc))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        report("end", {"number": trial.number, "state": "failed", "reason": str(exc), "seconds": time.perf_counter() - started})
        return "failed"
    history = [float(row[metric]) for row in result.history]
    trial.set_user_attr("epochs", len(history))
    if pruned:
        trial.set_user_attr(REASON, pruned[0])
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state = "pruned"
    else:
        study.tell(trial, (max if maximize else min)(history) if history else math.nan)
        state = "complete"
    report("end", {"number": trial.number, "state": state, "value": (max if maximize else min)(history) if history else None,
                   "epochs": len(history) - int(trial.user_attrs.get(FROM_EPOCH, 0)), "seconds": time.perf_counter() - started})
    return state


def _has_checkpoint(folder: Path) -> bool:
    return (folder / "run.json").is_file() and (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())


def _clear(folder: Path) -> None:
    """A killed trial's folder without a checkpoint to continue from: removed, so that the
    trial starts again in it."""
    if folder.is_dir():
        shutil.rmtree(folder)


def run_study(setup: Setup, total: int, report: Report) -> list[int]:
    """Run trials until the study holds ``total`` (the infeasible aside). Returns the
    numbers of the samples this process rejected statically."""
    study = open_study(setup)
    rejected: list[int] = []
    while True:
        picked = next_trial(study, setup, total, rejected)
        if picked is None:
            return rejected
        trial, graph, continues = picked
        try:
            run_trial(study, trial, graph, setup, continues, report)
        finally:
            with contextlib.suppress(OSError):
                owner_mark(setup, trial.number).unlink()


def record(setup: Setup, details: dict[str, Any]) -> None:
    """The study's settings, once, for ``--resume`` and readers."""
    write_json(setup.out / "study.json", details)
