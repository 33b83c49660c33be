"""Training of any IQAModel with DEIQT's recipe: a flat loop of small steps.

    train_run(cfg, manifest, split, out_dir) -> result (dict): the per-epoch history, the final metrics,
                                                the selected epoch, the predictions, the timings

The loop, as pyiqa splits it: `setup` builds everything a run needs (a `Run`), `resume` reads a
checkpoint of the same run, `train_epoch` runs one epoch of `optimize_step`s, `evaluate_and_select`
evaluates and applies the model selection, `finish` saves the selected weights and computes the final
metrics. The learning rate is the pure function `optim.lr_at`, as in nanoGPT.

One "epoch" lists every training image crops_train times (DEIQT's PATCH_NUM), shuffled, and cuts the
batches of global_batch crops from that list (drop_last); micro_batch splits a batch into chunks with the
numbers of the whole batch: per-sample terms accumulate, contrastive sets over the whole batch use the
gradient cache (`forward_backward`). Everything random comes from cfg.train.seed; a training crop is a pure
function of (seed, step, the sample's position in the global batch) (data.store.CropStream), so neither
micro-batches nor torchrun processes change which crop a sample gets. Every epoch ends with an atomic
checkpoint, so an interrupted run resumes to the same numbers. A loss or a metric that becomes NaN or
infinite stops the run (NonFiniteError) before anything is saved.

Under torchrun (iqa_utils.training.distributed) every rank runs this same loop on its share of each batch, with
the gradients averaged by DDP; evaluation is split over the ranks and gathered; rank 0 writes the files.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config.check import check_batch
from ..config.fields import ConfigError, RunConfig
from ..data.cache import open_store
from ..data.store import CropSampler, CropStream
from ..models import costs, create_model
from ..models.base import TestCrops
from ..models.pretrained import load_kit_state
from ..devices import Precision, amp_dtype
from ..system import KitError
from . import distributed
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, seed_all, set_rng_state, state_dict_cpu
from .distributed import Dist, accumulate
from .evaluation import LabelNorm, NonFiniteError, evaluate, final_metrics, require_finite
from .optim import global_batch_for, lr_at, make_optimizer, set_lr, steps_per_epoch
from .predict import save_trained


class TrainingInterrupted(RuntimeError):
    """Raised by train_run(stop_after_epoch=k) after epoch k's checkpoint (tests, time-boxed sessions)."""


@dataclass
class LoopState:
    """What changes as the run goes; saved in every checkpoint (plain types only)."""
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    best_preds: list | None = None
    train_s: float = 0.0
    eval_s: float = 0.0
    train_crops: int = 0
    eval_crops: int = 0


@dataclass
class Run:
    """Everything one training run needs, built once by `setup`."""
    cfg: RunConfig
    name: str                       # "<model> on <dataset>", for messages and progress bars
    device: torch.device
    model: torch.nn.Module
    size: int                       # the model's input size
    sampler: CropSampler
    test_sampler: CropSampler
    test_rows: list
    test_labels: np.ndarray | None
    val_rows: list
    val_labels: np.ndarray | None
    norm: LabelNorm
    train_rows: torch.Tensor
    all_labels: torch.Tensor        # normalised regression targets of every row of the training store
    global_batch: int
    micro: int                      # chunk of this process's share of a batch (gradient accumulation)
    steps: int                      # optimizer steps per epoch
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    eval_dtype: torch.dtype | None
    shuffle_gen: torch.Generator
    dist: Dist                      # this process's rank among torchrun's (a world of one without it)
    loss_fn: torch.nn.Module        # model.loss as a module, DDP-wrapped under torchrun
    ident: dict
    out_dir: Path
    progress: bool


def _labels(store, rows) -> np.ndarray | None:
    return store.labels[torch.as_tensor(rows, dtype=torch.long)].numpy() if len(rows) else None


