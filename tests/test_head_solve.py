"""A new task gets a new classifier, and ``--head-only`` solves it: L-BFGS on the
multinomial logistic loss with L2, to within a point of scikit-learn's
``LogisticRegression`` on ``cnnspec features`` of the same layer and images, on every
backend, on MNIST digits 5-9 after 0-4 and on a 3-channel image folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnspec
from cnnspec import api

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
SHAPES = """\
name: shapes
input: {shape: [3, 24, 24]}
layers:
  - conv2d: {filters: 8, kernel: 3, padding: 1, activation: relu}
    name: c1
  - maxpool2d: {kernel: 2}
  - conv2d: {filters: 16, kernel: 3, padding: 1, activation: relu}
    name: c2
  - global_avgpool2d: {}
    name: pool
  - dense: {units: 3}
    name: fc
"""


def _sklearn_accuracy(run: Path, data: Path, layer: str, train_count: int) -> float:
    """scikit-learn's LogisticRegression (its defaults, iterated to convergence) on the
    layer's features of the training images, scored on the rest."""
    from sklearn.linear_model import LogisticRegression

    from cnnspec.backends import load_backend
    from cnnspec.inference.features import features

    found = features(run, load_backend("numpy").open_session, str(data), layer)
    x, y = found.values.reshape(len(found.values), -1), found.labels
    model = LogisticRegression(max_iter=10_000).fit(x[:train_count], y[:train_count])
    return float(model.score(x[train_count:], y[train_count:]))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 pretrained on MNIST digits 0-4 (3 epochs), and 20 images of each of 5-9
    to learn from (labels 0-4), validated on 1,500 others."""
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("the MNIST test set is not at ../shared/data/mnist")
    pytest.importorskip("torch")
    from cnnspec.data.dataset import _read_idx

    root = tmp_path_factory.mktemp("digits")
    x, y = _read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:, None], _read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    low = np.where(y < 5)[0]
    np.savez(root / "low.npz", x_train=x[low[:-500]], y_train=y[low[:-500]], x_test=x[low[-500:]], y_test=y[low[-500:]])
    cnnspec.train("lenet5", "torch", out=root / "pre", quiet=True, epochs=3, classes="auto", **{"data.source": str(root / "low.npz")})
    rng = np.random.default_rng(0)
    few = np.concatenate([rng.choice(np.where(y == digit)[0], 20, replace=False) for digit in range(5, 10)])
    rest = rng.permutation(np.setdiff1d(np.where(y >= 5)[0], few))[:1500]
    np.savez(root / "few.npz", x_train=x[few], y_train=y[few] - 5, x_test=x[rest], y_test=y[rest] - 5)
    return root


@pytest.mark.parametrize("backend", ["numpy", "torch", "tensorflow"])
def test_head_only_on_new_digits_lands_within_a_point_of_logistic_regression(digits: Path, backend: str) -> None:
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "tensorflow": "tensorflow"}[backend])
    out = digits / f"head-{backend}"
    result = api.train("lenet5", backend, out=out, init=digits / "pre", head_only=True, classes="auto", quiet=True,
                       **{"data.source": str(digits / "few.npz"), "epochs": 15})
    reference = _sklearn_accuracy(digits / "pre", digits / "few.npz", "f6", 100)
    assert reference > 0.7
    assert abs(result.final["val_accuracy"] - reference) <= 0.01, (result.final["val_accuracy"], reference)
    solved = json.loads((out / "run.json").read_text())["solve"]
    assert solved["converged"] and solved["gradient"] <= 1e-4 and solved["iterations"] > 10, solved
    assert solved["c"] == 1.0 and solved["l2"] == pytest.approx(0.01)
    assert solved["images"] == 100 and solved["features"] == 84 and 0 < solved["loss"] < solved["objective"]
    assert result.final["train_loss"] == pytest.approx(solved["loss"])


def test_the_old_classifier_is_not_kept_for_new_classes_and_the_report_says_why(digits: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--backend", "numpy", "--data", str(digits / "few.npz"), "--classes", "auto",
         "--init", str(digits / "pre"), "--head-only", "--out", str(digits / "said")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: c1, c3, f5, f6\n" in result.stderr
    assert "classifier 'output' starts fresh: the labels are bare integers" in result.stderr
    assert "classifier 'output' solved: L-BFGS" in result.stderr and "converged" in result.stderr
    kept = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--backend", "numpy", "--data", str(digits / "few.npz"), "--classes", "auto",
         "--init", str(digits / "pre"), "--keep-head", "--epochs", "1", "--out", str(digits / "kept")],
        capture_output=True, text=True, timeout=300,
    )
    assert kept.returncode == 0, kept.stderr
    assert "loaded: c1, c3, f5, f6, output" in kept.stderr and "starts fresh" not in kept.stderr


def _shapes(root: Path, names: tuple[str, ...], per_class: int, seed: int) -> Path:
    """RGB images of a square, a disc or a cross (by class position) in varying colours,
    sizes and places on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    for index, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cy, cx, r = rng.integers(8, 16), rng.integers(8, 16), rng.integers(4, 7)
            mask = [np.maximum(abs(yy - cy), abs(xx - cx)) <= r, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r,
                    (abs(yy - cy) <= 1) | (abs(xx - cx) <= 1)][index % 3]
            pixels = rng.integers(0, 90, (24, 24, 3))
            pixels[mask] = rng.integers(140, 255, 3)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}-{i}.png")
    return root


