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

    ours, theirs = [], []
    _train_epoch(session, data, norm, config, 0, Quiet(), run)  # warm-up, both
    hand_written_epoch(model, optimizer, x, y, 64, 0)
    for round_ in range(args.rounds):
        ours.append(_train_epoch(session, data, norm, config, round_, Quiet(), run)["images_per_second"])  # type: ignore[arg-type]
        theirs.append(hand_written_epoch(model, optimizer, x, y, 64, round_))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet-5, MNIST 8,000 images, batch 64, {args.rounds} rounds")
    print(f"  cnnspec torch backend (whole harness epoch): {statistics.median(ours):8,.0f} img/s")
    print(f"  hand-written PyTorch loop:                   {statistics.median(theirs):8,.0f} img/s")
    print(f"  ratio: {statistics.median(ours) / statistics.median(theirs):.3f} (per round: "
          + ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True)) + ")")


if __name__ == "__main__":
    main()
