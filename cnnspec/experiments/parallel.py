"""``--parallel K``: K processes run a study's trials at once, sharing its storage. The
host's cores are split among them (each pinned to its share, its thread pools sized to
it); on a machine with several GPUs, each process sees one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def core_shares(workers: int) -> list[list[int]]:
    """The cores this process may use, dealt into ``workers`` shares (at least one each)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = list(range(os.cpu_count() or 1))
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    size = len(cores) // workers
    return [cores[i * size : (i + 1) * size] for i in range(workers)]


def gpus() -> list[str]:
    """The GPUs a worker may be given, one each: CUDA_VISIBLE_DEVICES's, or nvidia-smi's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [part for part in visible.split(",") if part.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU")]


def run_workers(out: Path, workers: int, device: str) -> list[int]:
    """Run ``cnnspec tune --out OUT --worker I`` for I in 0..K-1 and wait; their exit codes."""
    shares = core_shares(workers)
    cards = gpus() if device.startswith("cuda") else []
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        threads = str(len(shares[index]))
        env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads}
        if cards:
            env["CUDA_VISIBLE_DEVICES"] = cards[index % len(cards)]
        cores = set(shares[index])

        def pin(cores: set[int] = cores) -> None:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, cores)

        processes.append(subprocess.Popen([sys.executable, "-m", "cnnspec", "tune", "--out", str(out), "--worker", str(index)],
                                          env=env, preexec_fn=pin))
    try:
        return [process.wait() for process in processes]
    except BaseException:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        raise
