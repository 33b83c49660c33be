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
- contrastive sets (CSFIQA, LML-IQA) range over the global batch: the embeddings and labels of all
  ranks are gathered with their gradients (`Dist.gather`) and every rank takes the same set loss;
- evaluation is split: each rank scores a contiguous share of the rows and `map_rows` puts them back in
  order on every rank, so all ranks compute the same metrics and make the same model selection;
- rank 0 alone writes checkpoints, weights and records; the others wait at `barrier`.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
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

    def forward(self, batch: dict, part: str = "loss"):
        """model.loss(batch), or (part="terms") model.step_terms(batch): the per-sample terms and the
        embeddings of a chunk whose set terms are taken over the whole step (engine.forward_backward)."""
        return self.model.step_terms(batch) if part == "terms" else self.model.loss(batch)


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

    def gather(self, t: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Every rank's rows of t, concatenated in rank order, on every rank. grad=True keeps the graph
        (torch.distributed.nn's all_gather, as open_clip's gather_with_grad): the backward sums each
        rank's gradient of its rows over the ranks, so a loss every rank computes alike reaches each
        rank's rows world times, which DDP's average over the ranks undoes. Ranks may hold different
        numbers of rows (padded for the collective, cut after); inputs are made contiguous, as older
        torch lost the gradient of non-contiguous ones."""
        if self.world == 1:
            return t
        sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(t)], device=t.device))
        sizes = [int(n) for n in sizes]
        pad = max(sizes) - len(t)
        x = torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t
        x = x.contiguous()
        if grad:
            with warnings.catch_warnings():     # deprecated in favour of a private API; kept public
                warnings.simplefilter("ignore", FutureWarning)
                parts = dist_nn.all_gather(x)
        else:
            parts = [torch.empty_like(x) for _ in range(self.world)]
            dist.all_gather(parts, x)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def row_offset(self, n: int) -> int:
        """Where this rank's n rows start in the gathered rows (n may differ between ranks)."""
        if self.world == 1:
            return 0
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([n], device=self.device))
        return int(sum(int(s) for s in sizes[:self.rank]))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def accumulate(loss_module: nn.Module, last: bool):
    """Inside a step's micro-batches: no gradient all-reduce but on the last one (DDP's no_sync)."""
    if last or not isinstance(loss_module, DistributedDataParallel):
        return contextlib.nullcontext()
    return loss_module.no_sync()


def context(device="auto") -> Dist:
    """This process's Dist: a world of one, or (under torchrun) the group, joined on the first call.
    The kit keeps no record of its own: torch.distributed's process group is the one state, read on
    every call (a group already there is joined as it is, and must run on the device's backend).

    Under torchrun a CUDA device name only chooses CUDA: LOCAL_RANK picks the GPU."""
    if not launched():
        return Dist(0, 1, resolve_device(device))
    return _join(resolve_device(device))


def _join(device: torch.device) -> Dist:
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise KitError(f"train.device: torchrun runs on CUDA (nccl) or the CPU (gloo), not {device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
        atexit.register(_leave)
    elif dist.get_backend() != backend:
        raise KitError(f"train.device: {device} wants the {backend} backend, but this process already "
                       f"joined a {dist.get_backend()} group")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
