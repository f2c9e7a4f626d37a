"""cnnspec tune: search a spec's ``tune:`` space, one process or several."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnspec.cli.common import DeviceOpt, Engine, _fail, _fail_run, _parse_sets, _run_errors, _usage, stdout
from cnnspec.errors import plural
from cnnspec.graph.load import SpecNotFound, load_spec
from cnnspec.spec.diagnostics import SpecError


def tune(
    spec: Annotated[str | None, typer.Argument(help="a spec file with a tune: section (not needed with --resume)")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="the study's total of trained trials (tune.trials)")] = None,
    out: Annotated[Path | None, typer.Option(help="the study folder [default: runs/NAME-tune-TIMESTAMP]")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="trials trained at once, as processes splitting the cores (one GPU each where there are several); with --engine spark, Spark tasks")] = 1,
    engine: Annotated[Engine, typer.Option(help="local (processes on this host) or spark (each worker a Spark task; the study folder or --storage must be one every executor sees)")] = Engine.local,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[PARALLEL]]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the study in --out to its total; a trial killed mid-run continues from its checkpoint")] = False,
    storage: Annotated[str | None, typer.Option(help="an Optuna storage URL (sqlite:///study.db, postgresql://...) for workers on several machines [default: a journal file in the study folder]")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="a train: field for every trial, KEY=VALUE, repeatable (epochs=5)")] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="torch, tensorflow or numpy")] = "torch",
    device: DeviceOpt = "auto",
    mlflow: Annotated[str | None, typer.Option("--mlflow", help="log the study to MLflow (a parent run, a child per trial): sqlite:///mlflow.db, a folder or a server URL")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
    worker: Annotated[int | None, typer.Option(hidden=True, help="run trials of the study in --out as its worker N (what --parallel starts)")] = None,
) -> None:
    """Search the spec's tune: space with Optuna: each sample checked statically (shapes,
    budget), trained with per-epoch pruning; writes trials/, summary.json, best.yaml and report.html."""
    from cnnspec.experiments.study import TuneError

    try:
        if worker is not None:
            _work(out, worker, quiet)
            return
        if master is not None and engine is not Engine.spark:
            _usage("--master is for --engine spark")
        _study(spec, trials, out, parallel, resume, storage, _parse_sets(set_ or []), backend, device, mlflow, quiet, engine, master)
    except SpecNotFound as exc:
        _usage(str(exc))
    except SpecError as exc:
        _fail(exc.diagnostics)
    except (TuneError, *_run_errors()) as exc:  # type: ignore[misc]
        _fail_run(exc)


def _setup(out: Path, worker: int = 0) -> Any:
    """A study's settings as it recorded them (study.json, spec.yaml)."""
    from cnnspec.experiments.study import Setup

    recorded = json.loads((out / "study.json").read_text())
    graph = load_spec(out / "spec.yaml")
    if graph.tune_section is None:
        _usage(f"{out / 'spec.yaml'} has no tune: section: {out} is not a study folder")
    return Setup(graph, graph.tune_section, out, recorded["backend"], recorded["device"], recorded["settings"], recorded["storage"],
                 recorded["mlflow"], recorded.get("mlflow_parent"), worker), int(recorded["trials"])


def _work(out: Path | None, worker: int, quiet: bool) -> None:
    from cnnspec.experiments.study import run_study

    if out is None or not (out / "study.json").is_file():
        _usage("--worker needs --out: a study folder")
    setup, total = _setup(out, worker)
    run_study(setup, total, _reporter(setup.tune.metric, quiet, f"[worker {worker}] "))


