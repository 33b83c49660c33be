"""DEIQT's optimizer and learning-rate schedule (docs/protocol.md, "Learning-rate schedule").

    param_groups(model, wd)              AdamW groups: no decay on 1-D tensors nor on model.no_weight_decay()
    make_optimizer(model, train, dev)    AdamW (fused on CUDA), starting at warmup_lr (train: cfg.train)
    lr_at(step, epoch_steps, train)      the LR of optimizer step `step`: a pure function, as in nanoGPT
    global_batch_for(cfg, dataset)       the run's global batch: the config's, else the dataset's DEIQT value
"""
from __future__ import annotations

import math

import torch

from ..data.registry import DEIQT_GLOBAL_BATCH

DEFAULT_GLOBAL_BATCH = 64


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as DEIQT: no decay on 1-D tensors (biases, norms, LayerScale) nor on the names in
    model.no_weight_decay() (pos_embed, cls_token); the 3-D query panel is decayed. Frozen params are
    left out, so the optimizer never touches them (not even by weight decay)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, train, device: torch.device) -> torch.optim.AdamW:
    """AdamW with train (cfg.train)'s betas, eps and weight decay, at its warm-up LR."""
    fused = {"fused": True} if train.fused_optimizer and device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.warmup_lr,
                             betas=tuple(train.betas), eps=train.eps, **fused)


def schedule_value(done: int, epoch_steps: int, train) -> float:
    """f(done) of docs/protocol.md (or the cosine alternative), done = optimizer updates done; train is
    cfg.train, epoch_steps the optimizer steps per epoch."""
    warmup_steps = train.warmup_epochs * epoch_steps
    if done < warmup_steps:
        return train.warmup_lr + done * (train.lr - train.warmup_lr) / warmup_steps
    if train.schedule == "deiqt_step":
        return train.lr * train.decay_rate ** (done // max(1, train.decay_epochs * epoch_steps))
    total_steps = max(warmup_steps + 1, train.epochs * epoch_steps)                     # cosine
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (
        1 + math.cos(math.pi * (done - warmup_steps) / (total_steps - warmup_steps)))


def lr_at(step: int, epoch_steps: int, train) -> float:
    """LR of optimizer step `step` (0-based). timm's scheduler is updated after each step with the
    index of the step just taken, so step 0 runs at warmup_lr and step s >= 1 at f(s - 1)."""
    return schedule_value(max(step - 1, 0), epoch_steps, train)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def global_batch_for(cfg, dataset: str) -> int:
    if cfg.train.global_batch:
        return int(cfg.train.global_batch)
    return int(DEIQT_GLOBAL_BATCH.get(dataset, DEFAULT_GLOBAL_BATCH))


def steps_per_epoch(n_train: int, crops_train: int, global_batch: int) -> int:
    return (n_train * crops_train) // global_batch
