"""What the training benchmarks share: LeNet-5 on the real MNIST test set through
cnnspec's own epoch loop, and paired rounds against a hand-written rival, alternating
which goes first so that drifts in machine load hit both."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cnnspec
import cnnspec.graph.weights
from cnnspec.data.dataset import Dataset, load_dataset
from cnnspec.data.normalization import Normalization, normalization_for
from cnnspec.harness.loop import _train_epoch
from cnnspec.runs.folder import RunDir

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
Epoch = Callable[[int], float]  # round -> images per second


class Quiet:
    def start_epoch(self, *args: object) -> None: ...
    def step(self, *args: object) -> None: ...


def lenet5_on_mnist(backend: str) -> tuple[Any, Dataset, Normalization, Epoch]:
    """(graph, data, normalisation, one cnnspec epoch) for LeNet-5, batch 64, on the CPU:
    the first 8,000 MNIST test images, padded to 32x32."""
    from cnnspec.backends import load_backend

    graph = cnnspec.load_spec("lenet5")
    config = cnnspec.api.train_config(graph, {"data.source": str(MNIST), "batch_size": 64})
    data = load_dataset(config.data, graph.input_shape, 10, 0)
    norm = normalization_for(config, data.x_train)
    session = load_backend(backend).open_session(graph, config, device="cpu")
    session.set_weights(cnnspec.graph.weights.initial_weights(graph, 0))
    run = RunDir(Path("/nonexistent"))

    def epoch(round_: int) -> float:
        return float(_train_epoch(session, data, norm, config, round_, Quiet(), run)["images_per_second"])  # type: ignore[arg-type]

    return graph, data, norm, epoch


def paired_rounds(ours: Epoch, theirs: Epoch, rounds: int) -> str:
    """Warm both up, run ``rounds`` pairs, and describe the images/s ratios."""
    ours(0)
    theirs(0)
    wall, cpu, speeds = [], [], []
    for round_ in range(rounds):
        pair = [(ours, 0), (theirs, 1)]
        seen, cpu_seconds = [0.0, 0.0], [0.0, 0.0]
        for run_epoch, slot in pair if round_ % 2 == 0 else pair[::-1]:
            started = time.process_time()
            seen[slot] = run_epoch(round_)
            cpu_seconds[slot] = time.process_time() - started
        speeds.append(seen)
        wall.append(seen[0] / seen[1])
        cpu.append(cpu_seconds[1] / cpu_seconds[0])
    quartiles = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
    return (
        f"  cnnspec {statistics.median(s[0] for s in speeds):,.0f} img/s, "
        f"hand-written {statistics.median(s[1] for s in speeds):,.0f} img/s (medians)\n"
        f"  images/s ratio, cnnspec / hand-written (wall clock): median {statistics.median(wall):.3f}, "
        f"quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}\n"
        f"  the same from CPU time (less sensitive to other load): median {statistics.median(cpu):.3f}"
    )
