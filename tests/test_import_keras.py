"""Keras models people built themselves (Sequential, functional, nested, partly frozen),
saved as ``.keras`` and as full-model ``.h5``: each imports to a spec whose parameters
are the model's and whose outputs, through the NumPy backend, are Keras' own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from typer.testing import CliRunner

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.backends import keras_import, numpy_backend
from cnnspec.backends.import_common import ImportRefused
from cnnspec.backends.tf_quiet import keras
from cnnspec.cli.app import app
from cnnspec.runs.files import load_arrays
from cnnspec.spec.training import TrainConfig

layers = keras.layers


def randomised(model: keras.Model, seed: int = 0) -> keras.Model:
    """Every weight that starts constant (biases, batchnorm scales, shifts and statistics,
    PReLU slopes) moved off it at random, so that no layout mistake hides behind zeros
    or ones; kernels keep Keras' random initialisation (their scale keeps deep networks
    finite)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable)
        if value.size and np.all(value == value.flat[0]):
            variable.assign((value + rng.uniform(-0.3, 0.3, value.shape)).astype(np.float32))  # variances stay positive
    return model


def every_layer() -> keras.Model:
    """One of each layer the import reads, wired as real networks wire them: branches that
    add and concatenate, a flatten whose order a dense layer and a batchnorm must follow,
    and a vector output in Keras' flatten order."""
    inp = keras.Input((17, 15, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = layers.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5])(x)
    x = layers.ZeroPadding2D(((1, 0), (2, 1)))(x)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(x)  # odd size: TensorFlow's uneven padding
    a = layers.Conv2D(6, (1, 3), padding="same", dilation_rate=(1, 2), use_bias=False)(x)
    a = layers.BatchNormalization(momentum=0.9, epsilon=1e-3)(a)
    a = layers.ReLU(max_value=6)(a)
    b = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="tanh")(x)
    b = layers.Conv2D(6, 1, groups=2)(b)
    x = layers.Add()([a, b])
    x = layers.PReLU(shared_axes=[1, 2])(x)
    c = layers.SeparableConv2D(8, 3, padding="valid", activation="elu")(x)
    c = layers.MaxPooling2D(2, strides=1, padding="valid")(c)
    d = layers.AveragePooling2D(3, strides=1, padding="same")(x)
    d = layers.Conv2D(4, 3, padding="valid", activation="sigmoid")(d)
    d = layers.MaxPooling2D(2, strides=1)(d)
    x = layers.Concatenate()([c, d])
    x = layers.Dense(5)(x)  # on a map: per position, a 1x1 convolution
    x = layers.LeakyReLU(negative_slope=0.1)(x)
    g = layers.GlobalMaxPooling2D()(x)
    f = layers.Flatten()(x)
    f = layers.BatchNormalization()(f)
    f = layers.Dense(7, activation="leaky_relu")(f)
    x = layers.Concatenate()([layers.Reshape((-1,))(layers.AveragePooling2D(2, padding="same")(x)), f, g])
    x = layers.Dropout(0.25)(x)
    x = layers.Activation("softmax")(x)
    return randomised(keras.Model(inp, x, name="every_layer"))


def frozen_base() -> keras.Model:
    """The Keras transfer-learning recipe: a frozen base model nested in a Sequential,
    a new head on top."""
    base = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(8, 3, activation="relu", name="conv1"),
                             layers.BatchNormalization(name="bn1"), layers.MaxPooling2D(name="pool1"),
                             layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")], name="base")
    base.trainable = False
    model = keras.Sequential([keras.Input((32, 32, 3)), base, layers.GlobalAveragePooling2D(), layers.Dropout(0.2),
                              layers.Dense(4)], name="classifier")
    return randomised(model, seed=1)


def keras_output(model: keras.Model, imported: keras_import.Imported, x: np.ndarray) -> np.ndarray:
    return keras_import.predict(model, imported, x)