def test_head_only_on_a_folder_of_colour_images_matches_logistic_regression(tmp_path: Path) -> None:
    spec = tmp_path / "shapes.yaml"
    spec.write_text(SHAPES)
    _shapes(tmp_path / "old", ("box", "ring", "plus"), per_class=40, seed=0)
    cnnspec.train(spec, "numpy", out=tmp_path / "pre", quiet=True, epochs=6, batch_size=16,
                  **{"data.source": str(tmp_path / "old"), "data.workers": 0, "optimizer.lr": 0.01})  # type: ignore[arg-type]
    # the new task: the same shapes under other names, in another order, few of each
    _shapes(tmp_path / "new" / "train", ("cross", "disc", "square"), per_class=12, seed=1)
    _shapes(tmp_path / "new" / "val", ("cross", "disc", "square"), per_class=40, seed=2)
    out = tmp_path / "head"
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", str(spec), "--backend", "numpy", "--data", str(tmp_path / "new"), "--init", str(tmp_path / "pre"),
         "--head-only", "--workers", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "classifier 'fc' starts fresh: the data's classes (cross, disc, square) are not the init run's (box, plus, ring)" in result.stderr
    accuracy = json.loads((out / "final.json").read_text())["val_accuracy"]
    # cnnspec features lists train/ then val/, each sorted by class and file
    reference = _sklearn_accuracy(tmp_path / "pre", tmp_path / "new", "pool", 36)
    assert reference > 0.6, reference
    assert abs(accuracy - reference) <= 0.01, (accuracy, reference)
    # the same names in the same order keep the classifier
    same = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", str(spec), "--backend", "numpy", "--data", str(tmp_path / "old"), "--init", str(tmp_path / "pre"),
         "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "again")],
        capture_output=True, text=True, timeout=300,
    )
    assert same.returncode == 0, same.stderr
    assert "loaded: c1, c2, fc" in same.stderr and "starts fresh" not in same.stderr


def test_a_head_that_is_not_a_linear_classifier_trains_by_epochs_and_says_why(tmp_path: Path) -> None:
    from cnnspec.graph.load import parse_spec
    from cnnspec.harness import bottleneck, linear_head
    from cnnspec.spec.training import TrainConfig

    config = TrainConfig(freeze=["before:fc"])
    relu = parse_spec(SHAPES.replace("dense: {units: 3}", "dense: {units: 3, activation: relu}"), "shapes.yaml")
    assert linear_head.why_not(bottleneck.head_graph(relu, "pool"), config) == "the classifier 'fc' has a relu activation"
    plain = parse_spec(SHAPES, "shapes.yaml")
    assert linear_head.why_not(bottleneck.head_graph(plain, "pool"), config) == ""
    assert "label smoothing" in linear_head.why_not(bottleneck.head_graph(plain, "pool"), config.model_copy(update={"label_smoothing": 0.1}))
    spec = tmp_path / "relu.yaml"
    spec.write_text(SHAPES.replace("dense: {units: 3}", "dense: {units: 3, activation: relu}"))
    _shapes(tmp_path / "data", ("a", "b", "c"), per_class=6, seed=0)
    done = subprocess.run([sys.executable, "-m", "cnnspec", "train", str(spec), "--backend", "numpy", "--data", str(tmp_path / "data"), "--head-only",
                           "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "classifier solve off (the classifier 'fc' has a relu activation): the optimizer trains it for 2 epochs" in done.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
