"""The blocks of networks after 2016 as torch's two exporters write them: activations
(SiLU, hard sigmoid, hard swish, GELU in both forms, also as element-wise chains other
tools write), squeeze-and-excitation, ConvNeXt's LayerNorm2d. Each imports to its cnnspec
kinds, with torch's outputs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
helper, numpy_helper = onnx.helper, onnx.numpy_helper
nn = torch.nn

import foreign_models as fm  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import cnnspec  # noqa: E402
from cnnspec.agreement import assert_agrees  # noqa: E402
from cnnspec.backends import numpy_backend, onnx_backend, onnx_import  # noqa: E402
from cnnspec.cli.app import app  # noqa: E402
from cnnspec.runs.files import load_arrays  # noqa: E402
from cnnspec.spec.training import TrainConfig  # noqa: E402

runner = CliRunner()


class Raw(nn.Module):
    """An activation written out in raw operations, as Keras 3 and hand-written code do."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "swish":
            return x * torch.sigmoid(x)
        if self.form == "hard_swish_keras":  # Keras 3: x * (relu6(x + 3) * (1/6))
            return x * (torch.nn.functional.relu6(x + 3.0) * (1.0 / 6.0))
        if self.form == "hard_sigmoid_keras":
            return torch.nn.functional.relu6(x + 3.0) / 6.0
        assert self.form == "gelu_by_hand"  # x * Phi(x), the multiplications in another order
        return x * (0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0)))))


# name -> (module, the kind and arguments the spec must say)
ACTIVATIONS = {
    "silu": (nn.SiLU, "silu"),
    "hardswish": (nn.Hardswish, "hard_swish"),
    "hardsigmoid": (nn.Hardsigmoid, "hard_sigmoid"),
    "gelu": (nn.GELU, "gelu"),
    "gelu-tanh": (lambda: nn.GELU(approximate="tanh"), "gelu: {approximate: tanh}"),
    "swish-raw": (lambda: Raw("swish"), "silu"),
    "hard_swish-keras": (lambda: Raw("hard_swish_keras"), "hard_swish"),
    "hard_sigmoid-keras": (lambda: Raw("hard_sigmoid_keras"), "hard_sigmoid"),
    "gelu-by-hand": (lambda: Raw("gelu_by_hand"), "gelu"),
}


def torch_export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """``model`` as torch.onnx.export writes it: with its defaults ("default", the dynamo
    exporter), or the TorchScript exporter at an opset ("torchscript-13")."""
    if exporter == "default":
        pytest.importorskip("onnxscript", reason="torch.onnx.export's default exporter needs onnxscript (the onnx extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if exporter == "default":
            torch.onnx.export(model, (example,), str(path))
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=int(exporter.rpartition("-")[2]))


def block(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), activation, nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(1.0, 3.0)  # values reach the kinks at -3 and 3
    return model.eval()


@pytest.mark.parametrize("exporter", ["default", "torchscript-13", "torchscript-17"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_torch_exports_of_modern_activations_import_as_one_kind(tmp_path: Path, name: str, exporter: str) -> None:
    build, said = ACTIVATIONS[name]
    model = block(build())
    path = tmp_path / "m.onnx"
    torch_export(model, torch.randn(2, 3, 8, 8), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "m.yaml").read_text()
    kind = said.partition(":")[0]
    assert f"- {said}" in text or f"- {kind}:" in text, text
    graph = cnnspec.load_spec(tmp_path / "m.yaml")
    kinds = [node.kind for node in graph.nodes]  # the exporters may fold the batch norm into the convolution
    assert kinds.count(kind) == 1 and set(kinds) <= {"conv2d", "batchnorm", kind}, kinds  # the chain is one layer
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "m.safetensors"))
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32) * 2
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


