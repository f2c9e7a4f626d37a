"""``cnnspec inspect``: the page holds every layer with its figures, its pictures decode,
its statistics are the ones the backends compute for the same input, its gradients agree
across backends, and bad input is refused in one line."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browser import chromium
from PIL import Image
from typer.testing import CliRunner

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.backends import installed_backends, load_backend
from cnnspec.cli.app import app
from cnnspec.data.dataset import load_dataset
from cnnspec.inference.scorer import Scorer
from cnnspec.runs.files import load_arrays
from cnnspec.runs.loading import load_run
from cnnspec.spec.training import TrainConfig
from cnnspec.views import inspect_page as inspection

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    cnnspec.train("lenet5", "numpy", out=root / "run", epochs=1, **{"data.limit": 256})  # type: ignore[arg-type]
    data = load_dataset(load_run(root / "run").config.data, (1, 32, 32), 10, 0)
    for i in range(2):
        Image.fromarray(data.x_val[i, 0]).save(root / f"digit-{i}.png")
    return root / "run"


def page_of(run: Path, *args: str) -> tuple[str, Path]:
    out = run.parent / f"page-{abs(hash(args))}.html"
    result = runner.invoke(app, ["inspect", str(run), *[str(run.parent / a) if a.endswith(".png") else a for a in args], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    return out.read_text(encoding="utf-8"), out


def test_the_page_holds_every_layer_with_its_figures_and_its_pictures_decode(run: Path) -> None:
    page, _ = page_of(run, "digit-0.png", "digit-1.png", "--backend", "numpy")
    figures = inspection.figures(page)
    graph = load_run(run).graph
    assert [image["input"].endswith(f"digit-{i}.png") for i, image in enumerate(figures["images"])] == [True, True]
    for image in figures["images"]:
        assert [layer["name"] for layer in image["layers"]] == [node.name for node in graph.nodes]
        assert [tuple(layer["shape"]) for layer in image["layers"]] == [node.output_shape for node in graph.nodes]
        by_name = {layer["name"]: layer for layer in image["layers"]}
        assert by_name["c1"]["parameters"] == "6x1x5x5 + 6 = 156"
        assert by_name["f5"]["parameters"] == "120x400 + 120 = 48,120"
        assert by_name["s2"]["parameters"] == "no parameters"
        assert by_name["c1"]["shown"] == "6 channels" and by_name["f5"]["shown"] == "120 values, 32 a row"
        for layer in image["layers"]:
            a, g = layer["activation"], layer["gradient"]
            assert a["min"] <= a["mean"] <= a["max"] and g["min"] <= g["mean"] <= g["max"]
            assert f"min {inspection._number(a['min'])}" in page
        assert image["grad_cam_layer"] == "s4"  # the last map larger than 1 x 1 (16 x 5 x 5)
        # the output's gradient with respect to the predicted score is one-hot
        output = by_name["output"]["gradient"]
        assert (output["min"], output["max"], output["mean"]) == (0.0, 1.0, 0.1)
    pictures = re.findall(r"alt='([^']*)' src='data:image/png;base64,([^']*)'", page)
    assert len(pictures) == 1 + 2 * (3 + len(graph.nodes))  # filters; per image: input, saliency, Grad-CAM, each layer
    for _, encoded in pictures:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
            picture.verify()
    assert "<script>" not in page and "http" not in page.split("<body>")[1]  # nothing to fetch, nothing to run


def test_the_top_classes_are_what_predict_says(run: Path) -> None:
    page, _ = page_of(run, "digit-1.png")
    predicted = runner.invoke(app, ["predict", str(run), str(run.parent / "digit-1.png"), "--format", "json"])
    assert predicted.exit_code == 0, predicted.output
    import json

    theirs = json.loads(predicted.output)[0]["top"]
    ours = inspection.figures(page)["images"][0]["top"]
    assert [t["class"] for t in ours] == [t["class"] for t in theirs]
    assert_agrees([t["probability"] for t in ours], [t["probability"] for t in theirs])


def test_the_statistics_are_the_activations_every_backend_computes(run: Path) -> None:
    """The page's numbers for an image are the per-layer outputs that verify compares, for
    the same prepared input, on each backend."""
    page, _ = page_of(run, "digit-0.png", "--backend", "numpy")
    layers = {layer["name"]: layer for layer in inspection.figures(page)["images"][0]["layers"]}
    loaded = load_run(run)
    scorer = Scorer(run, load_backend("numpy").open_session, "cpu")
    x = loaded.normalization.apply(scorer.prepare((run.parent / "digit-0.png").read_bytes())[None])
    weights = load_arrays(loaded.checkpoint / "weights.safetensors")
    backends = ["numpy"] + [name for name in ("torch", "tensorflow") if name in installed_backends()]
    for name in backends:
        session = load_backend(name).open_session(loaded.graph, TrainConfig(), device="cpu")
        session.set_weights(weights)
        for node, values in session.activations(x).items():
            stats = layers[node]["activation"]
            scale = max(abs(stats["min"]), abs(stats["max"]), 1e-6)
            for key, value in (("min", values.min()), ("max", values.max()), ("mean", values.mean(dtype=np.float64))):
                assert abs(stats[key] - float(value)) <= 1e-5 * scale, (name, node, key)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_gradients_agree_across_backends(run: Path, backend: str) -> None:
    if backend not in installed_backends():
        pytest.skip(f"{backend} is not installed")
    numpy_page, _ = page_of(run, "digit-0.png", "--backend", "numpy")
    other_page, _ = page_of(run, "digit-0.png", "--backend", backend)
    ours = inspection.figures(numpy_page)["images"][0]["layers"]
    theirs = inspection.figures(other_page)["images"][0]["layers"]
    for a, b in zip(ours, theirs, strict=True):
        scale = max(abs(a["gradient"]["min"]), abs(a["gradient"]["max"]), 1e-9)
        for key in ("min", "max", "mean"):
            assert abs(a["gradient"][key] - b["gradient"][key]) <= 1e-4 * scale, (a["name"], key)


def test_a_colour_image_is_fitted_to_a_grey_network_as_predict_fits_it(run: Path) -> None:
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[10:30, 5:25] = (200, 120, 40)
    Image.fromarray(rgb).save(run.parent / "colour.png")
    page, _ = page_of(run, "colour.png")
    image = inspection.figures(page)["images"][0]
    assert image["layers"][0]["shape"] == [6, 28, 28]


def test_bad_input_is_refused_in_one_line(run: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, ["inspect", str(run), str(tmp_path / "broken.png"), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 1 and "broken.png: cannot read image" in result.output and "Traceback" not in result.output
    empty = tmp_path / "empty-run"
    shutil.copytree(run, empty, ignore=shutil.ignore_patterns("checkpoints"))
    result = runner.invoke(app, ["inspect", str(empty), str(run.parent / "digit-0.png"), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 1 and "the run has no checkpoint yet" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path), str(run.parent / "digit-0.png"), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 1 and "not a cnnspec run directory" in result.output
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 32, 32), np.float32))
    result = runner.invoke(app, ["inspect", str(run), str(tmp_path / "wrong.npy"), "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 1 and "the network takes N x 1 x 32 x 32" in result.output
    assert not (tmp_path / "x.html").exists()


def test_the_page_renders_in_a_headless_browser(run: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium or Chrome on PATH to open the page with")
    _, path = page_of(run, "digit-0.png")
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "id=\"image-1-c1\"" in done.stdout or "id='image-1-c1'" in done.stdout
    assert "Uncaught" not in done.stderr and ":CONSOLE" not in done.stderr
