"""`cnnspec predict` end to end against what a practitioner writes by hand: run by hand
(`make bench`).

ResNet-18 (a run of the zoo spec at 64x64, and one at 224x224), scoring image files (PNG)
and one `.npy` batch, at batch 1 and batch 64. Each side is a fresh process, timed from
start to exit, so start-up, imports, decoding and writing the scores all count:

- cnnspec: `cnnspec predict RUN INPUTS --runtime auto --batch-size B --output scores.npy`
  (auto: onnxruntime on the CPU, its engine built once per run before timing; files are
  decoded by the streaming loader's workers);
- by hand: PIL decode (or np.load), the run's normalisation, the same network as an eager
  NCHW PyTorch module under inference_mode, in batches of B; scores saved with np.save.

Both sides' scores are compared (same top-1 for every input). Paired rounds, order
alternating; medians of images/s and of the ratio. Sizes: `--quick` scores fewer images
(the 224x224 cases always use fewer: 10,000 images there take an hour a side);
`--files-only` and `--npy-only` run one kind of input.

`--spec NAME` scores another zoo network (efficientnet_b0, mobilenet_v3_small, ...) and
`--size 64` keeps one size.

    python benchmarks/bench_predict.py [ROUNDS] [--quick] [--files-only | --npy-only] [--spec NAME] [--size N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cnnspec
from cnnspec.graph.load import with_input_size

HAND = '''
import sys, numpy as np, torch
from pathlib import Path
from PIL import Image
from cnnspec.backends import torch_backend
from cnnspec.runs.loading import load_run
from cnnspec.runs.files import load_arrays
run, batch, out, inputs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
loaded = load_run(run)
module = torch_backend._eval_module(loaded.graph, load_arrays(loaded.checkpoint / "weights.safetensors"))
norm = loaded.normalization
if inputs[0].endswith(".npy"):
    images = np.load(inputs[0]) / np.float32(norm.scale)  # [0, 1] -> the raw pixel scale
    chunks = (images[i:i + batch] for i in range(0, len(images), batch))
else:
    chunks = (np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32).transpose(2, 0, 1) for f in inputs[i:i + batch]])
              for i in range(0, len(inputs), batch))
outputs = []
with torch.inference_mode():
    for x in chunks:
        outputs.append(module(torch.from_numpy(norm.apply(x))).numpy())
np.save(out, np.concatenate(outputs))
'''


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def make_run(root: Path, size: int) -> Path:
    """A run of the network (ResNet-18 unless --spec) at size x size: one short epoch on
    synthetic data (the weights' values do not matter to speed), batch 64."""
    spec = _option("--spec", "resnet18")
    graph = with_input_size(cnnspec.load_spec(spec), (size, size))
    run = root / f"{spec}-{size}"
    cnnspec.train(graph, "torch", out=run, quiet=True, epochs=1, batch_size=16, classes=10, **{"data.source": "synthetic", "data.limit": 32})
    return run


def make_inputs(root: Path, size: int, files: int, arrays: int) -> tuple[list[Path], Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / f"png-{size}"
    folder.mkdir()
    paths = []
    for i in range(files):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    batch = root / f"batch-{size}.npy"
    np.save(batch, (rng.integers(0, 256, (arrays, 3, size, size)) / 255).astype(np.float32))
    return paths, batch


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--") and sys.argv[sys.argv.index(a) - 1] not in ("--spec", "--size")]
    rounds = int(args[0]) if args else 3
    quick = "--quick" in sys.argv
    cases = {64: (500, 2000) if quick else (2000, 10_000), 224: (100, 200) if quick else (300, 1000)}
    if "--size" in sys.argv:
        cases = {int(_option("--size", "64")): cases[int(_option("--size", "64"))]}
    cli = [sys.executable, "-m", "cnnspec", "predict"]
    print(f"{'size':>5} {'input':>12} {'batch':>5} {'cnnspec img/s':>14} {'by hand img/s':>14} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        hand = root / "hand.py"
        hand.write_text(HAND)
        for size, (file_count, array_count) in cases.items():
            run = make_run(root, size)
            files, batch_file = make_inputs(root, size, file_count, array_count)
            start = time.perf_counter()
            timed([*cli, str(run), str(batch_file), "--runtime", "onnxruntime", "--output", str(root / "warm.npy")])
            print(f"{size:>5} building the onnxruntime engine once (and one pass over the .npy): {time.perf_counter() - start:.1f} s", flush=True)
            kinds = [("files", files, len(files)), ("npy", [batch_file], array_count)]
            kinds = [kind for kind in kinds if f"--{'npy' if kind[0] == 'files' else 'files'}-only" not in sys.argv]
            for label, inputs, count in kinds:
                for batch in (1, 64):
                    ours_out, theirs_out = root / "ours.npy", root / "theirs.npy"
                    ours = [*cli, str(run), *map(str, inputs), "--runtime", "auto", "--batch-size", str(batch), "--output", str(ours_out), "-f", "json"]
                    theirs = [sys.executable, str(hand), str(run), str(batch), str(theirs_out), *map(str, inputs)]
                    seconds: dict[str, list[float]] = {"ours": [], "theirs": []}
                    for round_ in range(rounds):
                        pair = [("ours", ours), ("theirs", theirs)]
                        for name, command in pair if round_ % 2 == 0 else pair[::-1]:
                            seconds[name].append(timed(command))
                    a, b = np.load(ours_out), np.load(theirs_out)
                    agree = float((a.argmax(1) == b.argmax(1)).mean())
                    assert agree == 1.0 and np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), (label, batch, agree)
                    ours_speed = count / statistics.median(seconds["ours"])
                    theirs_speed = count / statistics.median(seconds["theirs"])
                    ratios = [t / o for o, t in zip(seconds["ours"], seconds["theirs"], strict=True)]
                    print(f"{size:>5} {f'{count:,} {label}':>12} {batch:>5} {ours_speed:14.1f} {theirs_speed:14.1f} {statistics.median(ratios):6.2f}x", flush=True)


if __name__ == "__main__":
    main()
