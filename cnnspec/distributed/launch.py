"""``cnnspec train --nproc N``: the same command in N processes, started by torchrun.

It runs ``python -m torch.distributed.run --standalone --nproc_per_node=N -m cnnspec train
...`` (PyTorch's launcher, nothing home-made), gives each process its share of the host's
cores as threads, and passes torchrun's output through. When a process fails, torchrun
stops the others; this says which one failed and how to resume.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cnnspec.data.loader import available_cores

_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.MULTILINE)
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)
_CHILD_FAILED = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` or ``name=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cnnspec", "train", *argv]


def launch(nproc: int, argv: list[str], run_dir: Path) -> tuple[int, str | None]:
    """Run ``cnnspec train ARGV`` in ``nproc`` processes on this host: (torchrun's exit
    status, a sentence on the failure or None)."""
    env = dict(os.environ)
    # torchrun sets one thread a process when it is not told; a share of the cores trains faster.
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(torchrun_command(nproc, argv), env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    assert process.stderr is not None
    tail: list[str] = []
    in_traceback = False
    for line in process.stderr:  # passed through as it comes, but for torchrun's own traceback
        in_traceback = in_traceback or line.startswith("Traceback (most recent call last):")
        if not in_traceback:
            sys.stderr.write(line)
        if in_traceback and line.startswith(_CHILD_FAILED):
            in_traceback = False
            sys.stderr.write(line[len(_CHILD_FAILED) :].lstrip(": ") or "\n")
        tail = [*tail, line][-200:]
    status = process.wait()
    if status == 0:
        return 0, None
    text = "".join(tail)
    root = text[text.find("Root Cause") :] if "Root Cause" in text else text  # torchrun's summary names the first failure there
    ranks, codes = _FAILED_RANK.findall(root), _EXIT_CODE.findall(root)
    who = f"process rank {ranks[0]}" + (f" (exit code {codes[0]})" if codes else "") if ranks else "a process"
    latest = run_dir / "checkpoints" / "latest.json"
    kept = f"the last complete checkpoint in {run_dir} is intact; continue with: cnnspec train --resume {run_dir} --nproc {nproc}" if latest.exists() else "no checkpoint was written yet"
    return status, f"the distributed run stopped: {who} failed and torchrun stopped the others; {kept}"
