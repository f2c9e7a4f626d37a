"""Training throughput of the torch backend against a hand-written PyTorch loop.

Same data (the real MNIST test set, first 8,000 images, padded to 32x32), same batch size
(64), same model (LeNet-5), same process, runs alternating so machine noise hits both.
Run by hand: `.venv/bin/python benchmarks/bench_torch_train.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import time

import torch
from paired import lenet5_on_mnist, paired_rounds
from torch import nn


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
    _, data, norm, cnnspec_epoch = lenet5_on_mnist("torch")
    model = lenet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(norm.apply(data.x_train))
    y = torch.from_numpy(data.y_train)

    def hand_epoch(round_: int) -> float:
        return hand_written_epoch(model, optimizer, x, y, 64, round_)

    summary = paired_rounds(cnnspec_epoch, hand_epoch, args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet-5, MNIST {len(x):,} images, batch 64, "
          f"{args.rounds} paired rounds")
    print(summary)


if __name__ == "__main__":
    main()
