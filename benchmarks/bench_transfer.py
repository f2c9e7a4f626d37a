"""Does transfer beat scratch? LeNet-5 pretrained on MNIST digits 0-4, then digits 5-9
from 20 images per class (run by hand: `python benchmarks/bench_transfer.py [--draws N]`).

Reads the shared MNIST test set in place (``../shared/data/mnist``). Every digit 0-4 but
the last 500 pretrains LeNet-5 (10 epochs, random 2-pixel shifts; the 500 validate it).
Each draw then picks 20 images of every digit 5-9 (seeded by the draw) and validates on all
the other 5-9 images (about 4,760). Every variant trains the same network with a new
5-way output layer on the same 100 images for 20 epochs (Adam, batch 20), and is read after
every epoch (the schedule is constant, so a run's accuracy after epoch k is a k-epoch
run's):

- scratch: everything from its random initialisation (lr 1e-3 and 3e-3; 1e-2 diverges);
- head, conv body frozen: c1-s4 pretrained and frozen, f5 f6 (pretrained) and the new
  output layer trained (lr 3e-3), the talks' "keep the convolutional body, train the head";
- classifier only, solved (`--head-only`): everything but the output layer frozen, the
  output layer solved on the cached f6 features (L-BFGS, multinomial logistic regression
  with L2, C = 1): one value, the same at every epoch count;
- classifier only, Adam 0.03, old head kept: the same layer trained by the run's optimizer
  from the pretraining run's 0-4 classifier (``--keep-head``), as ``--head-only`` did
  before it solved and before a new task got a new classifier;
- fine-tuned: the pretrained conv body at a tenth of the head's rate (lr 3e-3 and 0.01,
  lr_mult 0.1);
- random conv body frozen: the head variant on the seeded random body (scratch with c1-s4
  frozen), a control: how much of the head's lead is the pretraining, how much the freezing.

The runs start from the pretraining run (``init=RUN``), so they normalise inputs as it did.
A plot of accuracy against epochs (mean over draws, min-max band) goes to
build/bench-transfer/transfer.png.

`--speed`: ResNet-18 at 64x64 on CPU over 2,000 generated JPEGs (10 classes): seconds per
epoch after the first of head-only training on cached bottleneck features, against full
fine-tuning epochs on the same data, in one run; and the head-only network's prediction
latency for a single image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
OUT = Path(__file__).resolve().parent.parent / "build" / "bench-transfer"
EPOCHS = 20
READ_AT = (1, 2, 3, 5, 10, 20)
VARIANTS: dict[str, tuple[dict[str, object], bool]] = {  # label: (settings, starts from the pretrained run)
    "scratch, lr 1e-3": ({"optimizer.lr": 1e-3}, False),
    "scratch, lr 3e-3": ({"optimizer.lr": 3e-3}, False),
    "head, conv body frozen": ({"optimizer.lr": 3e-3, "freeze": ["before:f5"]}, True),
    "classifier only, solved (--head-only)": ({"head_only": True}, True),
    "classifier only, Adam 0.03, old head kept": ({"optimizer.lr": 0.03, "freeze": ["before:output"], "keep_head": True}, True),
    "fine-tuned, lr 3e-3, body x0.1": ({"optimizer.lr": 3e-3, "lr_mult": {"before:f5": 0.1}}, True),
    "fine-tuned, lr 1e-2, body x0.1": ({"optimizer.lr": 0.01, "lr_mult": {"before:f5": 0.1}}, True),
    "random conv body frozen": ({"optimizer.lr": 3e-3, "freeze": ["before:f5"]}, False),
}
MARGINS = {"head, conv body frozen": "head", "fine-tuned, lr 3e-3, body x0.1": "fine-tuned, lr 3e-3", "fine-tuned, lr 1e-2, body x0.1": "fine-tuned, lr 1e-2", "classifier only, solved (--head-only)": "classifier only, solved", "classifier only, Adam 0.03, old head kept": "classifier, Adam, old head",
           "random conv body frozen": "random body (control)"}


def mnist() -> tuple[np.ndarray, np.ndarray]:
    from cnnspec.data.dataset import _read_idx  # the IDX reader the `--data DIR` source uses

    return _read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:, None], _read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)


def pretraining_set(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """Digits 0-4: all but the last 500 train, those 500 validate."""
    low = np.where(y < 5)[0]
    np.savez(path, x_train=x[low[:-500]], y_train=y[low[:-500]], x_test=x[low[-500:]], y_test=y[low[-500:]])
    return path


def few_shot_set(x: np.ndarray, y: np.ndarray, draw: int, path: Path, per_class: int = 20) -> Path:
    """``per_class`` images of each digit 5-9 (labels 0-4) to train on, every other 5-9 image to validate."""
    rng = np.random.default_rng(draw)
    few = np.concatenate([rng.choice(np.where(y == digit)[0], per_class, replace=False) for digit in range(5, 10)])
    rest = np.setdiff1d(np.where(y >= 5)[0], few)
    np.savez(path, x_train=x[few], y_train=y[few] - 5, x_test=x[rest], y_test=y[rest] - 5)
    return path


def speed(epochs: int) -> None:
    import statistics
    import time

    import cnnspec
    from cnnspec.backends import load_backend
    from cnnspec.inference.engines import open_run_session
    from cnnspec.runs.loading import load_run

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

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5, help="few-shot sets drawn (seeds 0..N-1)")
    parser.add_argument("--speed", action="store_true", help="the bottleneck cache's speed instead")
    args = parser.parse_args()
    if args.speed:
        speed(3)
        return
    x, y = mnist()
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    low = pretraining_set(x, y, work / "low.npz")
    pre = cnnspec.train("lenet5", "torch", out=work / "pre", quiet=True, epochs=10, classes="auto",
                        **{"data.source": str(low), "data.augment.random_crop": 2})
    print(f"pretrained on digits 0-4 ({int((y < 5).sum()) - 500:,} images, 10 epochs): val accuracy {pre.final['val_accuracy']:.3f}")
    curves: dict[str, list[list[float]]] = {label: [] for label in VARIANTS}
    seconds: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for draw in range(args.draws):
        data = few_shot_set(x, y, draw, work / f"few-{draw}.npz")
        for label, (settings, pretrained) in VARIANTS.items():
            init = work / "pre" if pretrained else None
            result = cnnspec.train("lenet5", "torch", out=work / f"run-{draw}-{len(list(work.iterdir()))}", quiet=True, epochs=EPOCHS, init=init,
                                   classes="auto", batch_size=20, seed=draw, **{"data.source": str(data)}, **settings)  # type: ignore[arg-type]
            row = [entry["val_accuracy"] for entry in result.history]
            curves[label].append(row * EPOCHS if settings.get("head_only") else row)  # a solve: one value whatever the epochs
            seconds[label].append(sum(entry["seconds"] for entry in result.history))
        print(f"  draw {draw + 1}/{args.draws} done", file=sys.stderr)
    rest = int((y >= 5).sum()) - 100
    print(f"digits 5-9 from 100 images, validated on the other {rest:,}; mean val accuracy of {args.draws} draws (min-max below):")
    print(f"  {'epochs':<44}" + "".join(f"{k:>11}" for k in READ_AT))
    for label, runs in curves.items():
        table = np.asarray(runs)
        print(f"  {label:<44}" + "".join(f"{table[:, k - 1].mean():>11.3f}" for k in READ_AT))
        print(f"  {'':<44}" + "".join(f"{table[:, k - 1].min():.2f}-{table[:, k - 1].max():.2f}".rjust(11) for k in READ_AT))
    best_scratch = np.maximum(*(np.asarray(curves[label]) for label in ("scratch, lr 1e-3", "scratch, lr 3e-3")))
    print("  points above the better scratch run of each draw (mean, and the smallest of the draws):")
    for label, short in MARGINS.items():
        margin = 100 * (np.asarray(curves[label]) - best_scratch)
        print(f"  {short:<44}" + "".join(f"{margin[:, k - 1].mean():>+6.1f} ({margin[:, k - 1].min():>+3.0f})" for k in READ_AT))
    print("  training seconds per run (mean of the draws; validation excluded):")
    for label, spent in seconds.items():
        print(f"  {label:<44}{np.mean(spent):>11.2f}")
    _plot(curves, rest)
    _probe(work / "pre", work / "few-0.npz")


def _plot(curves: dict[str, list[list[float]]], validated: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    epochs = np.arange(1, EPOCHS + 1)
    for label, runs in curves.items():
        table = np.asarray(runs)
        line, = axes.plot(epochs, table.mean(axis=0), marker="o", markersize=3, label=label)
        axes.fill_between(epochs, table.min(axis=0), table.max(axis=0), color=line.get_color(), alpha=0.15)
    axes.set(xlabel="epochs (5 steps of 20 images each)", ylabel=f"val accuracy ({validated:,} images)", ylim=(0.2, 1.0), xticks=[1, *range(5, EPOCHS + 1, 5)],
             title="MNIST 5-9 from 100 images: LeNet-5 pretrained on 0-4 vs scratch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    OUT.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(OUT / "transfer.png")
    print(f"plot: {OUT / 'transfer.png'}")


def _probe(run: Path, data: Path) -> None:
    """A logistic regression on the pretrained body's features (draw 0's set), for reference."""
    from sklearn.linear_model import LogisticRegression

    import cnnspec

    for layer in ("s4", "f6"):
        features = cnnspec.features(run, str(data), layer)  # both splits, the 100 training images first
        values = features.values.reshape(len(features.values), -1)
        fit = LogisticRegression(max_iter=3000).fit(values[:100], features.labels[:100])
        print(f"  logistic regression on the pretrained {layer} features (draw 0): {fit.score(values[100:], features.labels[100:]):.3f}")


if __name__ == "__main__":
    main()
