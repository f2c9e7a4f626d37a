"""What cost a new user their first hour: the same preparation for predict and eval,
class counts that cannot silently mismatch, folders where files were expected, strict
JSON, and messages that say the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import cnnspec
from cnnspec.backends import load_backend
from cnnspec.cli import app
from cnnspec.harness.data import load_dataset
from cnnspec.harness.run import Scorer, load_run, predict
from cnnspec.load import zoo_names
from cnnspec.strictjson import strict_json

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
runner = CliRunner()


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("the MNIST test set is not at ../shared/data/mnist")
    root = tmp_path_factory.mktemp("first-hour")
    cnnspec.train("lenet5", "numpy", out=root / "run", epochs=1, **{"data.source": str(MNIST), "data.limit": 512})  # type: ignore[arg-type]
    return root / "run"


def test_predict_on_image_files_equals_eval_on_the_same_images(mnist_run: Path, tmp_path: Path) -> None:
    """28 x 28 MNIST digits are padded to LeNet's 32 x 32 for training and evaluation; as
    PNG files through predict they must be prepared the same way, to the same numbers."""
    loaded = load_run(mnist_run)
    data = load_dataset(loaded.config.data, loaded.graph.input_shape, 10, loaded.config.seed)
    x_val = np.asarray(data.x_val[:200])
    assert not x_val[:, :, :2].any() and not x_val[:, :, 30:].any()  # padded by 2 on each side
    files = []
    for i, image in enumerate(x_val[:, 0, 2:30, 2:30]):  # the 28 x 28 digits as the IDX file holds them
        files.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(image).save(files[-1])
    scorer = Scorer(mnist_run, load_backend("numpy").open_session, "cpu")
    evaluated = scorer.outputs(x_val)
    _, predicted = predict(mnist_run, files, load_backend("numpy").open_session, top=1, device="cpu")
    assert np.array_equal(evaluated.argmax(1), predicted.argmax(1))
    np.testing.assert_allclose(predicted, evaluated, rtol=0, atol=1e-6)


def shapes(root: Path) -> Path:
    for cls in ("circle", "square", "triangle"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            image = Image.new("L", (32, 32))
            draw = ImageDraw.Draw(image)
            box = (4 + i % 4, 4, 26 + i % 4, 26)
            if cls == "circle":
                draw.ellipse(box, fill=255)
            elif cls == "square":
                draw.rectangle(box, fill=255)
            else:
                draw.polygon([(16 + i % 4, 3), (3, 28), (29, 28)], fill=255)
            image.save(root / cls / f"{i}.png")
    return root


def test_a_class_count_that_differs_from_the_head_is_an_error_that_says_the_fix(tmp_path: Path) -> None:
    data = shapes(tmp_path / "shapes")
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "a"), "-q"])
    assert result.exit_code == 1
    assert ("the data 'folders:shapes' has 3 classes (circle, square, triangle) but lenet5's output layer 'output' has 10 units: "
            "--classes auto") in result.output
    assert "--classes 10 keeps 10 outputs for 3 classes" in result.output
    assert not (tmp_path / "a").exists()
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "b"),
                                 "--classes", "auto", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "run.json").read_text())["classes"] == ["circle", "square", "triangle"]
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "c"),
                                 "--classes", "10", "-q"])
    assert result.exit_code == 0, result.output  # said on purpose: kept


def test_init_takes_a_run_directory_or_a_checkpoint_folder(mnist_run: Path, tmp_path: Path) -> None:
    checkpoint = load_run(mnist_run).checkpoint
    for source in (mnist_run, checkpoint):
        result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--init", str(source), "--epochs", "1", "--set", "data.limit=32",
                                     "--out", str(tmp_path / source.name)])
        assert result.exit_code == 0, result.output
        assert f"initialised 10 of 10 arrays from {checkpoint / 'weights.safetensors'}" in result.output
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'nowhere'}: no such file; --init takes a checkpoint (.safetensors), a run directory or a checkpoint folder" in result.output


def test_check_takes_a_run_directory_or_a_checkpoint_folder(mnist_run: Path) -> None:
    for source in (mnist_run, load_run(mnist_run).checkpoint):
        result = runner.invoke(app, ["check", str(source), "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["params"] == 61_706


def test_run_files_are_strict_json(mnist_run: Path) -> None:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    for path in [*mnist_run.glob("*.json"), *mnist_run.glob("checkpoints/*/*.json"), mnist_run / "metrics.jsonl"]:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=refuse)
    state = json.loads((load_run(mnist_run).checkpoint / "state.json").read_text())
    assert state["plateau"]["best"] is None or math.isfinite(state["plateau"]["best"])
    assert strict_json({"loss": float("nan"), "best": [float("inf"), 1.5]}) == '{"loss": null, "best": [null, 1.5]}'


def test_resuming_reads_back_a_best_written_as_null(mnist_run: Path, tmp_path: Path) -> None:
    from cnnspec.harness.weights import read_state

    path = tmp_path / "state.json"
    path.write_text('{"epoch": 1, "best": null, "bad_epochs": 0, "plateau": {"lr": 0.1, "best": null, "bad_epochs": 0}}')
    state = read_state(path)
    assert state["best"] == math.inf and state["plateau"]["best"] == math.inf


def test_set_keys_get_a_did_you_mean() -> None:
    result = runner.invoke(app, ["train", "lenet5", "--set", "optimizer.lrr=0.1"])
    assert result.exit_code == 2
    assert "unknown key 'optimizer.lrr' (did you mean 'lr'?)" in result.output
    result = runner.invoke(app, ["train", "lenet5", "--set", "epoch=3"])
    assert "unknown key 'epoch' (did you mean 'epochs'?)" in result.output


def test_calc_takes_same_padding_and_names_its_own_option() -> None:
    result = runner.invoke(app, ["calc", "conv", "--size", "7", "--kernel", "3", "--stride", "2", "--padding", "same"])
    assert result.exit_code == 0, result.output
    assert "out = ceil(N / S) = ceil(7 / 2) = 4" in result.output and "= 1 before, 1 after" in result.output
    result = runner.invoke(app, ["calc", "pool", "--size", "7", "--kernel", "2", "--padding", "same"])
    assert "= 0 before, 1 after (the odd pixel goes after" in result.output
    result = runner.invoke(app, ["calc", "conv", "--size", "8", "--kernel", "3", "--stride", "2"])
    assert result.exit_code == 1
    assert "add --rounding floor (what PyTorch and Keras 'valid' do) or --rounding ceil (Caffe)" in result.output
    assert "\n" not in result.output.split("error: ")[1].rstrip("\n")  # one line, not wrapped


def test_keras_habits_get_warnings(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text("name: net\ninput: {shape: [32, 32, 3]}\nlayers:\n  - conv2d: {filters: 4, kernel: 3}\n  - flatten: {}\n"
                    "  - dense: {units: 10, activation: softmax}\n")
    result = runner.invoke(app, ["check", str(spec)])
    assert result.exit_code == 0
    assert "net.yaml:2:16: warning: input shape [32, 32, 3] looks channels-last" in result.output
    assert "a spec's input is channels-first: [3, 32, 32]" in result.output
    assert "net.yaml:6:5: warning: dense 'dense_1' ends in softmax, and the cross-entropy loss applies softmax itself" in result.output
    spec.write_text(spec.read_text() + "train: {loss: mse}\n")
    assert "ends in softmax" not in runner.invoke(app, ["check", str(spec)]).output
    for name in zoo_names():
        assert "warning" not in runner.invoke(app, ["check", name]).output
