"""The NumPy backend against PyTorch, side by side in one run (run by hand).

1. LeNet-5 training images/s at batch 64 on MNIST (8,000 images): numpy backend vs torch
   backend, both through the harness's epoch loop, paired rounds (goal: >= 1/3).
2. A 64->64 3x3 convolution, batch 32, 56x56, forward and forward+backward: NumPy ops vs
   torch.nn.functional.conv2d (goal: within 2x).
3. Peak memory of one LeNet-5 training step at batch 64 (tracemalloc sees NumPy's
   allocations), against the harness's estimate.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cnnspec
from cnnspec.backends import numpy_backend, numpy_ops, torch_backend
from cnnspec.data.dataset import load_dataset
from cnnspec.data.normalization import normalization_for
from cnnspec.graph.weights import initial_weights
from cnnspec.harness.loop import _train_epoch
from cnnspec.harness.memory import estimate_memory
from cnnspec.runs.folder import RunDir

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


class Quiet:
    def start_epoch(self, *args: object) -> None: ...
    def step(self, *args: object) -> None: ...


def median_seconds(run: object, repeats: int = 5) -> float:
    run()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lenet_throughput(rounds: int) -> None:
    graph = cnnspec.load_spec("lenet5")
    config = cnnspec.api.train_config(graph, {"data.source": str(MNIST), "batch_size": 64})
    data = load_dataset(config.data, graph.input_shape, 10, 0)
    norm = normalization_for(config, data.x_train)
    sessions = {"numpy": numpy_backend.open_session(graph, config), "torch": torch_backend.open_session(graph, config, device="cpu")}
    for session in sessions.values():
        session.set_weights(initial_weights(graph, 0))
    run = RunDir(Path("/nonexistent"))
    speed = {name: [] for name in sessions}  # type: dict[str, list[float]]
    for round_ in range(rounds):
        order = list(sessions) if round_ % 2 == 0 else list(sessions)[::-1]
        for name in order:
            speed[name].append(_train_epoch(sessions[name], data, norm, config, round_, Quiet(), run)["images_per_second"])  # type: ignore[arg-type]
    ratios = [a / b for a, b in zip(speed["numpy"], speed["torch"], strict=True)]
    print(f"LeNet-5 training, batch 64, MNIST 8,000 images, {rounds} paired epochs:")
    print(f"  numpy {statistics.median(speed['numpy']):,.0f} img/s, torch {statistics.median(speed['torch']):,.0f} img/s, "
          f"numpy/torch median {statistics.median(ratios):.3f} (goal >= 0.333)")


def convolution() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(64, np.float32)
    conv = numpy_ops.Conv2d(((1, 1), (1, 1)), (3, 3), (1, 1), (1, 1), 1, (56, 56), True)
    conv.bind({"weight": w, "bias": b})
    xt, wt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))

    def numpy_backward() -> None:
        out = conv.forward([x], True)
        conv.backward(np.ones_like(out))

    def torch_forward() -> None:
        with torch.no_grad():
            F.conv2d(xt, wt, bt, padding=1)

    def torch_backward() -> None:
        out = F.conv2d(xt, wt, bt, padding=1)
        out.backward(torch.ones_like(out))

    print("conv2d 64->64, 3x3, batch 32, 56x56 (float32):")
    for label, ours, theirs in (("forward", lambda: conv.forward([x], True), torch_forward), ("forward+backward", numpy_backward, torch_backward)):
        a, c = median_seconds(ours), median_seconds(theirs)
        print(f"  {label:17} numpy {a * 1e3:7.1f} ms, torch {c * 1e3:7.1f} ms, numpy takes {a / c:.2f}x torch's time (goal <= 2)")


def peak_memory() -> None:
    graph = cnnspec.load_spec("lenet5")
    session = numpy_backend.open_session(graph, graph.train)
    session.set_weights(initial_weights(graph, 0))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, 64)
    session.train_step(x, y)  # optimizer state exists from here on
    tracemalloc.start()
    session.train_step(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fixed, per_sample = estimate_memory(graph, graph.train, numpy_backend.workspace_bytes(graph))
    print(f"peak memory of a LeNet-5 training step at batch 64 (numpy): {peak / 2**20:.2f} MiB allocated during the step; "
          f"the harness estimates {(fixed + 64 * per_sample) / 2**20:.2f} MiB in all")


def main() -> None:
    print(f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    lenet_throughput(rounds=5)
    convolution()
    peak_memory()


if __name__ == "__main__":
    main()
