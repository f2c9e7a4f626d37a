"""The process group the harness trains over: one process is a group of one, several share
each batch, and no second training loop exists.

- ``torchrun`` (PyTorch's own launcher) starts the processes and sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; ``cnnspec train`` in each finds
  them (``environment``), joins the process group (``cnnspec.backends.torch_distributed``)
  and trains its share of every batch. ``cnnspec train --nproc N`` runs
  ``torchrun --standalone`` for you (``cnnspec.distributed.launch``).
- Spark runs the same function in its tasks (``cnnspec.distributed.spark``).

``batch_size`` is the global batch: step ``t`` trains on positions ``[t*B, (t+1)*B)`` of
the epoch's order whatever the number of processes, each process taking one contiguous
part (``local_order``). So a run's data order, its checkpoints' step counts and its
results do not depend on how many processes trained it, and a run resumes on any number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cnnspec.backends import DISTRIBUTED, import_module
from cnnspec.errors import CnnspecError


class DistributedError(CnnspecError, RuntimeError):
    """A distributed run cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Place:
    """Where this process stands in a run, as the launcher set it."""

    rank: int
    size: int
    local_rank: int
    local_size: int


def environment() -> Place | None:
    """This process's place in a run launched by torchrun (or anything that sets the same
    variables: Spark's TorchDistributor runs torchrun), or None outside one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (they are set by torchrun)") from None
    if not 0 <= rank < size:
        raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {size}")
    return Place(rank, size, local_rank, local_size)


class Group(Protocol):
    """The processes of one run, as the harness needs them: who is who, and the three
    collectives it uses. One process is a group of one (``SINGLE``)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def local_size(self) -> int:
        """Processes on this host (they share its cores)."""
        ...

    def all_sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """The element-wise sum of every process's ``values`` (float64), on every process."""
        ...

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable, small), by rank."""
        ...

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process."""
        ...

    def leave(self, finished: bool) -> None:
        """Leave the group on the way out: after the others when ``finished``, at once when not."""
        ...


@dataclass(frozen=True)
class Single:
    rank: int = 0
    size: int = 1
    local_size: int = 1

    def all_sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float64)

    def all_gather(self, value: Any) -> list[Any]:
        return [value]

    def broadcast(self, value: Any) -> Any:
        return value

    def leave(self, finished: bool) -> None:
        pass  # nothing to leave: a group of one


SINGLE = Single()


def check_batch(batch_size: int, size: int) -> None:
    if batch_size % size:
        fits = [b for b in range(max(size, batch_size - size), batch_size + size + 1) if b % size == 0]
        raise DistributedError(
            f"batch_size {batch_size} is the global batch and does not split evenly over {size} processes: "
            f"use a multiple of {size} (e.g. --batch-size {min(fits, key=lambda b: abs(b - batch_size))})"
        )


def local_order(order: np.ndarray, batch_size: int, rank: int, size: int) -> tuple[np.ndarray, int]:
    """This process's positions of ``order`` and its batch size: of every global batch of
    ``batch_size`` positions, the ``rank``-th of ``size`` contiguous parts. The last global
    batch may be short; its parts are as even as can be (a part may be empty when it has
    fewer positions than there are processes)."""
    check_batch(batch_size, size)
    share = batch_size // size
    full = len(order) // batch_size * batch_size
    whole = order[:full].reshape(-1, size, share)[:, rank].reshape(-1)
    tail = np.array_split(order[full:], size)[rank]
    return np.concatenate([whole, tail]), share


def steps(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def evaluation_share(count: int, rank: int, size: int) -> np.ndarray:
    """This process's positions of an evaluation set of ``count``: contiguous parts as even
    as can be, none counted twice (no padding)."""
    return np.array_split(np.arange(count), size)[rank]


def joined(backend: str, module: Any, device: str) -> tuple[Any, Group, str]:
    """(the backend module the harness trains with, the group, this process's device): in
    a run a launcher started with more than one process, the process group is joined and
    sessions train through DistributedDataParallel; otherwise, as given."""
    place = environment()
    if place is None or place.size == 1:
        return module, SINGLE, device
    if backend not in DISTRIBUTED:
        raise DistributedError(f"distributed training runs on the torch backend (DistributedDataParallel), not {backend}: use --backend torch")
    distributed = import_module(DISTRIBUTED[backend], backend, f"distributed training on {backend}")  # by name: never imported back
    group, device = distributed.join(device)
    return distributed.DistributedBackend(group), group, device


@contextmanager
def membership(group: Group) -> Iterator[None]:
    """Around a distributed run: a peer that stopped is said in one line (not the
    transport's page of text), and the process group is left on the way out, whatever
    happened (a process that exits inside one aborts)."""
    finished = False
    try:
        yield
        finished = True
    except RuntimeError as exc:
        text = str(exc).strip()
        if group.size == 1 or isinstance(exc, DistributedError) or not any(word in text for word in ("gloo", "NCCL", "Connection", "connection")):
            raise
        raise DistributedError(f"lost contact with another process of the run (it failed or was stopped): {text.splitlines()[0][:300]}") from None
    finally:
        group.leave(finished)
