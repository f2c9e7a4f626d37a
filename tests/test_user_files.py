"""What a user's own files do to predict, embed and similar: one bad file costs only
itself, folders and globs are inputs, counts are true, and results name classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of small RGB pictures, told apart by colour, with nested folders."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    rng = np.random.default_rng(0)
    for i in range(24):
        name = "red" if i % 2 else "blue"
        folder = root / name / ("nested" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 80, (40 + i, 36, 3)).astype(np.uint8)
        pixels[..., 0 if name == "red" else 2] += 170
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    cnnspec.train("lenet5", "numpy", out=out, quiet=True, epochs=1, classes="auto", input_size=(32, 32), channels=3,
                  data=str(photos), workers=0)
    return out


def test_one_unreadable_file_costs_only_itself(run: Path, photos: Path, tmp_path: Path) -> None:
    good = sorted(photos.rglob("*.png"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    missing = tmp_path / "gone.png"
    result = runner.invoke(app, ["predict", str(run), str(good[0]), str(broken), str(missing), str(good[1])])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith(f"{good[0]}: ") and "red" in line for line in lines)
    assert any(line.startswith(f"{good[1]}: ") for line in lines)
    assert any(line.startswith(f"{broken}: cannot read image") for line in lines)
    assert any(line.startswith(f"{missing}: cannot read image (No such file") for line in lines)
    assert "2 of 4 inputs could not be read" in result.output
    result = runner.invoke(app, ["predict", str(run), str(good[0]), str(broken), "--format", "json"])
    assert result.exit_code == 1
    scored, failed = json.loads(result.stdout)
    assert scored["error"] is None and scored["top"] and scored["row"] == 0
    assert failed["input"] == str(broken) and failed["top"] == [] and failed["error"].startswith("cannot read image")


def test_folders_globs_and_npy_batches_are_inputs(run: Path, photos: Path, tmp_path: Path) -> None:
    every = sorted(photos.rglob("*.png"))
    np.save(tmp_path / "batch.npy", np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32))
    result = runner.invoke(app, ["predict", str(run), str(photos), str(photos / "red" / "*.png"), str(tmp_path / "batch.npy"),
                                 "--format", "json", "--output", str(tmp_path / "out.npy")])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    reds = sorted((photos / "red").glob("*.png"))  # the glob, not recursive: the top folder only
    names = [item["input"] for item in results]
    assert names == [*map(str, every), *map(str, reds), *(f"{tmp_path / 'batch.npy'}[{i}]" for i in range(3))]
    outputs = np.load(tmp_path / "out.npy")
    assert outputs.shape == (len(results), 2) and [item["row"] for item in results] == list(range(len(results)))
    _, alone = cnnspec.predict(run, [every[5]])
    assert_agrees(outputs[5], alone[0])
    for bad, said in (([str(tmp_path / "nothing-*.png")], "no files match this pattern"), ([str(tmp_path / "empty")], "a folder with no image files")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = runner.invoke(app, ["predict", str(run), *bad])
        assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output


def test_many_files_with_a_bad_one_streamed(run: Path, photos: Path, tmp_path: Path) -> None:
    from cnnspec.inference.prediction import STREAM_FILES

    source = sorted(photos.rglob("*.png"))[0].read_bytes()
    files = []
    for i in range(STREAM_FILES + 3):
        files.append(tmp_path / f"{i:03d}.png")
        files[-1].write_bytes(b"broken" if i == 40 else source)
    results, outputs = cnnspec.predict(run, files, top=1)
    assert [r["input"] for r in results] == list(map(str, files))
    assert results[40]["error"].startswith("cannot read image") and results[40]["row"] is None
    assert all(r["error"] is None for i, r in enumerate(results) if i != 40) and len(outputs) == len(files) - 1
    assert_agrees(outputs, np.repeat(outputs[:1], len(outputs), axis=0))  # the same picture everywhere


def test_update_counts_an_unreadable_file_as_skipped_not_added(run: Path, photos: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "red" / "broken.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["embed", str(run), "--data", str(folder), "--output", str(tmp_path / "x.index")])
    assert result.exit_code == 0, result.output
    assert "24 images" in result.output and "skipped 1 unreadable" in result.output
    for _ in range(2):
        result = runner.invoke(app, ["embed", str(run), "--data", str(folder), "--output", str(tmp_path / "x.index"), "--update"])
        assert result.exit_code == 0, result.output
        assert "0 added, 0 changed, 0 removed, 24 kept" in result.output and "skipped 1 unreadable" in result.output


def test_similar_names_classes_and_duplicates_are_listed_a_line_each(run: Path, photos: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    for copy in ("copy-a.png", "copy-b.png"):
        shutil.copy(folder / "red" / "01.png", folder / "red" / copy)
    assert runner.invoke(app, ["embed", str(run), "--data", str(folder), "--output", str(tmp_path / "x.index")]).exit_code == 0
    result = runner.invoke(app, ["similar", str(tmp_path / "x.index"), str(folder / "red" / "01.png"), "-k", "3", "--format", "json"])
    assert result.exit_code == 0, result.output
    neighbours = json.loads(result.stdout)[0]["neighbours"]
    assert [n["class"] for n in neighbours] == ["red"] * 3 and all(n["label"] == 1 for n in neighbours)
    result = runner.invoke(app, ["similar", str(tmp_path / "x.index"), "--duplicates", "--threshold", "0.9999"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("group 1 (3 images):")
    assert sorted(line.strip() for line in lines[start + 1 : start + 4]) == sorted(str(folder / "red" / n) for n in ("01.png", "copy-a.png", "copy-b.png"))


def test_contact_sheet_captions_keep_the_whole_file_name_or_both_its_ends() -> None:
    from PIL import ImageDraw

    from cnnspec.search.index import caption_lines

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    width = 128
    name = "golden_retriever/IMG_20240611_153012_portrait.jpg"
    lines = caption_lines(name, draw.textlength, width, 3)
    assert "".join(lines) == name and all(draw.textlength(line) <= width for line in lines)
    long = "a-very-long-folder-name-indeed/" + "x" * 200 + "_0042.jpeg"
    lines = caption_lines(long, draw.textlength, width, 3)
    joined = "".join(lines)
    assert len(lines) == 3 and "..." in joined and joined.startswith("a-very-long") and joined.endswith("_0042.jpeg")
    assert all(draw.textlength(line) <= width for line in lines)


def test_a_state_dict_with_other_names_says_what_it_holds(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Mine(nn.Module):  # LeNet-5's shapes under the user's own names
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5))

    torch.save(Mine().state_dict(), tmp_path / "mine.pt")
    result = runner.invoke(app, ["import", str(tmp_path / "mine.pt"), "--spec", "lenet5", "--out", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 1, result.output
    assert "features.0.weight (6, 1, 5, 5)" in result.output and "c1.weight" in result.output and "Traceback" not in result.output
    # DataParallel's "module." prefix is recognised
    from cnnspec.graph.weights import initial_weights

    weights = initial_weights(cnnspec.load_spec("lenet5"), 0)
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "wrapped.pt")
    result = runner.invoke(app, ["import", str(tmp_path / "wrapped.pt"), "--spec", "lenet5", "--out", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
