"""Writing a checkpoint: weights, optimizer state and state.json, sealed and atomic."""

from __future__ import annotations

import shutil
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from cnnspec.backends.protocol import Session
from cnnspec.errors import TrainingError
from cnnspec.runs.files import (
    save_arrays,
    seal,
    write_json,
)
from cnnspec.runs.folder import MID_EPOCH, RunDir
from cnnspec.runs.weight_files import save_weights


def save_checkpoint(run: RunDir, epoch: int, session: Session, state: dict[str, Any], *, best: bool = False,
                    keep: int | str | None = 1, frozen: AbstractSet[str] = frozenset()) -> Path:
    """A complete checkpoint folder, then the pointers to it (``latest.json``; ``best.json``
    when ``best``): a crash at any moment leaves the previous checkpoint intact and
    pointed to. Only the newest ``keep`` epoch checkpoints stay, and the best ("all" or
    None: every one). The arrays named in ``frozen`` are written once for the whole run
    (``checkpoint_files``)."""
    from cnnspec.runs.weight_files import unused_shared

    name = f"epoch-{epoch:04d}"
    final = write_checkpoint(run, name, session, state, frozen)
    write_json(run.checkpoints / "latest.json", {"checkpoint": name, "epoch": epoch})
    if best:
        write_json(run.checkpoints / "best.json", {"checkpoint": name, "epoch": epoch})
    shutil.rmtree(run.checkpoints / MID_EPOCH, ignore_errors=True)  # the epoch it was inside is complete
    if isinstance(keep, int):
        kept = {final, run.best()}
        for folder in run.epochs()[keep:]:
            if folder not in kept:
                shutil.rmtree(folder, ignore_errors=True)
    for path in unused_shared(run.checkpoints):
        path.unlink(missing_ok=True)
    return final


def write_checkpoint(run: RunDir, name: str, session: Session, state: dict[str, Any], frozen: AbstractSet[str] = frozenset()) -> Path:
    """The checkpoint folder ``name``, complete or not at all: written as a staging folder
    and renamed. A write that fails (disk full, no permission, read-only) removes the
    staging folder and says which checkpoint is still intact."""
    staging = run.checkpoints / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        sealed = save_weights(staging, session.get_weights(), frozen)
        arrays, meta = session.optimizer_state()
        save_arrays(staging / "optimizer.safetensors", arrays)
        write_json(staging / "state.json", {**state, "optimizer": meta})
        seal(staging, [*sealed, "optimizer.safetensors", "state.json"])  # loading checks them (and the shared frozen arrays)
        final = run.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        intact, _ = run.newest_intact()
        kept = f"the newest intact checkpoint is {intact}" if intact else "no checkpoint was written before"
        where = exc.filename or staging
        raise TrainingError(
            f"could not write checkpoint {name} ({where}: {exc.strerror or exc}); training stopped and {kept}. "
            f"Free space or fix the folder's permissions, then: cnnspec train --resume {run.path}"
        ) from None
    return final