def _stores(cfg, manifest, test_manifest, *, store, test_store, device, min_side: int, progress: bool, stores):
    """The opened training and test stores: the ones given, else opened (one when there is no test set)."""
    def build(m):
        return open_store(m, resize_mode=cfg.data.resize_mode, max_side=cfg.data.max_side, min_side=min_side,
                          device=device, kind=cfg.data.store, progress=progress, stores=stores)
    store = store or build(manifest)
    if test_manifest is None:
        return store, store
    return store, test_store or build(test_manifest)


def _batching(cfg: RunConfig, dataset: str, n_train: int, *, dist: Dist) -> tuple[int, int, int]:
    """(global batch, optimizer steps per epoch, micro-batch of this process's share)."""
    global_batch = global_batch_for(cfg, dataset)
    steps = steps_per_epoch(n_train, cfg.data.crops_train, global_batch)
    steps = min(steps, cfg.train.max_steps_per_epoch or steps)
    if steps == 0 and cfg.train.epochs > 0:
        raise ConfigError(f"train.global_batch: {global_batch} is more than the {n_train} training images x "
                          f"{cfg.data.crops_train} crops of {dataset} make; lower it")
    check_batch(cfg, global_batch, dist.world)
    per_rank = global_batch // dist.world
    return global_batch, steps, min(cfg.train.micro_batch or per_rank, per_rank)


def setup(cfg: RunConfig, manifest, split, out_dir, *, test_manifest=None, store=None, test_store=None,
          progress: bool = True, stores=None) -> Run:
    """The model (from the training seed, as DEIQT seeds after drawing the split), data, optimizer."""
    train = cfg.train
    dist = distributed.context(train.device)
    device = dist.device
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    if train.selection == "val" and not split.val:
        raise ConfigError("train.selection: 'val' needs a validation split; set data.val_fraction > 0")
    global_batch, steps, micro = _batching(cfg, manifest.name, len(split.train), dist=dist)
    seed_all(train.seed)
    model = create_model(cfg).to(device)
    model.fit_precision(amp_dtype(train.amp, device))
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = model.input_size
    store, test_store = _stores(cfg, manifest, test_manifest, store=store, test_store=test_store, device=device,
                                min_side=max(size, cfg.data.crop_size), progress=progress and dist.main,
                                stores=stores)
    sampler = CropSampler(store, device=device)
    test_sampler = sampler if test_store is store else CropSampler(test_store, device=device)
    test_rows = list(range(len(test_manifest))) if test_manifest is not None else list(split.test)
    norm = LabelNorm(train.label_norm, manifest.label_range)
    if hasattr(model, "label_range") and manifest.label_range:
        model.label_range = tuple(float(v) for v in norm(np.asarray(manifest.label_range, dtype=float)))
    if hasattr(model, "steps_per_epoch"):          # CSFIQA's NSM warm-up counts epochs of steps
        model.steps_per_epoch = steps
    dtype = amp_dtype(train.amp, device)
    if train.micro_batch is None and device.type == "cuda":
        micro = auto_micro(model, cfg.model.name, micro, device=device, dtype=dtype, say=dist.main)
    return Run(cfg=cfg, name=f"{cfg.model.name} on {manifest.name}", device=device, model=model, size=size,
               sampler=sampler, test_sampler=test_sampler, test_rows=test_rows,
               test_labels=_labels(test_store, test_rows), val_rows=list(split.val),
               val_labels=_labels(store, split.val), norm=norm,
               train_rows=torch.as_tensor(split.train, dtype=torch.long),
               all_labels=norm(store.labels.float()), global_batch=global_batch, micro=micro,
               steps=steps, opt=make_optimizer(model, train, device),
               scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dtype=dtype,
               eval_dtype=amp_dtype(train.eval_amp or train.amp, device),
               shuffle_gen=torch.Generator().manual_seed(train.seed + 1), dist=dist, loss_fn=dist.wrap(model),
               ident={"key": cfg.key(), "split": split.digest(),
                      "test": test_manifest.name if test_manifest is not None else None},
               out_dir=Path(out_dir), progress=progress and dist.main)


