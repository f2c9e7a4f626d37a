"""The zoo as the cross-engine tests run it: each spec at a small input size, and the three
networks whose classifier stays 4096 wide at any size (AlexNet and the VGGs: their
``avgpool`` brings every input to 6 x 6 or 7 x 7, as torchvision's does) with their hidden
dense layers narrowed, so that a test builds a few million weights instead of 60 to 140
million in every engine. Every layer kind and every connection is kept."""

from __future__ import annotations

import re
from pathlib import Path

from cnnspec.graph.load import zoo_path

# spec -> the input size its tests use (None: the spec's own)
SIZES: dict[str, str | None] = {
    "lenet5": None, "alexnet": "96,96", "vgg16": "32,32", "vgg19": "32,32", "googlenet": "64,64",
    "resnet18": "64,64", "resnet34": "64,64", "resnet50": "64,64",
    # the networks after 2016, at 64 x 64 (their heads pool globally, so any size runs)
    "convnext_tiny": "64,64", "densenet121": "64,64", "efficientnet_b0": "64,64", "mobilenet_v2": "64,64",
    "mobilenet_v3_large": "64,64", "mobilenet_v3_small": "64,64", "regnet_y_400mf": "64,64",
    "shufflenet_v2_x1_0": "64,64", "squeezenet1_1": "64,64",
}
WIDE_HEADS = {"alexnet", "vgg16", "vgg19"}
NARROW_UNITS = 128


def spec_text(name: str) -> str:
    """The zoo spec's text, its 4096-unit hidden layers narrowed where the head is wide."""
    text = zoo_path(name).read_text()
    if name not in WIDE_HEADS:
        return text
    narrowed = re.sub(r"units: 4096\b", f"units: {NARROW_UNITS}", text)
    return re.sub(r", params: \d+\}", "}", narrowed)  # the full network's count no longer holds


def spec_target(name: str, folder: Path) -> str:
    """What to pass a command for ``name``: the zoo name, or a narrowed copy's path."""
    if name not in WIDE_HEADS:
        return name
    path = folder / f"{name}.yaml"
    path.write_text(spec_text(name))
    return str(path)
