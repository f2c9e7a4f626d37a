"""Data-parallel training with PyTorch's own runtime: the process group torchrun set up,
and a session whose training steps run through DistributedDataParallel.

gloo on CPU, NCCL on CUDA (one GPU a process: ``cuda:LOCAL_RANK``). Each process trains
on its share of the global batch; DDP averages the gradients, and each process's loss is
weighted by its share of the batch, so that the average is the gradient of the mean loss
over the whole global batch whatever the shares (the last batch of an epoch, or images a
process could not read). Evaluation, activations and prediction run on the plain module,
per process, with no collective.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cnnspec.backends.group import DistributedError, Place, environment
from cnnspec.graph.dag import Graph
from cnnspec.graph.tuning import frozen_norm_layers
from cnnspec.spec.training import TrainConfig

from . import torch_backend
from .torch_backend import TorchSession, resolve_device
from .torch_lowering import GraphModule


class TorchGroup:
    """The default process group, as the harness's ``Group``."""

    def __init__(self, place: Place, device: torch.device) -> None:
        self.rank, self.size, self.local_size = place.rank, place.size, place.local_size
        self.device = device  # where collectives' tensors live: NCCL reduces on the GPU

    def all_sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        tensor = torch.tensor(np.asarray(values, np.float64), device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def all_gather(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def leave(self, finished: bool) -> None:
        leave(finished)


def join(device: str) -> tuple[TorchGroup, str]:
    """Join the process group torchrun described in the environment: (the group, this
    process's device). A process that was not started by a launcher is refused."""
    place = environment()
    if place is None:
        raise DistributedError("not started by torchrun: no RANK and WORLD_SIZE in the environment (use cnnspec train --nproc N)")
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count()
        if place.local_size > count:
            raise DistributedError(f"{place.local_size} processes on this host but {count} CUDA GPU(s): one GPU a process (--nproc {count})")
        resolved = torch.device("cuda", place.local_rank if resolved.index is None else resolved.index)
        torch.cuda.set_device(resolved)
    elif resolved.type != "cpu":
        raise DistributedError(f"distributed training runs on CPU (gloo) or CUDA (NCCL), not on {resolved.type}")
    if not dist.is_initialized():
        minutes = float(os.environ.get("CNNSPEC_DIST_TIMEOUT_MINUTES", "30"))
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=minutes))
    group = TorchGroup(place, resolved)
    # A launcher's LOCAL_WORLD_SIZE counts the processes it started; Spark starts one
    # torchrun a task, each saying 1 though several tasks share a host (and its cores).
    hosts = group.all_gather(socket.gethostname())
    group.local_size = hosts.count(hosts[place.rank])
    return group, str(resolved)


def leave(finished: bool) -> None:
    """Leave the process group: after a barrier when this process finished (so that no
    peer is still inside a collective when the group's threads stop), at once when it failed."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def sync_batchnorm(module: GraphModule) -> int:
    """Replace every batch norm of ``module`` by a SyncBatchNorm holding the same
    parameters and buffers (names unchanged); returns how many were replaced."""
    swaps: dict[nn.Module, nn.Module] = {
        old: nn.SyncBatchNorm.convert_sync_batchnorm(old)
        for old in module.modules()
        if isinstance(old, nn.modules.batchnorm._BatchNorm) and not isinstance(old, nn.SyncBatchNorm)
    }
    for name, old in list(module.named_modules()):
        if old in swaps:
            *parents, leaf = name.split(".")
            parent = module.get_submodule(".".join(parents)) if parents else module
            setattr(parent, leaf, swaps[old])
    module.swap_modules(swaps)
    return len(swaps)


class DistributedSession(TorchSession):
    """A TorchSession whose training steps synchronise gradients across the group."""

    def __init__(self, graph: Graph, config: TrainConfig, group: TorchGroup, device: str, precision: str, compile: bool) -> None:
        super().__init__(graph, config, device, precision, compile)
        self._group = group
        if config.distributed.sync_batchnorm:
            if self._device.type != "cuda":
                raise DistributedError("sync_batchnorm needs CUDA (NCCL); on CPU each process keeps its own batch statistics")
            sync_batchnorm(self._module)
            frozen = frozen_norm_layers(graph, config)
            self._frozen_norms = [m for name, m in self._module.named_modules() if name in frozen]
        cuda = self._device.type == "cuda"
        # forward_sync_buffers: every training forward starts from rank 0's batch-norm running
        # statistics, so the replicas stay identical in those too.
        ids = [self._device] if cuda else None
        try:
            ddp = nn.parallel.DistributedDataParallel(self._module, device_ids=ids, forward_sync_buffers=True)
        except TypeError:  # torch before 2.13 names it broadcast_buffers
            ddp = nn.parallel.DistributedDataParallel(self._module, device_ids=ids, broadcast_buffers=True)
        self._train_forward = torch.compile(ddp) if compile else ddp
        self._share = 1.0

    def train_step(self, x: Any, y: np.ndarray) -> tuple[float, int]:
        total = self._group.all_sum([len(y)])[0]
        if total == 0:  # nothing anywhere: every process skips the step together
            return 0.0, 0
        self._share = len(y) * self._group.size / total
        return super().train_step(x, y)

    def _objective(self, loss: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        if not len(outputs):  # no image here this step: a zero gradient, so the others' average stays right
            return outputs.sum() * 0.0
        return loss * self._share


class DistributedBackend:
    """The torch backend as the harness sees it inside a group: sessions are distributed."""

    def __init__(self, group: TorchGroup) -> None:
        self.group = group

    def open_session(
        self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto", compile: bool = False
    ) -> DistributedSession:
        return DistributedSession(graph, config, self.group, device, precision, compile)

    def available_memory(self, device: str) -> tuple[str, int | None]:
        return torch_backend.available_memory(device)

    def workspace_bytes(self, graph: Graph) -> int:
        return torch_backend.workspace_bytes(graph)
