"""`predict --runtime`: the onnxruntime engine computes what the backend computes, is built
once per checkpoint and verified, is rebuilt when its cache is damaged, and `auto` weighs
building it against the images to score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli import app

pytest.importorskip("onnxruntime")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runtime")
    cnnspec.train("lenet5", "numpy", out=root / "run", epochs=1, **{"data.limit": 128})  # type: ignore[arg-type]
    np.save(root / "few.npy", np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32))
    np.save(root / "many.npy", np.random.default_rng(1).random((80, 1, 32, 32)).astype(np.float32))
    return root / "run"


def scores(run: Path, batch: str, runtime: str, tmp_path: Path) -> tuple[np.ndarray, str]:
    out = tmp_path / f"{runtime}-{batch}.npy"
    result = runner.invoke(app, ["predict", str(run), str(run.parent / batch), "--runtime", runtime, "--output", str(out)])
    assert result.exit_code == 0, result.output
    return np.load(out), result.output


def test_onnxruntime_computes_what_the_backend_computes_and_is_built_once(run: Path, tmp_path: Path) -> None:
    ours, said = scores(run, "many.npy", "backend", tmp_path)
    assert "runtime: numpy backend" in said
    theirs, said = scores(run, "many.npy", "onnxruntime", tmp_path)
    assert "built and verified against numpy" in said
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    cache = run / ".runtime" / "epoch-0001.onnx"
    assert cache.is_file() and (run / ".runtime" / "epoch-0001.onnx.sha256").is_file()
    _, said = scores(run, "few.npy", "onnxruntime", tmp_path)
    assert f"{cache} reused" in said


def test_a_damaged_engine_is_rebuilt_not_used(run: Path, tmp_path: Path) -> None:
    scores(run, "few.npy", "onnxruntime", tmp_path)
    cache = run / ".runtime" / "epoch-0001.onnx"
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.write_bytes(bytes(data))
    theirs, said = scores(run, "few.npy", "onnxruntime", tmp_path)
    assert "built and verified" in said
    ours, _ = scores(run, "few.npy", "backend", tmp_path)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


def test_auto_builds_the_engine_only_when_the_images_pay_for_it(run: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(run / ".runtime", ignore_errors=True)
    _, said = scores(run, "few.npy", "auto", tmp_path)
    assert "runtime: numpy backend" in said and not (run / ".runtime").exists()
    _, said = scores(run, "many.npy", "auto", tmp_path)
    assert "runtime: onnxruntime" in said and "built" in said
    _, said = scores(run, "few.npy", "auto", tmp_path)
    assert "reused" in said  # once built, even a few images use it
    result = runner.invoke(app, ["predict", str(run), str(run.parent / "few.npy"), "--runtime", "tensorrt"])
    assert result.exit_code == 1 and "--runtime 'tensorrt': use auto, backend, onnxruntime" in result.output
    result = runner.invoke(app, ["predict", str(run), str(run.parent / "few.npy"), "--format", "json"])
    assert "runtime:" not in result.output and json.loads(result.output)  # JSON stays JSON


def test_eval_on_onnxruntime_equals_eval_on_the_backend(run: Path) -> None:
    said = {runtime: runner.invoke(app, ["eval", str(run), "--runtime", runtime, "--format", "json"]) for runtime in ("backend", "onnxruntime")}
    for result in said.values():
        assert result.exit_code == 0, result.output
    ours, theirs = (json.loads(said[r].output) for r in ("backend", "onnxruntime"))
    assert theirs["confusion_matrix"] == ours["confusion_matrix"] and theirs["accuracy"] == ours["accuracy"]
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)


def test_many_image_files_are_streamed_to_the_same_scores(run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from cnnspec.backends import load_backend
    from cnnspec.harness.run import STREAM_FILES, Scorer

    rng = np.random.default_rng(3)
    files = []
    for i in range(STREAM_FILES + 5):
        files.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(files[-1])
    out = tmp_path / "scores.npy"
    result = runner.invoke(app, ["predict", str(run), *map(str, files), "--runtime", "backend", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(files)} files decoded by the streaming loader's workers" in result.output
    scorer = Scorer(run, load_backend("numpy").open_session, "cpu")
    arrays, _ = scorer.read_inputs(files)  # one by one, in this process
    np.testing.assert_array_equal(np.load(out), scorer.outputs(np.concatenate(arrays)))
    files[7].write_bytes(b"not an image")
    result = runner.invoke(app, ["predict", str(run), *map(str, files), "--runtime", "backend"])
    assert result.exit_code == 1 and "cannot read image" in result.output and files[7].name in result.output
