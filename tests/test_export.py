"""`cnnspec export`, `draw` and `import`: every zoo spec to ONNX and back, the other
formats verified on reload, refusals that write nothing, and weights from PyTorch and
Keras files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from layer_cases import KINDS, kind_graph
from typer.testing import CliRunner
from zoo_cases import SIZES, spec_target, spec_text

import cnnspec
from cnnspec import Graph
from cnnspec.cli.app import app
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.layers.conv import Conv2d
from cnnspec.layers.pool import Pool2d
from cnnspec.runs.files import load_arrays, save_arrays
from cnnspec.spec.training import TrainConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from cnnspec.backends import numpy_backend, onnx_backend, onnx_import  # noqa: E402

runner = CliRunner()



def reference(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(weights)
    return session.predict(x)


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max()) / float(np.abs(expected).max())


def resolved(graph: Graph) -> list[tuple[object, ...]]:
    """What a spec means, independent of how it is written: per layer its name, kind,
    inputs, output shape, parameter count, and arguments with padding made explicit
    (import writes numbers where the spec may have said 'same')."""
    rows = []
    for node in graph.nodes:
        args = node.layer.model_dump(exclude={"init", "rounding", "padding"})
        if args.get("stride", 0) is None:  # a pool's stride defaults to its kernel
            args["stride"] = args["kernel"]
        if isinstance(node.layer, (Conv2d, Pool2d)):
            window = node.layer.geometry(graph.input_shapes(node)[0], node.output_shape)
            # ONNX rounds convolutions down: ceil's overhang comes back as zero padding
            args["padding"] = window.covering if node.kind == "conv2d" else window.given
        rows.append((node.name, node.kind, node.inputs, node.output_shape, node.params, node.non_trainable, args))
    return rows


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_zoo_spec_exports_to_onnx_and_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.onnx"
    target = spec_target(name, tmp_path)
    result = runner.invoke(app, ["export", target, "--to", "onnx", "-o", str(out)] + (["--input-size", SIZES[name]] if SIZES[name] else []))
    assert result.exit_code == 0, result.output
    assert "freshly initialised weights" in result.output and "verified against the numpy backend" in result.output
    model = onnx.load(str(out))
    onnx_backend.check(model)  # checker with full shape inference, strict
    metadata = {p.key: p.value for p in model.metadata_props}
    assert float(metadata["cnnspec.max_rel_error"]) < 1e-4
    graph = cnnspec.parse_spec(metadata["cnnspec.spec"], "stored.yaml")  # the spec travels with the model
    assert graph.name == name
    # The batch axis is dynamic: a batch of 3 (the export was checked with 2).
    x = np.random.default_rng(7).standard_normal((3, *graph.input_shape)).astype(np.float32)
    got = next(iter(onnx_backend.run(model, x).values()))
    assert got.shape == (3, *graph.output_shape)
    assert relative_error(got, reference(graph, initial_weights(graph, 0), x)) < 1e-4


@pytest.mark.parametrize("name", sorted(SIZES))
def test_onnx_round_trip_gives_an_equal_spec_and_equal_outputs(name: str, tmp_path: Path) -> None:
    graph = cnnspec.parse_spec(spec_text(name), f"{name}.yaml")
    if SIZES[name]:
        graph = with_input_size(graph, tuple(int(v) for v in SIZES[name].split(",")))  # type: ignore[arg-type]
    weights = initial_weights(graph, 3)
    onnx.save(onnx_backend.to_onnx(graph, weights), str(tmp_path / "model.onnx"))
    result = runner.invoke(app, ["import", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "back.yaml")])
    assert result.exit_code == 0, result.output
    back = cnnspec.load_spec(tmp_path / "back.yaml")
    assert back.name == graph.name
    assert resolved(back) == resolved(graph)
    imported = load_arrays(tmp_path / "back.safetensors")
    assert set(imported) == set(weights) and all(np.array_equal(imported[k], weights[k]) for k in weights)
    x = np.random.default_rng(1).standard_normal((2, *graph.input_shape)).astype(np.float32)
    assert np.array_equal(reference(back, imported, x), reference(graph, weights, x))


ONNX_KINDS = sorted(name for name in KINDS if name != "lrn-even")


@pytest.mark.parametrize("name", ONNX_KINDS)
def test_every_layer_kind_in_onnx_matches_numpy_and_round_trips(name: str) -> None:
    graph = kind_graph(name)
    rng = np.random.default_rng(0)
    weights = initial_weights(graph, 0)
    for key, spec in graph.weights().items():
        if spec.init in ("zeros", "constant"):
            weights[key] = (weights[key] + rng.uniform(0.1, 0.5, spec.shape)).astype(np.float32)
    model = onnx_backend.to_onnx(graph, weights, every_layer=True)
    onnx_backend.check(model)
    x = rng.standard_normal((3, *graph.input_shape)).astype(np.float32)
    outputs = onnx_backend.run(model, x)
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(weights)
    for layer, expected in session.activations(x).items():  # every layer, not just the output
        assert relative_error(outputs[layer], expected) < 1e-5 if np.abs(expected).max() else True, layer
    imported = onnx_import.import_onnx(onnx_backend.to_onnx(graph, weights))
    text, back = imported.text, imported.weights
    assert resolved(cnnspec.parse_spec(text, "back.yaml")) == resolved(graph)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


def test_import_an_onnx_file_pytorch_exported(tmp_path: Path) -> None:
    """Not only cnnspec's own files: torch.onnx's export of LeNet-5 imports to a spec with
    the same parameter count and the same outputs (import itself checks the outputs)."""
    import warnings

    torch = pytest.importorskip("torch")
    from cnnspec.backends import torch_backend

    graph = cnnspec.load_spec("lenet5")
    module = torch_backend.build(graph).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(2, 1, 32, 32),), str(tmp_path / "lenet.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    result = runner.invoke(app, ["import", str(tmp_path / "lenet.onnx"), "-o", str(tmp_path / "lenet.yaml")])
    assert result.exit_code == 0, result.output
    back = cnnspec.load_spec(tmp_path / "lenet.yaml")
    assert back.name == "lenet" and back.params == graph.params and back.macs == graph.macs
    assert [n.kind for n in back.nodes if n.kind in ("conv2d", "dense", "maxpool2d")] == \
        [n.kind for n in graph.nodes if n.kind in ("conv2d", "dense", "maxpool2d")]


def test_a_layer_onnx_cannot_express_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text("name: net\ninput: {shape: [6, 4, 4]}\nlayers:\n  - lrn: {size: 4}\n  - flatten: {}\n")
    result = runner.invoke(app, ["export", str(spec), "--to", "onnx", "-o", str(tmp_path / "net.onnx")])
    assert result.exit_code == 1
    assert "lrn 'lrn_1': ONNX's LRN centres an even window of 4 channels differently" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.yaml"]


def test_an_export_that_disagrees_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx_backend.OnnxArtifact.run
    monkeypatch.setattr(onnx_backend.OnnxArtifact, "run", lambda self, x: real(self, x) * 1.001)
    result = runner.invoke(app, ["export", "lenet5", "--to", "onnx", "-o", str(tmp_path / "l.onnx")])
    assert result.exit_code == 1
    assert "differs from numpy by 1.00e-03 relative" in result.output and "nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_usage_errors(tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["export", "lenet5", "--to", "onxx"])
    assert unknown.exit_code == 2 and "did you mean 'onnx'" in unknown.output
    old = runner.invoke(app, ["export", "lenet5", "--to", "onnx", "--opset", "9", "-o", str(tmp_path / "l.onnx")])
    assert old.exit_code == 1 and "opset 9 is not supported: use 13 to" in old.output
    assert list(tmp_path.iterdir()) == []


def test_a_trained_run_exports_its_weights(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cnnspec.train("lenet5", out=tmp_path / "run", epochs=1, **{"data.limit": 128})  # type: ignore[arg-type]
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--to", "onnx"])
    assert result.exit_code == 0, result.output
    assert "freshly initialised" not in result.output
    out = tmp_path / "run" / "exports" / "lenet5.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["cnnspec.weights"].endswith("epoch-0001")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert json.loads(metadata["cnnspec.preprocessing"])["mean"] == run["normalization"]["mean"]
    assert json.loads(metadata["cnnspec.classes"]) == run["classes"]
    assert "raw pixels in [0, 1]" in result.output and metadata["cnnspec.input_prepared"].startswith("by the model")
    assert metadata["cnnspec.image_preparation"] == "1 channel(s); fit auto to 32x32 (pad when at most 25% smaller, else resize)"  # the size fitting predict does
    assert metadata["cnnspec.outputs"].startswith("logits") and "outputs are logits" in result.output
    assert "preprocess.weight" in {i.name for i in onnx.load(str(out)).graph.initializer}
    trained = load_arrays(tmp_path / "run" / "checkpoints" / "epoch-0001" / "weights.safetensors")
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    assert np.array_equal(stored["output.weight"], trained["output.weight"])


# A spec that needs cnnspec's own Keras layers and torch's explicit padding.
CUSTOM = """name: custom
input: {shape: [4, 9, 9]}
layers:
  - conv2d: {filters: 6, kernel: 3, groups: 2, padding: [[1, 0], [0, 1]], activation: relu6}
  - maxpool2d: {kernel: 3, stride: 2, padding: 1, rounding: ceil}
  - avgpool2d: {kernel: 2, stride: 1, padding: 1, count_include_pad: false}
  - batchnorm: {}
  - lrn: {size: 3}
  - flatten: {}
  - dense: {units: 3}