def _one_node(op: str, **attributes: float) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="act", **attributes)], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize(("op", "attributes", "expected"), [
    ("HardSigmoid", {}, {"hard_sigmoid": {"alpha": 0.2, "beta": 0.5}}),  # ONNX's defaults are not PyTorch's
    ("HardSigmoid", {"alpha": 1 / 6}, "hard_sigmoid"),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.25}, {"hard_sigmoid": {"alpha": 0.25, "beta": 0.25}}),
    ("Gelu", {}, "gelu"),
    ("HardSwish", {}, "hard_swish"),
])
def test_single_operators_read_their_attributes(op: str, attributes: dict[str, float], expected: object) -> None:
    model = _one_node(op, **attributes)
    imported = onnx_import.import_onnx(model, name="one")
    graph = cnnspec.parse_spec(imported.text, "one.yaml")
    (node,) = graph.nodes
    kind, args = (expected, {}) if isinstance(expected, str) else next(iter(expected.items()))  # type: ignore[union-attr]
    assert node.kind == kind
    assert {k: round(v, 6) for k, v in node.layer.model_dump(exclude={"kind"}).items() if k in args} == args
    x = np.random.default_rng(0).uniform(-6, 6, (1, 3, 4, 4)).astype(np.float32)
    session = numpy_backend.open_session(graph, TrainConfig())
    assert_agrees(session.predict(x), next(iter(onnx_backend.run(model, x).values())))


