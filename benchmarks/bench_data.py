"""The streaming input pipeline, measured three ways (run by hand: `make bench`, or
`python benchmarks/bench_data.py [throughput|memory|overlap] [--images N]`).

- throughput: decode + random resized crop to 224x224 + horizontal flip of JPEGs of mixed
  sizes (250 to 500 pixels, made with Pillow), 2 workers, batch 64: cnnspec's stream (the
  ImageNet preset a 224 input gets) against a hand-written torch DataLoader(num_workers=2)
  doing the same with Pillow, as torchvision's transforms do; paired rounds.
- memory: peak RSS of the training process plus the workers' private memory (forked
  workers share the rest) while streaming and training 200 steps over a manifest of 20,000
  and of 200,000 images; the difference is the cost of a larger set.
- overlap: ResNet-18 at 64x64 trained from a streamed folder of JPEGs against the same
  images held in memory, images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent.parent / "build" / "bench-data"


def make_jpegs(folder: Path, count: int, sizes: tuple[int, int], classes: int = 10) -> Path:
    """``count`` random-texture JPEGs in class folders, made once and reused."""
    from PIL import Image

    done = folder / f".made-{count}"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)  # smooth, photo-like
        image = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        target = folder / f"c{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{i:06d}.jpg", quality=90)
    done.touch()
    return folder


# ---- throughput ---------------------------------------------------------------------------


def throughput(images: int, rounds: int) -> None:
    import math
    import random

    import torch
    from PIL import Image, ImageOps

    import cnnspec
    import cnnspec.graph.weights
    from cnnspec.data.dataset import load_dataset
    from cnnspec.harness.loop import augment

    folder = make_jpegs(WORK / f"jpegs-{images}", images, (250, 500))
    graph = cnnspec.load_spec("resnet18")
    config = cnnspec.api.train_config(graph, {"data.source": str(folder), "data.stream": "always", "data.workers": 2, "data.validation": 0.01,
                                              "batch_size": 64})
    data = load_dataset(config.data, (3, 224, 224), 10, 0)
    config = config.model_copy(update={"data": data.config})  # the ImageNet preset: random resized crops and flips
    assert data.config.augment.random_resized_crop is not None and data.config.augment.hflip

    def ours(round_: int) -> float:
        rng = np.random.default_rng([0, round_])
        order = rng.permutation(len(data.x_train))
        started, seen = time.perf_counter(), 0
        for index, x in data.training_batches(order, 64, (0, round_)):
            x = augment(x, index, config, (0, round_))
            torch.from_numpy(x)
            seen += len(index)
        return seen / (time.perf_counter() - started)

    files = [s.path for s in data.x_train.samples]  # type: ignore[union-attr]
    labels = data.y_train

    class Files(torch.utils.data.Dataset):  # type: ignore[type-arg]
        """What torchvision's RandomResizedCrop(224) + RandomHorizontalFlip do, by hand."""

        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            with Image.open(files[i]) as image:
                image = image.convert("RGB")
            width, height = image.size
            for _ in range(10):
                area = width * height * random.uniform(0.08, 1.0)
                aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
                w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if 0 < w <= width and 0 < h <= height:
                    top, left = random.randint(0, height - h), random.randint(0, width - w)
                    break
            else:
                w, h, top, left = min(width, height), min(width, height), (height - min(width, height)) // 2, (width - min(width, height)) // 2
            image = image.crop((left, top, left + w, top + h)).resize((224, 224), Image.Resampling.BILINEAR)
            if random.random() < 0.5:
                image = ImageOps.mirror(image)
            return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()), int(labels[i])

    loader = torch.utils.data.DataLoader(Files(), batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)

    def theirs(round_: int) -> float:
        started, seen = time.perf_counter(), 0
        for x, _ in loader:
            seen += len(x)
        return seen / (time.perf_counter() - started)

    ours(0), theirs(0)  # warm: pools started, files in the page cache
    ratios, speeds = [], []
    for round_ in range(rounds):
        pair = [ours, theirs] if round_ % 2 == 0 else [theirs, ours]
        result = {fn.__name__: fn(round_) for fn in pair}
        speeds.append((result["ours"], result["theirs"]))
        ratios.append(result["ours"] / result["theirs"])
    print(f"throughput, {len(files):,} JPEGs (250-500 px) -> 224x224 random resized crops + flips, 2 workers, batch 64, {rounds} paired rounds:")
    print(f"  cnnspec {statistics.median(s[0] for s in speeds):,.0f} img/s, DataLoader {statistics.median(s[1] for s in speeds):,.0f} img/s (medians)")
    print(f"  ratio cnnspec / DataLoader: median {statistics.median(ratios):.2f}, range {min(ratios):.2f} .. {max(ratios):.2f}")


# ---- memory -------------------------------------------------------------------------------


