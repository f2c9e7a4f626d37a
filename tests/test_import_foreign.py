"""ONNX files other tools wrote: old opsets with weights as graph inputs, shapes computed at
run time, batch norms decomposed into Mul and Add of Constant nodes, ShuffleNet's channel
shuffle, SqueezeNet's softmax on N x C x 1 x 1. Each imports to a spec whose parameters
are the file's and whose outputs are onnxruntime's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

import foreign_models as fm  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import cnnspec  # noqa: E402
from cnnspec.backends import numpy_backend, onnx_backend, onnx_import  # noqa: E402
from cnnspec.cli.app import app  # noqa: E402
from cnnspec.graph.load import with_input_size  # noqa: E402
from cnnspec.spec.training import TrainConfig  # noqa: E402

SMALL = {
    "squeezenet": (lambda: fm.SqueezeNet(classes=10, width=4), (3, 64, 64)),
    "densenet": (lambda: fm.DenseNet(blocks=(2, 2), growth=8, classes=10), (3, 32, 32)),
    "shufflenet": (lambda: fm.ShuffleNet(groups=3, stages=(48, 96), repeats=(3, 5), classes=10), (3, 32, 32)),
}


def file_weights(model: onnx.ModelProto) -> int:
    """Float values the file stores: initializers and Constant nodes (not shapes or axes)."""
    arrays = [numpy_helper.to_array(i) for i in model.graph.initializer]
    arrays += [numpy_helper.to_array(helper.get_attribute_value(a)) for n in model.graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"]
    return sum(a.size for a in arrays if a.dtype.kind == "f")


def imported_error(model: onnx.ModelProto, shape: tuple[int, ...]) -> tuple[cnnspec.Graph, float]:
    imported = onnx_import.import_onnx(model, name="imported")
    text, weights = imported.text, imported.weights
    graph = cnnspec.parse_spec(text, "imported.yaml")
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(weights)
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    ours = session.predict(x)
    theirs = next(iter(onnx_backend.run(model, x).values())).reshape(ours.shape)
    return graph, float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("style", fm.STYLES)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_foreign_exports_import_with_their_weights_and_outputs(name: str, style: str) -> None:
    build, shape = SMALL[name]
    source = fm.randomised(build())
    model = fm.export(source, shape, style)
    graph, error = imported_error(model, shape)
    assert error < 1e-4
    assert graph.params + graph.non_trainable == file_weights(model)
    if style == "opset9":  # nothing fused: the very parameters of the PyTorch model
        assert graph.params == fm.learned_params(source)
    kinds = {node.kind for node in graph.nodes}
    if name == "shufflenet":
        assert "channel_shuffle" in kinds and "global_avgpool2d" in kinds
    if style == "folded" and name == "densenet":  # (ShuffleNet's batch norms all follow a conv: the exporter fused them)
        assert "affine" in kinds and "batchnorm" not in kinds  # the decomposed batch norms
    if name == "squeezenet":
        assert graph.nodes[-1].kind == "softmax" and graph.output_shape == (10, 1, 1)


@pytest.mark.parametrize("zoo", ["resnet18", "googlenet"])
def test_torch_onnx_export_of_a_zoo_network_imports_to_the_same_check(zoo: str) -> None:
    import io
    import warnings

    graph = with_input_size(cnnspec.load_spec(zoo), (64, 64))
    module = cnnspec.build(graph, backend="torch").eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *graph.input_shape),), buffer, dynamo=False, opset_version=13,
                          dynamic_axes={"input": {0: "n"}}, input_names=["input"], do_constant_folding=False)
    model = onnx.load_from_string(buffer.getvalue())
    back, error = imported_error(model, graph.input_shape)

    def layers(g: cnnspec.Graph) -> list[tuple[object, ...]]:  # activations may be separate layers or arguments
        return [(n.kind, n.output_shape, n.params, n.non_trainable, n.macs) for n in g.nodes
                if n.kind != "dropout" and not getattr(n.layer, "is_activation", False)]

    assert layers(back) == layers(graph) and (back.params, back.macs) == (graph.params, graph.macs)
    assert error < 1e-4


def test_import_and_verify_a_shufflenet_from_the_command_line(tmp_path: Path) -> None:
    build, shape = SMALL["shufflenet"]
    path = fm.save(fm.export(fm.randomised(build()), shape, "folded"), tmp_path / "shufflenet.onnx")
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "shufflenet.yaml")])
    assert result.exit_code == 0, result.output
    assert "outputs agree with onnxruntime" in result.output
    checked = runner.invoke(app, ["check", str(tmp_path / "shufflenet.yaml")])
    assert checked.exit_code == 0 and "channel_shuffle" in checked.output
    verified = runner.invoke(app, ["verify", str(tmp_path / "shufflenet.yaml"), "--weights", str(tmp_path / "shufflenet.safetensors"),
                                   "--backends", "numpy,torch,tensorflow"])
    assert verified.exit_code == 0, verified.output
    assert "all layers agree" in verified.output


def test_an_unsupported_node_is_refused_by_name_with_the_nearest_pattern() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4, 3, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    for nodes, expected in (
        ([helper.make_node("Transpose", ["x"], ["y"], name="swap", perm=[0, 1, 3, 2])],
         "node 'swap': ONNX Transpose on 1x4x3x3 matches no pattern cnnspec reads; supported: Transpose + LayerNormalization + "
         "Transpose -> layer_norm (channels moved last, normalised, moved back); Transpose + Softmax + Transpose -> softmax"),
        ([helper.make_node("Selu", ["x"], ["y"], name="act")], "node 'act': ONNX operator Selu has no cnnspec layer kind (did you mean 'Relu'?)"),
    ):
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
        with pytest.raises(onnx_import.ImportRefused) as refused:
            onnx_import.import_onnx(model)
        assert str(refused.value).startswith(expected)


def test_a_dynamic_image_size_is_refused_with_its_shape() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(onnx_import.ImportRefused, match=r"input 'x' needs a fixed shape after the batch axis, got \[3, \?, \?\]"):
        onnx_import.import_onnx(model)
