"""cnnspec tune: the tune: section checked like the rest of the spec, studies that write
ordinary run folders, prune by epoch inside the harness, reject samples over budget before
they cost anything, and survive SIGKILL. Small data (sklearn's digits, 8x8), a few epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app

pytest.importorskip("optuna", reason="tune needs optuna: pip install 'cnnspec[tune]' (make setup installs it)")

SPEC = """\
name: tiny
input: {shape: [1, 8, 8]}
layers:
  - conv2d: {filters: 8, kernel: 3, padding: same}
    name: c1
  - relu:
  - maxpool2d: {kernel: 2}
  - flatten:
  - dense: {units: 10}
train:
  epochs: 4
  batch_size: 64
tune:
  trials: TRIALS
  pruner: PRUNER
  budget: {params: 3000}
  space:
    optimizer.lr: {choice: [0.03, 1.0e-6]}
    layers.c1.filters: {int: [2, 32]}
"""


def write_spec(folder: Path, trials: int = 6, pruner: str = "hyperband", **replace: str) -> Path:
    text = SPEC.replace("TRIALS", str(trials)).replace("PRUNER", pruner)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def tune(*args: str) -> Any:
    result = CliRunner().invoke(app, ["tune", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def params_of(filters: int) -> int:
    """The tiny spec's parameters with ``filters`` in c1: conv 9f + f, dense 16f * 10 + 10."""
    return 10 * filters + 160 * filters + 10


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    result = tune(str(write_spec(folder)), "--out", str(folder / "study"), "--backend", "numpy")
    assert result.exit_code == 0, result.output
    return folder / "study"


def test_check_puts_each_problem_of_the_tune_section_at_its_line(spec_errors: Callable[[str], list[str]]) -> None:
    problems = spec_errors("""
        name: tiny
        input: {shape: [1, 16, 16]}
        layers:
          - conv2d: {filters: 4, kernel: 3}
            name: c1
          - flatten:
          - dense: {units: 10}
        tune:
          metric: val_acuracy
          space:
            optimizer.nam: {choice: [adam, sgd]}
            optimizer.name: {choice: [adam, sgdd]}
            layers.c1.filter: {int: [4, 32]}
            layers.c2.filters: {int: [4, 32]}
            layers.c1.filters: {int: [32, 4]}
            layers.dense_1.units: {int: [0, 4]}
            schedule.name: {loguniform: [1, 2]}
            batch_size: {choice: [32, 64]}
    """)
    assert [p.split(": error")[0].split(":")[0] for p in problems] == ["9", "11", "12", "13", "14", "15", "16", "17"]
    text = "\n".join(problems)
    assert "'val_acuracy' is not a metric runs record (did you mean 'val_accuracy'?)" in text
    assert "unknown key 'nam' in optimizer (did you mean 'name'?)" in text
    assert "'sgdd' is not a value it takes" in text
    assert "unknown argument 'filter' of conv2d 'c1' (did you mean 'filters'?)" in text
    assert "unknown layer 'c2'" in text
    assert "low 32 is above high 4" in text
    assert "0 is not a value dense.units takes" in text
    assert "unknown way to draw 'loguniform' (did you mean 'log_uniform'?)" in text


def test_cnnspec_check_fails_a_bad_tune_section_in_one_line_each(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, **{"layers.c1.filters": "layers.c1.filtres"})
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{spec}:19:5: error: tune.space.layers.c1.filtres: unknown argument 'filtres' of conv2d 'c1' (did you mean 'filters'?)" in result.output.replace("\n", "")


def test_grid_takes_only_what_it_can_enumerate(spec_errors: Callable[[str], list[str]]) -> None:
    problems = spec_errors("""
        name: tiny
        input: {shape: [1, 8, 8]}
        layers:
          - flatten:
          - dense: {units: 10}
        tune:
          sampler: grid
          space:
            optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
    """)
    assert len(problems) == 1 and problems[0].startswith("7:12:") and "optimizer.lr draws from a continuous range" in problems[0]


