"""ONNX files as users have them: what ``torch.onnx.export`` writes with its defaults
(batch fixed at the example's, the new exporter since torch 2.9), old exporters' unused
inputs and opset-6 graphs, and the onnx wheel's own ``pytorch-converted`` conformance
graphs. Each imports, checked at the batch the file declares, or is refused by name
with exit 1; none ends in an internal error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

from typer.testing import CliRunner  # noqa: E402

import cnnspec  # noqa: E402
from cnnspec.agreement import assert_agrees  # noqa: E402
from cnnspec.backends import numpy_backend  # noqa: E402
from cnnspec.cli.app import app  # noqa: E402
from cnnspec.runs.files import load_arrays  # noqa: E402
from cnnspec.spec.training import TrainConfig  # noqa: E402

runner = CliRunner()
CONFORMANCE = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
# The graphs whose operators have a cnnspec kind (2-d images, or vectors): each imports
# and computes torch's own outputs, stored beside it. Every other graph is refused,
# naming one of its operators.
IMPORTS = {
    "test_AvgPool2d", "test_AvgPool2d_stride", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
    *(f"test_Conv2d{v}" for v in ("", "_depthwise", "_depthwise_padded", "_depthwise_strided", "_depthwise_with_multiplier",
                                   "_dilated", "_groups", "_groups_thnn", "_no_bias", "_padding", "_strided")),
    "test_ELU", "test_LeakyReLU", "test_LeakyReLU_with_negval", "test_Linear", "test_Linear_no_bias", "test_MaxPool2d",
    "test_PReLU_1d", "test_PReLU_1d_multiparam", "test_PReLU_2d", "test_PReLU_2d_multiparam", "test_ReLU", "test_Sigmoid",
    "test_Softmax", "test_Tanh", "test_ZeroPad2d", "test_softmax_lastdim",
    "test_ConvTranspose2d", "test_ConvTranspose2d_no_bias",  # conv_transpose2d
    "test_GLU_dim",  # a Split over channels, a sigmoid, a product: two slices, sigmoid, multiply
}


class Small(torch.nn.Module):
    """Conv, batch norm, pool, a residual add and a classifier: a network as a user writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.nn.functional.max_pool2d(x + self.conv2(x), 2)
        return self.fc(torch.flatten(x, 1))


def imported(spec: Path) -> numpy_backend.Session:
    """The NumPy backend with the spec and checkpoint import wrote."""
    session = numpy_backend.open_session(cnnspec.load_spec(spec), TrainConfig())
    session.set_weights(load_arrays(spec.with_suffix(".safetensors")))
    return session


def small() -> torch.nn.Module:
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():  # statistics of a trained network, not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dynamo", [True, False], ids=["default-exporter", "torchscript-exporter"])
def test_torch_onnx_export_with_its_defaults_imports_at_the_batch_it_fixes(tmp_path: Path, batch: int, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch.onnx.export's default exporter needs onnxscript (the onnx extra)")
    model = small()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            torch.onnx.export(model, (torch.randn(batch, 3, 16, 16),), str(path))  # torch's own example: no dynamic axes
        else:
            torch.onnx.export(model, (torch.randn(batch, 3, 16, 16),), str(path), dynamo=False)
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    assert "outputs agree with onnxruntime to" in result.output
    assert f"on {3 if batch == 3 else 2} random inputs" in result.output  # the file's batch; two calls of 1
    graph = cnnspec.load_spec(tmp_path / "m.yaml")
    assert graph.input_shape == (3, 16, 16) and graph.output_shape == (5,)
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)  # any batch: the spec is batch-free
    with torch.no_grad():
        assert_agrees(imported(tmp_path / "m.yaml").predict(x), model(torch.from_numpy(x)).numpy())


def _graph(nodes: list, inputs: list, initializers: list | None = None, opset: int = 13):  # type: ignore[no-untyped-def]
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [y], initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_graph_inputs_no_node_reads_are_dropped_with_a_note(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])
    stale = helper.make_tensor_value_info("learning_rate", onnx.TensorProto.FLOAT, [1])
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], [stale, x])
    onnx.save(model, str(tmp_path / "old.onnx"))
    result = runner.invoke(app, ["import", str(tmp_path / "old.onnx"), "-o", str(tmp_path / "old.yaml")])
    assert result.exit_code == 0, result.output
    assert "note: dropped graph input(s) that no node reads: learning_rate" in result.output
    assert cnnspec.load_spec(tmp_path / "old.yaml").input_shape == (4, 3, 3)


@pytest.mark.parametrize("opset", [6, 13])
def test_a_reshape_that_keeps_the_shape_is_no_layer(tmp_path: Path, opset: int) -> None:
    """SqueezeNet's end in the classic model-zoo file: pool, flatten, a Reshape to N x 1000
    that changes nothing, softmax."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 4, 4])
    target = numpy_helper.from_array(np.array([1, 6], np.int64), "target")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Reshape", ["f", "target"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    onnx.save(_graph(nodes, [x], [target], opset), str(tmp_path / "end.onnx"))
    result = runner.invoke(app, ["import", str(tmp_path / "end.onnx"), "-o", str(tmp_path / "end.yaml")])
    assert result.exit_code == 0, result.output
    assert [n.kind for n in cnnspec.load_spec(tmp_path / "end.yaml").nodes] == ["global_avgpool2d", "softmax"]  # pool and flatten: one layer


def _tensor(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.TensorProto.FromString(path.read_bytes()))


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="this onnx wheel ships no pytorch-converted conformance graphs")
@pytest.mark.parametrize("case", sorted(p.name for p in CONFORMANCE.iterdir()) if CONFORMANCE.is_dir() else [])
def test_the_onnx_wheels_pytorch_converted_graphs_import_or_are_refused_by_operator(tmp_path: Path, case: str) -> None:
    folder = CONFORMANCE / case
    result = runner.invoke(app, ["import", str(folder / "model.onnx"), "-o", str(tmp_path / "net.yaml")])
    operators = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    if case not in IMPORTS:
        assert result.exit_code == 1, result.output
        assert any(f"ONNX {op} " in result.output or f"ONNX operator {op} " in result.output or f": {op} with" in result.output
                   for op in operators), result.output
        assert "internal error" not in result.output and not (tmp_path / "net.yaml").exists()
        return
    assert result.exit_code == 0, result.output
    x, expected = _tensor(folder / "test_data_set_0" / "input_0.pb"), _tensor(folder / "test_data_set_0" / "output_0.pb")
    assert_agrees(imported(tmp_path / "net.yaml").predict(x), expected)  # PyTorch's own outputs, stored with the graph


def test_a_damaged_file_and_an_unrunnable_one_are_refused_with_exit_1(tmp_path: Path) -> None:
    (tmp_path / "cut.onnx").write_bytes(b"\x08\x07\x12\x04torch\x3a\xff\xff")
    damaged = runner.invoke(app, ["import", str(tmp_path / "cut.onnx"), "-o", str(tmp_path / "cut.yaml")])
    assert damaged.exit_code == 1 and "cut.onnx: not an ONNX model" in damaged.output
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], [x])
    model.opset_import[0].version = 99  # a newer opset than onnxruntime runs
    model.graph.node[0].op_type = "Relu"
    onnx.save(model, str(tmp_path / "future.onnx"))
    future = runner.invoke(app, ["import", str(tmp_path / "future.onnx"), "-o", str(tmp_path / "future.yaml")])
    assert future.exit_code == 1, future.output
    assert "future.onnx:" in future.output and "internal error" not in future.output
    assert not (tmp_path / "future.yaml").exists()