def our_output(imported: keras_import.Imported, x: np.ndarray) -> tuple[cnnspec.Graph, np.ndarray]:
    graph = cnnspec.parse_spec(imported.text, "imported.yaml")
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(imported.weights)
    return graph, session.predict(x)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_functional_model_with_every_layer_imports_with_its_outputs(tmp_path: Path, suffix: str) -> None:
    source = every_layer()
    path = tmp_path / f"every_layer{suffix}"
    source.save(path)
    loaded = keras_import.load(path)
    imported = keras_import.import_keras(loaded, "every_layer")
    graph, ours = our_output(imported, x := np.random.default_rng(2).standard_normal((3, 3, 17, 15)).astype(np.float32) * 100)
    theirs = np.asarray(source(x.transpose(0, 2, 3, 1), training=False))
    assert imported.output_perm is not None  # the output is a vector in Keras' (h, w, c) order
    theirs_canonical = np.empty_like(theirs)
    theirs_canonical[:, imported.output_perm] = theirs
    assert_agrees(ours, theirs_canonical)
    assert graph.input_shape == (3, 17, 15)
    # Rescaling, and Normalization given its statistics, have no weights in Keras; the spec's affine holds 2 per channel.
    affine = sum(2 * 3 for node in graph.nodes if node.layer.kind == "affine")
    assert graph.params + graph.non_trainable == source.count_params() + affine
    kinds = {node.layer.kind for node in graph.nodes}
    assert kinds >= {"affine", "zero_padding2d", "conv2d", "batchnorm", "relu6", "add", "prelu", "maxpool2d", "avgpool2d",
                     "concat", "leaky_relu", "global_maxpool2d", "flatten", "dense", "dropout", "softmax"}


def test_the_newer_activations_import_by_their_keras_names(tmp_path: Path) -> None:
    """swish, silu, hard_silu, hard_sigmoid and gelu, as arguments and as Activation layers."""
    inp = keras.Input((9, 8, 3))
    x = layers.Conv2D(6, 3, activation="swish")(inp)
    x = layers.Activation("hard_silu")(x)
    a = layers.Conv2D(6, 1, activation="hard_sigmoid")(x)
    x = layers.Activation("silu")(layers.Add()([a, x]))
    x = layers.Dense(4, activation="gelu")(x)  # on a map: a 1x1 convolution
    model = randomised(keras.Model(inp, layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "m.keras")
    imported = keras_import.import_keras(keras_import.load(tmp_path / "m.keras"), "m")
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32) * 3
    graph, ours = our_output(imported, x)
    assert_agrees(ours, np.asarray(model(x.transpose(0, 2, 3, 1), training=False)))
    said = {node.layer.kind for node in graph.nodes} | {type(node.layer.activation).__name__ for node in graph.nodes
                                                        if getattr(node.layer, "activation", None) is not None}
    assert said >= {"SiLU", "hard_swish", "HardSigmoid", "silu", "GELU"}


def test_a_nested_frozen_base_stays_frozen_and_counts_match_keras(tmp_path: Path) -> None:
    source = frozen_base()
    path = tmp_path / "classifier.keras"
    source.save(path)
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "classifier.yaml")])
    assert result.exit_code == 0, result.output
    assert "outputs agree with Keras" in result.output
    graph = cnnspec.load_spec(str(tmp_path / "classifier.yaml"))
    assert graph.params + graph.non_trainable == source.count_params()
    # the base's layers with weights are frozen by the spec's train: section; the head trains
    assert list(graph.train.freeze) == ["conv1", "bn1", "conv2"]
    weights = load_arrays(tmp_path / "classifier.safetensors")
    kernel = source.layers[0].layers[0].get_weights()[0]  # (kh, kw, in, out)
    np.testing.assert_array_equal(weights["conv1.weight"], kernel.transpose(3, 2, 0, 1))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _, ours = our_output(keras_import.import_keras(source, "classifier"), x)
    assert_agrees(ours, np.asarray(source(x.transpose(0, 2, 3, 1))))


def test_an_imported_keras_model_verifies_across_backends(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    source = every_layer()
    path = tmp_path / "every_layer.h5"
    source.save(path)
    runner = CliRunner()
    assert runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "net.yaml")]).exit_code == 0
    result = runner.invoke(app, ["verify", str(tmp_path / "net.yaml"), "--weights", str(tmp_path / "net.safetensors")])
    assert result.exit_code == 0, result.output
    assert "all layers agree" in result.output


def test_cnnspec_own_keras_export_reads_back_as_its_spec(tmp_path: Path) -> None:
    runner = CliRunner()
    exported = runner.invoke(app, ["export", "lenet5", "--to", "keras", "-o", str(tmp_path / "lenet5.keras")])
    assert exported.exit_code == 0, exported.output
    result = runner.invoke(app, ["import", str(tmp_path / "lenet5.keras"), "-o", str(tmp_path / "back.yaml")])
    assert result.exit_code == 0, result.output
    back, zoo = cnnspec.load_spec(str(tmp_path / "back.yaml")), cnnspec.load_spec("lenet5")
    assert back.input_shape == zoo.input_shape
    assert (back.params, back.macs) == (zoo.params, zoo.macs)
    assert [n.info.output_shape for n in back.nodes if n.layer.kind != "flatten"][-1] == zoo.nodes[-1].info.output_shape


