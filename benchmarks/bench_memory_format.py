"""Training steps per second on the CPU: the torch backend in each memory format, against a
hand-written NCHW PyTorch loop over the same module. Run by hand (`make bench`).

For LeNet-5 at 32x32 (batch 64), ResNet-18 at 64x64 and VGG-16 at 64x64 (batch 32), the
same random images and labels go through: a hand-written loop (forward, cross-entropy,
backward, SGD step) on the torch backend's module in the default NCHW layout; and
cnnspec's own `train_step` with `memory_format` contiguous and channels_last. Paired
rounds, order alternating; medians of images/s and of the ratio to the hand-written loop.
These numbers are why `memory_format: auto` measures per CPU and network (backends/torch_layout.py).
Also channels-last with bf16 autocast (`--precision bf16`: mixed precision, not equal to
fp32 to float32 tolerance, so never chosen by `auto` on the CPU). With `--compile`, also
channels-last under `torch.compile` (`cnnspec train --compile`), its one-off compile time
printed apart. With `--accuracy`, LeNet-5 trained on the real MNIST test set (8,000
images, 2,000 held out, 3 epochs) in fp32 and in bf16: the accuracy each reaches.

The optimizer is cnnspec's default, Adam (`--sgd`: SGD with momentum). The hand-written
loop constructs it as a script does, `torch.optim.Adam(module.parameters())`; cnnspec
uses the fused kernel (one pass over the weights; see FUSED in backends/torch_backend.py).

Last, the ceiling: this CPU's fp32 and bf16 matrix-multiply rate (a 2048 x 2048 GEMM, the
best case for its vector units) against the rate the hand-written loop already reaches
(3 x the forward FLOPs per training image). A 1.3x faster fp32 step would need the whole
step to run faster than that GEMM; bf16 has more than twice the room.

With `--modern`, EfficientNet-B0 and MobileNetV3-Small at 64x64 in place of the three.

    python benchmarks/bench_memory_format.py [ROUNDS] [--sgd] [--compile] [--accuracy] [--modern]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

import cnnspec
from cnnspec.backends import torch_backend
from cnnspec.graph.load import with_input_size
from cnnspec.graph.weights import initial_weights
from cnnspec.spec.training import TrainConfig

CASES = {"lenet5": (None, 64), "resnet18": ((64, 64), 32), "vgg16": ((64, 64), 32)}
if "--modern" in sys.argv:  # the networks after 2016, at 64 x 64, batch 32
    CASES = {"efficientnet_b0": ((64, 64), 32), "mobilenet_v3_small": ((64, 64), 32)}


OPTIMIZER = {"name": "sgd", "lr": 0.01, "momentum": 0.9} if "--sgd" in sys.argv else {"name": "adam", "lr": 1e-3}


def hand_optimizer(parameters: object) -> torch.optim.Optimizer:
    """The optimizer as a hand-written script makes it (PyTorch's defaults otherwise)."""
    if OPTIMIZER["name"] == "sgd":
        return torch.optim.SGD(parameters, lr=0.01, momentum=0.9)  # type: ignore[arg-type]
    return torch.optim.Adam(parameters, lr=1e-3)  # type: ignore[arg-type]


def gemm_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure(name: str, size: tuple[int, int] | None, batch: int, rounds: int, steps: int = 4, compiled: bool = False) -> dict[str, float]:
    """Images/s per way of training ``name``: hand-written NCHW, and cnnspec per layout."""
    graph = cnnspec.load_spec(name)
    if size is not None:
        graph = with_input_size(graph, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *graph.input_shape)).astype(np.float32)
    y = rng.integers(0, graph.output_shape[0], batch).astype(np.int64)
    weights = initial_weights(graph, 0)
    sessions = {}
    for key, layout, precision in (("contiguous", "contiguous", "fp32"), ("channels_last", "channels_last", "fp32"), ("bf16", "channels_last", "bf16")):
        config = TrainConfig.model_validate({"memory_format": layout, "optimizer": OPTIMIZER})
        sessions[key] = torch_backend.open_session(graph, config, device="cpu", precision=precision)
        sessions[key].set_weights(weights)
    module = torch_backend._eval_module(graph, weights).train()
    optimizer = hand_optimizer(module.parameters())
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def hand() -> None:
        loss = loss_fn(module(xt), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    runs = {"hand": hand, "contiguous": lambda: sessions["contiguous"].train_step(x, y),
            "channels_last": lambda: sessions["channels_last"].train_step(x, y), "bf16": lambda: sessions["bf16"].train_step(x, y)}
    compile_seconds = 0.0
    if compiled:
        config = TrainConfig.model_validate({"memory_format": "channels_last", "optimizer": OPTIMIZER})
        sessions["compiled"] = torch_backend.open_session(graph, config, device="cpu", precision="fp32", compile=True)
        sessions["compiled"].set_weights(weights)
        runs["compiled"] = lambda: sessions["compiled"].train_step(x, y)
        start = time.perf_counter()
        runs["compiled"]()
        compile_seconds = time.perf_counter() - start
    for run in runs.values():  # warm up
        run()
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(rounds):
        for key in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                runs[key]()
            seconds[key].append((time.perf_counter() - start) / steps)
    return {key: batch / statistics.median(values) for key, values in seconds.items()} | {
        "compile_seconds": compile_seconds, "train_gflop": 3 * graph.flops / 1e9}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(args[0]) if args else 5
    compiled = "--compile" in sys.argv
    print(f"optimizer: {OPTIMIZER['name']}")
    print(f"{'model':9} {'hand NCHW':>10} {'contiguous':>11} {'channels_last':>14} {'CL/hand':>8} {'contig/hand':>12} {'bf16/hand':>10}"
          + ("  compiled  compiled/hand  compile s" if compiled else "") + "  images/s")
    ceiling: list[tuple[str, float]] = []
    for name, (size, batch) in CASES.items():
        speed = measure(name, size, batch, rounds, compiled=compiled)
        extra = f"  {speed['compiled']:8.0f}  {speed['compiled'] / speed['hand']:12.2f}x  {speed['compile_seconds']:9.1f}" if compiled else ""
        print(f"{name:9} {speed['hand']:10.0f} {speed['contiguous']:11.0f} {speed['channels_last']:14.0f} "
              f"{speed['channels_last'] / speed['hand']:7.2f}x {speed['contiguous'] / speed['hand']:11.2f}x {speed['bf16'] / speed['hand']:9.2f}x{extra}",
              flush=True)
        ceiling.append((name, speed["hand"] * speed["train_gflop"]))
    fp32, bf16 = gemm_gflops(torch.float32), gemm_gflops(torch.bfloat16)
    print(f"\nceiling: a 2048 x 2048 GEMM runs at {fp32:.0f} GFLOP/s in fp32, {bf16:.0f} GFLOP/s in bf16")
    for name, rate in ceiling:
        print(f"{name:9} the hand-written loop reaches {rate:.0f} GFLOP/s ({rate / fp32:.0%} of the fp32 GEMM); "
              f"1.3x would need {1.3 * rate / fp32:.0%} of it, {1.3 * rate / bf16:.0%} of bf16's")
    if "--accuracy" in sys.argv:
        accuracy()


def accuracy() -> None:
    """LeNet-5 on MNIST (8,000 train, 2,000 held out, 3 epochs, seed 0) in fp32 and bf16."""
    import tempfile
    from pathlib import Path

    mnist = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as folder:
        for precision in ("fp32", "bf16"):
            result = cnnspec.train("lenet5", "torch", precision=precision, out=Path(folder) / precision, quiet=True, epochs=3,
                                   **{"data.source": str(mnist)})
            last = result.history[-1]
            print(f"LeNet-5 on MNIST, {precision}: validation accuracy {last['val_accuracy']:.4f}, {last['images_per_second']:.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
