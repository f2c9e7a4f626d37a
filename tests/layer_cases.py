"""Small networks that exercise every layer kind, and each argument that changes its
arithmetic; every backend is tested on them against the NumPy reference."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import cnnspec
from cnnspec import Graph

# One small network per layer kind (and per tricky argument), each ending where the
# kind is exercised; the input gets a gradient through every one of them.
KINDS = {
    "conv2d": "[3, 9, 8]|- conv2d: {filters: 4, kernel: 3, padding: 1}",
    "conv2d-stride-dilation": "[3, 11, 10]|- conv2d: {filters: 4, kernel: [3, 2], stride: [2, 1], dilation: 2, padding: [2, 1]}",
    "conv2d-groups": "[4, 7, 7]|- conv2d: {filters: 6, kernel: 3, groups: 2, bias: false}",
    "conv2d-depthwise-multiplier": "[3, 7, 7]|- conv2d: {filters: 6, kernel: 3, groups: 3, stride: 2, padding: 1}",
    "conv2d-depthwise-stride-dilation": "[4, 11, 11]|- conv2d: {filters: 4, kernel: 3, groups: 4, stride: 2, dilation: 2, padding: 2, bias: false}",
    "conv2d-same-asymmetric": "[2, 8, 7]|- conv2d: {filters: 3, kernel: 4, stride: 2, padding: same}",
    "conv2d-ceil": "[2, 7, 7]|- conv2d: {filters: 3, kernel: 3, stride: 3, rounding: ceil}",
    "conv2d-activation-prelu": "[2, 6, 6]|- conv2d: {filters: 3, kernel: 3, activation: {prelu: {channelwise: true}}}",
    "conv_transpose2d": "[3, 4, 5]|- conv_transpose2d: {filters: 4, kernel: 3, stride: 2, padding: 1, output_padding: 1}",
    "conv_transpose2d-groups": "[4, 3, 3]|- conv_transpose2d: {filters: 6, kernel: [2, 3], stride: [2, 1], groups: 2, bias: false}",
    "conv_transpose2d-stride-1": "[2, 5, 4]|- conv_transpose2d: {filters: 3, kernel: 3, padding: [2, 0]}",
    "conv_transpose2d-keras-same": "[3, 4, 5]|- conv_transpose2d: {filters: 4, kernel: 3, stride: 2, padding: same}",
    "conv_transpose2d-keras-same-4": "[3, 4, 5]|- conv_transpose2d: {filters: 2, kernel: [4, 1], stride: [2, 3], padding: same}",
    "conv_transpose2d-keras-valid": "[2, 3, 4]|- conv_transpose2d: {filters: 3, kernel: 1, stride: 3, padding: valid, groups: 1}",
    "conv_transpose2d-keras-same-output-padding": "[2, 4, 3]|- conv_transpose2d: {filters: 3, kernel: 3, stride: 2, padding: same, output_padding: 1}",
    "maxpool2d": "[3, 8, 8]|- maxpool2d: {kernel: 2}",
    "maxpool2d-overlap-ceil": "[2, 9, 9]|- maxpool2d: {kernel: 3, stride: 2, padding: 1, rounding: ceil}",
    "maxpool2d-same": "[2, 5, 6]|- maxpool2d: {kernel: 2, stride: 1, padding: same}",
    "avgpool2d": "[2, 7, 7]|- avgpool2d: {kernel: 3, stride: 2, padding: 1, rounding: ceil}",
    "avgpool2d-exclude-pad": "[2, 7, 7]|- avgpool2d: {kernel: 3, stride: 2, padding: 1, count_include_pad: false}",
    "adaptive_avgpool2d": "[3, 7, 5]|- adaptive_avgpool2d: {size: [3, 2]}",
    "adaptive_avgpool2d-divides": "[2, 8, 6]|- adaptive_avgpool2d: {size: [4, 3]}\n- flatten: {}\n- dense: {units: 3}",
    "upsample2d": "[2, 3, 4]|- upsample2d: {scale: 2}",
    "upsample2d-bilinear": "[2, 3, 4]|- upsample2d: {scale: [2, 3], mode: bilinear}",
    "upsample2d-align-corners": "[2, 3, 3]|- upsample2d: {scale: 2, mode: bilinear, align_corners: true}\n- conv2d: {filters: 2, kernel: 3}",
    "global_avgpool2d": "[3, 5, 4]|- global_avgpool2d: {}",
    "global_maxpool2d": "[3, 5, 4]|- global_maxpool2d: {keepdims: true}",
    "flatten-dense": "[2, 3, 3]|- flatten: {}\n- dense: {units: 5, activation: {leaky_relu: {negative_slope: 0.1}}}",
    "dense-no-bias": "[7]|- dense: {units: 4, bias: false, activation: elu}",
    "batchnorm-2d": "[3, 4, 4]|- batchnorm: {eps: 0.001, momentum: 0.3}",
    "batchnorm-1d": "[5]|- batchnorm: {}",
    "layer_norm": "[5, 3, 2]|- layer_norm: {eps: 0.000001}",
    "layer_norm-vector": "[2, 3, 2]|- flatten: {}\n- layer_norm: {}\n- dense: {units: 3}",
    "lrn": "[6, 3, 3]|- lrn: {size: 3, alpha: 0.01, beta: 0.75, k: 2}",
    "lrn-even": "[5, 2, 2]|- lrn: {size: 4, alpha: 0.1}",
    "zero_padding2d": "[2, 3, 3]|- zero_padding2d: {padding: [[1, 0], [2, 1]]}",
    "add": "[3, 4, 4]|- conv2d: {filters: 3, kernel: 1}\n  name: a\n- add: {}\n  inputs: [a, input]",
    "concat": "[3, 4, 4]|- conv2d: {filters: 2, kernel: 1}\n  name: a\n- concat: {}\n  inputs: [input, a]",
    "multiply": "[3, 4, 4]|- conv2d: {filters: 3, kernel: 1}\n  name: a\n- multiply: {}\n  inputs: [a, input]",
    "multiply-gate": "[4, 5, 3]|- global_avgpool2d: {keepdims: true}\n- conv2d: {filters: 2, kernel: 1, activation: relu}\n"
                     "- conv2d: {filters: 4, kernel: 1, activation: hard_sigmoid}\n  name: gate\n- multiply: {}\n  inputs: [input, gate]",
    "multiply-gate-first": "[4, 3, 3]|- global_maxpool2d: {keepdims: true}\n  name: g\n- sigmoid: {}\n  name: gate\n"
                           "- multiply: {}\n  inputs: [gate, input]",
    "multiply-vectors": "[2, 3, 2]|- flatten: {}\n  name: f\n- dense: {units: 12, activation: sigmoid}\n  name: d\n"
                        "- multiply: {}\n  inputs: [f, d]\n- dense: {units: 3}",
    "relu": "[4, 3]|- relu: {}",
    "relu6": "[4, 3]|- relu6: {}",
    "leaky_relu": "[4, 3]|- leaky_relu: {}",
    "prelu": "[4, 3, 3]|- prelu: {}",
    "elu": "[4, 3]|- elu: {alpha: 0.5}",
    "sigmoid": "[4, 3]|- sigmoid: {}",
    "tanh": "[4, 3]|- tanh: {}",
    "softmax": "[5, 2, 2]|- softmax: {}",
    "silu": "[4, 3]|- silu: {}",
    "hard_sigmoid": "[4, 3, 3]|- hard_sigmoid: {}",
    "hard_sigmoid-slope": "[4, 3]|- hard_sigmoid: {alpha: 0.2, beta: 0.4}",
    "hard_swish": "[4, 3, 3]|- hard_swish: {}",
    "gelu": "[4, 3]|- gelu: {}",
    "gelu-tanh": "[4, 3, 2]|- gelu: {approximate: tanh}",
    "conv2d-activation-hard_swish": "[2, 6, 6]|- conv2d: {filters: 3, kernel: 3, activation: hard_swish}",
    "dense-activation-silu": "[6]|- dense: {units: 4, activation: silu}",
    "dropout-eval": "[4, 3]|- dropout: {rate: 0.5}",
    "drop_path-eval": "[3, 4, 4]|- conv2d: {filters: 3, kernel: 1}\n- drop_path: {rate: 0.3}\n  name: branch\n- add: {}\n"
                      "  inputs: [branch, input]",
    "affine": "[3, 4, 5]|- affine: {}",
    "affine-no-bias-vector": "[3, 2, 2]|- flatten: {}\n- affine: {bias: false}\n- dense: {units: 3}",
    "slice": "[6, 3, 2]|- slice: {start: 2, stop: 5}",
    "slice-halves": "[4, 3, 3]|- slice: {stop: 2}\n  name: a\n- slice: {start: 2, stop: 4}\n  inputs: [input]\n  name: b\n"
                    "- conv2d: {filters: 2, kernel: 1}\n- concat: {}\n  inputs: [a, conv2d_1]\n- channel_shuffle: {groups: 2}",
    "slice-vector": "[2, 3, 2]|- flatten: {}\n- slice: {start: 3, stop: 9}\n- dense: {units: 3}",
    "channel_shuffle": "[6, 3, 2]|- conv2d: {filters: 6, kernel: 1, groups: 3}\n- channel_shuffle: {groups: 3}\n- conv2d: {filters: 4, kernel: 1, groups: 2}",
    # A flatten of a non-square map, then layers that see the flattened features one by
    # one: a backend that flattens in another order must permute all their weights.
    "flatten-per-feature-dense": "[3, 2, 4]|- flatten: {}\n- batchnorm: {}\n- prelu: {channelwise: true}\n- dense: {units: 5}",
    "concat-vectors": "[2, 3, 2]|- conv2d: {filters: 3, kernel: 1}\n- flatten: {}\n  name: fa\n- flatten: {}\n  name: fi\n"
                      "  inputs: [input]\n- concat: {}\n  inputs: [fi, fa]\n- dense: {units: 4}",
    "add-vectors": "[2, 3, 2]|- flatten: {}\n  name: f\n- dense: {units: 12}\n  name: d\n- add: {}\n  inputs: [f, d]\n"
                   "- dense: {units: 3}",
}


def kind_graph(name: str) -> Graph:
    shape, body = KINDS[name].split("|")
    layers = textwrap.indent(body, "  ")
    return cnnspec.parse_spec(f"name: k\ninput: {{shape: {shape}}}\nlayers:\n{layers}\n", f"{name}.yaml")


def drop_path_graph() -> Graph:
    return cnnspec.parse_spec("name: d\ninput: {shape: [3, 4, 4]}\nlayers:\n  - drop_path: {rate: 0.3}\n", "d.yaml")


def assert_whole_samples_dropped(out: np.ndarray) -> None:
    """Each sample all zero or all 1 / (1 - 0.3); about 30% zero."""
    per_sample = out.reshape(len(out), -1)
    assert np.all((per_sample == 0).all(axis=1) | np.isclose(per_sample, 1 / 0.7).all(axis=1))
    assert (per_sample[:, 0] == 0).mean() == pytest.approx(0.3, abs=0.04)


# Optimizer settings that reach every branch of the update rules.
OPTIMIZER_CASES: list[dict[str, object]] = [
    {"name": "sgd", "momentum": 0.0},
    {"name": "sgd", "momentum": 0.9, "weight_decay": 0.01},
    {"name": "sgd", "momentum": 0.9, "nesterov": True},
    {"name": "adagrad", "weight_decay": 0.01},
    {"name": "rmsprop", "momentum": 0.5},
    {"name": "rmsprop", "momentum": 0.0, "weight_decay": 0.01},
    {"name": "adadelta", "lr": 1.0},
    {"name": "adam", "weight_decay": 0.01},
    {"name": "adamw", "weight_decay": 0.1},
]


def case_id(settings: dict[str, object]) -> str:
    return "-".join(f"{k}={v}" for k, v in settings.items())
