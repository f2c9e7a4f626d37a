"""Every zoo spec against the reference implementation it cites."""

from __future__ import annotations

import re

import pytest

import cnnspec

# Learned parameters of torchvision.models.* (googlenet without auxiliary heads) and the
# GMACs torchvision publishes for them (its "GFLOPS" column counts multiply-accumulates).
REFERENCE = {
    "lenet5": (61_706, None, (10,)),
    "alexnet": (61_100_840, 0.71, (1000,)),
    "vgg16": (138_357_544, 15.47, (1000,)),
    "vgg19": (143_667_240, 19.63, (1000,)),
    "googlenet": (6_624_904, 1.50, (1000,)),
    "resnet18": (11_689_512, 1.81, (1000,)),
    "resnet34": (21_797_672, 3.66, (1000,)),
    "resnet50": (25_557_032, 4.09, (1000,)),
    "mobilenet_v2": (3_504_872, 0.30, (1000,)),
    "mobilenet_v3_small": (2_542_856, 0.06, (1000,)),
    "mobilenet_v3_large": (5_483_032, 0.22, (1000,)),
    "efficientnet_b0": (5_288_548, 0.39, (1000,)),
    "convnext_tiny": (28_589_128, 4.46, (1000,)),
    "densenet121": (7_978_856, 2.83, (1000,)),
    "squeezenet1_1": (1_235_496, 0.35, (1000,)),
    "shufflenet_v2_x1_0": (2_278_604, 0.14, (1000,)),
    "regnet_y_400mf": (4_344_144, 0.40, (1000,)),
}


OLDER = {"lenet5", "alexnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet34", "resnet50"}  # provenance in prose


def test_the_zoo_is_exactly_the_reference_list() -> None:
    assert sorted(cnnspec.zoo_names()) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_counts_match_the_reference(name: str) -> None:
    params, gmacs, output = REFERENCE[name]
    graph = cnnspec.load_spec(name)
    assert graph.params == params
    assert graph.output_shape == output
    if gmacs is not None:
        assert round(graph.macs / 1e9, 2) == gmacs  # to the digits torchvision prints
    assert re.search(r"\((?:\w|[ ,.-])+ (19|20)\d\d, \"", graph.description), "cites the paper: (Authors YEAR, \"Title\")"
    if name not in OLDER:
        assert "Provenance: torchvision/models/" in graph.description


def test_batchnorm_state_is_counted_apart() -> None:
    # torchvision resnet50: 53,120 running-mean/var values; Keras counts them in its total.
    assert cnnspec.load_spec("resnet50").non_trainable == 53_120
    assert cnnspec.load_spec("vgg16").non_trainable == 0


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [
        ("alexnet", "features.0", (64, 55, 55)),  # 55.25 floored
        ("alexnet", "features.12", (256, 6, 6)),
        ("googlenet", "maxpool1", (64, 56, 56)),  # 55.5 rounded up (ceil mode)
        ("googlenet", "inception4e.concat", (832, 14, 14)),
        ("googlenet", "maxpool4", (832, 7, 7)),
        ("resnet18", "conv1", (64, 112, 112)),  # 112.5 floored
        ("resnet50", "layer2.0.downsample.0", (512, 28, 28)),
        ("resnet50", "layer4.2.conv3", (2048, 7, 7)),
        ("vgg16", "stage5.pool", (512, 7, 7)),
    ],
)
def test_intermediate_shapes(name: str, layer: str, shape: tuple[int, ...]) -> None:
    assert cnnspec.load_spec(name)[layer].output_shape == shape


def test_resnet_layer_names_follow_torchvision() -> None:
    names = {node.name for node in cnnspec.load_spec("resnet50")}
    for expected in ("conv1", "bn1", "layer1.0.downsample.0", "layer3.5.bn3", "layer4.2.conv3", "fc"):
        assert expected in names
    assert "layer3.6.conv1" not in names
