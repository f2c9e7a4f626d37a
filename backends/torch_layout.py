"""Which memory layout trains a network faster on this CPU, by measuring it once.

No fixed rule holds on every CPU: on one Intel Xeon (2 cores, AVX-512, AMX) channels-last
trains VGG-16 at 64x64 1.59x and MobileNetV3-Small 5.67x faster than the hand-written NCHW
loop, but ResNet-18 at 0.90x where the contiguous layout gives 0.99x
(benchmarks/bench_memory_format.py); on an AMD EPYC channels-last won for all three. So
``memory_format: auto`` on the CPU times a few training steps of the network in both
layouts, on copies of the module and a constant batch of up to 8 images, with the random generator put back
afterwards (the run draws the same numbers as without the probe), and keeps the faster.
The answer is cached per CPU, torch version, thread count, network and batch size in
``$CNNSPEC_CACHE_DIR/layouts.json`` (default ``~/.cache/cnnspec``), as cuDNN's benchmark
mode keeps its choice of kernels, so the probe runs once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnspec.graph.dag import Graph
from cnnspec.layers.conv import Conv2d, ConvTranspose2d
from cnnspec.runs.files import write_json

STEPS = 2  # timed steps per layout, after one warm-up step each


def cache_path() -> Path:
    return Path(os.environ.get("CNNSPEC_CACHE_DIR") or Path.home() / ".cache" / "cnnspec") / "layouts.json"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where bf16 autocast
    trains several times faster than fp32 (VGG-16 at 64x64: 4.3x on a Xeon with AMX)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def convolutional(graph: Graph) -> bool:
    return len(graph.input_shape) == 3 and any(isinstance(node.layer, (Conv2d, ConvTranspose2d)) for node in graph.nodes)


def _key(graph: Graph, batch: int) -> str:
    layers = [(node.name, node.layer.model_dump_json(), node.inputs, node.output_shape) for node in graph.nodes]
    network = hashlib.sha256(repr((graph.input_shape, layers)).encode()).hexdigest()[:16]
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {network} | batch {batch}"


def _read(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again


def _seconds_per_step(module: nn.Module, x: torch.Tensor, classes: int) -> float:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    target = torch.zeros(len(x), dtype=torch.long) if classes else None
    best = float("inf")
    for step in range(STEPS + 1):
        start = time.perf_counter()
        out = module(x)
        loss = nn.functional.cross_entropy(out, target) if target is not None and out.dim() == 2 else out.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step allocates and picks kernels
            best = min(best, time.perf_counter() - start)
    return best


def channels_last_faster(graph: Graph, module: nn.Module, batch: int) -> tuple[bool, str]:
    """(whether channels-last trains ``module`` faster here, a line saying how that was known)."""
    if not convolutional(graph):
        return False, "contiguous: no convolution on an image input"
    key, path = _key(graph, batch), cache_path()
    cached = _read(path).get(key)
    if isinstance(cached, dict) and isinstance(cached.get("channels_last"), bool):
        return cached["channels_last"], f"{'channels-last' if cached['channels_last'] else 'contiguous'}: measured on this CPU ({cached.get('ratio', '?')}x), cached"
    x = torch.full((batch, *graph.input_shape), 0.5)
    classes = graph.output_shape[0] if len(graph.output_shape) == 1 else 0
    with torch.random.fork_rng(devices=[]):  # the run draws the same numbers as without the probe
        contiguous = _seconds_per_step(copy.deepcopy(module).train(), x, classes)
        last = _seconds_per_step(copy.deepcopy(module).train().to(memory_format=torch.channels_last),  # type: ignore[call-overload]
                                 x.contiguous(memory_format=torch.channels_last), classes)
    faster = last < contiguous
    ratio = round(max(contiguous, last) / min(contiguous, last), 2)
    entries = _read(path)  # read again: another run may have added its own network meanwhile
    entries[key] = {"channels_last": faster, "ratio": ratio}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entries)
    except OSError:
        pass  # a read-only home: measure again next time
    return faster, f"{'channels-last' if faster else 'contiguous'}: measured on this CPU, {ratio}x faster than the other"
