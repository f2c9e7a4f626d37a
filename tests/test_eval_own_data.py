"""``eval --data`` and ``report --data`` on a test set of one's own: read whole, labels
matched to the run's classes by name (a subset, in any order), unknown names refused by
name, results written beside the run's own, and the run's data found from any folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app

runner = CliRunner()
COLOURS = {"one": (200, 40, 40), "seven": (40, 200, 40), "zero": (40, 40, 200)}
TINY = """name: tiny
input: {shape: [3, 16, 16]}
layers:
  - conv2d: {filters: 4, kernel: 3, activation: relu}
  - global_avgpool2d: {}
  - dense: {units: 3}
"""


def _images(root: Path, names: tuple[str, ...], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = COLOURS.get(name, (120, 120, 120))
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}-{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    (root / "tiny.yaml").write_text(TINY)
    _images(root / "png", tuple(COLOURS), per_class=20, seed=0)
    work = root / "work"
    work.mkdir()
    import os

    here = os.getcwd()
    os.chdir(work)  # trained with a relative --data, as a user types it
    try:
        cnnspec.train(root / "tiny.yaml", "numpy", out=root / "run", epochs=8, batch_size=8, quiet=True,
                      **{"data.source": "../png", "data.workers": 0, "optimizer.lr": 0.05})  # type: ignore[arg-type]
    finally:
        os.chdir(here)
    return root


def test_a_test_folder_with_a_subset_of_the_classes_is_evaluated_whole_by_class_name(trained: Path) -> None:
    test = _images(trained / "test", ("seven", "zero"), per_class=15, seed=7)  # the run's first class, 'one', is absent
    assert runner.invoke(app, ["eval", str(trained / "run")]).exit_code == 0  # the run's own evaluation and figure
    before = (trained / "run" / "confusion.png").read_bytes()
    result = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(test), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 30  # all of them: no validation slice held out of a test set
    files = sorted(test.rglob("*.png"))
    predictions, _ = cnnspec.predict(trained / "run", files, top=1)
    right = np.mean([p["top"][0]["class"] == f.parent.name for p, f in zip(predictions, files, strict=True)])
    assert right >= 0.9  # the network is right; before, labels by position scored it 0.000
    assert report["accuracy"] == pytest.approx(right)
    assert report["per_class_accuracy"]["one"] is None and report["per_class_accuracy"]["seven"] is not None
    assert (trained / "run" / "confusion.png").read_bytes() == before  # the run's own figure stays
    assert Path(report["confusion_png"]) == trained / "run" / "evaluations" / "confusion-folders-test.png"
    said = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(test)])
    assert "read whole (30 images); labels matched to the run's classes by name" in said.output


def test_class_names_the_run_does_not_know_are_an_error_naming_them(trained: Path) -> None:
    other = _images(trained / "greek", ("alpha", "beta", "seven"), per_class=2, seed=1)
    result = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(other)])
    assert result.exit_code == 1
    assert "class(es) the run was not trained on: alpha, beta; the run's classes are one, seven, zero" in result.output
    report = runner.invoke(app, ["report", str(trained / "run"), "--data", str(other), "-o", str(trained / "r.html")])
    assert report.exit_code == 1 and "alpha, beta" in report.output


def test_a_val_folder_alone_and_an_all_validation_manifest_are_test_sets(trained: Path) -> None:
    alone = trained / "only-val"
    _images(alone / "val", ("zero", "one"), per_class=4, seed=3)
    result = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(alone), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 8
    rows = ["path,label,split", *(f"{f.relative_to(alone)},{f.parent.name},val" for f in sorted(alone.rglob("*.png")))]
    (alone / "test.csv").write_text("\n".join(rows) + "\n")
    manifest = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(alone / "test.csv"), "--format", "json"])
    assert manifest.exit_code == 0, manifest.output
    assert json.loads(manifest.output)["images"] == 8
    training = runner.invoke(app, ["train", str(trained / "tiny.yaml"), "--data", str(alone / "test.csv"), "--out", str(trained / "no")])
    assert training.exit_code == 1 and "no training images (every sample is marked for validation)" in training.output


def test_a_val_class_that_train_lacks_is_said_not_dropped_silently(tmp_path: Path) -> None:
    from cnnspec.data.sources import list_source

    _images(tmp_path / "train", ("one", "zero"), per_class=2, seed=0)
    _images(tmp_path / "val", ("one", "zero", "seven"), per_class=2, seed=1)
    listing = list_source(tmp_path)
    assert listing is not None and listing.classes == ["one", "zero"]
    assert any("train/ has no class 'seven'" in line for line in listing.skipped)


def test_the_runs_relative_data_path_resolves_from_any_folder_and_a_moved_one_says_how_to_point_elsewhere(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = json.loads((trained / "run" / "run.json").read_text())["train"]["data"]["source"]
    assert Path(recorded).is_absolute() and Path(recorded) == (trained / "png").resolve()
    monkeypatch.chdir(tmp_path)  # elsewhere
    result = runner.invoke(app, ["eval", str(trained / "run"), "--format", "json"])
    assert result.exit_code == 0, result.output
    moved = trained / "png-moved"
    shutil.move(trained / "png", moved)
    try:
        lost = runner.invoke(app, ["eval", str(trained / "run")])
        assert lost.exit_code == 1
        assert f"data '{recorded}' (recorded in {trained / 'run' / 'run.json'} when the run was trained) is not found" in lost.output
        assert "pass --data PATH" in lost.output
    finally:
        shutil.move(moved, trained / "png")


def test_integer_labels_are_read_as_indices_and_one_past_the_run_is_refused(trained: Path, tmp_path: Path) -> None:
    # an .npz has no class names: its labels index the run's classes (one, seven, zero)
    rng = np.random.default_rng(3)
    x = np.stack([np.clip(np.array(COLOURS[name]) + rng.integers(-30, 30, (16, 16, 3)), 0, 255) for name in ("one", "seven", "zero") * 4]).astype(np.uint8)
    y = np.tile(np.arange(3), 4)
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y)
    said = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(tmp_path / "ok.npz")])
    assert said.exit_code == 0, said.output
    assert "bare integers, read as indices" in said.output
    assert "(12 images)" in said.output  # no test part: every sample, none held back for training
    assert float(said.output.split("accuracy ")[1].split()[0]) > 0.9
    np.savez(tmp_path / "past.npz", x_train=x, y_train=np.tile(np.arange(1, 4), 4))
    refused = runner.invoke(app, ["eval", str(trained / "run"), "--data", str(tmp_path / "past.npz")])
    assert refused.exit_code == 1
    assert "has label 3 but the run has 3 classes" in refused.output


def test_eval_json_names_top_k_one_way_whatever_the_class_count(trained: Path) -> None:
    said = runner.invoke(app, ["eval", str(trained / "run"), "--format", "json"])
    assert said.exit_code == 0, said.output
    result = json.loads(said.output)
    assert result["k"] == 3 and 0.0 <= result["top_k"] <= 1.0  # three classes: top-3, under the one key
    assert not [key for key in result if key.startswith("top") and key[3:].isdigit()]