"""


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export", "savedmodel", "keras", "tflite"])
def test_framework_formats_are_verified_on_reload(fmt: str, tmp_path: Path) -> None:
    from cnnspec.porting.exporting import FORMATS, export, read_metadata

    pytest.importorskip("torch" if FORMATS[fmt].extra == "torch" else "tensorflow")
    graph = cnnspec.parse_spec(CUSTOM, "custom.yaml")
    weights = initial_weights(graph, 0)
    out = tmp_path / f"custom{FORMATS[fmt].suffix or '-saved'}"
    report = export(graph, weights, fmt, out, weights_from="seed 0")
    assert report.max_rel_error < 1e-4 and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".sha256"])  # no temporary left
    from cnnspec.porting.exporting import check_export

    check_export(out)  # every file as written
    listed = (tmp_path / (out.name + ".sha256")).read_text().splitlines()
    assert listed and all(line.split("  ")[1].startswith(out.name) for line in listed)
    if FORMATS[fmt].metadata.startswith("metadata in"):
        stored = read_metadata(out)
        assert stored["cnnspec.spec"] == CUSTOM and float(stored["cnnspec.max_rel_error"]) == pytest.approx(report.max_rel_error, rel=0.01)
    from cnnspec.backends import import_module

    module = import_module(FORMATS[fmt].module, FORMATS[fmt].extra, fmt)
    x = np.random.default_rng(5).standard_normal((3, *graph.input_shape)).astype(np.float32)
    assert relative_error(module.LOADERS[fmt](out)(x), reference(graph, weights, x)) < 1e-4  # another batch size


def test_draw_writes_dot_svg_and_png(tmp_path: Path) -> None:
    for suffix in ("dot", "svg", "png"):
        result = runner.invoke(app, ["draw", "googlenet", "-o", str(tmp_path / f"g.{suffix}")])
        assert result.exit_code == 0, result.output
    dot = (tmp_path / "g.dot").read_text()
    assert '"inception3a.branch1.conv" [label=' in dot and '"inception3a.branch1.conv" -> ' in dot
    assert dot.count(" -> ") == sum(len(node.inputs) for node in cnnspec.load_spec("googlenet").nodes)
    assert "inception5b.concat" in (tmp_path / "g.svg").read_text()
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runner.invoke(app, ["export", "lenet5", "--to", "svg", "-o", str(tmp_path / "l.svg")]).exit_code == 0
    bad = runner.invoke(app, ["draw", "lenet5", "-o", str(tmp_path / "l.gif")])
    assert bad.exit_code == 1 and "draw writes .dot, .svg or .png" in bad.output


def test_import_a_torchvision_style_state_dict(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from cnnspec.backends import torch_backend

    graph = cnnspec.load_spec("resnet18")
    state = torch_backend.build(graph).state_dict()  # torchvision's names: the zoo uses them
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer4.1.bn2.bias", "fc.weight"} <= set(state)
    state["extra.head"] = torch.zeros(3)
    torch.save(state, tmp_path / "resnet18.pth")
    result = runner.invoke(app, ["import", str(tmp_path / "resnet18.pth"), "--spec", "resnet18", "-o", str(tmp_path / "r.safetensors")])
    assert result.exit_code == 0, result.output
    assert "ignored 1 array(s) the spec has no place for: extra.head" in result.output
    imported = load_arrays(tmp_path / "r.safetensors")
    assert set(imported) == set(graph.weights())
    assert np.array_equal(imported["layer2.0.downsample.0.weight"], state["layer2.0.downsample.0.weight"].numpy())


def test_import_a_torchvision_convnext_state_dict_with_its_own_spellings(tmp_path: Path) -> None:
    """torchvision's ConvNeXt holds its Linear layers as O x I and its layer scale as a bare
    C x 1 x 1 parameter; the spec has 1x1 convolutions and affine weights of C."""
    torch = pytest.importorskip("torch")
    from cnnspec.backends import torch_backend

    graph = cnnspec.load_spec("convnext_tiny")
    state = {}
    for name, tensor in torch_backend.build(graph).state_dict().items():
        if name.endswith((".block.3.weight", ".block.5.weight")):
            state[name] = tensor[:, :, 0, 0].clone()
        elif name.endswith(".layer_scale.weight"):
            state[name.removesuffix(".weight")] = tensor.reshape(-1, 1, 1).clone()
        else:
            state[name] = tensor
    assert state["features.1.0.block.3.weight"].shape == (384, 96) and state["features.7.2.layer_scale"].shape == (768, 1, 1)
    torch.save(state, tmp_path / "convnext_tiny.pth")
    result = runner.invoke(app, ["import", str(tmp_path / "convnext_tiny.pth"), "--spec", "convnext_tiny", "-o", str(tmp_path / "c.safetensors")])
    assert result.exit_code == 0, result.output
    imported = load_arrays(tmp_path / "c.safetensors")
    assert set(imported) == set(graph.weights())
    assert np.array_equal(imported["features.5.3.block.5.weight"][:, :, 0, 0], state["features.5.3.block.5.weight"].numpy())
    assert np.array_equal(imported["features.7.2.layer_scale.weight"], state["features.7.2.layer_scale"].numpy().reshape(-1))


def test_import_refuses_pickled_code_and_wrong_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"conv": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "module.pt")  # a module: code, not weights
    result = runner.invoke(app, ["import", str(tmp_path / "module.pt"), "--spec", "lenet5"])
    assert result.exit_code == 1 and "loads safely (weights_only)" in result.output
    torch.save({"c1.weight": torch.zeros(6, 1, 3, 3)}, tmp_path / "small.pt")
    result = runner.invoke(app, ["import", str(tmp_path / "small.pt"), "--spec", "lenet5", "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "does not fit the spec 'lenet5': it lacks" in result.output
    assert not (tmp_path / "x.safetensors").exists()
    assert runner.invoke(app, ["import", str(tmp_path / "small.pt")]).exit_code == 1  # no --spec


def test_import_keras_weights(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from cnnspec.backends import tensorflow_backend

    graph = cnnspec.parse_spec(CUSTOM, "custom.yaml")
    network = tensorflow_backend.KerasNetwork(graph)
    weights = initial_weights(graph, 4)
    network.set_weights(weights)
    network.model.save_weights(str(tmp_path / "custom.weights.h5"))
    spec = tmp_path / "custom.yaml"
    spec.write_text(CUSTOM)
    result = runner.invoke(app, ["import", str(tmp_path / "custom.weights.h5"), "--spec", str(spec), "-o", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    imported = load_arrays(tmp_path / "w.safetensors")
    assert all(np.array_equal(imported[k], weights[k]) for k in weights)


def test_train_starts_from_imported_weights_where_they_fit(tmp_path: Path) -> None:
    """Transfer learning: every array but the new head comes from the checkpoint."""
    pytest.importorskip("torch")
    graph = cnnspec.load_spec("lenet5")
    source = initial_weights(graph, 9)
    save_arrays(tmp_path / "pretrained.safetensors", source)
    spec = tmp_path / "five.yaml"
    spec.write_text(graph.source.replace("dense: {units: 10}", "dense: {units: 5}")
                    .replace("expect: {output: [10], params: 61706}", "expect: {output: [5]}"))
    result = runner.invoke(app, ["train", str(spec), "--init", str(tmp_path / "pretrained.safetensors"), "--epochs", "1",
                                 "--lr", "1e-12", "--set", "data.source=synthetic", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "initialised 8 of 10 arrays from" in result.output and "new, freshly initialised: output.weight (checkpoint 10x84, network 5x84), output.bias (checkpoint 10, network 5)" in result.output
    trained = load_arrays(tmp_path / "run" / "checkpoints" / "epoch-0001" / "weights.safetensors")
    assert np.allclose(trained["c1.weight"], source["c1.weight"], atol=1e-6)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["init"].endswith("pretrained.safetensors")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("exported")
    cnnspec.train("lenet5", out=root / "run", epochs=1, **{"data.limit": 128})  # type: ignore[arg-type]
    return root / "run"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch-export", "savedmodel", "keras", "tflite"])
def test_an_exported_run_takes_what_predict_takes(fmt: str, trained_run: Path, tmp_path: Path) -> None:
    """The same raw pixels (a .npy batch in [0, 1]) through `cnnspec predict` and through
    the export, loaded by its own framework, give the same outputs."""
    from cnnspec.backends import import_module
    from cnnspec.porting.exporting import FORMATS

    pytest.importorskip("torch" if FORMATS[fmt].extra == "torch" else "tensorflow" if FORMATS[fmt].extra == "tensorflow" else "onnxruntime")
    out = tmp_path / f"model{FORMATS[fmt].suffix or '-saved'}"
    result = runner.invoke(app, ["export", str(trained_run), "--to", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(9).random((4, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _, expected = cnnspec.predict(trained_run, [tmp_path / "x.npy"])
    module = import_module(FORMATS[fmt].module, FORMATS[fmt].extra, fmt)
    assert relative_error(np.asarray(module.LOADERS[fmt](out)(x)), expected) < 1e-4


def test_no_preprocessing_keeps_inputs_the_callers_job(trained_run: Path, tmp_path: Path) -> None:
    from cnnspec.runs.loading import load_run

    out = tmp_path / "plain.onnx"
    result = runner.invoke(app, ["export", str(trained_run), "--to", "onnx", "-o", str(out), "--no-preprocessing"])
    assert result.exit_code == 0, result.output
    assert "prepared as in training" in result.output
    x = np.random.default_rng(9).random((2, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _, expected = cnnspec.predict(trained_run, [tmp_path / "x.npy"])
    prepared = load_run(trained_run).normalization.apply(x / np.float32(1 / 255))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out))
    assert relative_error(session.run(None, {session.get_inputs()[0].name: prepared})[0], expected) < 1e-4
    raw = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert relative_error(raw, expected) > 1e-2  # unprepared pixels: other numbers, as documented


def test_a_damaged_export_is_refused_by_name(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", str(trained_run), "--to", "onnx", "-o", str(out)]).exit_code == 0
    data = bytearray(out.read_bytes())
    data[-50] ^= 0x10
    out.write_bytes(bytes(data))
    result = runner.invoke(app, ["import", str(out), "-o", str(tmp_path / "back.yaml")])
    assert result.exit_code == 1
    assert "m.onnx: damaged (its SHA-256 differs from the one in" in result.output


def test_an_archive_carries_its_own_name_not_a_temporary_one(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import zipfile

    out = tmp_path / "digits.pt"
    result = runner.invoke(app, ["export", "lenet5", "--to", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert {name.split("/")[0] for name in zipfile.ZipFile(out).namelist()} == {"digits"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.pt", "digits.pt.sha256"]