def test_a_chain_that_computes_no_known_activation_is_refused_by_name() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="gate"), helper.make_node("Pow", ["s", "three"], ["y"], name="cube")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[three]), opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(onnx_import.ImportRefused, match=r"node 'cube': ONNX Pow on 1x3x4x4 matches no pattern cnnspec reads; "
                                                         r"supported: Pow -> silu, hard_swish, hard_sigmoid or gelu"):
        onnx_import.import_onnx(model)


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation, with the gate activation each family uses."""

    def __init__(self, channels: int, squeeze: int, gate: nn.Module) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = nn.SiLU(), gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


@pytest.mark.parametrize("exporter", ["default", "torchscript-13"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_a_squeeze_and_excitation_block_imports_as_pool_convs_gate_and_multiply(tmp_path: Path, gate: str, exporter: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), SqueezeExcite(8, 4, nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid())).eval()
    path = tmp_path / "se.onnx"
    torch_export(model, torch.randn(1, 3, 9, 9), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "se.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "se.yaml")
    assert [node.kind for node in graph.nodes] == ["conv2d", "global_avgpool2d", "conv2d", "silu", "conv2d",
                                                   "sigmoid" if gate == "sigmoid" else "hard_sigmoid", "multiply"]
    assert graph.params == sum(p.numel() for p in model.parameters())
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "se.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: channels moved last, normalised, moved back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("exporter", ["default", "torchscript-13", "torchscript-17"])
def test_convnext_layer_norm_imports_as_layer_norm(tmp_path: Path, exporter: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 8, 7, padding=3, groups=8)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    path = tmp_path / "ln.onnx"
    torch_export(model, torch.randn(1, 3, 16, 16), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "ln.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "ln.yaml")
    assert [node.kind for node in graph.nodes] == ["conv2d", "layer_norm", "conv2d"]
    assert graph.nodes[1].layer.eps == pytest.approx(1e-6)
    assert graph.params == sum(p.numel() for p in model.parameters())
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "ln.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual at stride 1: half the channels pass, half
    go through the branch; joined, then shuffled in two groups."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch2 = nn.Sequential(nn.Conv2d(half, half, 1), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1, groups=half),
                                     nn.Conv2d(half, half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


@pytest.mark.parametrize("exporter", ["default", "torchscript-13"])
def test_a_shufflenet_v2_unit_imports_with_slices_concat_and_shuffle(tmp_path: Path, exporter: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), ShuffleUnit(8), nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path / "shuffle.onnx"
    torch_export(model, torch.randn(1, 3, 6, 6), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "s.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "s.yaml")
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("slice") == 2 and "concat" in kinds and "channel_shuffle" in kinds, kinds
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "s.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("exporter", ["default", "torchscript-13"])
@pytest.mark.parametrize(("mode", "align"), [("nearest", None), ("bilinear", False), ("bilinear", True)])
def test_torch_upsample_imports_as_upsample2d(tmp_path: Path, mode: str, align: bool | None, exporter: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2, mode=mode, align_corners=align),
                          nn.Conv2d(4, 2, 3, padding=1)).eval()
    path = tmp_path / "up.onnx"
    torch_export(model, torch.randn(1, 3, 5, 6), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "up.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "up.yaml")
    assert [node.kind for node in graph.nodes] == ["conv2d", "upsample2d", "conv2d"] and graph.output_shape == (2, 10, 12)
    assert graph.nodes[1].layer.mode == mode and graph.nodes[1].layer.align_corners == bool(align)
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "up.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 6)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("exporter", ["default", "torchscript-13"])
def test_a_segmentation_decoder_imports_with_transposed_convolutions(tmp_path: Path, exporter: str) -> None:
    """An FCN/U-Net style head: strided down, then ConvTranspose2d back up (one grouped,
    one with output padding); the output is a C x H x W map."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=2), nn.ReLU(),
                          nn.ConvTranspose2d(8, 5, 2, stride=1, bias=False)).eval()
    path = tmp_path / "seg.onnx"
    torch_export(model, torch.randn(1, 3, 10, 12), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "seg.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "seg.yaml")
    assert [node.kind for node in graph.nodes].count("conv_transpose2d") == 2 and graph.output_shape == (5, 11, 13)
    assert graph.params == sum(p.numel() for p in model.parameters())
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "seg.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, 10, 12)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())


def _import_and_compare(tmp_path: Path, model: nn.Module, shape: tuple[int, ...], exporter: str) -> cnnspec.Graph:
    path = tmp_path / "m.onnx"
    torch_export(model, torch.randn(1, *shape), path, exporter)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    graph = cnnspec.load_spec(tmp_path / "m.yaml")
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(load_arrays(tmp_path / "m.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        assert_agrees(session.predict(x), model(torch.from_numpy(x)).numpy())
    return graph


def _convnext(official: bool) -> nn.Module:
    torch.manual_seed(0)
    model = fm.ConvNeXt(official=official).eval()
    with torch.no_grad():  # scales far from their initial 1 and 1e-6, so that a misread one shows
        for name, parameter in model.named_parameters():
            if name.endswith("layer_scale") or parameter.ndim == 1:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("exporter", ["default", "torchscript-13", "torchscript-17"])
def test_a_torchvision_convnext_imports_its_channels_last_linear_layers_as_1x1_convolutions(tmp_path: Path, exporter: str) -> None:
    """Permute, LayerNorm, Linear, GELU, Linear, permute back: opset 13 decomposes the
    LayerNorm, 17 keeps it; the default exporter writes Gelu."""
    model = _convnext(official=False)
    graph = _import_and_compare(tmp_path, model, (3, 32, 32), exporter)
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("layer_norm") == 5 and kinds.count("gelu") == 2 and kinds.count("affine") == 2, kinds
    assert sum(1 for node in graph.nodes if node.kind == "conv2d" and node.layer.kernel == (1, 1)) == 4
    assert graph.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("exporter", ["default", "torchscript-13"])
def test_the_authors_channels_first_layer_norm_chain_imports_as_layer_norm(tmp_path: Path, exporter: str) -> None:
    model = _convnext(official=True)
    graph = _import_and_compare(tmp_path, model, (3, 32, 32), exporter)
    assert [node.kind for node in graph.nodes].count("layer_norm") == 5
    assert graph.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("tail", "said"), [
    ([fm.Permute([0, 2, 3, 1])], "the model's output is a map with its channels moved last"),
    ([fm.Permute([0, 2, 3, 1]), nn.Softmax(-1), nn.Linear(4, 4), fm.Permute([0, 3, 1, 2])],
     "ONNX Softmax on 1x5x5x4 reads a map whose channels a Transpose moved last; cnnspec reads there only: "),
])
def test_a_channels_last_region_cnnspec_cannot_read_is_refused_by_name(tmp_path: Path, tail: list[nn.Module], said: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), *tail).eval()
    torch_export(model, torch.randn(1, 3, 7, 7), tmp_path / "m.onnx", "torchscript-17")
    result = runner.invoke(app, ["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.yaml")])
    assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "m.yaml").exists()
