"""Training throughput of the torch backend against a hand-written PyTorch loop.

Same data (the real MNIST test set, first 8,000 images, padded to 32x32), same batch size
(64), same model (LeNet-5), same process, runs alternating so machine noise hits both.
Run by hand: `.venv/bin/python benchmarks/bench_torch_train.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import cnnspec
from cnnspec.backends import torch_backend
from cnnspec.harness.data import load_dataset
from cnnspec.harness.run import RunDir, _train_epoch, normalization_for

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


class Quiet:
    def start_epoch(self, *args: object) -> None: ...
    def step(self, *args: object) -> None: ...


def hand_written_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> float:
    """What a practitioner writes: shuffle, slice, forward, loss, backward, step."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    total, correct = 0.0, 0
    for i in range(0, len(x), batch):
        index = order[i : i + batch]
        xb, yb = x[index], y[index]
        out = model(xb)
        loss = loss_fn(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(index)
        correct += int((out.argmax(1) == yb).sum())
    return len(x) / (time.perf_counter() - start)


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    graph = cnnspec.load_spec("lenet5")
    config = cnnspec.api.train_config(graph, {"data.source": str(MNIST), "batch_size": 64})
    data = load_dataset(config.data, graph.input_shape, 10, 0)
    norm = normalization_for(config, data.x_train)

    session = torch_backend.open_session(graph, config, device="cpu")
    session.set_weights(cnnspec.harness.weights.initial_weights(graph, 0))
    model = lenet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(norm.apply(data.x_train))
    y = torch.from_numpy(data.y_train)
    run = RunDir(Path("/nonexistent"))

    def cnnspec_epoch(round_: int) -> float:
        return float(_train_epoch(session, data, norm, config, round_, Quiet(), run)["images_per_second"])  # type: ignore[arg-type]

    def hand_epoch(round_: int) -> float:
        return hand_written_epoch(model, optimizer, x, y, 64, round_)

    cnnspec_epoch(0)  # warm-up, both
    hand_epoch(0)
    wall, cpu = [], []
    for round_ in range(args.rounds):
        # Paired rounds, alternating who goes first, so drifts in machine load cancel.
        pair = [(cnnspec_epoch, 0), (hand_epoch, 1)]
        speeds, cpu_seconds = [0.0, 0.0], [0.0, 0.0]
        for run_epoch, slot in pair if round_ % 2 == 0 else pair[::-1]:
            started = time.process_time()
            speeds[slot] = run_epoch(round_)
            cpu_seconds[slot] = time.process_time() - started
        wall.append(speeds[0] / speeds[1])
        cpu.append(cpu_seconds[1] / cpu_seconds[0])
    quartiles = statistics.quantiles(wall, n=4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet-5, MNIST 8,000 images, batch 64, {args.rounds} paired rounds")
    print(f"  images/s ratio, cnnspec / hand-written (wall clock): median {statistics.median(wall):.3f}, "
          f"quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}")
    print(f"  the same from CPU time (less sensitive to other load): median {statistics.median(cpu):.3f}")

if __name__ == "__main__":
    main()
