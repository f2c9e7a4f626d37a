"""Training throughput of the tensorflow backend against a hand-written Keras `model.fit`.

Same data (the real MNIST test set, first 8,000 images, padded to 32x32), same batch size
(64), same model (LeNet-5: Keras' own layers, channels-last data as a Keras user has it),
same optimizer (Adam, 1e-3), same process, rounds alternating so machine noise hits both.
Run by hand: `.venv/bin/python benchmarks/bench_tensorflow_train.py [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from paired import lenet5_on_mnist, paired_rounds


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
    _, data, norm, cnnspec_epoch = lenet5_on_mnist("tensorflow")
    model = lenet()
    x = np.ascontiguousarray(norm.apply(data.x_train).transpose(0, 2, 3, 1))  # NHWC

    def fit_epoch(round_: int) -> float:
        start = time.perf_counter()
        model.fit(x, data.y_train, batch_size=64, epochs=1, shuffle=True, verbose=0)
        return len(x) / (time.perf_counter() - start)

    summary = paired_rounds(cnnspec_epoch, fit_epoch, args.rounds)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, LeNet-5 against model.fit, MNIST {len(x):,} images, "
          f"batch 64, {args.rounds} paired rounds")
    print(summary)


if __name__ == "__main__":
    main()
