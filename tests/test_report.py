"""``cnnspec report`` and the TensorBoard event files every run writes."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app
from cnnspec.views import inspect_page as inspection

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    cnnspec.train("lenet5", "numpy", out=root / "run", epochs=2, **{"data.limit": 256, "optimizer.lr": 0.003})  # type: ignore[arg-type]
    return root / "run"


def history(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_report_holds_the_run_and_a_fresh_evaluation(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    figures = inspection.figures(page)
    assert figures["epochs"] == 2 and figures["history"] == history(run)
    evaluated = runner.invoke(app, ["eval", str(run), "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    said = json.loads(evaluated.output)
    evaluation = figures["evaluation"]
    assert evaluation["images"] == said["images"]
    assert evaluation["accuracy"] == pytest.approx(said["accuracy"], abs=1e-9)
    assert evaluation["confusion_matrix"] == said["confusion_matrix"]
    assert evaluation["per_class_accuracy"] == pytest.approx(said["per_class_accuracy"])
    mistakes = figures["mistakes"]
    assert 0 < len(mistakes) <= 12
    assert all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    run_env = figures["environment"]["run"]
    assert run_env["backend"] == "numpy" and run_env["python"] and run_env["numpy"] == np.__version__
    for name in ("c1", "f5", "output"):
        assert name in page
    pictures = re.findall(r"src='data:image/png;base64,([^']*)'", page)
    assert len(pictures) == 3 + len(mistakes)  # curves, learning rate, confusion matrix, each mistake
    for encoded in pictures:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
            picture.verify()
    assert "<script>" not in page


def test_results_come_first_mistakes_name_their_files_and_only_the_optimizers_options_show(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(24):
        folder = tmp_path / "photos" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 36)).astype(np.uint8)).save(folder / f"shot-{i:02d}.png")
    cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=1, classes="auto", data=tmp_path / "photos", workers=0, optimizer__name="adam")
    result = runner.invoke(app, ["report", str(tmp_path / "run"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    mistakes = inspection.figures(page)["mistakes"]
    assert mistakes and all(Path(m["file"]).name.startswith("shot-") for m in mistakes)
    assert all(f">{Path(m['file']).parent.name}/{Path(m['file']).name}: " in page for m in mistakes)
    headings = re.findall(r"<h2>([^<]*)</h2>", page)
    assert headings[:2] == ["Evaluation", "Most confident mistakes"] and headings[-1] == "Network"
    assert "<details><summary>" in page.split("<h2>Network</h2>")[1]
    assert "optimizer.betas" in page and "optimizer.eps" in page
    assert not any(f"optimizer.{option}" in page for option in ("momentum", "rho", "alpha", "nesterov"))


def test_the_report_is_written_in_the_run_by_default_and_refuses_a_run_without_checkpoints(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").is_file()
    shutil.rmtree(copy / "checkpoints")
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 1 and "the run has no checkpoint yet" in result.output and "Traceback" not in result.output


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def test_every_run_writes_tensorboard_scalars_per_epoch(run: Path) -> None:
    logged = scalars(run)
    rows = history(run)
    for tag, key in (("train/loss", "train_loss"), ("train/accuracy", "train_accuracy"), ("val/loss", "val_loss"),
                     ("val/accuracy", "val_accuracy"), ("learning_rate", "lr"), ("train/images_per_second", "images_per_second")):
        assert [step for step, _ in logged[tag]] == [1, 2]
        np.testing.assert_allclose([value for _, value in logged[tag]], [row[key] for row in rows], rtol=1e-6)


def test_a_resumed_run_logs_each_epoch_once(tmp_path: Path) -> None:
    """A run stopped after epoch 2 whose log already holds a third epoch (as when killed
    after logging, before its checkpoint) resumes from epoch 2: the log keeps one value
    per epoch, the resumed run's."""
    cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=2, **{"data.limit": 128})  # type: ignore[arg-type]
    from cnnspec.harness.events import EventLog

    stale = EventLog(tmp_path / "run")
    stale.epoch({"epoch": 3, "val_accuracy": -1.0})
    stale.close()
    cnnspec.resume(tmp_path / "run", epochs=3)
    logged = scalars(tmp_path / "run")
    assert [step for step, _ in logged["val/accuracy"]] == [1, 2, 3]
    assert logged["val/accuracy"][-1][1] == pytest.approx(history(tmp_path / "run")[-1]["val_accuracy"])
