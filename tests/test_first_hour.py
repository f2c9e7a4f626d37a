"""What cost a new user their first hour: the same preparation for predict and eval,
class counts that cannot silently mismatch, folders where files were expected, strict
JSON, and messages that say the fix."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.backends import load_backend
from cnnspec.cli.app import app
from cnnspec.data.dataset import load_dataset
from cnnspec.graph.load import zoo_names
from cnnspec.inference.prediction import predict
from cnnspec.inference.scorer import Scorer
from cnnspec.runs.loading import load_run
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
    assert_agrees(predicted, evaluated)


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
                                     "--keep-head", "--out", str(tmp_path / source.name)])
        assert result.exit_code == 0, result.output
        assert f"initialised 10 of 10 arrays from {checkpoint / 'weights.safetensors'}" in result.output
    # without --keep-head: MNIST's labels are bare integers, so nothing shows the digits' classes are its classes
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--init", str(mnist_run), "--epochs", "1", "--set", "data.limit=32",
                                 "--out", str(tmp_path / "fresh")])
    assert result.exit_code == 0, result.output
    assert f"initialised 8 of 10 arrays from {checkpoint / 'weights.safetensors'}" in result.output
    assert "classifier 'output' starts fresh: the labels are bare integers" in result.output
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'nowhere'}: no such file; --init takes a checkpoint (.safetensors), a run directory, RUN@best or a checkpoint folder" in result.output


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
    from cnnspec.runs.files import read_state

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
    assert "net.yaml:6:5: warning: dense 'dense_1' ends in softmax, and the cross-entropy loss takes logits" in result.output
    spec.write_text(spec.read_text() + "train: {loss: mse}\n")
    assert "ends in softmax" not in runner.invoke(app, ["check", str(spec)]).output
    for name in zoo_names():
        assert "warning" not in runner.invoke(app, ["check", name]).output


def test_best_and_latest_checkpoints_and_keep(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--epochs", "4", "--set", "data.limit=128", "--keep", "1",
                                 "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    losses = [row["val_loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["epoch"] == int(np.argmin(losses)) + 1
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch-*"))
    assert kept == sorted({"epoch-0004", best["checkpoint"]})  # the newest, and the best
    said = {which: runner.invoke(app, ["eval", f"{run}@{which}", "--format", "json"]) for which in ("best", "latest")}
    assert json.loads(said["best"].output)["checkpoint"] == best["checkpoint"]
    assert json.loads(said["latest"].output)["checkpoint"] == "epoch-0004"
    assert (run / "run.json").stat().st_mode & 0o777 == (run / "checkpoints" / "epoch-0004" / "weights.safetensors").stat().st_mode & 0o777
    assert (run / "run.json").stat().st_mode & 0o044  # readable by others, as the umask allows, not mkstemp's 0600


def test_resuming_records_the_new_total_and_a_finished_run_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "lenet5", "--backend", "numpy", "--epochs", "1", "--set", "data.limit=64", "--out", str(run), "-q"]).exit_code == 0
    record = json.loads((run / "run.json").read_text())
    assert isinstance(record["command"], list) and record["command"]  # the command line that made it (here, pytest's)
    assert record["versions"]["numpy"] == np.__version__
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 1 and f"{run} is finished: 1 of 1 epoch trained; --epochs N (more than 1)" in result.output
    assert runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "-q"]).exit_code == 0
    record = json.loads((run / "run.json").read_text())
    assert record["train"]["epochs"] == 2 and record["resumed"][0]["epochs"] == 2
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 0  # resealed: still reads as intact


def test_the_validation_split_is_stratified(tmp_path: Path) -> None:
    from cnnspec.data.dataset import stratified_split

    labels = np.array([0] * 12 + [1] * 3 + [2] * 3)
    train, val = stratified_split(labels, 0.34, seed=5)
    assert len(val) == round(18 * 0.34) and sorted([*train, *val]) == list(range(18))
    assert np.bincount(labels[val], minlength=3).tolist() == [4, 1, 1]  # every class validated, in proportion
    from cnnspec.spec.training import DataConfig

    data = load_dataset(DataConfig(source=str(shapes(tmp_path / "s"))), (1, 32, 32), None, 0)
    assert np.bincount(data.y_val, minlength=3).tolist() in ([2, 2, 1], [2, 1, 2], [1, 2, 2])


def test_pretrained_weights_become_a_run_that_predict_eval_and_inspect_take(mnist_run: Path, tmp_path: Path) -> None:
    source = load_run(mnist_run).checkpoint / "weights.safetensors"
    names = tmp_path / "digits.txt"
    names.write_text("".join(f"digit {i}\n" for i in range(10)))
    run = tmp_path / "pretrained"
    result = runner.invoke(app, ["import", str(source), "--spec", "lenet5", "--run", str(run), "--classes", str(names)])
    assert result.exit_code == 0, result.output
    assert "inputs (unit): pixels x 0.00392157, minus mean [0], divided by std [1]" in result.output
    image = tmp_path / "digit.png"
    Image.fromarray(np.asarray(load_dataset(load_run(mnist_run).config.data, (1, 32, 32), 10, 0).x_val[0, 0])).save(image)
    said = runner.invoke(app, ["predict", str(run), str(image), "--format", "json"])
    assert said.exit_code == 0, said.output
    top = json.loads(said.output)[0]["top"][0]
    assert top["class"].startswith("digit ")
    # the same weights and the same preparation give the same outputs as a run that trained them
    from cnnspec.inference.scorer import Scorer

    ours = Scorer(run, load_backend("numpy").open_session, "cpu")
    x = ours.prepare(image.read_bytes())[None]
    np.testing.assert_allclose(ours.session.predict(ours.loaded.normalization.apply(x)),
                               Scorer(mnist_run, load_backend("numpy").open_session, "cpu").session.predict(ours.loaded.normalization.apply(x)), atol=1e-6)
    assert runner.invoke(app, ["eval", str(run), "--data", str(MNIST)]).exit_code == 0
    assert runner.invoke(app, ["inspect", str(run), str(image), "-o", str(tmp_path / "page.html")]).exit_code == 0
    names.write_text("one\ntwo\n")
    again = runner.invoke(app, ["import", str(source), "--spec", "lenet5", "--run", str(tmp_path / "other"), "--classes", str(names)])
    assert again.exit_code == 1 and "2 class names, but 'lenet5' has 10 outputs" in again.output
    assert runner.invoke(app, ["import", str(source), "--spec", "lenet5", "--classes", str(names)]).exit_code == 2  # needs --run


def test_every_option_of_every_command_says_what_it_does() -> None:
    import typer

    missing = []

    def walk(command: object, prefix: str) -> None:
        for param in getattr(command, "params", []):
            if type(param).__name__ == "TyperOption" and not getattr(param, "help", None):
                missing.append(f"{prefix} {param.opts[0]}")
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{prefix} {name}")

    walk(typer.main.get_command(app), "cnnspec")
    assert missing == []


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "resnet50"])
def test_diagram_connections_cross_no_box(name: str) -> None:
    """Projection shortcuts, identity skips and short Inception branches are routed
    around the boxes between their ends (ResNet-18's shortcut used to cut through them)."""
    from cnnspec.views.draw import _layout, edge_paths

    graph = cnnspec.load_spec(name)
    position = _layout(graph)
    paths = edge_paths(graph, position)
    ends = [(source, node.name) for node in graph.nodes for source in node.inputs]
    assert len(paths) == len(ends)
    for (xs, ys), (source, target) in zip(paths, ends, strict=True):
        corners = list(zip(xs, ys, strict=True))
        points = [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for (x0, y0), (x1, y1) in itertools.pairwise(corners)
                  for t in np.linspace(0, 1, 25)]
        for box, (bx, by) in position.items():
            if box in (source, target):
                continue
            inside = [(x, y) for x, y in points if abs(x - bx) < 0.44 and abs(y - by) < 0.32]
            assert not inside, f"{source} -> {target} crosses {box}"
