"""Import ONNX files other tools wrote, at ImageNet size: run by hand (`make bench`).

For each classic CNN (AlexNet, VGG-16, ResNet-18 and GoogLeNet from the zoo, built with
the torch backend; SqueezeNet 1.1, DenseNet-121 and ShuffleNet v1 written in plain
PyTorch in tests/foreign_models.py) and each export style (torch.onnx at opset 9 with
weights as inputs and run-time shapes; at opset 13 with constant folding; folded: batch
norms as Mul/Add of Constant nodes), prints whether `cnnspec import` reads it, the spec's
parameters against the file's stored values, and the NumPy backend's output against
onnxruntime's on the same 3 images (max relative error; goal 1e-4).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import foreign_models as fm
from test_import_foreign import file_weights, imported_error

import cnnspec
from cnnspec.backends import onnx_import, torch_backend
from cnnspec.graph.weights import initial_weights


def zoo_module(name: str) -> tuple[object, tuple[int, ...]]:
    """The zoo spec as the torch backend builds it, with seeded weights and non-trivial
    batch norm statistics."""
    graph = cnnspec.load_spec(name)
    weights = initial_weights(graph, 0)
    rng = np.random.default_rng(0)
    for key, spec in graph.weights().items():
        if spec.init in ("zeros", "constant"):
            weights[key] = (weights[key] + rng.uniform(0.1, 0.5, spec.shape)).astype(np.float32)
    return torch_backend._eval_module(graph, weights), graph.input_shape


def main() -> None:
    sources = {
        "alexnet": lambda: zoo_module("alexnet"),
        "vgg16": lambda: zoo_module("vgg16"),
        "resnet18": lambda: zoo_module("resnet18"),
        "googlenet": lambda: zoo_module("googlenet"),
        "squeezenet1.1": lambda: (fm.randomised(fm.SqueezeNet()), (3, 224, 224)),
        "densenet121": lambda: (fm.randomised(fm.DenseNet()), (3, 224, 224)),
        "shufflenet-g3": lambda: (fm.randomised(fm.ShuffleNet()), (3, 224, 224)),
    }
    only = sys.argv[1:] or list(sources)
    print(f"{'model':14} {'style':8} {'imports':8} {'spec params':>12} {'file values':>12} {'source':>12} {'max rel err':>11} {'seconds':>8}")
    for name in only:
        module, shape = sources[name]()
        source_params = sum(p.numel() for p in module.parameters())
        for style in fm.STYLES:
            model = fm.export(module, shape, style)
            start = time.perf_counter()
            try:
                graph, error = imported_error(model, shape)  # import, then 3 images through NumPy and onnxruntime
            except onnx_import.ImportRefused as exc:
                print(f"{name:14} {style:8} {'no':8} {str(exc)[:90]}")
                continue
            seconds = time.perf_counter() - start
            stored = file_weights(model)
            print(f"{name:14} {style:8} {'yes':8} {graph.params + graph.non_trainable:12,} {stored:12,} {source_params:12,} {error:11.1e} {seconds:8.1f}")


if __name__ == "__main__":
    main()