def test_a_colour_runs_keras_export_is_refused_by_layer_and_its_onnx_export_reads_back(tmp_path: Path) -> None:
    """The README's claim, as a user meets it: a 3-channel run's Keras export holds
    cnnspec's own preprocessing layer; import names it and points at the ONNX export."""
    pytest.importorskip("onnxruntime")
    runner = CliRunner()
    cnnspec.train("lenet5", "numpy", out=tmp_path / "run", epochs=1, channels=3, data="synthetic", limit=32)
    assert runner.invoke(app, ["export", str(tmp_path / "run"), "--to", "keras", "-o", str(tmp_path / "m.keras")]).exit_code == 0
    result = runner.invoke(app, ["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "back.yaml")])
    assert result.exit_code == 1 and "layer 'preprocess'" in result.output and "import its ONNX export instead" in result.output
    assert not (tmp_path / "back.yaml").exists()
    assert runner.invoke(app, ["export", str(tmp_path / "run"), "--to", "onnx", "-o", str(tmp_path / "m.onnx")]).exit_code == 0
    result = runner.invoke(app, ["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "back.yaml")])
    assert result.exit_code == 0, result.output
    assert cnnspec.load_spec(str(tmp_path / "back.yaml")).input_shape == (3, 32, 32)


def refusal(model: keras.Model, tmp_path: Path) -> str:
    path = tmp_path / "model.keras"
    model.save(path)
    with pytest.raises(ImportRefused) as refused:
        keras_import.import_keras(keras_import.load(path), "model")
    return str(refused.value)


def test_an_unsupported_layer_is_refused_by_name_and_class(tmp_path: Path) -> None:
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3)(inp)
    x = layers.GroupNormalization(groups=2, name="gn")(x)
    message = refusal(keras.Model(inp, x), tmp_path)
    assert message.startswith("layer 'gn': Keras GroupNormalization has no cnnspec layer kind")
    assert "did you mean 'BatchNormalization'" in message or "Normalization" in message


def test_a_shared_layer_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((8, 8, 4))
    shared = layers.Conv2D(4, 3, padding="same", name="shared")
    x = layers.Add()([shared(inp), shared(shared(inp))])
    assert "layer 'shared' is called 3 times (shared weights)" in refusal(keras.Model(inp, x), tmp_path)


def test_an_unsupported_activation_and_a_free_image_size_are_refused(tmp_path: Path) -> None:
    inp = keras.Input((8, 8, 3))
    message = refusal(keras.Model(inp, layers.Conv2D(4, 3, activation="selu", name="c")(inp)), tmp_path)
    assert message.startswith("layer 'c' (Conv2D): activation 'selu' has no cnnspec kind")
    inp = keras.Input((None, None, 3))
    message = refusal(keras.Model(inp, layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inp))), tmp_path)
    assert message == "the input needs a fixed height x width x channels shape, got (?, ?, 3)"


def test_a_lambda_layer_never_runs_its_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("CNNSPEC_TEST_MARKER", str(marker))
    inp = keras.Input((4, 4, 1))  # the function is saved as code (no closure): it writes the marker when run
    x = layers.Lambda(lambda t: (open(__import__("os").environ["CNNSPEC_TEST_MARKER"], "w").close(), t)[1])(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, x).save(path)
    marker.unlink()
    with pytest.raises(ImportRefused, match=r"Keras cannot load it safely: .*safe_mode"):
        keras_import.load(path)
    assert not marker.exists()


def test_the_command_line_names_what_a_file_is_and_writes_nothing_on_refusal(tmp_path: Path) -> None:
    runner = CliRunner()
    weights_only = tmp_path / "net.weights.h5"
    every_layer().save_weights(weights_only)
    plain_h5 = tmp_path / "weights.h5"
    os.replace(weights_only, plain_h5)
    result = runner.invoke(app, ["import", str(plain_h5)])
    assert result.exit_code == 1
    assert "holds weights only, not a model; import it with --spec NAME_OR_FILE" in result.output
    for name, said in [("junk.keras", "not a .keras file"), ("junk.h5", "not an HDF5 file")]:
        (tmp_path / name).write_bytes(b"\x00junk" * 10)
        result = runner.invoke(app, ["import", str(tmp_path / name)])
        assert result.exit_code == 1 and f"{name}: {said}" in result.output
    inp = keras.Input((8, 8, 3))
    keras.Model(inp, layers.GroupNormalization(groups=3)(inp)).save(tmp_path / "ln.keras")
    result = runner.invoke(app, ["import", str(tmp_path / "ln.keras"), "-o", str(tmp_path / "ln.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not (tmp_path / "ln.yaml").exists() and not (tmp_path / "ln.safetensors").exists()
