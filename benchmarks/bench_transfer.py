"""Does transfer beat scratch? LeNet-5 pretrained on MNIST digits 0-4, then digits 5-9
from 20 images per class (run by hand: `python benchmarks/bench_transfer.py [--epochs N]`).

Reads the shared MNIST test set in place (``../shared/data/mnist``): images 0-7,999 give
the pretraining set (digits 0-4) and the 100 training images (digits 5-9); 8,000-9,999
validate. Every variant trains the same network (a new 5-way head) for the same epochs
on the same 100 images:

- scratch: everything from its random initialisation (Adam, lr 1e-3 and 3e-3);
- head only: the pretrained body frozen, the head trained (lr 0.03);
- random body: the same, but the frozen body left at its random initialisation;
- fine-tuned: the pretrained body at a tenth of the head's learning rate (lr_mult 0.1);
- logistic regression on the pretrained body's f6 features (scikit-learn), for reference.

`--speed`: ResNet-18 at 64x64 on CPU over 2,000 generated JPEGs (10 classes): seconds per
epoch after the first of head-only training on cached bottleneck features, against full
fine-tuning epochs on the same data, in one run; and the head-only network's prediction
latency for a single image.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = struct.unpack(f">{raw[3]}I", raw[4 : 4 + 4 * raw[3]])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def speed(epochs: int) -> None:
    import statistics
    import time

    import cnnspec
    from cnnspec.backends import load_backend
    from cnnspec.harness.run import load_run, open_run_session

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import WORK, make_jpegs

    folder = make_jpegs(WORK / "jpegs64-2000", 2000, (64, 96))
    text = cnnspec.load_spec("resnet18").source.replace("shape: [3, 224, 224]", "shape: [3, 64, 64]")
    graph = cnnspec.parse_spec(text, "resnet18-64.yaml")
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-speed-"))
    common = {"data.source": str(folder), "data.fit": "resize", "classes": "auto", "epochs": epochs, "batch_size": 64}
    started = time.perf_counter()
    full = cnnspec.train(graph, "torch", out=work / "full", quiet=True, **common)  # type: ignore[arg-type]
    middle = time.perf_counter()
    head = cnnspec.train(graph, "torch", out=work / "head", quiet=True, freeze=["before:fc"], **common)  # type: ignore[arg-type]
    walls = (middle - started, time.perf_counter() - middle)
    later = [statistics.median(row["seconds"] for row in run.history[1:]) for run in (full, head)]
    print(f"ResNet-18 at 64x64, {len(full.history)} epochs over {folder} (torch, CPU):")
    print(f"  full fine-tuning: {later[0]:.2f} s an epoch; head on cached bottleneck features: {later[1]:.3f} s an epoch")
    print(f"  whole runs, data loading and the one caching pass included: {walls[0]:.1f} s against {walls[1]:.1f} s")
    print(f"  ratio: {later[0] / later[1]:,.0f}x faster per epoch after the first (goal: at least 20x)")
    loaded = load_run(work / "head")
    session = open_run_session(loaded, load_backend("torch").open_session, "cpu")
    one = np.random.default_rng(0).standard_normal((1, *graph.input_shape)).astype(np.float32)
    for _ in range(5):
        session.predict(one)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        session.predict(one)
        times.append(time.perf_counter() - started)
    print(f"  prediction latency, one image, whole network (body + new head): median {1000 * statistics.median(times):.1f} ms")


def main() -> None:
    import cnnspec
    from cnnspec.backends import load_backend
    from cnnspec.harness.run import load_run
    from cnnspec.harness.weights import load_arrays

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--speed", action="store_true", help="the bottleneck cache's speed instead")
    args = parser.parse_args()
    if args.speed:
        speed(3)
        return
    x, y = _idx(MNIST / "t10k-images-idx3-ubyte.gz")[:, None], _idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    low, val = np.where(y[:8000] < 5)[0], np.where(y[8000:] >= 5)[0] + 8000
    np.savez(work / "low.npz", x_train=x[low], y_train=y[low], x_test=x[8000:][y[8000:] < 5], y_test=y[8000:][y[8000:] < 5])
    rng = np.random.default_rng(0)
    few = np.concatenate([rng.choice(np.where(y[:8000] == digit)[0], 20, replace=False) for digit in range(5, 10)])
    np.savez(work / "high.npz", x_train=x[few], y_train=y[few] - 5, x_test=x[val], y_test=y[val] - 5)
    pre = cnnspec.train("lenet5", "torch", out=work / "pre", quiet=True, epochs=3, **{"data.source": str(work / "low.npz")})
    checkpoint = work / "pre" / "checkpoints" / "epoch-0003" / "weights.safetensors"
    print(f"pretrained on digits 0-4 ({len(low):,} images, 3 epochs): val accuracy {pre.final['val_accuracy']:.3f}")
    print(f"digits 5-9 from 100 images, validated on {len(val):,}:")
    common = {"data.source": str(work / "high.npz"), "classes": "auto", "batch_size": 20}
    variants = {
        "scratch, lr 1e-3": ({"optimizer.lr": 1e-3}, None),
        "scratch, lr 3e-3": ({"optimizer.lr": 3e-3}, None),
        "head only (pretrained body frozen)": ({"optimizer.lr": 0.03, "freeze": ["before:output"]}, checkpoint),
        "head only on a random frozen body": ({"optimizer.lr": 0.03, "freeze": ["before:output"]}, None),
        "fine-tuned (body at lr_mult 0.1)": ({"optimizer.lr": 0.01, "lr_mult": {"before:output": 0.1}}, checkpoint),
    }
    for epochs in args.epochs:
        for label, (extra, init) in variants.items():
            out = work / f"{label.split()[0]}-{len(list(work.iterdir()))}"
            result = cnnspec.train("lenet5", "torch", out=out, quiet=True, epochs=epochs, init=init, **common, **extra)  # type: ignore[arg-type]
            print(f"  {epochs:>2} epochs  {label:<38} {result.final['val_accuracy']:.3f}")
    loaded = load_run(work / "pre")
    session = load_backend("torch").open_session(loaded.graph, loaded.config, device="cpu")
    session.set_weights(load_arrays(checkpoint))
    data = np.load(work / "high.npz")

    def features(images: np.ndarray) -> np.ndarray:
        padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))  # 28 -> 32, as fit: auto pads
        return session.activations(loaded.normalization.apply(padded))["f6"]

    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=2000).fit(features(data["x_train"]), data["y_train"])
    print(f"  logistic regression on the pretrained f6 features: {classifier.score(features(data['x_test']), data['y_test']):.3f}")


if __name__ == "__main__":
    main()
