"""What pruning and the static check save in ``cnnspec tune``.

1. The same sampled configurations (the random sampler, one seed) of LeNet-5 on the real
   MNIST test set (``../shared/data/mnist``, 10,000 images, 20% held out), trained with
   Hyperband and without pruning: epochs trained, wall time, best validation accuracy.
   Hyperband's study runs first; its promotions (stopped trials continued later) take
   trials of its total, so the study without pruning trains exactly the configurations
   it sampled. ``--no-promote`` measures Hyperband without promotion.
   Goal: at least 3x fewer epochs, the best within 1 point.
2. A search over ``layers.*`` under a parameter budget: how many samples the static check
   rejected, the time it took, and the training time that saved (each rejected sample
   costed at the mean time of a trained one).

    python benchmarks/bench_tune.py [--trials 40] [--epochs 27] [--backend torch] [--no-promote] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"

SPEC = """\
name: lenet5_tune
input: {{shape: [1, 28, 28]}}
defaults:
  conv2d: {{activation: relu}}
layers:
  - conv2d: {{filters: 6, kernel: 5, padding: same}}
    name: c1
  - maxpool2d: {{kernel: 2}}
  - conv2d: {{filters: 16, kernel: 5}}
    name: c3
  - maxpool2d: {{kernel: 2}}
  - flatten: {{}}
  - dense: {{units: 120, activation: relu}}
    name: f5
  - dense: {{units: 84, activation: relu}}
  - dense: {{units: 10}}
train:
  epochs: {epochs}
  batch_size: 128
  optimizer: {{name: adam, lr: 0.001}}
  data: {{source: {data}}}
tune:
  trials: {trials}
  sampler: random
  pruner: {pruner}
  promote: {promote}
{extra}  space:
{space}
"""

HYPER = "    optimizer.lr: {log_uniform: [1.0e-5, 3.0e-1]}\n    optimizer.name: {choice: [adam, sgd]}\n"
LAYERS = "    layers.c1.filters: {int: [4, 64]}\n    layers.c3.filters: {int: [8, 64]}\n    layers.f5.units: {int: [32, 512]}\n"


def study(folder: Path, name: str, backend: str, **fields: object) -> tuple[dict, float]:
    spec = folder / f"{name}.yaml"
    spec.write_text(SPEC.format(data=MNIST, **fields))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnspec", "tune", str(spec), "--out", str(folder / name), "--backend", backend, "--quiet"], check=True)
    return json.loads((folder / name / "summary.json").read_text()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="Hyperband's total (the issue's example study)")
    parser.add_argument("--epochs", type=int, default=27, help="epochs a trial: 27 gives Hyperband four brackets")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--no-promote", action="store_true", help="Hyperband without late promotion")
    parser.add_argument("--quick", action="store_true", help="12 trials of 6 epochs (minutes, not half an hour)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = 12, 6
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        common = {"epochs": args.epochs, "extra": "", "space": HYPER.rstrip("\n")}
        pruned, pruned_s = study(folder, "hyperband", args.backend, pruner="hyperband", trials=args.trials, promote=str(not args.no_promote).lower(), **common)
        sampled = [t["params"] for t in pruned["trials"] if t["state"] != "infeasible" and t["continues"] is None]
        full, full_s = study(folder, "none", args.backend, pruner="none", trials=len(sampled), promote="false", **common)
        same = sampled == [t["params"] for t in full["trials"]]
        print(f"LeNet-5, MNIST test set (8,000 train / 2,000 val), {args.trials} Hyperband trials of {args.epochs} epochs "
              f"({len(sampled)} random samples of lr and optimizer, {pruned['epochs']['promotions']} promotions), {args.backend}")
        print(f"same configurations in both studies: {same}")
        print(f"{'':12} {'epochs':>7} {'wall s':>8} {'best val_accuracy':>18}")
        for label, summary, seconds in (("hyperband", pruned, pruned_s), ("no pruning", full, full_s)):
            print(f"{label:12} {summary['epochs']['trained']:>7} {seconds:>8.1f} {summary['best']['value']:>18.4f}")
        print(f"hyperband: {full['epochs']['trained'] / pruned['epochs']['trained']:.2f}x fewer epochs, {full_s / pruned_s:.2f}x less wall time, "
              f"best {100 * (pruned['best']['value'] - full['best']['value']):+.2f} points")

        budget = {"trials": 4, "epochs": 1, "pruner": "none", "promote": "false", "extra": "  budget: {params: 60000}\n", "space": LAYERS.rstrip("\n")}
        searched, searched_s = study(folder, "layers", args.backend, **budget)
        trained = [t for t in searched["trials"] if t["state"] == "complete"]
        per_trial = sum(t["seconds"] for t in trained) / max(len(trained), 1)
        rejected = searched["counts"]["infeasible"]
        print(f"layers.* search under 60,000 parameters: {rejected} of {rejected + len(trained)} samples rejected statically "
              f"in {searched['static_check_seconds']:.2f} s in all; training them would have cost about {rejected * per_trial:.0f} s "
              f"({per_trial:.1f} s a trial of one epoch); the study took {searched_s:.0f} s")


if __name__ == "__main__":
    main()