def memory_child(count: int, steps: int) -> None:
    """In a fresh process: stream and train ``steps`` batches over a manifest of ``count``
    rows; print the peak RSS of this process and the private memory of its workers, in MiB."""
    import torch

    import cnnspec
    import cnnspec.graph.weights
    from cnnspec.backends import load_backend
    from cnnspec.data.dataset import load_dataset
    from cnnspec.data.loader import batches
    from cnnspec.data.normalization import normalization_for

    torch.set_num_threads(1)
    folder = make_jpegs(WORK / "small-pngs", 200, (24, 40))
    manifest = WORK / f"manifest-{count}.csv"
    if not manifest.exists():
        files = sorted(folder.rglob("*.jpg"))
        rows = [f"{files[i % len(files)].relative_to(WORK)},{i % 10}" for i in range(count)]
        manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    graph = cnnspec.parse_spec(
        "name: small\ninput: {shape: [3, 32, 32]}\nlayers:\n  - conv2d: {filters: 16, kernel: 3, activation: relu}\n"
        "  - global_avgpool2d: {}\n  - dense: {units: 10}\n",
        "small.yaml",
    )
    config = cnnspec.api.train_config(graph, {"data.source": str(manifest), "data.stream": "always", "data.workers": 2})
    data = load_dataset(config.data, graph.input_shape, 10, 0)
    norm = normalization_for(config, data.x_train)
    session = load_backend("torch").open_session(graph, config, device="cpu")
    session.set_weights(cnnspec.graph.weights.initial_weights(graph, 0))
    order = np.random.default_rng(0).permutation(len(data.x_train))[: steps * config.batch_size]
    for index, x in batches(data.x_train, order, config.batch_size):
        session.train_step(norm.apply(x), data.y_train[index])
    from cnnspec.data.loader import _POOLS

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = sum(_private_mib(pid) for pool in _POOLS.values() for pid in pool._processes)  # type: ignore[attr-defined]
    print(json.dumps({"images": count, "self_mib": own, "worker_mib": workers}))


def _private_mib(pid: int) -> float:
    """A live process's private memory (pages not shared with the process it was forked
    from: what it adds to the machine), in MiB."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def memory(steps: int) -> None:
    print(f"memory: streaming and training {steps} steps (batch 64) over a manifest of N images:")
    peaks = {}
    for count in (20_000, 200_000):
        out = subprocess.run([sys.executable, __file__, "memory-child", "--images", str(count), "--steps", str(steps)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[count] = result["self_mib"] + result["worker_mib"]
        print(f"  {count:>7,} images: training process {result['self_mib']:.0f} MiB peak, workers {result['worker_mib']:.0f} MiB private")
    print(f"  difference 200,000 - 20,000: {peaks[200_000] - peaks[20_000]:.1f} MiB (goal: under 64)")


# ---- overlap ------------------------------------------------------------------------------


def overlap(images: int, rounds: int) -> None:
    import torch

    import cnnspec
    import cnnspec.graph.weights
    from cnnspec.backends import load_backend
    from cnnspec.data.dataset import load_dataset
    from cnnspec.data.normalization import normalization_for
    from cnnspec.harness.loop import _train_epoch
    from cnnspec.runs.folder import RunDir

    folder = make_jpegs(WORK / f"jpegs64-{images}", images, (64, 96))
    text = cnnspec.load_spec("resnet18").source.replace("shape: [3, 224, 224]", "shape: [3, 64, 64]")
    graph = cnnspec.parse_spec(text, "resnet18-64.yaml")
    runs = {}
    for stream in ("never", "always"):
        config = cnnspec.api.train_config(graph, {"data.source": str(folder), "data.stream": stream, "data.workers": 2,
                                                  "data.fit": "resize", "batch_size": 64, "data.validation": 0.01})
        data = load_dataset(config.data, graph.input_shape, graph.output_shape[0], 0)
        session = load_backend("torch").open_session(graph, config, device="cpu")
        session.set_weights(cnnspec.graph.weights.initial_weights(graph, 0))
        runs[stream] = (session, data, normalization_for(config, data.x_train), config)

    class Quiet:
        def start_epoch(self, *args: object) -> None: ...
        def step(self, *args: object) -> None: ...

    def epoch(stream: str, round_: int) -> float:
        session, data, norm, config = runs[stream]
        return float(_train_epoch(session, data, norm, config, round_, Quiet(), RunDir(Path("/nonexistent")))["images_per_second"])  # type: ignore[arg-type]

    ratios = []
    for round_ in range(rounds):
        order = ("always", "never") if round_ % 2 == 0 else ("never", "always")
        speed = {stream: epoch(stream, round_) for stream in order}
        ratios.append(speed["always"] / speed["never"])
        print(f"  round {round_}: streamed {speed['always']:.0f} img/s, in memory {speed['never']:.0f} img/s")
    print(f"overlap, ResNet-18 at 64x64 on {images:,} JPEGs, torch with {torch.get_num_threads()} threads, 2 decode workers:")
    print(f"  images/s ratio streamed / in memory: median {statistics.median(ratios):.2f} (goal: at least 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["throughput", "memory", "overlap"])
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if args.what == ["memory-child"]:
        memory_child(args.images, args.steps)
        return
    for what in args.what:
        if what == "throughput":
            throughput(args.images or 10_000, args.rounds)
        elif what == "memory":
            memory(args.steps)
        elif what == "overlap":
            overlap(args.images or 2_000, args.rounds)
        else:
            parser.error(f"unknown part {what!r}")


if __name__ == "__main__":
    main()