def auto_micro(model, name: str, per_rank: int, *, device, dtype, say: bool) -> int:
    """train.micro_batch=auto on CUDA: the largest divisor of this process's share of a batch (per_rank
    samples) whose step, estimated from the bytes two small batches save for backward on this device, fits
    85% of the memory this process can still use; one line says which and why. The numbers do not depend
    on it."""
    with torch.random.fork_rng(devices=[device]):        # the run's random streams stay as they were
        mem = costs.step_memory(model, device, dtype=dtype, batches=costs.MEASURE_BATCHES.get(name, (2, 4)))
    usable = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
    micro = costs.largest_micro(per_rank, mem, usable)
    if micro is None:
        raise KitError(f"train.micro_batch: even one sample per chunk needs about "
                       f"{costs.peak_bytes(mem, 1) / 2**30:.1f} GiB, more than the {usable / 2**30:.1f} GiB "
                       f"usable on {device}")
    if say:
        print(f"train.micro_batch=auto: {micro} of {per_rank} samples per chunk ({mem['per_crop'] / 2**20:.0f} "
              f"MiB each, est. peak {costs.peak_bytes(mem, micro) / 2**30:.1f} GiB of "
              f"{usable / 2**30:.1f} GiB usable on {device})")
    return micro


def resume(run: Run) -> tuple[LoopState, dict | None]:
    """The loop state (and selected weights) of this run's checkpoint, or a fresh start."""
    ck = load_checkpoint(run.out_dir / CHECKPOINT, run.ident)
    if ck is None:
        return LoopState(), None
    load_kit_state(run.model, ck["model"], run.out_dir / CHECKPOINT)
    run.opt.load_state_dict(ck["optimizer"])
    if ck["scaler"]:
        run.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"], run.shuffle_gen)
    return LoopState(**ck["state"]), ck.get("best_weights") or None


def crop_streams(seed: int, step: int, start: int = 0):
    """(offset, n) -> the CropStream of the chunk at `offset` of a share of step `step`'s global batch
    that begins at position `start` (a torchrun rank's share; 0 in a single process)."""
    return lambda offset, n: CropStream(seed, step, start + offset, n)


def _prepared(make, precision: Precision) -> dict:
    batch = make()
    if "x" in batch:
        batch["x"] = precision.layout(batch["x"])
    return batch


def _add_logs(logs_sum: dict, logs: dict, weight: float) -> None:
    for k, v in logs.items():
        logs_sum[k] = logs_sum.get(k, 0.0) + torch.as_tensor(v).detach().double() * weight


