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
