"""What predict does to an image file is a few lines of plain Pillow: the code cnnspec
writes for a run gives predict's pixels and probabilities, for every kind of file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnnspec
from cnnspec.cli.app import app
from cnnspec.data.recipe import preparation_code
from cnnspec.data.transforms import Transform

runner = CliRunner()


def _prepare(code: str) -> Any:
    space: dict[str, Any] = {}
    exec(compile(code, "prepare.py", "exec"), space)  # the code as a user would save and import it
    return space["prepare"]


def _files(root: Path) -> list[Path]:
    """JPEG (large, small, odd aspect), PNG, greyscale JPEG, RGBA and palette PNG."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    made = []
    for name, size, mode in (("big.jpg", (300, 200), "RGB"), ("small.jpg", (20, 25), "RGB"), ("tall.jpg", (45, 130), "RGB"), ("photo.png", (50, 40), "RGB"),
                             ("grey.jpg", (64, 48), "L"), ("alpha.png", (33, 70), "RGBA"), ("palette.png", (40, 40), "P"), ("exact.png", (32, 32), "RGB")):
        h, w = size
        smooth = np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 4)), np.ones((4, 4, 1)))[:h, :w].astype(np.uint8)  # photo-like blocks
        image = Image.fromarray(smooth, "RGBA")
        image = image.convert(mode) if mode != "P" else image.convert("RGB").quantize(64)
        image.save(root / name, quality=90) if name.endswith(".jpg") else image.save(root / name)
        made.append(root / name)
    return made


@pytest.mark.parametrize("fit", ["crop", "letterbox", "resize", "pad", "auto"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_code_gives_the_pixels_of_every_fit(fit: str, channels: int, tmp_path: Path) -> None:
    transform = Transform((channels, 32, 32), fit, 36 if fit == "crop" else None)
    prepare = _prepare(preparation_code(transform.fit, transform.shorter_side, transform.shape))
    for path in _files(tmp_path):
        try:
            ours = transform.from_file(path.read_bytes())
        except Exception as exc:  # pad refuses an image larger than the input; so must the code
            with pytest.raises(ValueError, match="larger than the 32x32 input"):
                prepare(path)
            assert "cannot be padded" in str(exc)
            continue
        theirs = prepare(path)
        assert theirs.shape == (1, channels, 32, 32) and theirs.dtype == np.float32
        np.testing.assert_array_equal(np.rint(theirs[0] * 255).astype(np.uint8), ours)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = root / "photos" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 40, 3)).astype(np.uint8)).save(folder / f"{i}.jpg")
    cnnspec.train("lenet5", "numpy", out=root / "run", epochs=1, classes="auto", channels=3, data=root / "photos", workers=0)
    return root / "run"


def test_a_folder_of_mixed_sizes_is_cropped_one_way_and_recorded(run: Path) -> None:
    recorded = json.loads((run / "run.json").read_text())["train"]["data"]
    assert recorded["fit"] == "crop" and recorded["resize"] == 32  # the shorter side to the input's: nothing stretched, nothing framed


def test_predict_equals_the_plain_pillow_code_of_its_run(run: Path, tmp_path: Path) -> None:
    from cnnspec.data.recipe import run_preparation_code
    from cnnspec.runs.loading import load_run

    loaded = load_run(run)
    prepare = _prepare(run_preparation_code(loaded.config, loaded.graph.input_shape))
    files = _files(tmp_path / "files")
    results, _ = cnnspec.predict(run, files, top=2)
    for path, result in zip(files, results, strict=True):
        np.save(tmp_path / "x.npy", prepare(path))
        (theirs,), _ = cnnspec.predict(run, [tmp_path / "x.npy"], top=2)
        assert [e["class"] for e in theirs["top"]] == [e["class"] for e in result["top"]], path.name
        for ours, other in zip(result["top"], theirs["top"], strict=True):
            assert abs(ours["probability"] - other["probability"]) <= 1e-4, path.name


def test_export_writes_the_code_beside_the_model(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(run), "--to", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    code = tmp_path / "model_prepare.py"
    assert code.exists() and str(code) in result.output
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = _files(tmp_path / "files")[0]
    logits = session.run(None, {session.get_inputs()[0].name: _prepare(code.read_text())(image)})[0]
    (predicted,), _ = cnnspec.predict(run, [image], top=1)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert abs(float(probabilities.max()) - predicted["top"][0]["probability"]) <= 1e-4