def _rng_state(device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def set_terms(model, emb: dict, meta: dict, *, dist: Dist) -> tuple[torch.Tensor, dict]:
    """The model's set terms over the rows of every rank (gathered with their graph); the models take
    them in float32 (losses.float32)."""
    rows = {k: dist.gather(v.float().contiguous(), grad=True) for k, v in emb.items()}
    info = {k: dist.gather(v.contiguous()) for k, v in meta.items()}
    return model.set_loss(rows, info)


def embedding_grads(model, parts, *, dist: Dist, device, precision: Precision):
    """Pass 1 of the gradient cache (Gao et al. 2021): every chunk's embeddings without a graph, the set
    terms over all of them, and their gradient with respect to each chunk's embeddings.
    Returns (per-chunk gradients, RNG state of each chunk, set terms (detached), their logs)."""
    embs, metas, states = [], [], []
    with torch.no_grad():
        for _, make in parts:
            states.append(_rng_state(device))
            with precision.autocast(device):
                _, emb, meta, _ = model.step_terms(_prepared(make, precision))
            embs.append(emb)
            metas.append(meta)
    sizes = [len(next(iter(m.values()))) for m in metas]
    leaves = {k: torch.cat([e[k].float() for e in embs]).requires_grad_() for k in embs[0]}
    meta = {k: torch.cat([m[k] for m in metas]) for k in metas[0]}
    con, logs = set_terms(model, leaves, meta, dist=dist)
    grads = torch.autograd.grad(con, list(leaves.values()), allow_unused=True)
    grads = {k: (g if g is not None else torch.zeros_like(leaves[k])).split(sizes)
             for k, g in zip(leaves, grads)}
    return [{k: g[i] for k, g in grads.items()} for i in range(len(parts))], states, con.detach(), logs


def forward_backward(model, sampler, idx, *, labels, streams, micro: int, device,
                     precision: Precision = Precision(), scaler=None, loss_fn=None, dist: Dist | None = None,
                     share: slice | None = None) -> tuple[torch.Tensor, dict]:
    """Gradients of the step's loss on the batch idx, computed in chunks of `micro` samples of this
    process's `share` of it (all of it in one process).

    The per-sample terms (the regression loss) accumulate: each chunk's mean is weighted by its share of
    the batch. The set terms (contrastive positives and negatives over the whole global batch) use the
    gradient cache when the batch is split: pass 1 embeds every chunk without a graph, takes the set
    terms over the embeddings of all chunks and all ranks and their gradient with respect to each
    embedding; pass 2 re-runs each chunk (the same crops, `model.step_batches`, and the same RNG state)
    with a graph and back-propagates its per-sample terms together with its cached embedding gradients.
    One chunk: the set terms are taken directly (gathered with their graph under torchrun).
    `labels`: the normalised targets of every row of the store (idx indexes them). `streams`:
    `crop_streams(seed, step)` (a sample's crops depend on its position) or one torch.Generator the
    chunks draw from in turn (a split then changes the crops). `precision`: autocast dtype and layout;
    `scaler`: the GradScaler of fp16 training. loss_fn: the
    LossModule around the model, DDP-wrapped under torchrun (all-reduce on the last chunk).
    Returns this rank's loss (its mean over the ranks is the step's loss) and logs, as tensors on the
    device: nothing here waits for the GPU.
    """
    dist = dist or Dist(device=device)
    loss_fn = loss_fn or distributed.LossModule(model)
    parts = model.step_batches(sampler, idx, labels, streams, micro, share)
    world, has_set = dist.world, model.has_set_loss()
    cache = embedding_grads(model, parts, dist=dist, device=device, precision=precision) \
        if has_set and len(parts) > 1 else None
    total, logs_sum = 0.0, {}
    for i, (w, make) in enumerate(parts):
        if cache:
            _set_rng_state(cache[1][i], device)
        batch = _prepared(make, precision)
        with accumulate(loss_fn, last=i == len(parts) - 1):
            with precision.autocast(device):
                if has_set:
                    terms, emb, meta, logs = loss_fn(batch, part="terms")
                else:                           # the model's own loss (a subclass may wrap it)
                    (terms, logs), emb = loss_fn(batch), {}
            loss = terms * (w * world)
            if cache:
                loss = loss + sum((emb[k].float() * g).sum() for k, g in cache[0][i].items())
            elif has_set:
                con, clogs = set_terms(model, emb, meta, dist=dist)
                loss = loss + con
                total = total + con.detach().double()
                _add_logs(logs_sum, clogs, 1.0)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total = total + terms.detach().double() * (w * world)
        _add_logs(logs_sum, logs, w * world)
        del batch, loss, terms, emb, logs   # free this chunk's crops before the next are cut
    if cache:
        total = total + cache[2].double()
        _add_logs(logs_sum, cache[3], 1.0)
    return total, logs_sum


def optimize_step(run: Run, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
    """One optimizer step on the batch idx (this process's share of it under torchrun): LR, gradients
    (accumulated, averaged over the ranks), clipping, update, EMA hooks."""
    train = run.cfg.train
    set_lr(run.opt, lr_at(step, run.steps, train))
    loss, logs = forward_backward(run.model, run.sampler, idx, labels=run.all_labels,
                                  streams=crop_streams(train.seed, step), micro=run.micro, device=run.device,
                                  precision=Precision(run.dtype, train.channels_last), scaler=run.scaler,
                                  loss_fn=run.loss_fn, dist=run.dist, share=run.dist.share(len(idx)))
    run.scaler.unscale_(run.opt)
    if train.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), train.clip_grad)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.model.after_step()
    return loss, logs


