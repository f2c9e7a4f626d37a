"""Past one process: torchrun against one process, Spark against torchrun and against
`cnnspec predict` (run by hand: `python benchmarks/bench_distributed.py [--skip-spark]`).

1. torchrun: ResNet-18 at 64x64 on generated data (512 images, global batch 64), one
   process (all the cores as threads) against 2 processes (a share of the cores each);
   images/s of the second epoch, and the scaling efficiency (2-process rate / (2 x
   1-process rate)). Rounds alternate which goes first.
2. Spark scoring: the real MNIST test set (10,000 images, written once as PNG files)
   scored by LeNet-5 in `local[2]` against `cnnspec.predict` in this process on the same
   files; Spark's fixed start-up cost measured on 10 of them.
3. Spark training: the same small job (LeNet-5, one epoch of the digits) through
   TorchDistributor in 2 tasks against torchrun with 2 processes: wall-clock seconds of
   each, start to end, and the difference (Spark's start-up and per-task overhead).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
RESNET = Path(__file__).resolve().parent.parent / "specs" / "resnet18.yaml"


def cnnspec_cli(*args: str, cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cnnspec", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cnnspec {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def torchrun_scaling(work: Path, rounds: int) -> None:
    spec = work / "resnet18-64.yaml"
    spec.write_text(RESNET.read_text().replace("input: {shape: [3, 224, 224]}", "input: {shape: [3, 64, 64]}"))
    common = ["train", str(spec), "--data", "synthetic", "--epochs", "2", "--batch-size", "64", "--set", "data.limit=512", "--optimizer", "sgd",
              "--lr", "0.01", "-q"]
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(rounds):
        for nproc in ((1, 2) if round_ % 2 == 0 else (2, 1)):
            out = work / f"resnet-{nproc}-{round_}"
            cnnspec_cli(*common, "--out", str(out), *(["--nproc", str(nproc)] if nproc > 1 else []), cwd=work)
            second = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
            rates[nproc].append(second["images_per_second"])
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"torchrun, ResNet-18 at 64x64, CPU ({rounds} rounds, medians of the second epoch):")
    print(f"  1 process : {one:8.1f} img/s   {rates[1]}")
    print(f"  2 processes: {two:8.1f} img/s   {rates[2]}")
    print(f"  speed-up {two / one:.2f}x, scaling efficiency {two / (2 * one):.0%}")


def mnist_pngs(folder: Path) -> list[Path]:
    from PIL import Image

    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") if (MNIST / "t10k-images-idx3-ubyte.gz").exists() else open(MNIST / "t10k-images-idx3-ubyte", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i // 1000}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def spark_scoring(work: Path) -> None:
    import cnnspec
    from cnnspec.distributed.spark import score, session

    run = work / "lenet5"
    cnnspec.train("lenet5", out=run, epochs=1, data__source=str(MNIST), data__limit=2000)
    images = mnist_pngs(work / "mnist-png")
    started = time.perf_counter()
    cnnspec.predict(run, images, top=5)
    local = time.perf_counter() - started
    started = time.perf_counter()
    spark = session("local[2]")  # the JVM and the session: started once here, measured apart
    startup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        score(run, str(work / "mnist-png" / "0" / "0000*.png"), work / "ten.parquet")
        fixed = time.perf_counter() - started
        started = time.perf_counter()
        rows = score(run, str(work / "mnist-png"), work / "all.parquet")
        on_spark = time.perf_counter() - started
    finally:
        spark.stop()
    print(f"Spark scoring, LeNet-5, {rows:,} MNIST PNG files (local[2]) against cnnspec.predict in one process:")
    print(f"  cnnspec.predict: {local:6.1f} s  {len(images) / local:8.0f} img/s")
    print(f"  Spark          : {on_spark:6.1f} s  {rows / on_spark:8.0f} img/s  (session already up)  ratio {local / on_spark:.2f}x")
    print(f"  Spark fixed cost: JVM and session start {startup:.1f} s; then a 10-image job {fixed:.1f} s (workers start, each opens the run)")


def spark_training(work: Path, rounds: int) -> None:
    job = ["train", "lenet5", "--epochs", "1", "--batch-size", "64", "-q"]
    seconds: dict[str, list[float]] = {"torchrun": [], "spark": []}
    for round_ in range(rounds):
        for engine in (("torchrun", "spark") if round_ % 2 == 0 else ("spark", "torchrun")):
            extra = ["--engine", "spark"] if engine == "spark" else []
            seconds[engine].append(cnnspec_cli(*job, "--nproc", "2", *extra, "--out", str(work / f"{engine}-{round_}"), cwd=work))
    torchrun, spark = statistics.median(seconds["torchrun"]), statistics.median(seconds["spark"])
    print(f"training, LeNet-5, one epoch of the digits, 2 processes ({rounds} rounds, medians, wall clock from the command line):")
    print(f"  torchrun: {torchrun:5.1f} s   {[round(s, 1) for s in seconds['torchrun']]}")
    print(f"  Spark   : {spark:5.1f} s   {[round(s, 1) for s in seconds['spark']]}")
    print(f"  Spark's start-up and task overhead: {spark - torchrun:+.1f} s ({spark / torchrun:.1f}x the torchrun job)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        torchrun_scaling(work, args.rounds)
        if not args.skip_spark:
            spark_scoring(work)
            spark_training(work, args.rounds)


if __name__ == "__main__":
    main()
