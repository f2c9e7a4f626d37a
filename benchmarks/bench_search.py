"""Similarity search, measured (run by hand: `python benchmarks/bench_search.py`).

- exact search: one query against 100,000 x 512 float32 vectors (cosine), cnnspec's
  chunked search against a plain NumPy baseline (one matrix-vector product and
  `argpartition`), in paired rounds;
- update: a 20,000-image collection (small PNGs, generated) embedded with LeNet-5 and
  with ResNet-18 at 64x64, then 1% of its files changed and `--update` run: its time
  against the full embedding's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def exact(rounds: int = 20) -> None:
    from cnnspec.search import Index, normalized

    rng = np.random.default_rng(0)
    vectors = normalized(rng.standard_normal((100_000, 512)).astype(np.float32))
    index = Index(vectors, np.zeros(len(vectors), np.int64), np.zeros((len(vectors), 16), np.uint8), [""] * len(vectors), {"metric": "cosine"})

    def ours(query: np.ndarray) -> np.ndarray:
        return index.search(query, 10)[1][0]

    def baseline(query: np.ndarray) -> np.ndarray:
        scores = vectors @ normalized(query)[0]
        top = np.argpartition(-scores, 10)[:10]
        return top[np.argsort(-scores[top])]

    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    for round_ in range(rounds):
        query = rng.standard_normal((1, 512)).astype(np.float32)
        pair = [("ours", ours), ("baseline", baseline)] if round_ % 2 == 0 else [("baseline", baseline), ("ours", ours)]
        found = {}
        for name, fn in pair:
            started = time.perf_counter()
            found[name] = fn(query)
            times[name].append(time.perf_counter() - started)
        assert (found["ours"] == found["baseline"]).all()
    a, b = statistics.median(times["ours"]), statistics.median(times["baseline"])
    print(f"exact search, 1 query, 100,000 x 512 float32, k=10, {rounds} paired rounds:")
    print(f"  cnnspec {1000 * a:.1f} ms, NumPy argpartition baseline {1000 * b:.1f} ms (medians); ratio {a / b:.2f}")


def update(count: int = 20_000) -> None:
    """With two networks: LeNet-5 (so cheap that reading and hashing every file is most of
    an update) and ResNet-18 at 64x64 (closer to what embeds photos)."""
    from PIL import Image

    import cnnspec

    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = work / "photos" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28)).astype(np.uint8)).save(folder / f"{i:05d}.png")
    resnet = cnnspec.parse_spec(cnnspec.load_spec("resnet18").source.replace("shape: [3, 224, 224]", "shape: [3, 64, 64]"), "resnet18-64.yaml")
    print(f"update after changing 1% of {count:,} images:")
    for label, spec in (("LeNet-5", cnnspec.load_spec("lenet5")), ("ResNet-18 at 64x64", resnet)):
        run = work / f"run-{spec.name}"
        cnnspec.train(spec, "torch", out=run, quiet=True, epochs=1, classes="auto", **{"data.source": str(work / "photos"), "data.limit": 256})
        started = time.perf_counter()
        cnnspec.embed(run, str(work / "photos"), out=work / f"{spec.name}.index")
        full = time.perf_counter() - started
        for path in sorted((work / "photos").rglob("*.png"))[:: 100]:  # 1%
            Image.fromarray(rng.integers(0, 256, (28, 28)).astype(np.uint8)).save(path)
        started = time.perf_counter()
        report = cnnspec.embed(run, str(work / "photos"), out=work / f"{spec.name}.index", update=True)
        partial = time.perf_counter() - started
        print(f"  {label}: full embed {full:.2f} s, update ({report.changed} changed, {report.kept:,} kept) {partial:.2f} s: "
              f"{100 * partial / full:.1f}% of a full embed (goal: at most 5%)")


if __name__ == "__main__":
    exact()
    update()
