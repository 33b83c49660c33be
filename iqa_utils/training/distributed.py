"""One training run over several processes (torchrun): the process group, each rank's share, the averaging.

    torchrun --nproc_per_node 4 -m iqa_utils.cli train --model deiqt --dataset KonIQ-10k ...

torchrun starts the command once per GPU and sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT.
`context(device)` joins the process group on its first call (nccl on CUDA, with LOCAL_RANK picking the
GPU; gloo on the CPU) and returns this process's `Dist`; without torchrun it is a world of one, where
every method is a no-op, so the engine has a single code path. What the engine does with it:

- every rank lists the same shuffled epoch and takes its contiguous share (global batch / N) of each
  step's batch; crops come from CropStreams keyed by a sample's position in the global batch, so each
  sample gets the crop a single process would cut for it;
- the loss runs through DistributedDataParallel (`wrap`): gradients are averaged over the ranks, and
  the mean over ranks of each rank's mean loss is the mean over the global batch. Micro-batches inside
  a rank skip the all-reduce but for the last one (`accumulate`);
- evaluation is split: each rank scores a contiguous share of the rows and `map_rows` puts them back in
  order on every rank, so all ranks compute the same metrics and make the same model selection;
- rank 0 alone writes checkpoints, weights and records; the others wait at `barrier`.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..devices import resolve_device
from ..system import KitError


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 under torchrun (it prints and writes for the group); always true without it."""
    return int(os.environ.get("RANK", "0")) == 0


class LossModule(nn.Module):
    """model.loss(batch) as a forward: DistributedDataParallel hooks into forward calls, and the kit's
    models compute their training loss in `loss`, from a batch of the views each method needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict):
        return self.model.loss(batch)


@dataclass
class Dist:
    """This process's place in the group: rank, world size and its device."""
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of n entries (n a multiple of the world size)."""
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the engine calls for the loss: DDP around model.loss when there are several ranks.
        find_unused_parameters: some configurations leave parameters out of the loss (CSFIQA without
        SCL does not use its projectors)."""
        loss = LossModule(model)
        if self.world == 1:
            return loss
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(loss, device_ids=ids, find_unused_parameters=True,
                                       gradient_as_bucket_view=True)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (sum and divide: gloo has no average)."""
        if self.world == 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def map_rows(self, fn, rows) -> np.ndarray:
        """fn(part) on this rank's contiguous share of rows; every rank gets the results of all, in order."""
        if self.world == 1:
            return fn(list(rows))
        parts = np.array_split(np.asarray(list(rows), dtype=np.int64), self.world)
        out = [None] * self.world
        dist.all_gather_object(out, np.asarray(fn(parts[self.rank].tolist())))
        return np.concatenate(out)

    def broadcast(self, obj):
        """Rank 0's value of obj, on every rank (decisions rank 0 takes alone, e.g. claiming a run)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def accumulate(loss_module: nn.Module, last: bool):
    """Inside a step's micro-batches: no gradient all-reduce but on the last one (DDP's no_sync)."""
    if last or not isinstance(loss_module, DistributedDataParallel):
        return contextlib.nullcontext()
    return loss_module.no_sync()


_JOINED: Dist | None = None


def context(device="auto") -> Dist:
    """This process's Dist: a world of one, or (under torchrun) the group, joined on the first call.

    Under torchrun a CUDA device name only chooses CUDA: LOCAL_RANK picks the GPU."""
    global _JOINED
    if not launched():
        return Dist(0, 1, resolve_device(device))
    if _JOINED is None:
        _JOINED = _join(resolve_device(device))
    return _JOINED


def _join(device: torch.device) -> Dist:
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise KitError(f"train.device: torchrun runs on CUDA (nccl) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
