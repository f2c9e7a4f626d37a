"""Similarity search, measured (run by hand: `python benchmarks/bench_search.py`).

- exact search: one query against 100,000 x 512 float32 vectors (cosine), cnnspec's
  chunked search against a plain NumPy baseline (one matrix-vector product and
  `argpartition`), in paired rounds;
- approximate search: 1,000,000 x 256 clustered vectors, one query at a time: recall@10
  of the FAISS inverted file against exact search, both latencies, build time and size;
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
    from cnnspec.search.index import Index, normalized

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


def approximate(count: int = 1_000_000, dim: int = 256, queries: int = 100) -> None:
    import os

    from cnnspec.search.index import Index, normalized

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # clustered, as embeddings are
        n = min(100_000, count - start)
        vectors[start : start + n] = normalized(centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32))
    asked = normalized(centres[rng.integers(0, 1000, queries)] + 0.5 * rng.standard_normal((queries, dim)).astype(np.float32))
    index = Index(vectors, np.zeros(count, np.int64), np.zeros((count, 16), np.uint8), [""] * count, {"metric": "cosine"})
    started = time.perf_counter()
    index.build_approximate()
    built = time.perf_counter() - started
    exact_times, approximate_times, recalls = [], [], []
    for query in asked:
        started = time.perf_counter()
        _, truth = index.search(query[None], 10, exact=True)
        exact_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        _, found = index.search(query[None], 10)
        approximate_times.append(time.perf_counter() - started)
        recalls.append(len(set(found[0]) & set(truth[0])) / 10)
    work = Path(tempfile.mkdtemp(prefix="bench-search-ann-"))
    index.save(work / "v.index")
    sizes = [os.path.getsize(work / name) / 2**20 for name in ("v.index", "v.index.ivf")]
    a, b = statistics.median(exact_times), statistics.median(approximate_times)
    print(f"approximate search, {count:,} x {dim} clustered float32, k=10, {queries} queries one at a time:")
    print(f"  recall@10 against exact: {np.mean(recalls):.3f} (goal: at least 0.95)")
    print(f"  latency: exact {1000 * a:.1f} ms, approximate {1000 * b:.2f} ms (medians): {a / b:.0f}x lower (goal: at least 20x)")
    print(f"  build {built:.1f} s; on disk: index {sizes[0]:,.0f} MiB, approximate structure {sizes[1]:,.0f} MiB")


if __name__ == "__main__":
    exact()
    approximate()
    update()
