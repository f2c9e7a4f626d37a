"""The NumPy reference backend against the torch backend on the networks after 2016
(run by hand, `make bench`): EfficientNet-B0 and MobileNetV3-Small at 64x64, batch 16,
training steps and inference, the same random images through both, paired rounds in one
process, order alternating. The goal is that the reference stays usable for checking
(within 20x of torch), not that it competes.

    python benchmarks/bench_modern.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

import cnnspec
from cnnspec.backends import numpy_backend, torch_backend
from cnnspec.backends.torch_layout import cpu_name
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig

NETWORKS = ("efficientnet_b0", "mobilenet_v3_small")
BATCH, STEPS = 16, 3


def images_per_second(session: object, x: np.ndarray, y: np.ndarray, training: bool) -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        if training:
            session.train_step(x, y)  # type: ignore[attr-defined]
        else:
            session.predict(x)  # type: ignore[attr-defined]
    return STEPS * len(x) / (time.perf_counter() - start)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"{cpu_name()}, torch {torch.__version__} ({torch.get_num_threads()} threads), batch {BATCH}, 64x64, {rounds} paired rounds")
    print(f"{'network':20} {'work':8} {'numpy img/s':>12} {'torch img/s':>12} {'torch / numpy':>14}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 64, 64)).astype(np.float32)
    y = rng.integers(0, 1000, BATCH)
    for name in NETWORKS:
        graph = with_input_size(cnnspec.load_spec(name), (64, 64))
        config = TrainConfig.model_validate({"optimizer": {"name": "sgd", "lr": 0.01}})
        sessions = {"numpy": numpy_backend.open_session(graph, config), "torch": torch_backend.open_session(graph, config)}
        for session in sessions.values():
            session.set_weights(initial_weights(graph, 0))
            session.train_step(x, y)  # warm: allocations, kernel choice
        for training in (True, False):
            speeds: dict[str, list[float]] = {"numpy": [], "torch": []}
            for round_ in range(rounds):
                order = ["numpy", "torch"] if round_ % 2 == 0 else ["torch", "numpy"]
                for backend in order:
                    speeds[backend].append(images_per_second(sessions[backend], x, y, training))
            ratio = statistics.median(t / n for n, t in zip(speeds["numpy"], speeds["torch"], strict=True))
            print(f"{name:20} {'train' if training else 'predict':8} {statistics.median(speeds['numpy']):12.1f} "
                  f"{statistics.median(speeds['torch']):12.1f} {ratio:13.1f}x", flush=True)


if __name__ == "__main__":
    main()
