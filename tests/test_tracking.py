"""MLflow tracking: a run's settings, every epoch's metrics at step=epoch, its files and its
verified ONNX export as an MLflow model; a resumed run continues its MLflow run; a study is
a parent run with a child per trial. A SQLite store in a temporary folder; no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.cli.app import app

pytest.importorskip("mlflow", reason="tracking needs MLflow: pip install 'cnnspec[mlflow]' (make setup installs it)")

SPEC = """\
name: tracked
input: {shape: [1, 8, 8]}
layers:
  - conv2d: {filters: 4, kernel: 3, padding: same}
    name: c1
  - relu:
  - maxpool2d: {kernel: 2}
  - flatten:
  - dense: {units: 10}
train:
  epochs: 2
  batch_size: 64
  optimizer: {name: adam, lr: 0.01}
"""


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def steps(tracking: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracking.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "tracked.yaml").write_text(SPEC)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["train", str(folder / "tracked.yaml"), "--backend", "numpy", "--out", str(folder / "run"), "--quiet", "--mlflow", uri])
    assert result.exit_code == 0, result.output
    return folder / "run", uri


def test_a_run_logs_its_settings_and_every_epoch(tracked_run: tuple[Path, str]) -> None:
    run, uri = tracked_run
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    logged = client(uri).get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["optimizer.lr"] == "0.01" and logged.data.params["optimizer.name"] == "adam"
    assert logged.data.params["epochs"] == "2" and logged.data.params["backend"] == "numpy"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("val_accuracy", "val_loss", "train_loss"):
        assert steps(client(uri), run_id, key) == [(row["epoch"], pytest.approx(row[key])) for row in rows]


def test_a_run_logs_its_files_and_an_onnx_model_that_agrees(tracked_run: tuple[Path, str], tmp_path: Path) -> None:
    import mlflow.onnx
    import onnxruntime

    run, uri = tracked_run
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    tracking = client(uri)
    names = {item.path for item in tracking.list_artifacts(run_id)}
    assert {"spec.yaml", "run.json", "metrics.jsonl", "final.json", "curves.png", "report.html", "model"} <= names
    model = Path(tracking.download_artifacts(run_id, "model", str(tmp_path)))
    assert "onnx" in (model / "MLmodel").read_text()
    assert not [p for p in model.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]  # nothing pickled
    proto = mlflow.onnx.load_model(str(model))
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    x = np.random.default_rng(3).random((4, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _, expected = cnnspec.predict(run, [tmp_path / "x.npy"])
    assert_agrees(session.run(None, {session.get_inputs()[0].name: x})[0], expected, what="MLflow's ONNX model against cnnspec predict")


def test_a_resumed_run_continues_its_mlflow_run(tracked_run: tuple[Path, str], tmp_path: Path) -> None:
    run, uri = tracked_run
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    before = json.loads((copy / "mlflow.json").read_text())["run_id"]
    result = CliRunner().invoke(app, ["train", "--resume", str(copy), "--epochs", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "mlflow.json").read_text())["run_id"] == before
    tracking = client(uri)
    assert [step for step, _ in steps(tracking, before, "val_accuracy")] == [1, 2, 3]
    assert tracking.get_run(before).info.status == "FINISHED"
    assert len(tracking.search_runs([tracking.get_run(before).info.experiment_id])) == 1


def test_a_study_is_a_parent_run_with_a_child_per_trial(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    spec = tmp_path / "tracked.yaml"
    spec.write_text(SPEC + "tune:\n  trials: 3\n  pruner: none\n  space:\n    optimizer.lr: {log_uniform: [1.0e-3, 1.0e-1]}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["tune", str(spec), "--out", str(tmp_path / "study"), "--backend", "numpy", "--quiet", "--mlflow", uri])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    parent = json.loads((tmp_path / "study" / "mlflow.json").read_text())["run_id"]
    tracking = client(uri)
    experiment = tracking.get_run(parent).info.experiment_id
    children = tracking.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 3
    lrs = sorted(float(child.data.params["optimizer.lr"]) for child in children)
    assert lrs == pytest.approx(sorted(t["params"]["optimizer.lr"] for t in summary["trials"]))
    assert tracking.get_run(parent).data.metrics["best_value"] == pytest.approx(summary["best"]["value"])
    assert {item.path for item in tracking.list_artifacts(parent)} >= {"summary.json", "best.yaml", "report.html"}


def test_nothing_is_imported_or_logged_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "tracked.yaml").write_text(SPEC)
    code = (f"import sys, cnnspec; cnnspec.train({str(tmp_path / 'tracked.yaml')!r}, 'numpy', out={str(tmp_path / 'run')!r}, epochs=1); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'optuna')))")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "run" / "mlflow.json").exists() and not list(tmp_path.glob("mlruns")) and not list(tmp_path.glob("*.db"))


def test_a_store_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tracked.yaml").write_text(SPEC)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "tracked.yaml"), "--backend", "numpy", "--out", str(tmp_path / "run"), "--quiet",
                                      "--mlflow", "http://127.0.0.1:9/"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "--mlflow http://127.0.0.1:9/: the tracking store cannot be opened" in result.output.replace("\n", "")
    assert not (tmp_path / "run" / "final.json").exists()  # refused before training, not after it
