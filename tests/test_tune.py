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


def test_promote_belongs_to_hyperband(spec_errors: Callable[[str], list[str]]) -> None:
    problems = spec_errors("""
        name: tiny
        input: {shape: [1, 16, 16]}
        layers:
          - flatten:
          - dense: {units: 10}
        tune:
          pruner: median
          promote: true
          space:
            optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
    """)
    assert problems == ["8:12: tune.promote: promote is Hyperband's: with pruner median a stopped trial stays stopped (remove promote, or use pruner: hyperband)"]


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


def _trial(number: int, values: dict[int, float], state: str = "PRUNED", **attrs: Any) -> Any:
    """An Optuna trial as the pruner reads one."""
    from types import SimpleNamespace

    return SimpleNamespace(number=number, intermediate_values=values, last_step=max(values) if values else None,
                           state=SimpleNamespace(name=state), user_attrs=attrs)


def test_hyperband_has_optunas_brackets_and_rungs() -> None:
    import optuna

    from cnnspec.experiments.hyperband import Hyperband

    band = Hyperband(27, maximize=True)
    assert band.brackets == 4 and band.shares == [27, 12, 6, 4]
    assert [band.rungs(b) for b in range(4)] == [[1, 3, 9], [3, 9], [9], []]
    assert Hyperband(3, True).brackets == 2 and Hyperband(8, True).brackets == 2 and Hyperband(9, True).brackets == 3
    theirs = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study = optuna.create_study(study_name="lenet", pruner=theirs)
    theirs._try_initialization(study)
    assert [band.bracket("lenet", _trial(n, {})) for n in range(200)] == [theirs._get_bracket_id(study, _trial(n, {})) for n in range(200)]


def test_hyperband_promotes_a_stopped_trial_once_its_rung_ranks_it_among_those_going_on() -> None:
    from cnnspec.experiments.hyperband import BRACKET, CONTINUES, Hyperband

    band = Hyperband(9, maximize=True)
    first = _trial(0, {1: 0.9, 2: 0.92, 3: 0.95}, "COMPLETE", **{BRACKET: 0})  # went on at epoch 1 and 3 as the best
    second = _trial(1, {1: 0.5}, **{BRACKET: 0})  # stopped at epoch 1: not the best of two
    assert band.goes_on(0.9, [0.9]) and not band.goes_on(0.5, [0.9, 0.5])
    hopeless = [_trial(n, {1: 0.1}, **{BRACKET: 0}) for n in range(2, 6)]
    trials = [first, second, *hopeless[:3]]
    assert band.promotion("s", trials) is None  # five values at epoch 1: only the best goes on
    trials.append(hopeless[3])
    assert band.promotion("s", trials) is second  # six: the top two go on, and it is second
    assert band.promotion("s", trials, usable=lambda t: False) is None  # no checkpoint to continue from
    assert band.promotion("s", [*trials, _trial(6, {1: 0.5}, "RUNNING", **{BRACKET: 0, CONTINUES: 1})]) is None  # continued already
    elsewhere = _trial(1, {1: 0.5}, **{BRACKET: 1})
    assert band.promotion("s", [first, elsewhere, *hopeless]) is None  # epoch 1 is no rung of bracket 1
    infeasible = _trial(7, {})
    assert band.promotion("s", [first, infeasible]) is None


def test_hyperband_prunes_at_rungs_only_and_counts_a_continued_trial_once() -> None:
    from types import SimpleNamespace

    from cnnspec.experiments.hyperband import BRACKET, CONTINUES, Hyperband

    band = Hyperband(9, maximize=False)  # a loss
    done = [_trial(n, {1: loss, 3: loss}, "COMPLETE", **{BRACKET: 0}) for n, loss in enumerate([1.0, 2.0, 3.0])]
    for step, loss, stops in ((1, 2.5, True), (1, 0.5, False), (2, 9.0, False), (3, 1.5, True)):
        running = _trial(9, {s: loss for s in range(1, step + 1)}, "RUNNING", **{BRACKET: 0})
        study = SimpleNamespace(study_name="s", get_trials=lambda deepcopy, trials=[*done, running]: trials)
        assert band.prune(study, running) is stops, (step, loss)
    # a continuation of trial 0 competes for it: trial 0's own values are not counted twice
    continuation = _trial(3, {1: 1.0, 3: 1.0}, "RUNNING", **{BRACKET: 0, CONTINUES: 0})
    assert band.rung_values("s", [*done, continuation], 0, 1) == [2.0, 3.0, 1.0]
    nan = _trial(9, {1: float("nan")}, "RUNNING", **{BRACKET: 0})
    assert band.prune(SimpleNamespace(study_name="s", get_trials=lambda deepcopy: [nan]), nan)


