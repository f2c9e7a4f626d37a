"""Inference engines for predict, side by side in paired rounds: run by hand (`make bench`).

ResNet-18 (the zoo spec, seeded weights) at 64x64 and 224x224, batch 1 and 64, through:
eager PyTorch (the torch backend's module under inference_mode, NCHW: what a hand-written
script runs), the torch backend's session (channels-last on the CPU: `--runtime backend`), onnxruntime on the run's verified ONNX lowering (what `--runtime auto` picks on CPU for 64
images and more, or once built), and the NumPy backend. Prints images/s per engine and
each against eager PyTorch (median of paired rounds; these machines are shared and noisy).
Also times building the ONNX engine once, the cost `auto` weighs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cnnspec
from cnnspec.backends import numpy_backend, onnx_backend, torch_backend
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"{'size':>5} {'batch':>5} {'engine':14} {'images/s':>10} {'vs eager':>9}")
    for size in (64, 224):
        graph = with_input_size(cnnspec.load_spec("resnet18"), (size, size))
        weights = initial_weights(graph, 0)
        module = torch_backend._eval_module(graph, weights)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            path = Path(folder) / "model.onnx"
            path.write_bytes(onnx_backend.to_onnx(graph, weights).SerializeToString())
            ort = onnx_backend.RuntimeSession(str(path))
            built = time.perf_counter() - start
            numpy_session = numpy_backend.open_session(graph, TrainConfig(), device="cpu")
            numpy_session.set_weights(weights)
            torch_session = torch_backend.open_session(graph, TrainConfig(), device="cpu", precision="fp32")
            torch_session.set_weights(weights)

            def eager(x: np.ndarray, module: torch.nn.Module = module) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(x)).numpy()

            engines = {"eager torch": eager, "torch backend": torch_session.predict, "onnxruntime": ort.predict, "numpy": numpy_session.predict}
            for batch in (1, 64):
                x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
                reference = eager(x)
                for name, engine in engines.items():  # same numbers first
                    assert np.abs(engine(x) - reference).max() <= 1e-3 * np.abs(reference).max(), name
                repeats = max(1, 64 // batch) if size == 64 else max(1, 8 // batch)
                seconds: dict[str, list[float]] = {name: [] for name in engines}
                for _ in range(rounds):
                    for name, engine in engines.items():
                        start = time.perf_counter()
                        for _ in range(repeats):
                            engine(x)
                        seconds[name].append((time.perf_counter() - start) / repeats)
                base = statistics.median(seconds["eager torch"])
                for name in engines:
                    median = statistics.median(seconds[name])
                    print(f"{size:>5} {batch:>5} {name:14} {batch / median:10.1f} {base / median:8.2f}x", flush=True)
        print(f"{size:>5}       building the onnxruntime engine once: {built:.1f} s")


if __name__ == "__main__":
    main()
