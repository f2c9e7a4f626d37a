"""Classic CNNs written in plain PyTorch (no torchvision here) and exported to ONNX the ways
other tools write them, for ``cnnspec import`` to read: used by the tests (small sizes)
and by ``benchmarks/bench_import.py`` (ImageNet sizes).

Export styles:
- ``opset9``: torch.onnx's TorchScript exporter at opset 9, the weights listed as graph
  inputs, no constant folding and a dynamic batch axis, so the flatten is computed from
  ``Shape``, ``Gather``, ``Unsqueeze`` and ``Concat`` (as public model zoos' older files);
- ``opset13``: the same exporter at opset 13 with its constant folding;
- ``folded``: ``opset13``, then every batch norm decomposed into ``Unsqueeze``, ``Mul``
  and ``Add`` of constants and every weight turned into a ``Constant`` node (what graph
  optimisers and converters such as tf2onnx write).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

STYLES = ("opset9", "opset13", "folded")


def _bn_relu_conv(cin: int, cout: int, kernel: int, padding: int = 0) -> list[nn.Module]:
    return [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)]


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 (Iandola et al. 2016), ending as the ONNX model zoo's file does: a
    softmax over the N x 1000 x 1 x 1 map."""

    def __init__(self, classes: int = 1000, width: int = 1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, 64 // w, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64 // w, 16 // w, 64 // w), Fire(128 // w, 16 // w, 64 // w), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128 // w, 32 // w, 128 // w), Fire(256 // w, 32 // w, 128 // w), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256 // w, 48 // w, 192 // w), Fire(384 // w, 48 // w, 192 // w), Fire(384 // w, 64 // w, 256 // w),
            Fire(512 // w, 64 // w, 256 // w),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512 // w, classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_bn_relu_conv(cin, 4 * growth, 1), *_bn_relu_conv(4 * growth, growth, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017): DenseNet-121 with blocks (6, 12, 24, 16)."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, classes: int = 1000) -> None:
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 7, 2, 3, bias=False), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                layers += [*_bn_relu_conv(channels, channels // 2, 1), nn.AvgPool2d(2, 2)]
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, stride: int, first_grouped: bool) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4
        branch = cout - cin if stride == 2 else cout
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, groups=groups if first_grouped else 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, branch, 1, groups=groups, bias=False), nn.BatchNorm2d(branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.stride == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, 2, 1), y], 1))
        return torch.relu(x + y)


class ShuffleNet(nn.Module):
    """ShuffleNet v1 (Zhang et al. 2018), 3 groups: stages of 240, 480 and 960 channels."""

    def __init__(self, groups: int = 3, stages: tuple[int, ...] = (240, 480, 960), repeats: tuple[int, ...] = (4, 8, 4), classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 24
        for stage, (cout, count) in enumerate(zip(stages, repeats, strict=True)):
            for unit in range(count):
                layers.append(ShuffleUnit(cin, cout, groups, 2 if unit == 0 else 1, first_grouped=not (stage == 0 and unit == 0)))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class Permute(nn.Module):
    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's: channels moved last, normalised, moved back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.Module):
    """The ConvNeXt authors' own LayerNorm for N x C x H x W, written out in operations."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: Linear layers on the channels-last map, a layer scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
                                   nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    """torchvision's ConvNeXt, its module structure and names, two small stages;
    ``official=True`` uses the authors' channels-first LayerNorm between stages."""

    def __init__(self, widths: tuple[int, int] = (8, 16), classes: int = 10, official: bool = False) -> None:
        super().__init__()
        norm = ChannelsFirstLayerNorm if official else (lambda c: LayerNorm2d(c, eps=1e-6))
        self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=4), norm(widths[0])), CNBlock(widths[0]),
                                      nn.Sequential(norm(widths[0]), nn.Conv2d(widths[0], widths[1], 2, stride=2)), CNBlock(widths[1]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(norm(widths[1]), nn.Flatten(1), nn.Linear(widths[1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch norm statistics and scales, so that folding them is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2), (module.running_mean, -0.2, 0.2),
                                          (module.running_var, 0.5, 2.0)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def export(model: nn.Module, shape: tuple[int, ...], style: str) -> onnx.ModelProto:
    """``model`` as another tool would write it (see the module's docstring)."""
    opset = 9 if style == "opset9" else 13
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), buffer, dynamo=False, opset_version=opset, input_names=["data"],
                          output_names=["prob"], dynamic_axes={"data": {0: "batch"}, "prob": {0: "batch"}},
                          keep_initializers_as_inputs=style == "opset9", do_constant_folding=style != "opset9")
    exported = onnx.load_from_string(buffer.getvalue())
    return _folded(exported) if style == "folded" else exported


def _folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """Batch norms as Unsqueeze, Mul and Add of constants; every weight a Constant node."""
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    read = {name for node in model.graph.node if node.op_type != "BatchNormalization" for name in node.input}
    nodes: list[Any] = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))
                        for name, array in weights.items() if name in read]
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (weights[name] for name in node.input[1:5])
        scale = (gamma / np.sqrt(var + eps)).astype(np.float32)
        shift = (beta - mean * scale).astype(np.float32)
        stem = node.output[0]
        axes = helper.make_node("Constant", [], [f"{stem}/axes"], value=numpy_helper.from_array(np.array([1, 2], np.int64)))
        nodes += [
            helper.make_node("Constant", [], [f"{stem}/scale"], value=numpy_helper.from_array(scale)),
            helper.make_node("Constant", [], [f"{stem}/shift"], value=numpy_helper.from_array(shift)),
            axes,
            helper.make_node("Unsqueeze", [f"{stem}/scale", f"{stem}/axes"], [f"{stem}/scale3"]),
            helper.make_node("Unsqueeze", [f"{stem}/shift", f"{stem}/axes"], [f"{stem}/shift3"]),
            helper.make_node("Mul", [node.input[0], f"{stem}/scale3"], [f"{stem}/scaled"], name=f"{node.name}/mul"),
            helper.make_node("Add", [f"{stem}/scaled", f"{stem}/shift3"], [stem], name=f"{node.name}/add"),
        ]
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), list(model.graph.output))
    folded = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="folded-by-a-converter")
    folded.ir_version = model.ir_version
    onnx.checker.check_model(folded)
    return folded


def learned_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
