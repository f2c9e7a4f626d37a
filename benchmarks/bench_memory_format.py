"""Training steps per second on the CPU: the torch backend in each memory format, against a
hand-written NCHW PyTorch loop over the same module. Run by hand (`make bench`).

For LeNet-5 at 32x32 (batch 64), ResNet-18 at 64x64 and VGG-16 at 64x64 (batch 32), the
same random images and labels go through: a hand-written loop (forward, cross-entropy,
backward, SGD step) on the torch backend's module in the default NCHW layout; and
cnnspec's own `train_step` with `memory_format` contiguous and channels_last. Paired
rounds, order alternating; medians of images/s and of the ratio to the hand-written loop.
The rule `channels_last_pays` in backends/torch_backend.py comes from these numbers.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

import cnnspec
from cnnspec.backends import torch_backend
from cnnspec.harness.config import TrainConfig
from cnnspec.harness.weights import initial_weights
from cnnspec.load import with_input_size

CASES = {"lenet5": (None, 64), "resnet18": ((64, 64), 32), "vgg16": ((64, 64), 32)}


def measure(name: str, size: tuple[int, int] | None, batch: int, rounds: int, steps: int = 4) -> dict[str, float]:
    """Images/s per way of training ``name``: hand-written NCHW, and cnnspec per layout."""
    graph = cnnspec.load_spec(name)
    if size is not None:
        graph = with_input_size(graph, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *graph.input_shape)).astype(np.float32)
    y = rng.integers(0, graph.output_shape[0], batch).astype(np.int64)
    weights = initial_weights(graph, 0)
    sessions = {}
    for layout in ("contiguous", "channels_last"):
        config = TrainConfig.model_validate({"memory_format": layout, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}})
        sessions[layout] = torch_backend.open_session(graph, config, device="cpu", precision="fp32")
        sessions[layout].set_weights(weights)
    module = torch_backend._eval_module(graph, weights).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def hand() -> None:
        loss = loss_fn(module(xt), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    runs = {"hand": hand, "contiguous": lambda: sessions["contiguous"].train_step(x, y),
            "channels_last": lambda: sessions["channels_last"].train_step(x, y)}
    for run in runs.values():  # warm up
        run()
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(rounds):
        for key in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                runs[key]()
            seconds[key].append((time.perf_counter() - start) / steps)
    return {key: batch / statistics.median(values) for key, values in seconds.items()}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"{'model':9} {'hand NCHW':>10} {'contiguous':>11} {'channels_last':>14} {'CL/hand':>8} {'contig/hand':>12}  images/s")
    for name, (size, batch) in CASES.items():
        speed = measure(name, size, batch, rounds)
        print(f"{name:9} {speed['hand']:10.0f} {speed['contiguous']:11.0f} {speed['channels_last']:14.0f} "
              f"{speed['channels_last'] / speed['hand']:7.2f}x {speed['contiguous'] / speed['hand']:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
