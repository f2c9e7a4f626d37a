"""Training, evaluation and prediction end to end, as a user runs them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnspec
from cnnspec.errors import TrainingError
from cnnspec.harness.memory import check_memory, estimate_memory
from cnnspec.harness.schedule import Plateau, after_epoch, learning_rate
from cnnspec.runs.loading import load_run
from cnnspec.spec.training import ScheduleConfig, TrainConfig

torch = pytest.importorskip("torch")

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnspec", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_default_training_reaches_95_percent_on_digits(tmp_path: Path) -> None:
    """`cnnspec train lenet5.yaml` with no other argument (the bundled digits)."""
    result = cli("train", "lenet5.yaml", "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second"):
        assert key in rows[-1]
    assert rows[-1]["val_accuracy"] >= 0.95
    assert json.loads((run / "final.json").read_text()) == rows[-1]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "spec.yaml").read_text() == cnnspec.load_spec("lenet5").source
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"] == "epoch-0010"
    assert "epoch 10/10" in result.stderr  # plain progress lines when not a terminal
    assert f"val_accuracy {rows[-1]['val_accuracy']:.4f}" in result.stdout


@pytest.mark.skipif(not MNIST.exists(), reason="the shared MNIST test set is not beside this checkout")
def test_lenet5_on_real_mnist_reaches_97_5_percent_in_5_epochs(tmp_path: Path) -> None:
    result = cli("train", "lenet5", "--data", str(MNIST), "--epochs", "5", "--out", "mnist", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""  # --quiet
    final = json.loads((tmp_path / "mnist" / "final.json").read_text())
    assert final["epoch"] == 5
    assert final["val_accuracy"] >= 0.975


def small(tmp_path: Path, name: str, **overrides: object) -> cnnspec.harness.loop.TrainResult:
    settings = {"epochs": 3, "data.limit": 256, "batch_size": 32, "keep": "all", **overrides}
    return cnnspec.train("lenet5", out=tmp_path / name, **settings)  # type: ignore[arg-type]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    whole = small(tmp_path, "whole")
    small(tmp_path, "part", epochs=1)
    resumed = cnnspec.resume(tmp_path / "part", epochs=3)
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_after_a_kill_mid_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnspec.backends import torch_backend

    real_step = torch_backend.TorchSession.train_step
    calls = {"n": 0}

    def dies_in_epoch_two(self: object, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == 8 + 3:  # 8 batches an epoch: the 3rd batch of epoch 2
            raise KeyboardInterrupt
        return real_step(self, x, y)  # type: ignore[arg-type]

    monkeypatch.setattr(torch_backend.TorchSession, "train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        small(tmp_path, "killed")
    monkeypatch.undo()
    run = tmp_path / "killed"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.json", "epoch-0001", "latest.json"]
    resumed = cnnspec.resume(run)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    whole = small(tmp_path, "whole")
    assert resumed.final["val_loss"] == pytest.approx(whole.final["val_loss"], rel=1e-6)


@pytest.mark.parametrize(("stream", "per_sample"), [("never", False), ("always", False), ("never", True), ("always", True)])
def test_resume_continues_a_killed_epoch_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: str, per_sample: bool) -> None:
    """With checkpoints inside the epoch, a run killed mid-epoch continues from the last of
    them (not from the epoch's start) and ends with the weights of an uninterrupted run:
    for data in memory and streamed from files, with augmentation drawing random numbers
    (per sample, too: random resized crops and colour jitter, in the workers when streamed)."""
    from PIL import Image

    from cnnspec.backends import torch_backend
    from cnnspec.runs.files import load_arrays

    rng = np.random.default_rng(0)
    for label in range(3):
        (tmp_path / "photos" / f"c{label}").mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (20, 20)).astype(np.uint8)).save(tmp_path / "photos" / f"c{label}" / f"{i}.png")
    settings = {
        "epochs": 2, "batch_size": 16, "checkpoint_steps": 3, "data.source": str(tmp_path / "photos"), "data.stream": stream,
        "data.workers": 2, "data.augment.hflip": True, "data.augment.random_crop": 2,
    }
    if per_sample:
        settings |= {"data.augment.random_resized_crop": {"scale": [0.3, 1.0]}, "data.augment.color_jitter": {"brightness": 0.3, "contrast": 0.3}}
    graph = cnnspec.parse_spec(
        "name: tiny\ninput: {shape: [1, 16, 16]}\nlayers:\n  - conv2d: {filters: 4, kernel: 3, activation: relu}\n"
        "  - global_avgpool2d: {}\n  - dense: {units: 3}\n",
        "tiny.yaml",
    )
    real_step = torch_backend.TorchSession.train_step
    calls = {"n": 0}

    def dies_in_epoch_two(self: object, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == 6 + 5:  # 96 training images: 6 batches an epoch; the 5th batch of epoch 2
            raise KeyboardInterrupt
        return real_step(self, x, y)  # type: ignore[arg-type]

    monkeypatch.setattr(torch_backend.TorchSession, "train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        cnnspec.train(graph, "torch", out=tmp_path / "killed", quiet=True, **settings)  # type: ignore[arg-type]
    monkeypatch.undo()
    mid = json.loads((tmp_path / "killed" / "checkpoints" / "mid-epoch" / "state.json").read_text())
    assert (mid["epoch"], mid["step"], mid["sums"][2]) == (1, 3, 48)
    calls["n"] = 0
    monkeypatch.setattr(torch_backend.TorchSession, "train_step", lambda self, x, y: (calls.__setitem__("n", calls["n"] + 1), real_step(self, x, y))[1])
    resumed = cnnspec.resume(tmp_path / "killed", quiet=True)
    assert calls["n"] == 3  # the last 3 batches of epoch 2, not all 6
    monkeypatch.undo()
    whole = cnnspec.train(graph, "torch", out=tmp_path / "whole", quiet=True, **settings)  # type: ignore[arg-type]
    for key in ("train_loss", "train_accuracy", "val_loss"):
        assert resumed.final[key] == pytest.approx(whole.final[key], rel=1e-6), key
    ours, theirs = (load_arrays(tmp_path / run / "checkpoints" / "epoch-0002" / "weights.safetensors") for run in ("killed", "whole"))
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
    assert not (tmp_path / "killed" / "checkpoints" / "mid-epoch").exists()


def test_nan_loss_stops_with_a_clear_message(tmp_path: Path) -> None:
    result = cli(
        "train", "lenet5", "--out", "nan", "--optimizer", "sgd", "--lr", "1e12", "--set", "data.limit=256", "--epochs", "3", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cnnspec: error: the loss became" in result.stderr
    assert "Try a lower learning rate (now 1e+12)" in result.stderr
    assert "Traceback" not in result.stderr


def test_memory_estimate_refuses_and_says_what_fits() -> None:
    graph = cnnspec.load_spec("vgg16")
    config = TrainConfig(batch_size=512)
    fixed, per_sample = estimate_memory(graph, config)
    assert fixed == graph.params * 4 * 4  # weights, gradients, two Adam slots
    free = 16 * 2**30
    with pytest.raises(TrainingError, match=r"--batch-size (\d+) fits") as info:
        check_memory(graph, config, "cuda:0", free)
    fits = int(info.value.args[0].split("--batch-size ")[1].split()[0])
    assert fixed + per_sample * fits <= free * 0.9 < fixed + per_sample * (fits + 1)
    check_memory(graph, TrainConfig(batch_size=fits), "cuda:0", free)
    assert "cuda:0 has 16.0 GiB free" in str(info.value)


def test_eval_and_predict(tmp_path: Path) -> None:
    from PIL import Image

    trained = small(tmp_path, "run")
    result = cli("eval", "run", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == pytest.approx(trained.final["val_accuracy"])
    assert report["loss"] == pytest.approx(trained.final["val_loss"], rel=1e-5)
    assert sum(map(sum, report["confusion_matrix"])) == report["images"] == 359
    assert set(report["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert (tmp_path / report["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
    table = cli("eval", "run/checkpoints/epoch-0002", cwd=tmp_path)
    assert table.returncode == 0 and "confusion matrix" in table.stdout and "(epoch-0002)" in table.stdout

    loaded = load_run(tmp_path / "run")
    from cnnspec.data.dataset import load_dataset

    data = load_dataset(loaded.config.data, (1, 32, 32), 10, loaded.config.seed)
    Image.fromarray(data.x_val[0, 0]).save(tmp_path / "digit.png")
    np.save(tmp_path / "batch.npy", data.x_val[:3].astype(np.float32) / 255.0)
    result = cli("predict", "run", "digit.png", "batch.npy", "--top", "3", "--format", "json", "--output", "raw.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["input"] for p in predictions] == ["digit.png", "batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    assert all(len(p["top"]) == 3 for p in predictions)
    probabilities = [entry["probability"] for entry in predictions[0]["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert predictions[0]["top"][0]["class"] == predictions[1]["top"][0]["class"]  # the same image, two ways in
    raw = np.load(tmp_path / "raw.npy")
    assert raw.shape == (4, 10)


def test_train_options_and_refusals(tmp_path: Path) -> None:
    result = cli("train", "lenet5", "--out", "o", "--epochs", "1", "--set", "schedule.name=cosine", "--set", "data.limit=64", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / "o" / "run.json").read_text())["train"]
    assert recorded["schedule"]["name"] == "cosine" and recorded["epochs"] == 1
    again = cli("train", "lenet5", "--out", "o", "--quiet", cwd=tmp_path)
    assert again.returncode == 1 and "exists and is not empty" in again.stderr
    bad = cli("train", "lenet5", "--set", "optimizer.nam=sgd", cwd=tmp_path)
    assert bad.returncode == 2 and "optimizer.nam" in bad.stderr
    no_gpu = cli("train", "lenet5", "--device", "cuda:7", "--quiet", cwd=tmp_path)
    if not torch.cuda.is_available():
        assert no_gpu.returncode == 1 and "sees no CUDA GPU" in no_gpu.stderr
    missing = cli("train", "lenet5", "--data", "flowers", cwd=tmp_path)
    assert missing.returncode == 1 and "downloads nothing: unpack the images into one folder per class" in missing.stderr


def test_schedules_match_pytorch() -> None:
    from torch.optim import SGD, lr_scheduler

    def torch_rates(make: object, epochs: int) -> list[float]:
        optimizer = SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = make(optimizer)  # type: ignore[operator]
        rates = []
        for _ in range(epochs):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return rates

    cases = [
        (ScheduleConfig(name="step", step_size=3, gamma=0.5), lambda o: lr_scheduler.StepLR(o, 3, 0.5)),
        (ScheduleConfig(name="exponential", gamma=0.9), lambda o: lr_scheduler.ExponentialLR(o, 0.9)),
        (ScheduleConfig(name="cosine", min_lr=0.001), lambda o: lr_scheduler.CosineAnnealingLR(o, 10, 0.001)),
    ]
    for schedule, make in cases:
        ours = [learning_rate(schedule, 0.1, epoch, 10, Plateau(0.1)) for epoch in range(10)]
        assert ours == pytest.approx(torch_rates(make, 10)), schedule.name
    warm = ScheduleConfig(warmup_epochs=3)
    assert [learning_rate(warm, 0.1, e, 10, Plateau(0.1)) for e in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    plateau, config = Plateau(0.1), ScheduleConfig(name="plateau", patience=2, factor=0.5)
    for loss in (1.0, 0.9, 0.95, 0.93, 0.92, 0.91):
        after_epoch(config, plateau, loss)
    assert plateau.lr == pytest.approx(0.025)  # halved after 2 bad epochs, twice
    assert math.isclose(plateau.best, 0.9)


def test_api_build_returns_the_framework_model() -> None:
    model = cnnspec.build("resnet18", backend="torch", device="cpu")
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert tuple(model.get_submodule("layer2.0.downsample.0").weight.shape) == (128, 64, 1, 1)  # torchvision's names


@pytest.mark.parametrize("backend", ["numpy", "torch", "tensorflow"])
def test_each_backend_normalises_raw_pixels_as_the_harness_would(backend: str) -> None:
    """Batches cross to the backend as raw pixels (uint8 from image files: a quarter of the
    bytes) and are normalised there, on the device for torch, with exactly the float32
    operations of ``Normalization.apply``."""
    from cnnspec.backends import load_backend
    from cnnspec.data.normalization import Normalization

    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    graph = cnnspec.parse_spec("name: n\ninput: {shape: [3, 4, 5]}\nlayers:\n  - flatten: {}\n  - dense: {units: 2}\n", "n.yaml")
    session = load_backend(backend).open_session(graph, TrainConfig(), device="cpu")
    norm = Normalization(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 256, (6, 3, 4, 5)).astype(np.uint8), rng.random((6, 3, 4, 5)).astype(np.float32)):
        before = x.copy()
        got = session.inputs(x, norm.scale, norm.mean, norm.std)
        host = got.cpu().numpy() if hasattr(got, "cpu") else np.asarray(got)
        np.testing.assert_array_equal(host, norm.apply(x))
        np.testing.assert_array_equal(x, before)  # the caller's batch is left alone
        loss, correct = session.train_step(got, np.arange(6) % 2)
        assert math.isfinite(loss) and 0 <= correct <= 6