def test_a_promoted_trial_continues_from_its_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 1 stops at epoch 1 behind trial 0; after four hopeless trials it ranks second
    of six there, so the seventh trial continues it: its parameters, its epoch 1 as it was,
    epochs 2 and 3 from its checkpoint, as an uninterrupted run trains them."""
    from cnnspec.agreement import assert_agrees
    from cnnspec.cli.tune_command import _reporter, _said_summary
    from cnnspec.experiments.hyperband import Hyperband
    from cnnspec.experiments.report import page
    from cnnspec.experiments.study import Setup, open_study, run_study
    from cnnspec.experiments.summary import summarise

    lrs = [0.03, 0.003, 1.0e-6, 1.0e-6, 1.0e-6, 1.0e-6]
    band = Hyperband(3, maximize=True)
    name = next(f"tiny{i}" for i in range(10_000) if all(band.bracket(f"tiny{i}", _trial(n, {})) == 0 for n in range(len(lrs))))
    text = SPEC.replace("name: tiny", f"name: {name}").replace("epochs: 4", "epochs: 3").replace("TRIALS", "7").replace("PRUNER", "hyperband")
    text = text.replace("{choice: [0.03, 1.0e-6]}", "{choice: [0.03, 0.003, 1.0e-6]}").replace("{int: [2, 32]}", "{choice: [8]}")
    graph = cnnspec.parse_spec(text)
    setup = Setup(graph, graph.tune_section, tmp_path / "study", "numpy")
    study = open_study(setup)
    for lr in lrs:  # the order the story needs
        study.enqueue_trial({"optimizer.lr": lr, "layers.c1.filters": 8})
    said: list[tuple[str, dict[str, Any]]] = []
    printed = _reporter("val_accuracy", False, "")

    def report(event: str, details: dict[str, Any]) -> None:
        said.append((event, details))
        printed(event, details)

    run_study(setup, 7, report)
    assert "trial    6 continues trial 1 from epoch 1 (promoted): optimizer.lr=0.003, layers.c1.filters=8" in capsys.readouterr().out
    summary = summarise(setup)
    rows = summary["trials"]
    assert [(r["number"], r["state"], r["epochs"], r["continues"], r["continued_by"]) for r in rows] == [
        (0, "complete", 3, None, None), (1, "pruned", 1, None, 6), (2, "pruned", 1, None, None), (3, "pruned", 1, None, None),
        (4, "pruned", 1, None, None), (5, "pruned", 1, None, None), (6, "complete", 2, 1, None)]
    assert rows[6]["params"] == rows[1]["params"] and rows[6]["curve"][0] == rows[1]["curve"][0]
    assert summary["epochs"] == {"trained": 3 + 5 + 2, "without_pruning": 6 * 3, "per_trial": 3, "configurations": 6, "promotions": 1}
    assert ("start", {"number": 6, "params": rows[1]["params"], "continues": True, "promoted": (1, 1)}) in said
    trials = setup.out / "trials"
    assert len((trials / "0001" / "metrics.jsonl").read_text().splitlines()) == 1  # the stopped run is left as it was
    continued = [json.loads(line) for line in (trials / "0006" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in continued] == [1, 2, 3]
    assert len(json.loads((trials / "0006" / "run.json").read_text())["resumed"]) == 1
    straight = cnnspec.api.train(trials / "0001" / "spec.yaml", "numpy", out=tmp_path / "straight", **{"optimizer.lr": 0.003})
    assert_agrees([row["val_accuracy"] for row in continued], [row["val_accuracy"] for row in straight.history], what="promoted vs uninterrupted")
    assert "promoted later: trial 6 continues it" in page(summary)
    _said_summary(summary, setup.out)
    assert "done: 2 complete, 5 pruned (1 of the trials continued stopped ones, promoted later); 10 of 18 epochs trained" in capsys.readouterr().out
    # a promotion queued by a process killed before it asked for it is taken up by the next
    from cnnspec.experiments.study import _promote

    _promote(study, study.get_trials(deepcopy=False)[2])
    run_study(setup, 8, lambda *_: None)
    last = summarise(setup)["trials"][7]
    assert (last["continues"], last["epochs"], last["curve"][0]) == (2, 2, rows[2]["curve"][0])