def test_a_study_writes_summary_runs_best_spec_and_report(study: Path) -> None:
    summary = json.loads((study / "summary.json").read_text())
    trials = summary["trials"]
    trained = [t for t in trials if t["state"] in ("complete", "pruned")]
    assert len(trained) == 6 and not [t for t in trials if t["state"] == "failed"]
    for trial in trials:
        assert set(trial) >= {"number", "state", "value", "params", "seed"}
        filters = trial["params"]["layers.c1.filters"]
        if trial["state"] == "infeasible":  # rejected statically, never trained, not counted
            assert params_of(filters) > 3000 and trial["run"] is None
            assert not (study / "trials" / f"{trial['number']:04d}").exists()
            assert f"{params_of(filters):,} parameters, over the budget of 3,000" in trial["reason"]
        else:
            assert params_of(filters) <= 3000
            run = study / trial["run"]
            assert cnnspec.load_spec(run / "spec.yaml").params == params_of(filters)
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert [row["epoch"] for row in rows] == list(range(1, trial["epochs"] + 1))
            if trial["state"] == "complete":
                assert trial["value"] == pytest.approx(max(row["val_accuracy"] for row in rows))
            else:  # pruned: no value of its own (Optuna's meaning), the one it stopped at
                assert trial["value"] is None and trial["last"] == pytest.approx(rows[-1]["val_accuracy"])
            assert json.loads((run / "run.json").read_text())["train"]["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
            assert trial["seed"] == 0
    assert summary["epochs"]["trained"] == sum(t["epochs"] for t in trained)
    assert summary["epochs"]["without_pruning"] == 4 * len(trained)
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in trials if t["state"] == "complete")
    folded = cnnspec.load_spec(study / "best.yaml")
    assert folded.tune_section is None
    assert folded.train.optimizer.lr == best["params"]["optimizer.lr"]
    assert folded.params == params_of(best["params"]["layers.c1.filters"])
    page = (study / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "http" not in page  # history, curves, parameters; self-contained
    assert f"{summary['epochs']['trained']} of {summary['epochs']['without_pruning']} without pruning" in page


def test_pruning_stops_hopeless_trials_inside_the_harness(study: Path) -> None:
    trials = json.loads((study / "summary.json").read_text())["trials"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "hyperband stops the trials behind the others at its rungs (lr 1e-6 stays at chance)"
    for trial in pruned:
        assert trial["epochs"] < 4 and "pruned by hyperband after epoch" in trial["reason"]
        run = study / trial["run"]
        assert len((run / "metrics.jsonl").read_text().splitlines()) == trial["epochs"]
        assert (run / "checkpoints").is_dir()  # a pruned trial is a run like any other
    best = max(t["value"] for t in trials if t["state"] == "complete")
    assert max(t["last"] for t in pruned) < best


def test_a_trial_folder_is_a_run_eval_works_on(study: Path) -> None:
    best = json.loads((study / "summary.json").read_text())["best"]
    result = CliRunner().invoke(app, ["eval", str(study / best["run"]), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(best["value"], abs=0.01)


def test_best_yaml_trains(study: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(study / "best.yaml"), "--backend", "numpy", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final.json").is_file()


def test_a_study_is_refused_twice_and_resumed_to_a_new_total(study: Path, tmp_path: Path) -> None:
    again = tune(str(study / "spec.yaml"), "--out", str(study), "--backend", "numpy")
    assert again.exit_code == 2 and "--resume continues it" in again.output
    copy = tmp_path / "study"
    subprocess.run(["cp", "-r", str(study), str(copy)], check=True)
    more = tune("--resume", "--out", str(copy), "--trials", "7", "--quiet")
    assert more.exit_code == 0, more.output
    trials = json.loads((copy / "summary.json").read_text())["trials"]
    assert len([t for t in trials if t["state"] in ("complete", "pruned")]) == 7


def test_bad_settings_are_usage_errors_before_any_trial(tmp_path: Path) -> None:
    result = tune(str(write_spec(tmp_path)), "--out", str(tmp_path / "s"), "--set", "batch_size=-3")
    assert result.exit_code == 2 and "--set batch_size" in result.output
    assert not (tmp_path / "s" / "trials").exists()
    missing = tune(str(write_spec(tmp_path, **{"tune:": "nottune:"})))
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_grid_search_runs_every_point_once(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, trials=4, pruner="none", **{"layers.c1.filters: {int: [2, 32]}": "layers.c1.filters: {choice: [2, 4]}",
                                                             "  trials": "  sampler: grid\n  trials", "epochs: 4": "epochs: 1"})
    result = tune(str(spec), "--out", str(tmp_path / "grid"), "--backend", "numpy", "--quiet")
    assert result.exit_code == 0, result.output
    trials = json.loads((tmp_path / "grid" / "summary.json").read_text())["trials"]
    points = sorted((t["params"]["optimizer.lr"], t["params"]["layers.c1.filters"]) for t in trials)
    assert points == sorted((lr, f) for lr in (0.03, 1.0e-6) for f in (2, 4))


def test_parallel_workers_share_the_study(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, trials=4, pruner="none", **{"epochs: 4": "epochs: 2"})
    result = subprocess.run([sys.executable, "-m", "cnnspec", "tune", str(spec), "--out", str(tmp_path / "p"), "--parallel", "2", "--backend", "numpy"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[worker 0]" in result.stdout and "[worker 1]" in result.stdout
    trials = json.loads((tmp_path / "p" / "summary.json").read_text())["trials"]
    trained = [t for t in trials if t["state"] == "complete"]
    assert len(trained) == 4 and len({t["number"] for t in trained}) == 4
    assert all(len((tmp_path / "p" / t["run"] / "metrics.jsonl").read_text().splitlines()) == 2 for t in trained)


def test_a_study_killed_mid_trial_continues_that_trial(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, trials=2, pruner="none", **{"epochs: 4": "epochs: 40", "{choice: [0.03, 1.0e-6]}": "{choice: [0.03]}",
                                                            "{int: [2, 32]}": "{int: [2, 16]}"})
    out = tmp_path / "killed"
    worker = subprocess.Popen([sys.executable, "-m", "cnnspec", "tune", str(spec), "--out", str(out), "--backend", "numpy", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = out / "trials" / "0000" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert worker.poll() is None, "the first trial ended before it could be killed"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    done_before = len(metrics.read_text().splitlines())
    assert 3 <= done_before < 40
    spec_before = (out / "trials" / "0000" / "spec.yaml").read_text()
    resumed = tune("--resume", "--out", str(out), "--quiet")
    assert resumed.exit_code == 0, resumed.output
    trials = json.loads((out / "summary.json").read_text())["trials"]
    assert [(t["number"], t["state"], t["epochs"]) for t in trials] == [(0, "complete", 40), (1, "complete", 40)]
    assert (out / "trials" / "0000" / "spec.yaml").read_text() == spec_before  # the same parameters, not a new sample
    run = json.loads((out / "trials" / "0000" / "run.json").read_text())
    assert len(run["resumed"]) == 1
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, 41))


def test_layers_search_over_budget_never_trains(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, trials=1, pruner="none", **{"{int: [2, 32]}": "{int: [20, 64]}", "epochs: 4": "epochs: 1",
                                                            "budget: {params: 3000}": "budget: {params: 3000, macs: 100000}"})
    result = tune(str(spec), "--out", str(tmp_path / "b"), "--backend", "numpy")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert result.exit_code == 1 and "infeasible" in result.output and "Traceback" not in result.output
    assert summary["counts"]["infeasible"] >= 20 and summary["counts"]["complete"] == 0
    assert not (tmp_path / "b" / "trials").exists() or not any((tmp_path / "b" / "trials").iterdir())


def test_the_schema_describes_the_tune_section() -> None:
    from cnnspec.spec.schema import spec_json_schema

    tune_schema = spec_json_schema()["properties"]["tune"]
    assert {"metric", "goal", "trials", "sampler", "pruner", "budget", "space"} <= set(tune_schema["properties"])
