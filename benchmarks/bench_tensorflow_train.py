"""Training throughput of the tensorflow backend against a hand-written Keras `model.fit`.

Same data (the real MNIST test set, first 8,000 images, padded to 32x32), same batch size
(64), same model (LeNet-5: Keras' own layers, channels-last data as a Keras user has it),
same optimizer (Adam, 1e-3), same process, rounds alternating so machine noise hits both.
Run by hand: `.venv/bin/python benchmarks/bench_tensorflow_train.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import cnnspec
from cnnspec.backends import tensorflow_backend
from cnnspec.harness.data import load_dataset
from cnnspec.harness.run import RunDir, _train_epoch, normalization_for

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


class Quiet:
    def start_epoch(self, *args: object) -> None: ...
    def step(self, *args: object) -> None: ...


def lenet() -> keras.Model:
    """What a Keras user writes."""
    model = keras.Sequential([
        keras.Input((32, 32, 1)),
        keras.layers.Conv2D(6, 5, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 5, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(120, activation="relu"), keras.layers.Dense(84, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    graph = cnnspec.load_spec("lenet5")
    config = cnnspec.api.train_config(graph, {"data.source": str(MNIST), "batch_size": 64})
    data = load_dataset(config.data, graph.input_shape, 10, 0)
    norm = normalization_for(config, data.x_train)

    session = tensorflow_backend.open_session(graph, config, device="cpu")
    session.set_weights(cnnspec.harness.weights.initial_weights(graph, 0))
    model = lenet()
    x = np.ascontiguousarray(norm.apply(data.x_train).transpose(0, 2, 3, 1))  # NHWC
    y = data.y_train
    run = RunDir(Path("/nonexistent"))

    def cnnspec_epoch(round_: int) -> float:
        return float(_train_epoch(session, data, norm, config, round_, Quiet(), run)["images_per_second"])  # type: ignore[arg-type]

    def fit_epoch(round_: int) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=1, shuffle=True, verbose=0)
        return len(x) / (time.perf_counter() - start)

    cnnspec_epoch(0)  # warm-up (tracing), both
    fit_epoch(0)
    wall, cpu, speeds_seen = [], [], []
    for round_ in range(args.rounds):
        pair = [(cnnspec_epoch, 0), (fit_epoch, 1)]
        speeds, cpu_seconds = [0.0, 0.0], [0.0, 0.0]
        for run_epoch, slot in pair if round_ % 2 == 0 else pair[::-1]:
            started = time.process_time()
            speeds[slot] = run_epoch(round_)
            cpu_seconds[slot] = time.process_time() - started
        speeds_seen.append(speeds)
        wall.append(speeds[0] / speeds[1])
        cpu.append(cpu_seconds[1] / cpu_seconds[0])
    quartiles = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, LeNet-5, MNIST {len(x):,} images, batch 64, "
          f"{args.rounds} paired rounds")
    print(f"  cnnspec {statistics.median(s[0] for s in speeds_seen):,.0f} img/s, "
          f"model.fit {statistics.median(s[1] for s in speeds_seen):,.0f} img/s (medians)")
    print(f"  images/s ratio, cnnspec / model.fit (wall clock): median {statistics.median(wall):.3f}, "
          f"quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}")
    print(f"  the same from CPU time (less sensitive to other load): median {statistics.median(cpu):.3f}")


if __name__ == "__main__":
    main()