def _study(spec: str | None, trials: int | None, out: Path | None, parallel: int, resume: bool, storage: str | None,
           settings: dict[str, Any], backend: str, device: str, mlflow: str | None, quiet: bool, engine: Engine = Engine.local,
           master: str | None = None) -> None:
    from cnnspec.experiments import parallel as workers
    from cnnspec.experiments.report import page
    from cnnspec.experiments.study import JOURNAL, record, run_study
    from cnnspec.experiments.summary import files, summarise
    from cnnspec.runs.files import write_text

    recorded: dict[str, Any] = {}
    if resume:
        if out is None or not (out / "study.json").is_file():
            _usage("--resume continues a study: give its folder as --out")
        recorded = json.loads((out / "study.json").read_text())
        graph = load_spec(out / "spec.yaml")
        if spec is not None and load_spec(spec).source != graph.source:
            _usage(f"{out} is a study of the spec in {out / 'spec.yaml'}, not of {spec}: resume it without SPEC, or start another study")
    else:
        if spec is None:
            _usage("tune needs a SPEC with a tune: section (or --resume --out STUDY)")
        graph = load_spec(spec)
        if out is None:
            out = Path("runs") / f"{graph.name}-tune-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if out.exists() and ((out / JOURNAL).exists() or (out / "study.json").exists()):
            _usage(f"{out} holds a study already: --resume continues it, or choose another --out")
    if graph.tune_section is None:
        _usage(f"{graph.path} has no tune: section: add one (metric, trials, space; see docs/tuning.md)")
    settings = {**recorded.get("settings", {}), **settings}
    _check_settings(graph, settings)
    details = {
        "spec": graph.name,
        "backend": recorded.get("backend", backend),
        "device": recorded.get("device", device),
        "settings": settings,
        "trials": trials or recorded.get("trials") or graph.tune_section.trials,
        "storage": storage or recorded.get("storage"),
        "mlflow": mlflow or recorded.get("mlflow") or graph.train.track.mlflow,
        "parallel": parallel,
        "started": recorded.get("started", datetime.now().isoformat(timespec="seconds")),
    }
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(out / "spec.yaml", graph.source)
    if details["mlflow"]:
        from cnnspec.tracking.mlflow_run import study_run

        details["mlflow_parent"] = study_run(details["mlflow"], graph.train.track.experiment or graph.name, out.name,
                                             {"tune": graph.tune_section.model_dump(mode="json"), "settings": settings}, out / "mlflow.json")
    record_setup = _setup_from(graph, out, details)
    record(record_setup, details)
    total = int(details["trials"])
    report = _reporter(graph.tune_section.metric, quiet, "")
    if graph.tune_section.sampler == "grid":
        from cnnspec.experiments.study import grid_points
        from cnnspec.graph.search_space import dimensions

        total = min(total, grid_points(dimensions(graph.tune_section)))  # the grid's points, each once
    if not quiet:
        stdout.print(f"tuning {graph.name}: {plural(total, 'trial')} of {plural(record_setup.epochs, 'epoch')} at most, {graph.tune_section.sampler} sampler, "
                     f"{graph.tune_section.pruner} pruner, optimising {graph.tune_section.metric} ({graph.tune_section.direction}) -> {out}",
                     markup=False, soft_wrap=True)
    try:
        if parallel > 1 or engine is Engine.spark:
            if engine is Engine.spark:
                from cnnspec.distributed import spark

                codes = spark.tune(out, parallel, master)
            else:
                codes = workers.run_workers(out, parallel, details["device"])
            failed = [code for code in codes if code != 0]
            if failed and not quiet:
                stdout.print(f"{plural(len(failed), 'worker')} of {parallel} stopped with an error (above); the summary holds what finished", markup=False)
        else:
            run_study(record_setup, total, report)
    finally:  # what finished is summarised, also when the study stops with an error
        summary = summarise(record_setup)
        write_text(out / "report.html", page(summary))
    if details["mlflow"]:
        from cnnspec.tracking.mlflow_run import finish_study

        finish_study(details["mlflow"], details["mlflow_parent"], summary["best"], files(record_setup))
    if not quiet:
        _said_summary(summary, out)


def _setup_from(graph: Any, out: Path, details: dict[str, Any]) -> Any:
    from cnnspec.experiments.study import Setup

    return Setup(graph, graph.tune_section, out, details["backend"], details["device"], details["settings"], details["storage"],
                 details["mlflow"], details.get("mlflow_parent"))


def _check_settings(graph: Any, settings: dict[str, Any]) -> None:
    """--set values every trial trains with: a bad one is a usage error before any trial."""
    from pydantic import ValidationError

    from cnnspec.harness.overrides import option_errors
    from cnnspec.spec.training import TrainConfig, with_overrides

    try:
        TrainConfig.model_validate(with_overrides(graph.train.model_dump(exclude_unset=True), settings))
    except ValidationError as exc:
        _usage("; ".join(f"--set {line}" for line in option_errors(exc)))


def _reporter(metric: str, quiet: bool, prefix: str) -> Any:
    from cnnspec.experiments.summary import table_row

    def report(event: str, details: dict[str, Any]) -> None:
        if quiet:
            return
        number = details["number"]
        if event == "start":
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in details["params"].items())
            how = "starts" if not details["continues"] else "continues" if details.get("promoted") is None else (
                f"continues trial {details['promoted'][0]} from epoch {details['promoted'][1]} (promoted)")
            stdout.print(f"{prefix}trial {number:4d} {how}: {params}", markup=False, soft_wrap=True)
        elif event == "epoch":
            stdout.print(f"{prefix}trial {number:4d}   epoch {details['epoch']}/{details['epochs']}: {metric} {details['value']:.4f}", markup=False)
        else:
            cells = table_row({"params": {}, **details}, metric)
            extra = f" in {details['seconds']:.1f} s" + (f": {details['reason']}" if details.get("reason") else "")
            stdout.print(f"{prefix}trial {cells[0]} {cells[1]:<9} {cells[2]:>8}  after {plural(int(details.get('epochs') or 0), 'epoch')}{extra}", markup=False, soft_wrap=True)

    return report


def _said_summary(summary: dict[str, Any], out: Path) -> None:
    counts, epochs, best = summary["counts"], summary["epochs"], summary["best"]
    said = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    promoted = f" ({epochs['promotions']} of the trials continued stopped ones, promoted later)" if epochs.get("promotions") else ""
    stdout.print(f"done: {said}{promoted}; {epochs['trained']} of {epochs['without_pruning']} epochs trained", markup=False, soft_wrap=True)
    if best is None:
        stdout.print(f"no trial completed; see {out / 'summary.json'}", markup=False)
        return
    stdout.print(f"best: trial {best['number']}, {summary['metric']} {best['value']:.4f} ({best['run'] and out / best['run']})", markup=False, soft_wrap=True)
    stdout.print(f"wrote {out / 'summary.json'}, {out / 'best.yaml'} (cnnspec train {out / 'best.yaml'}), {out / 'report.html'}", markup=False, soft_wrap=True)
