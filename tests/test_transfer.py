"""Transfer learning: a pretrained body, a new head sized to the data, frozen layers that
do not move (batch norm included), and per-layer learning-rate multipliers, on every backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.graph.tuning import TuningError, frozen_layers, match_layers, multipliers, parameter_summary
from cnnspec.runs.weight_files import load_weights
from cnnspec.spec.training import TrainConfig

SMALL_RESNET = """\
name: small
input: {shape: [3, 8, 8]}
blocks:
  basic:
    layers:
      - conv2d: {filters: 4, kernel: 3, padding: 1, bias: false}
        name: conv1
      - batchnorm: {}
        name: bn1
      - add: {}
        inputs: [bn1, input]
      - relu: {}
layers:
  - conv2d: {filters: 4, kernel: 3, padding: 1}
    name: stem
  - basic: {}
    name: layer1
    repeat: 2
  - global_avgpool2d: {}
    name: pool
  - dense: {units: 3}
    name: fc
"""


def graph() -> cnnspec.Graph:
    return cnnspec.parse_spec(SMALL_RESNET, "small.yaml")


def test_patterns_name_layers_groups_globs_and_everything_before() -> None:
    g = graph()
    assert match_layers(g, "fc") == ["fc"]
    assert match_layers(g, "layer1.0") == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.add_1", "layer1.0.relu_1"]
    assert match_layers(g, "layer1.*.bn1") == ["layer1.0.bn1", "layer1.1.bn1"]
    assert match_layers(g, "before:layer1.1") == ["stem", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.add_1", "layer1.0.relu_1"]
    with pytest.raises(TuningError, match=r"freeze: 'layr1' names no layer of 'small' \(did you mean 'layer1'\?\)"):
        match_layers(g, "layr1")
    with pytest.raises(TuningError, match="freezes every layer with weights"):
        frozen_layers(g, TrainConfig(freeze=["before:fc", "fc"]))
    config = TrainConfig(freeze=["stem"], lr_mult={"layer1": 0.1, "layer1.1": 0.5}, decay_mult={"fc": 0})
    scaled = multipliers(g, config)
    assert "stem.weight" not in scaled and scaled["layer1.0.conv1.weight"] == (0.1, 1.0)
    assert scaled["layer1.1.bn1.weight"] == (0.5, 1.0) and scaled["fc.weight"] == (1.0, 0.0)  # the later pattern wins
    counts = parameter_summary(g, config)
    assert counts == {"trainable": 2 * (144 + 8) + 15, "frozen": 4 * 27 + 4, "non_trainable": 2 * 8}


def _step_everything(backend: str, config: TrainConfig, steps: int = 3) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    from cnnspec.backends import load_backend
    from cnnspec.graph.weights import initial_weights

    g = graph()
    session = load_backend(backend).open_session(g, config, device="cpu")
    before = initial_weights(g, 0)
    session.set_weights(before)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
        session.train_step(x, rng.integers(0, 3, 8))
    arrays, _ = session.optimizer_state()
    return before, session.get_weights(), sorted({key.split("::")[0] for key in arrays})


@pytest.mark.parametrize("backend", ["torch", "numpy", "tensorflow"])
def test_frozen_layers_do_not_move_and_have_no_optimizer_state(backend: str) -> None:
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    config = TrainConfig(freeze=["stem", "layer1.0"], optimizer={"name": "adam", "lr": 0.05})  # type: ignore[arg-type]
    before, after, with_state = _step_everything(backend, config)
    for name in before:
        moved = not np.allclose(before[name], after[name])
        frozen = name.startswith(("stem.", "layer1.0."))
        assert moved != frozen, name  # running statistics of the frozen batch norm stay put too
    assert with_state and not [n for n in with_state if n.startswith(("stem.", "layer1.0."))]


@pytest.mark.parametrize("backend", ["numpy", "tensorflow"])
def test_learning_rate_multipliers_agree_across_backends(backend: str) -> None:
    """A tenth of the learning rate for one group and no weight decay for the head: the
    same weights after three SGD steps in every backend."""
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    config = TrainConfig(
        lr_mult={"layer1": 0.1}, decay_mult={"fc": 0.0}, freeze=["stem"],
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},  # type: ignore[arg-type]
    )
    _, reference, _ = _step_everything("torch", config)
    _, ours, _ = _step_everything(backend, config)
    for name in reference:
        assert_agrees(ours[name], reference[name], what=name)
    _, unscaled, _ = _step_everything("torch", config.model_copy(update={"lr_mult": {}}))
    assert not np.allclose(unscaled["layer1.0.conv1.weight"], reference["layer1.0.conv1.weight"])


def _folder(root: Path, classes: tuple[str, ...], per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((32, 32), 40 * index, np.uint8) + rng.integers(0, 30, (32, 32)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_classes_auto_gives_a_new_head_and_says_what_was_loaded(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    first = cnnspec.train("lenet5", "torch", out=tmp_path / "first", quiet=True, epochs=1, **{"data.limit": 200})
    assert first.final["val_accuracy"] >= 0
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch-0001" / "weights.safetensors"
    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"))
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--data", str(photos), "--classes", "auto", "--init", str(checkpoint),
         "--freeze", "c1,c3", "--epochs", "1", "--workers", "0", "--out", "second"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "initialised 8 of 10 arrays" in result.stderr
    assert "loaded: c1, c3, f5, f6" in result.stderr
    assert "new, freshly initialised: output.weight (checkpoint 10x84, network 3x84), output.bias (checkpoint 10, network 3)" in result.stderr
    assert "parameters: 58,539 trainable, 2,572 frozen, 0 non-trainable; frozen: c1, c3" in result.stderr
    run = tmp_path / "second"
    assert json.loads((run / "run.json").read_text())["classes"] == ["ant", "bee", "cow"]
    assert cnnspec.parse_spec((run / "spec.yaml").read_text(), "spec.yaml").output_shape == (3,)
    predictions, outputs = cnnspec.predict(run, [photos / "cow" / "0.png"])
    assert outputs.shape == (1, 3) and predictions[0]["top"][0]["class"] in ("ant", "bee", "cow")
    report = cnnspec.evaluate(run)
    assert report["classes"] == ["ant", "bee", "cow"]
    for command in (["verify", "second", "--backends", "numpy,torch"], ["export", "second", "--to", "onnx", "-o", "second.onnx"]):
        done = subprocess.run([sys.executable, "-m", "cnnspec", *command], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "second.onnx").stat().st_size > 0


def test_head_only_trains_the_classifier_alone_on_cached_features(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from cnnspec.runs.files import load_arrays

    cnnspec.train("lenet5", "torch", out=tmp_path / "first", quiet=True, epochs=1, **{"data.limit": 200})
    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=4)
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--data", str(photos), "--classes", "auto", "--init", "first",
         "--head-only", "--epochs", "2", "--workers", "0", "--out", "head"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "parameters: 255 trainable, 60,856 frozen, 0 non-trainable; frozen: before:output" in result.stderr
    assert "bottleneck: every layer up to 'f6' is frozen" in result.stderr
    before = load_arrays(tmp_path / "first" / "checkpoints" / "epoch-0001" / "weights.safetensors")
    assert "classifier 'output' solved: L-BFGS" in result.stderr  # one solve in place of the epochs
    after = load_weights(tmp_path / "head" / "checkpoints" / "epoch-0001")
    assert after["output.weight"].shape == (3, 84)
    pretrained = json.loads((tmp_path / "first" / "run.json").read_text())["normalization"]
    assert "normalisation: first's (mean" in result.stderr  # the body sees inputs scaled as it was trained
    assert json.loads((tmp_path / "head" / "run.json").read_text())["normalization"] == pretrained
    own = cnnspec.train("lenet5", "torch", out=tmp_path / "own", init=tmp_path / "first@best", quiet=True, epochs=1, classes="auto",
                        **{"data.source": str(photos), "data.workers": 0, "data.normalize": "standard"})
    assert json.loads((own.run_dir / "run.json").read_text())["normalization"]["mean"] != pretrained["mean"]  # set: the data's own
    for name in before:
        if not name.startswith("output."):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    both = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", "lenet5", "--head-only", "--freeze", "c1"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert both.returncode == 2 and "--head-only freezes every layer before the classifier: give it without --freeze" in both.stderr
    (tmp_path / "convs.yaml").write_text("name: convs\ninput: {shape: [1, 8, 8]}\nlayers:\n  - conv2d: {filters: 2, kernel: 3}\n")
    none = subprocess.run([sys.executable, "-m", "cnnspec", "train", "convs.yaml", "--head-only"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert none.returncode == 2 and "--head-only: 'convs' has no top-level dense layer to serve as the classifier" in none.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--freeze", "c1,c33"], "freeze: 'c33' names no layer of 'lenet5' (did you mean 'c3'?)"),
        (["--freeze", "before:output,output"], "freezes every layer with weights of 'lenet5'"),
        (["--classes", "2"], "--classes 2 (train.classes), but the data 'folders:photos' has 3 classes (ant, bee, cow); use --classes auto"),
        ([], "has 3 classes (ant, bee, cow) but lenet5's output layer 'output' has 2 units: --classes auto"),
    ],
)
def test_bad_transfer_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=3)
    spec = tmp_path / "two.yaml"
    spec.write_text(cnnspec.load_spec("lenet5").source.replace("units: 10}", "units: 2}").replace("expect: {output: [10], params: 61706}\n", ""))
    target = "lenet5" if args else str(spec)
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "train", target, "--data", str(photos), "--epochs", "1", "--workers", "0", "--out", "run", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr


def test_features_are_the_layer_outputs_of_every_image_with_labels_and_paths(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from safetensors import safe_open

    from cnnspec.backends import load_backend
    from cnnspec.data.dataset import load_images
    from cnnspec.inference.engines import open_run_session
    from cnnspec.runs.loading import load_run

    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=4)
    cnnspec.train("lenet5", "torch", out=tmp_path / "run", quiet=True, epochs=1, classes="auto", **{"data.source": str(photos), "data.workers": 0})
    result = subprocess.run(
        [sys.executable, "-m", "cnnspec", "features", "run", "--data", str(photos), "--layer", "f6", "-o", "f6.safetensors"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "f6.safetensors: features 12 x 84 from 'f6', 3 classes" in result.stdout
    with safe_open(str(tmp_path / "f6.safetensors"), framework="np") as stored:
        values, labels = stored.get_tensor("features"), stored.get_tensor("labels")
        paths = bytes(stored.get_tensor("paths")).decode().split("\n")
        assert json.loads(stored.metadata()["classes"]) == ["ant", "bee", "cow"] and stored.metadata()["layer"] == "f6"
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert paths == [str(p) for name in ("ant", "bee", "cow") for p in sorted((photos / name).glob("*.png"))]
    loaded = load_run(tmp_path / "run")
    session = open_run_session(loaded, load_backend("torch").open_session, "cpu")
    images = loaded.normalization.apply(load_images([Path(p) for p in paths], loaded.graph.input_shape))
    assert_agrees(values, session.activations(images, ["f6"])["f6"])
    wrong = subprocess.run(
        [sys.executable, "-m", "cnnspec", "features", "run", "--data", str(photos), "--layer", "f66"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert wrong.returncode == 1 and "--layer: 'lenet5' has no layer 'f66' (did you mean 'f6'?)" in wrong.stderr


def test_check_shows_training_counts_and_points_at_bad_patterns(tmp_path: Path) -> None:
    spec = SMALL_RESNET + "train:\n  freeze: [stem, layer1.0]\n  lr_mult: {layer1.1: 0.1}\n"
    (tmp_path / "ok.yaml").write_text(spec)
    (tmp_path / "bad.yaml").write_text(spec.replace("[stem, layer1.0]", "[stem, layer2]").replace("{layer1.1: 0.1}", "{fcc: 0.1}"))
    ok = subprocess.run([sys.executable, "-m", "cnnspec", "check", "ok.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and "Training:        167 trainable, 264 frozen, 16 non-trainable; frozen: stem, layer1.0; lr_mult: layer1.1 x0.1" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cnnspec", "check", "bad.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "bad.yaml:24:18: error: freeze: 'layer2' names no layer of 'small' (did you mean 'layer1'?)" in bad.stdout + bad.stderr
    assert "bad.yaml:25:13: error: lr_mult: 'fcc' names no layer of 'small' (did you mean 'fc'?)" in bad.stdout + bad.stderr


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_head_training_on_cached_bottleneck_features_equals_running_the_frozen_body(tmp_path: Path, backend: str) -> None:
    """Frozen up to the pooling (batch norm included): the body's outputs are computed once
    and each epoch trains only the head, ending with the weights and metrics that running
    the whole network every step gives; the run's checkpoint is the whole network."""

    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=8)
    g = cnnspec.parse_spec(SMALL_RESNET.replace("[3, 8, 8]", "[1, 8, 8]"), "small.yaml")
    settings = {"data.source": str(photos), "data.workers": 0, "freeze": ["before:fc"], "epochs": 3, "batch_size": 4, "optimizer.lr": 0.05, "keep": "all"}
    runs = {}
    for cached in (True, False):
        runs[cached] = cnnspec.train(g, backend, out=tmp_path / str(cached), quiet=True, bottleneck_cache=cached, **settings)  # type: ignore[arg-type]
    for a, b in zip(runs[True].history, runs[False].history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    ours, theirs = (load_weights(tmp_path / str(c) / "checkpoints" / "epoch-0003") for c in (True, False))
    assert set(ours) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.allclose(ours["fc.weight"], load_weights(tmp_path / "True" / "checkpoints" / "epoch-0001")["fc.weight"])
    assert cnnspec.evaluate(tmp_path / "True")["accuracy"] == pytest.approx(runs[True].final["val_accuracy"])


@pytest.mark.parametrize("killed_in_epoch", [3, 4])
def test_phases_run_as_one_run_and_resume_across_their_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_in_epoch: int) -> None:
    """Two epochs head only (on cached features) at lr 0.01, then two more with only c1
    frozen at lr 0.001: one metrics file, and a run killed in either epoch of the second
    phase resumes to the weights of an uninterrupted one (a new phase starts a new optimizer)."""
    from cnnspec.backends import torch_backend

    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=5)  # 12 train images: 3 steps an epoch
    phases = [{"epochs": 2, "freeze": ["before:output"], "lr": 0.01}, {"epochs": 2, "freeze": ["c1"], "lr": 0.001}]
    settings = {"data.source": str(photos), "data.workers": 0, "classes": "auto", "batch_size": 4, "phases": phases, "keep": "all"}
    whole = cnnspec.train("lenet5", "torch", out=tmp_path / "whole", quiet=True, **settings)  # type: ignore[arg-type]
    assert [row["lr"] for row in whole.history] == [0.01, 0.01, 0.001, 0.001]
    weights = [load_weights(tmp_path / "whole" / "checkpoints" / f"epoch-000{e}") for e in (1, 2, 4)]
    np.testing.assert_array_equal(weights[0]["c1.weight"], weights[2]["c1.weight"])  # frozen in both phases
    np.testing.assert_array_equal(weights[0]["c3.weight"], weights[1]["c3.weight"])  # frozen in the first only
    assert not np.array_equal(weights[1]["c3.weight"], weights[2]["c3.weight"])
    real_step = torch_backend.TorchSession.train_step
    calls = {"n": 0}

    def dies(self: object, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == 3 * (killed_in_epoch - 1) + 2:
            raise KeyboardInterrupt
        return real_step(self, x, y)  # type: ignore[arg-type]

    monkeypatch.setattr(torch_backend.TorchSession, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        cnnspec.train("lenet5", "torch", out=tmp_path / "killed", quiet=True, **settings)  # type: ignore[arg-type]
    monkeypatch.undo()
    resumed = cnnspec.resume(tmp_path / "killed", quiet=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    ours = load_weights(tmp_path / "killed" / "checkpoints" / "epoch-0004")
    for name, array in weights[2].items():
        np.testing.assert_allclose(ours[name], array, rtol=1e-5, atol=1e-7, err_msg=name)


def test_bottleneck_features_on_disk_equal_those_in_memory(tmp_path: Path) -> None:
    """With data.stream: always (or features larger than the memory budget) the cached
    features live in memory-mapped files, unlinked at once: the same training, and no file
    left behind."""
    photos = _folder(tmp_path / "photos", ("ant", "bee", "cow"), per_class=8)
    g = cnnspec.parse_spec(SMALL_RESNET.replace("[3, 8, 8]", "[1, 8, 8]"), "small.yaml")
    settings = {"data.source": str(photos), "data.workers": 0, "freeze": ["before:fc"], "epochs": 2, "batch_size": 4, "optimizer.lr": 0.05}
    memory = cnnspec.train(g, "numpy", out=tmp_path / "memory", quiet=True, **settings)  # type: ignore[arg-type]
    disk = cnnspec.train(g, "numpy", out=tmp_path / "disk", quiet=True, **{**settings, "data.stream": "always"})  # type: ignore[arg-type]
    for a, b in zip(memory.history, disk.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert (tmp_path / "disk" / ".cache").is_dir() and not any((tmp_path / "disk" / ".cache").iterdir())
    assert not (tmp_path / "memory" / ".cache").exists()


MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="the MNIST test set is not at ../shared/data/mnist")
def test_transfer_beats_scratch_by_ten_points_on_mnist_digits_five_to_nine(tmp_path: Path) -> None:
    """LeNet-5 pretrained on MNIST digits 0-4 learns 5-9 from 20 images per class, validated
    on the other ~4,760 5-9 images, against the same network from scratch on the same 100
    images: same optimizer, learning rate (Adam, 3e-3) and epochs (2: ten steps of 20
    images), averaged over three draws of the 100. Transfer keeps the pretrained conv body,
    frozen (the head trains) or fine-tuned at a tenth of the rate. A control freezes a
    random body the same way: the lead is the pretraining's, not the freezing's. By 20
    epochs scratch catches up to within 1-2 points (benchmarks/bench_transfer.py)."""
    pytest.importorskip("torch")
    from cnnspec.data.dataset import _read_idx

    x, y = _read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:, None], _read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    low = np.where(y < 5)[0]
    np.savez(tmp_path / "low.npz", x_train=x[low[:-500]], y_train=y[low[:-500]], x_test=x[low[-500:]], y_test=y[low[-500:]])
    pre = cnnspec.train("lenet5", "torch", out=tmp_path / "pre", quiet=True, epochs=10, classes="auto",
                        **{"data.source": str(tmp_path / "low.npz"), "data.augment.random_crop": 2})
    assert pre.final["val_accuracy"] > 0.97
    variants = {
        "scratch": ({}, None),
        "head": ({"freeze": ["before:f5"]}, tmp_path / "pre"),
        "fine-tuned": ({"lr_mult": {"before:f5": 0.1}}, tmp_path / "pre"),
        "random body frozen": ({"freeze": ["before:f5"]}, None),
    }
    accuracy: dict[str, list[float]] = {label: [] for label in variants}
    for draw in (0, 1, 2):
        rng = np.random.default_rng(draw)
        few = np.concatenate([rng.choice(np.where(y == digit)[0], 20, replace=False) for digit in range(5, 10)])
        rest = np.setdiff1d(np.where(y >= 5)[0], few)
        data = tmp_path / f"few-{draw}.npz"
        np.savez(data, x_train=x[few], y_train=y[few] - 5, x_test=x[rest], y_test=y[rest] - 5)
        for label, (settings, init) in variants.items():
            result = cnnspec.train("lenet5", "torch", out=tmp_path / f"{label}-{draw}", quiet=True, epochs=2, init=init, classes="auto",
                                   batch_size=20, seed=draw, **{"data.source": str(data), "optimizer.lr": 3e-3}, **settings)  # type: ignore[arg-type]
            accuracy[label].append(result.final["val_accuracy"])
    mean = {label: float(np.mean(values)) for label, values in accuracy.items()}
    assert mean["head"] >= mean["scratch"] + 0.10, accuracy
    assert mean["fine-tuned"] >= mean["scratch"] + 0.10, accuracy
    assert mean["head"] >= mean["random body frozen"] + 0.10, accuracy
