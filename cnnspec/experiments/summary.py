"""What a study found, from its storage: ``summary.json`` (every trial and the best),
``best.yaml`` (the spec with the best values folded in) and what pruning saved."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnspec.experiments.hyperband import CONTINUES, continuations
from cnnspec.experiments.study import FROM_EPOCH, REASON, Setup, folder_of, open_study, state_of
from cnnspec.graph.sampling import folded_spec
from cnnspec.runs.files import write_json, write_text


def trial_rows(study: Any, setup: Setup) -> list[dict[str, Any]]:
    """One row a trial: number, state, value, params, epochs, seconds, seed, reason, run."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    successors = continuations(trials)
    for trial in trials:
        state = state_of(trial)
        value = trial.value if state == "complete" else None
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else None
        folder = folder_of(setup, trial.number)
        rows.append({
            "number": trial.number,
            "state": state,
            "value": None if value is None or not math.isfinite(value) else float(value),
            "last": None if last is None else float(last),  # a pruned trial's value when it stopped
            "params": dict(trial.params),
            "epochs": max(len(trial.intermediate_values) - int(trial.user_attrs.get(FROM_EPOCH, 0)), 0),  # trained in this trial
            "continues": trial.user_attrs.get(CONTINUES),  # promoted: the trial whose run this one goes on with
            "continued_by": successors.get(trial.number),
            "curve": [float(trial.intermediate_values[step]) for step in sorted(trial.intermediate_values)],
            "seconds": seconds,
            "seed": trial.user_attrs.get("seed"),
            "reason": trial.user_attrs.get(REASON),
            "run": str(folder.relative_to(setup.out)) if folder.is_dir() else None,
        })
    return rows


def best_of(rows: list[dict[str, Any]], maximize: bool) -> dict[str, Any] | None:
    done = [row for row in rows if row["state"] == "complete" and row["value"] is not None]
    if not done:
        return None
    return (max if maximize else min)(done, key=lambda row: row["value"])


def summarise(setup: Setup) -> dict[str, Any]:
    """Write summary.json and best.yaml; the summary."""
    study = open_study(setup)
    rows = trial_rows(study, setup)
    maximize = setup.tune.direction == "maximize"
    best = best_of(rows, maximize)
    trained = [row for row in rows if row["state"] in ("complete", "pruned", "failed", "running")]
    epochs_trained = sum(row["epochs"] for row in trained)
    configurations = [row for row in trained if row["continues"] is None]  # a promotion trains a configuration further
    summary = {
        "spec": setup.graph.name,
        "metric": setup.tune.metric,
        "direction": setup.tune.direction,
        "sampler": setup.tune.sampler,
        "pruner": setup.tune.pruner,
        "budget": setup.tune.budget.model_dump(),
        "trials": rows,
        "counts": {state: sum(1 for row in rows if row["state"] == state) for state in ("complete", "pruned", "infeasible", "failed", "running")},
        "epochs": {"trained": epochs_trained, "without_pruning": len(configurations) * setup.epochs, "per_trial": setup.epochs,
                   "configurations": len(configurations), "promotions": len(trained) - len(configurations)},
        "static_check_seconds": sum(float(t.user_attrs.get("check_seconds", 0.0)) for t in study.get_trials(deepcopy=False)),
        "best": None if best is None else {key: best[key] for key in ("number", "value", "params", "epochs", "run")},
    }
    write_json(setup.out / "summary.json", summary)
    if best is not None:
        header = (f"cnnspec tune: the best of {len(trained)} trials of {setup.graph.name}: trial {best['number']}, "
                  f"{setup.tune.metric} {best['value']:.4f}\nits run: {setup.out / str(best['run'])}\ntrain it: cnnspec train {setup.out / 'best.yaml'}")
        write_text(setup.out / "best.yaml", folded_spec(setup.graph, best["params"], header))
    return summary


def table_row(row: dict[str, Any], metric: str) -> list[str]:
    """A trial as the cells of the progress table."""
    value = row.get("value") if row.get("value") is not None else row.get("last")
    params = ", ".join(f"{key}={_short(value)}" for key, value in row["params"].items())
    return [f"{row['number']:4d}", row["state"], "" if value is None else f"{value:.4f}", str(row.get("epochs", "")), params or row.get("reason") or ""]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def files(setup: Setup) -> list[Path]:
    return [setup.out / name for name in ("summary.json", "best.yaml", "report.html")]
