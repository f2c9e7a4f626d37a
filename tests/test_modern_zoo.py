"""The networks after 2016 in the zoo (EfficientNet, MobileNetV2 and V3, ConvNeXt,
DenseNet, SqueezeNet, ShuffleNetV2, RegNetY): each trains a step on every installed
backend, from the same starting weights, and the gradient reaches the stem. Their counts
are in test_zoo, their agreement across backends in test_verify, their ONNX round trip
in test_export."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnnspec
from cnnspec.backends import load_backend
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig

MODERN = ["convnext_tiny", "densenet121", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
          "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1"]
# TensorFlow builds a training graph per network (10 to 35 s each on 2 cores): it trains
# the four that hold every kind the nine use (silu, squeeze-and-excitation, drop_path and
# depthwise convolution; layer_norm, gelu and layer scale; hard_swish and hard_sigmoid;
# slice, concat and channel_shuffle). The other five are made of those kinds, every kind's
# gradient is compared across backends in tests/layer_cases.py, and test_verify runs all
# nine forward on TensorFlow.
TENSORFLOW_TRAINS = {"efficientnet_b0", "convnext_tiny", "mobilenet_v3_small", "shufflenet_v2_x1_0"}
CASES = [(name, backend) for name in MODERN for backend in ("numpy", "torch", "tensorflow")
         if backend != "tensorflow" or name in TENSORFLOW_TRAINS]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_a_modern_network_trains_a_step(name: str, backend: str) -> None:
    if backend != "numpy":
        pytest.importorskip(backend)
    graph = with_input_size(cnnspec.load_spec(name), (64, 64))
    session = load_backend(backend).open_session(graph, TrainConfig.model_validate({"optimizer": {"name": "sgd", "lr": 0.1}}))
    start = initial_weights(graph, 0)
    session.set_weights(start)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    loss, correct = session.train_step(session.inputs(x, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), np.array([3, 917]))
    assert math.isfinite(loss) and loss > 0 and 0 <= correct <= 2
    after = session.get_weights()
    weighted = [node.name for node in graph.nodes if f"{node.name}.weight" in start]
    stem, head = weighted[0], weighted[-1]
    for layer in (stem, head):  # the head learns, and the gradient reaches the first convolution
        assert not np.array_equal(after[f"{layer}.weight"], start[f"{layer}.weight"]), layer
