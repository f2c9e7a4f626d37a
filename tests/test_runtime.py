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
from cnnspec.agreement import TOLERANCE, assert_agrees
from cnnspec.cli.app import app

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
    assert_agrees(theirs, ours)
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
    assert_agrees(theirs, ours)


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
    from cnnspec.inference.prediction import STREAM_FILES
    from cnnspec.inference.scorer import Scorer

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


@pytest.fixture(scope="module")
def photos(run: Path) -> Path:
    """70 grey PNG files in two class folders: enough for `auto` to build the engine."""
    from PIL import Image

    rng = np.random.default_rng(5)
    root = run.parent / "photos"
    for i in range(70):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


def test_embed_and_features_run_on_onnxruntime_with_the_backends_numbers(run: Path, photos: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(run / ".runtime", ignore_errors=True)
    said: dict[str, list[str]] = {"backend": [], "onnxruntime": [], "auto": []}
    embedded = {runtime: cnnspec.embed(run, str(photos), layer="f6", runtime=runtime, said=said[runtime].append).index.embeddings
                for runtime in ("backend", "onnxruntime")}
    assert_agrees(embedded["onnxruntime"], embedded["backend"])
    assert said["backend"] == ["runtime: numpy backend (cpu), the reference"]
    engine = run / ".runtime" / "epoch-0001+f6.onnx"  # the network's output and f6's, from one file
    assert engine.is_file() and "built and verified against numpy" in said["onnxruntime"][0]
    from cnnspec.porting.exporting import read_metadata

    assert read_metadata(engine)["cnnspec.max_rel_error"]
    cnnspec.embed(run, str(photos), layer="f6", runtime="auto", said=said["auto"].append)
    assert said["auto"] == [f"runtime: onnxruntime, {engine} reused"]
    # features at another layer: auto builds that layer's engine (70 images pay for it)
    lines: list[str] = []
    ours = cnnspec.features(run, str(photos), "c3", runtime="backend")
    theirs = cnnspec.features(run, str(photos), "c3", runtime="auto", said=lines.append)
    assert "onnxruntime" in lines[0] and (run / ".runtime" / "epoch-0001+c3.onnx").is_file()
    assert theirs.values.shape == ours.values.shape == (70, 16, 10, 10)
    assert_agrees(theirs.values, ours.values)


def test_an_engine_with_layer_outputs_is_verified_output_by_output(run: Path, tmp_path: Path) -> None:
    from cnnspec.backends import numpy_backend, onnx_backend
    from cnnspec.porting.exporting import export
    from cnnspec.runs.files import load_arrays
    from cnnspec.runs.loading import load_run
    from cnnspec.spec.training import TrainConfig

    loaded = load_run(run)
    weights = load_arrays(loaded.checkpoint / "weights.safetensors")
    report = export(loaded.graph, weights, "onnx", tmp_path / "two.onnx", weights_from="test", outputs=("s2", "f5"))
    assert report.max_rel_error <= TOLERANCE
    engine = onnx_backend.RuntimeSession(str(tmp_path / "two.onnx"))
    assert engine.outputs == [loaded.graph.output, "s2", "f5"]
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    reference = numpy_backend.open_session(loaded.graph, TrainConfig(), device="cpu")
    reference.set_weights(weights)
    want = reference.activations(x, ["s2", "f5"])
    got = engine.activations(x, ["f5", "s2"])
    for name in ("s2", "f5"):
        assert_agrees(got[name], want[name], what=name)
    assert_agrees(engine.predict(x), reference.predict(x))
    with pytest.raises(KeyError, match="not built to output layer 'c1'"):
        engine.activations(x, ["c1"])
    from cnnspec.backends.onnx_backend import ExportRefused

    with pytest.raises(ExportRefused, match="has no layer 'nope'"):
        export(loaded.graph, weights, "onnx", tmp_path / "bad.onnx", weights_from="test", outputs=("nope",))
    assert not (tmp_path / "bad.onnx").exists()


def test_a_backend_engine_is_checked_against_numpy_once_and_a_wrong_one_refused(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from cnnspec.errors import TrainingError
    from cnnspec.inference.engines import _verified
    from cnnspec.runs.loading import load_run

    record = run / ".runtime" / "verified.json"
    record.unlink(missing_ok=True)
    _, said = scores(run, "few.npy", "backend", tmp_path)
    assert "runtime: numpy backend (cpu), the reference" in said and not record.exists()  # numpy is the reference itself
    result = runner.invoke(app, ["predict", str(run), str(run.parent / "few.npy"), "--backend", "torch", "--runtime", "backend"])
    assert result.exit_code == 0, result.output
    assert "runtime: torch backend (cpu), verified against numpy (" in result.output
    known = json.loads(record.read_text())
    (key, entry), = known.items()
    assert key == "epoch-0001|torch|cpu|fp32" and entry["max_rel_error"] <= TOLERANCE
    record.write_text(json.dumps({key: entry | {"max_rel_error": 0.000123}}))  # what it says next comes from the record
    result = runner.invoke(app, ["predict", str(run), str(run.parent / "few.npy"), "--backend", "torch", "--runtime", "backend"])
    assert "verified against numpy (1.2e-04 relative)" in result.output

    class Wrong:  # a backend whose outputs are off by 1%
        __module__ = "cnnspec.backends.broken_backend"
        device, precision = "cpu", "fp32"

        def __init__(self, right: object) -> None:
            self.right = right

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(self.right.predict(x)) * 1.01  # type: ignore[attr-defined]

    from cnnspec.backends import load_backend
    from cnnspec.inference.engines import open_run_session

    loaded = load_run(run)
    with pytest.raises(TrainingError, match=r"the broken backend \(cpu, fp32\) computes epoch-0001's outputs 1.0e-02 relative away"):
        _verified(loaded, Wrong(open_run_session(loaded, load_backend("numpy").open_session, "cpu")))  # type: ignore[arg-type]


def test_a_run_that_cannot_hold_its_engine_caches_it_elsewhere(run: Path, tmp_path: Path) -> None:
    import shutil

    from cnnspec.inference.engines import _cache_folders
    from cnnspec.runs.loading import load_run

    shutil.rmtree(run / ".runtime", ignore_errors=True)
    (run / ".runtime").write_text("a file where the cache folder would go")  # as a read-only run: no folder can be made
    _, fallback = _cache_folders(load_run(run))
    shutil.rmtree(fallback, ignore_errors=True)
    try:
        theirs, said = scores(run, "many.npy", "auto", tmp_path)
        assert f"runtime: onnxruntime, {fallback / 'epoch-0001.onnx'} built" in said.replace("\n", "")
        _, said = scores(run, "few.npy", "auto", tmp_path)
        assert "reused" in said  # found there again
        ours, _ = scores(run, "many.npy", "backend", tmp_path)
        assert_agrees(theirs, ours)
    finally:
        (run / ".runtime").unlink()
        shutil.rmtree(fallback, ignore_errors=True)


def test_batch_size_changes_how_many_go_through_at_once_not_the_scores(run: Path, tmp_path: Path) -> None:
    from cnnspec.inference.scorer import Scorer

    calls: list[int] = []
    scorer = Scorer(run, lambda *a, **k: None, "cpu", batch_size=7)  # type: ignore[arg-type, return-value]
    scorer.use_runtime("onnxruntime", 80)
    real = scorer.engine.predict
    scorer._engine.predict = lambda x: (calls.append(len(x)), real(x))[1]
    x = np.load(run.parent / "many.npy") * 255
    by_seven = scorer.outputs(x)
    assert calls == [7] * 11 + [3]
    ours, _ = scores(run, "many.npy", "onnxruntime", tmp_path)
    assert_agrees(by_seven, ours)  # float32 sums grouped by batch
    result = runner.invoke(app, ["predict", str(run), str(run.parent / "few.npy"), "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output