def train_epoch(run: Run, state: LoopState, epoch: int) -> dict:
    """One epoch: every training image crops_train times, shuffled, in batches of global_batch."""
    global_batch, steps, t0 = run.global_batch, run.steps, time.perf_counter()
    order = run.train_rows.repeat_interleave(run.cfg.data.crops_train)
    order = order[torch.randperm(len(order), generator=run.shuffle_gen)]
    losses, logs_sum = [], {}
    for it in tqdm(range(steps), desc=f"epoch {epoch + 1}", leave=False, disable=not run.progress):
        loss, logs = optimize_step(run, order[it * global_batch:(it + 1) * global_batch], state.step)
        state.step += 1
        losses.append(loss)
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + v
    # one host sync per epoch; the mean over the torchrun ranks, so every rank stops on a NaN together
    mean_loss = float(run.dist.mean(torch.stack(losses).mean())) if losses else float("nan")
    if not np.isfinite(mean_loss):
        raise NonFiniteError(f"{run.name}: the training loss became NaN or infinite in epoch {epoch + 1} "
                             f"(try a lower train.lr; check the labels); no record written")
    state.train_s += time.perf_counter() - t0
    state.train_crops += steps * global_batch
    return {"epoch": epoch + 1, "step": state.step, "lr": lr_at(state.step - 1, steps, run.cfg.train),
            "train_loss": mean_loss, **{k: float(run.dist.mean(v)) / steps for k, v in logs_sum.items()}}


def _eval(run: Run, state: LoopState, *, rows, labels, sampler):
    data, t0 = run.cfg.data, time.perf_counter()     # seeded_random/grid crops: the same every epoch
    crops = TestCrops(n=data.crops_test, size=run.size, mode=data.test_crops, seed=run.cfg.train.seed)
    metrics, pred = evaluate(run.model, sampler, rows, labels=labels, crops=crops,
                             batch_size=max(run.global_batch, run.micro),
                             precision=Precision(run.eval_dtype, run.cfg.train.channels_last),
                             denorm=run.norm.inverse, map_rows=run.dist.map_rows)
    require_finite(metrics, f"{run.name}, epoch {state.epoch}")
    state.eval_s += time.perf_counter() - t0
    state.eval_crops += len(rows) * crops.n
    return metrics, pred


def _better(metrics, best) -> bool:
    """max PLCC; ties go to the later epoch (DEIQT keeps the later one)."""
    return metrics is not None and (best is None or metrics["plcc"] >= best)


def evaluate_and_select(run: Run, state: LoopState, rec: dict, *, best_weights: dict | None) -> dict | None:
    """Evaluate into rec; model selection keeps the chosen epoch's test predictions (and weights)."""
    selection = run.cfg.train.selection
    test_pred = None
    if run.test_rows:
        rec["test"], test_pred = _eval(run, state, rows=run.test_rows, labels=run.test_labels,
                                       sampler=run.test_sampler)
    if run.val_rows:
        rec["val"], _ = _eval(run, state, rows=run.val_rows, labels=run.val_labels, sampler=run.sampler)
    judged = {"last": None, "val": rec.get("val"), "max_test_plcc": rec.get("test")}[selection]
    if selection == "last" or _better(judged, state.best):
        state.best = judged["plcc"] if judged else None
        state.best_epoch = rec["epoch"]
        state.best_preds = test_pred.tolist() if test_pred is not None else None
        if selection != "last":
            best_weights = state_dict_cpu(run.model)
    return best_weights


