"""The Keras applications of the networks after 2016, built offline (``weights=None``)
with every constant-initialised array moved off its constant: each imports to a spec
whose outputs, through the NumPy backend, are Keras' own, in the kinds they are made of."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import cnnspec
from cnnspec.agreement import assert_agrees
from cnnspec.backends import keras_import, numpy_backend
from cnnspec.backends.tf_quiet import keras
from cnnspec.spec.training import TrainConfig

# application -> the kinds its import must contain
APPLICATIONS = {
    "EfficientNetB0": {"silu", "multiply", "drop_path", "global_avgpool2d"},
    "EfficientNetV2B0": {"silu", "multiply", "drop_path"},
    "MobileNetV3Small": {"hard_swish", "hard_sigmoid", "multiply", "relu"},
    "MobileNetV3Large": {"hard_swish", "hard_sigmoid", "multiply"},
    "ConvNeXtTiny": {"layer_norm", "gelu", "affine", "conv2d"},
}


def randomised(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable)
        if value.size and np.all(value == value.flat[0]):
            variable.assign((value + rng.uniform(0.1, 0.4, value.shape)).astype(np.float32))
    return model


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_a_keras_application_imports_with_its_outputs(name: str) -> None:
    kwargs = {"include_preprocessing": False} if name.startswith("MobileNetV3") else {}
    model = randomised(getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3), **kwargs))
    imported = keras_import.import_keras(model, name.lower())
    graph = cnnspec.parse_spec(imported.text, "imported.yaml")
    assert {node.kind for node in graph.nodes} >= APPLICATIONS[name]
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(imported.weights)
    x = np.random.default_rng(1).uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    logits_theirs = keras_import.predict(model, imported, x)
    assert_agrees(session.predict(x), logits_theirs)
    assert np.abs(logits_theirs - logits_theirs.mean(axis=1, keepdims=True)).max() > 1e-4  # the input matters
    if name.startswith("MobileNetV3"):  # x + 3, ReLU6, * (1/6): one hard_sigmoid each, no extra weights
        assert not any(node.kind == "relu6" for node in graph.nodes)
        assert graph.params + graph.non_trainable == model.count_params()


def _decoder(padding: str, interpolation: str) -> keras.Model:
    """A U-Net style decoder as Keras code writes it: Conv2DTranspose with 'same' (a 3x3
    kernel at stride 2 crops its extra row at the bottom) or 'valid', with and without an
    output padding and an activation, UpSampling2D, a skip joined by Concatenate."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 8, 3))
    down = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    up = keras.layers.Conv2DTranspose(4, 3, strides=2, padding=padding, activation="relu")(down)
    if padding == "valid":  # 7 x 9 back to the skip's 6 x 8
        up = keras.layers.Conv2D(4, 2)(up)
    skip = keras.layers.Conv2D(4, 1)(x)
    joined = keras.layers.Concatenate()([up, skip])
    wide = keras.layers.UpSampling2D(2, interpolation=interpolation)(joined)
    y = keras.layers.Conv2DTranspose(2, 1, strides=(1, 3), padding=padding, output_padding=None if padding == "same" else (0, 1))(wide)
    y = keras.layers.Conv2DTranspose(3, (4, 2), strides=2, padding=padding, use_bias=False)(y)
    return randomised(keras.Model(x, y))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_a_keras_decoder_with_transposed_convolutions_and_upsampling_imports(padding: str, interpolation: str) -> None:
    model = _decoder(padding, interpolation)
    imported = keras_import.import_keras(model, "decoder")
    graph = cnnspec.parse_spec(imported.text, "imported.yaml")
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("conv_transpose2d") == 3 and kinds.count("upsample2d") == 1, kinds
    assert graph.output_shape == tuple(model.output.shape[i] for i in (3, 1, 2))
    assert graph.params == model.count_params()
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(imported.weights)
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, 6, 8)).astype(np.float32)
    assert_agrees(session.predict(x), keras_import.predict(model, imported, x))


def test_convnext_stochastic_depth_imports_as_drop_path() -> None:
    """keras.applications' ConvNeXt builder with a drop path rate (ConvNeXtTiny and kin pass
    0, which Keras writes as an identity): one drop_path a block, its rate rising linearly."""
    from keras.src.applications import convnext

    model = randomised(convnext.ConvNeXt(depths=[1, 1, 2, 1], projection_dims=[8, 16, 24, 32], drop_path_rate=0.1,
                                         input_shape=(32, 32, 3), include_preprocessing=False, classes=5, name="small"))
    imported = keras_import.import_keras(model, "convnext")
    graph = cnnspec.parse_spec(imported.text, "imported.yaml")
    rates = [node.layer.rate for node in graph.nodes if node.kind == "drop_path"]
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1])  # the first block's rate is 0: Keras writes an identity
    session = numpy_backend.open_session(graph, TrainConfig())
    session.set_weights(imported.weights)
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    assert_agrees(session.predict(x), keras_import.predict(model, imported, x))