def finish(run: Run, state: LoopState, *, best_weights: dict | None, manifest) -> dict:
    """Save the selected weights; the result: history, final metrics, selection, predictions, timings."""
    if run.cfg.train.selection != "last" and best_weights:
        load_kit_state(run.model, best_weights, "the selected epoch's weights")
    final = None
    if run.test_rows and state.best_preds is not None:
        final = final_metrics(np.asarray(state.best_preds), run.test_labels, run.name)
    if run.dist.main:
        save_trained(run.model, run.cfg, manifest, out_dir=run.out_dir,
                     min_side=max(run.size, run.cfg.data.crop_size), selected_epoch=state.best_epoch)
    dtype = run.dtype
    return {
        "global_batch": run.global_batch, "micro_batch": run.micro, "steps_per_epoch": run.steps,
        "processes": run.dist.world,
        "epochs": state.history, "final": final,
        "selection": run.cfg.train.selection, "selected_epoch": state.best_epoch,
        "time_s": state.train_s + state.eval_s, "train_time_s": state.train_s, "eval_time_s": state.eval_s,
        "train_crops_per_s": state.train_crops / max(state.train_s, 1e-9),
        "eval_crops_per_s": state.eval_crops / max(state.eval_s, 1e-9) if state.eval_crops else None,
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "predictions": {"rows": [int(r) for r in run.test_rows],
                        "pred": [round(float(p), 6) for p in (state.best_preds or [])],
                        "label": [round(float(v), 6) for v in (run.test_labels if run.test_labels is not None
                                                               else [])]},
    }


def compile_run(run: Run) -> None:
    """torch.compile in place: the forward (evaluation) and the whole loss (training: the models' loss()
    does not go through forward, so compiling the forward alone would leave CSFIQA and LML-IQA eager)."""
    run.model.compile()
    run.loss_fn.compile()


def train_run(cfg: RunConfig, manifest, split, out_dir, *, test_manifest=None, progress: bool = True,
              store=None, test_store=None, stop_after_epoch: int | None = None, stores=None) -> dict:
    """Train cfg's model on split.train, evaluate every cfg.train.eval_every epochs, return the result.

    test_manifest (cross-dataset): evaluate on all of it instead of split.test. store / test_store: an
    ImageStore of the manifest(s) already opened; stores: a data.cache.StoreCache the stores are taken
    from and kept in (a sweep's runs share it, so each dataset is decoded once). A checkpoint in out_dir
    written by the same config and split is resumed from.
    """
    run = setup(cfg, manifest, split, out_dir, test_manifest=test_manifest, store=store, test_store=test_store,
                progress=progress, stores=stores)
    state, best_weights = resume(run)
    if cfg.train.compile:
        compile_run(run)
    run.model.train()
    if cfg.train.epochs == 0 and not state.history:      # the untrained model, evaluated once ("epoch 0")
        rec = {"epoch": 0, "step": 0}
        best_weights = evaluate_and_select(run, state, rec, best_weights=best_weights)
        state.history.append(rec)
    epochs = tqdm(range(state.epoch, cfg.train.epochs), desc=run.name, unit="epoch", initial=state.epoch,
                  total=cfg.train.epochs, disable=not run.progress)
    for epoch in epochs:
        rec = train_epoch(run, state, epoch)
        state.epoch = epoch + 1
        last = state.epoch == cfg.train.epochs
        if state.epoch % cfg.train.eval_every == 0 or last:
            best_weights = evaluate_and_select(run, state, rec, best_weights=best_weights)
            if "test" in rec:
                epochs.set_postfix(srcc=f"{rec['test']['srcc']:.3f}", plcc=f"{rec['test']['plcc']:.3f}")
        state.history.append(rec)
        if run.dist.main and not last:       # after the last epoch `finish` writes the weights and the record
            save_checkpoint(run.out_dir / CHECKPOINT, ident=run.ident, model=run.model, opt=run.opt,
                            scaler=run.scaler, state=asdict(state), best_weights=best_weights,
                            shuffle_gen=run.shuffle_gen)
        run.dist.barrier()                   # the ranks leave an epoch together, its checkpoint written
        if stop_after_epoch is not None and state.epoch == stop_after_epoch and not last:
            raise TrainingInterrupted(f"stopped after epoch {state.epoch} (checkpoint {run.out_dir / CHECKPOINT})")
    return finish(run, state, best_weights=best_weights, manifest=manifest)
