"""Training of any IQAModel with DEIQT's recipe: a flat loop of small steps.

    train_run(cfg, manifest, split, out_dir) -> result (dict): the per-epoch history, the final metrics,
                                                the selected epoch, the predictions, the timings

The loop, as pyiqa splits it: `setup` builds everything a run needs (a `Run`), `resume` reads a
checkpoint of the same run, `train_epoch` runs one epoch of `optimize_step`s, `evaluate_and_select`
evaluates and applies the model selection, `finish` saves the selected weights and computes the final
metrics. The learning rate is the pure function `optim.lr_at`, as in nanoGPT.

One "epoch" lists every training image crops_train times (DEIQT's PATCH_NUM), shuffled, and cuts the
batches of global_batch crops from that list (drop_last); micro_batch splits a batch into exact
gradient-accumulation chunks. Everything random comes from cfg.train.seed; a training crop is a pure
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

from ..config.check import in_batch_contrastive
from ..config.fields import ConfigError, RunConfig
from ..data.cache import build_store
from ..data.store import CropSampler, CropStream
from ..models import create_model
from ..models.pretrained import load_kit_state
from ..devices import amp_dtype, autocast
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


def _stores(cfg, manifest, test_manifest, store, test_store, device, min_side, progress):
    def build(m):
        return build_store(m, cfg.data.resize_mode, cfg.data.max_side, min_side, device, progress, cfg.data.store)
    store = store or build(manifest)
    if test_manifest is None:
        return store, store
    return store, test_store or build(test_manifest)


def _batching(cfg: RunConfig, dataset: str, n_train: int, dist: Dist) -> tuple[int, int, int]:
    """(global batch, optimizer steps per epoch, micro-batch of this process's share)."""
    G = global_batch_for(cfg, dataset)
    E = steps_per_epoch(n_train, cfg.data.crops_train, G)
    E = min(E, cfg.train.max_steps_per_epoch or E)
    if E == 0 and cfg.train.epochs > 0:
        raise ConfigError(f"train.global_batch: {G} is more than the {n_train} training images x "
                          f"{cfg.data.crops_train} crops of {dataset} make; lower it")
    if dist.world > 1 and in_batch_contrastive(cfg):
        raise KitError(f"torchrun: {cfg.model.name}'s contrastive loss builds its positives and negatives "
                       f"within a step's batch, which {dist.world} processes would split; train it with one "
                       f"GPU per run (iqa-kit train --devices cuda:0,cuda:1,... runs several runs at once)")
    if G % dist.world:
        raise KitError(f"train.global_batch: {G} does not split evenly over {dist.world} torchrun processes")
    share = G // dist.world
    return G, E, min(cfg.train.micro_batch or share, share)


def setup(cfg: RunConfig, manifest, split, out_dir, test_manifest=None, store=None, test_store=None,
          progress: bool = True) -> Run:
    """The model (from the training seed, as DEIQT seeds after drawing the split), data, optimizer."""
    tc, dc = cfg.train, cfg.data
    dist = distributed.context(tc.device)
    device = dist.device
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.selection == "val" and not split.val:
        raise ConfigError("train.selection: 'val' needs a validation split; set data.val_fraction > 0")
    G, E, micro = _batching(cfg, manifest.name, len(split.train), dist)
    seed_all(tc.seed)
    model = create_model(cfg).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = model.input_size
    store, test_store = _stores(cfg, manifest, test_manifest, store, test_store, device,
                                max(size, dc.crop_size), progress and dist.main)
    sampler = CropSampler(store, device=device)
    test_sampler = sampler if test_store is store else CropSampler(test_store, device=device)
    test_rows = list(range(len(test_manifest))) if test_manifest is not None else list(split.test)
    norm = LabelNorm(tc.label_norm, manifest.label_range)
    if hasattr(model, "label_range") and manifest.label_range:
        model.label_range = tuple(float(v) for v in norm(np.asarray(manifest.label_range, dtype=float)))
    if hasattr(model, "steps_per_epoch"):          # CSFIQA's NSM warm-up counts epochs of steps
        model.steps_per_epoch = E
    dtype = amp_dtype(tc.amp, device)
    return Run(cfg=cfg, name=f"{cfg.model.name} on {manifest.name}", device=device, model=model, size=size,
               sampler=sampler, test_sampler=test_sampler, test_rows=test_rows,
               test_labels=_labels(test_store, test_rows), val_rows=list(split.val),
               val_labels=_labels(store, split.val), norm=norm,
               train_rows=torch.as_tensor(split.train, dtype=torch.long),
               all_labels=norm(store.labels.float()), global_batch=G, micro=micro,
               steps=E, opt=make_optimizer(model, tc, device),
               scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dtype=dtype,
               eval_dtype=amp_dtype(tc.eval_amp or tc.amp, device),
               shuffle_gen=torch.Generator().manual_seed(tc.seed + 1), dist=dist, loss_fn=dist.wrap(model),
               ident={"key": cfg.key(), "split": split.digest(),
                      "test": test_manifest.name if test_manifest is not None else None},
               out_dir=Path(out_dir), progress=progress and dist.main)


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


def forward_backward(model, sampler, idx, labels, generator, micro: int, device, dtype=None, scaler=None,
                     channels_last: bool = False, loss_fn=None) -> tuple[torch.Tensor, dict]:
    """Gradients of the mean loss over the batch idx, accumulated over chunks of `micro` entries.

    Each chunk's loss is scaled by its share of the batch, so the sum of the chunks' gradients is the
    batch's gradient. `generator`: a torch.Generator the chunks draw from in turn, or `crop_streams(...)`,
    which gives each chunk the crops of its samples' positions (exact accumulation for per-sample
    losses). loss_fn: model.loss, or the DDP-wrapped LossModule, which all-reduces on the last chunk.
    Returns the batch loss and the batch mean of the model's logs, as tensors on the device: nothing
    here waits for the GPU.
    """
    total, logs_sum, loss_fn = 0.0, {}, loss_fn or model.loss
    chunks, offset = idx.split(micro), 0
    for i, chunk in enumerate(chunks):
        gen = generator(offset, len(chunk)) if callable(generator) else generator
        offset += len(chunk)
        batch = model.train_batch(sampler, chunk, labels[chunk], gen)
        if channels_last and isinstance(batch.get("x"), torch.Tensor) and batch["x"].dim() == 4:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
        w = len(chunk) / len(idx)
        with accumulate(loss_fn, last=i == len(chunks) - 1):
            with autocast(device, dtype):
                loss, logs = loss_fn(batch)
            (scaler.scale(loss * w) if scaler is not None else loss * w).backward()
        total = total + loss.detach().double() * w
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + torch.as_tensor(v).detach().double() * w
        del batch, loss, logs   # free this chunk's crops before the next are cut (no allocator churn)
    return total, logs_sum


def optimize_step(run: Run, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
    """One optimizer step on the batch idx (this process's share of it under torchrun): LR, gradients
    (accumulated, averaged over the ranks), clipping, update, EMA hooks."""
    tc = run.cfg.train
    set_lr(run.opt, lr_at(step, run.steps, tc))
    share = run.dist.share(len(idx))
    loss, logs = forward_backward(run.model, run.sampler, idx[share], run.all_labels,
                                  crop_streams(tc.seed, step, share.start), run.micro, run.device, run.dtype,
                                  run.scaler, tc.channels_last, run.loss_fn)
    run.scaler.unscale_(run.opt)
    if tc.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.clip_grad)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.model.after_step()
    return loss, logs


def train_epoch(run: Run, state: LoopState, epoch: int) -> dict:
    """One epoch: every training image crops_train times, shuffled, in batches of global_batch."""
    G, E, t0 = run.global_batch, run.steps, time.perf_counter()
    order = run.train_rows.repeat_interleave(run.cfg.data.crops_train)
    order = order[torch.randperm(len(order), generator=run.shuffle_gen)]
    losses, logs_sum = [], {}
    for it in tqdm(range(E), desc=f"epoch {epoch + 1}", leave=False, disable=not run.progress):
        loss, logs = optimize_step(run, order[it * G:(it + 1) * G], state.step)
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
    state.train_crops += E * G
    return {"epoch": epoch + 1, "step": state.step, "lr": lr_at(state.step - 1, E, run.cfg.train),
            "train_loss": mean_loss, **{k: float(run.dist.mean(v)) / E for k, v in logs_sum.items()}}


def _eval(run: Run, state: LoopState, rows, labels, sampler):
    dc, t0 = run.cfg.data, time.perf_counter()        # seeded_random/grid crops: the same every epoch
    m, pred = evaluate(run.model, sampler, rows, labels, dc.crops_test, run.size, dc.test_crops,
                       run.cfg.train.seed, max(run.global_batch, run.micro), run.eval_dtype,
                       run.cfg.train.channels_last, run.norm.inverse, map_rows=run.dist.map_rows)
    require_finite(m, f"{run.name}, epoch {state.epoch}")
    state.eval_s += time.perf_counter() - t0
    state.eval_crops += len(rows) * dc.crops_test
    return m, pred


def _better(metrics, best) -> bool:
    """max PLCC; ties go to the later epoch (DEIQT keeps the later one)."""
    return metrics is not None and (best is None or metrics["plcc"] >= best)


def evaluate_and_select(run: Run, state: LoopState, rec: dict, best_weights: dict | None) -> dict | None:
    """Evaluate into rec; model selection keeps the chosen epoch's test predictions (and weights)."""
    selection = run.cfg.train.selection
    test_pred = None
    if run.test_rows:
        rec["test"], test_pred = _eval(run, state, run.test_rows, run.test_labels, run.test_sampler)
    if run.val_rows:
        rec["val"], _ = _eval(run, state, run.val_rows, run.val_labels, run.sampler)
    judged = {"last": None, "val": rec.get("val"), "max_test_plcc": rec.get("test")}[selection]
    if selection == "last" or _better(judged, state.best):
        state.best = judged["plcc"] if judged else None
        state.best_epoch = rec["epoch"]
        state.best_preds = test_pred.tolist() if test_pred is not None else None
        if selection != "last":
            best_weights = state_dict_cpu(run.model)
    return best_weights


def finish(run: Run, state: LoopState, best_weights: dict | None, manifest) -> dict:
    """Save the selected weights; the result: history, final metrics, selection, predictions, timings."""
    if run.cfg.train.selection != "last" and best_weights:
        load_kit_state(run.model, best_weights, "the selected epoch's weights")
    final = None
    if run.test_rows and state.best_preds is not None:
        final = final_metrics(np.asarray(state.best_preds), run.test_labels, run.name)
    if run.dist.main:
        save_trained(run.model, run.cfg, manifest, run.out_dir, min_side=max(run.size, run.cfg.data.crop_size),
                     selected_epoch=state.best_epoch)
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


def train_run(cfg: RunConfig, manifest, split, out_dir, test_manifest=None, progress: bool = True,
              store=None, test_store=None, stop_after_epoch: int | None = None) -> dict:
    """Train cfg's model on split.train, evaluate every cfg.train.eval_every epochs, return the result.

    test_manifest (cross-dataset): evaluate on all of it instead of split.test. store / test_store: an
    ImageStore of the manifest(s) already decoded (sweeps reuse them). A checkpoint in out_dir written
    by the same config and split is resumed from.
    """
    run = setup(cfg, manifest, split, out_dir, test_manifest, store, test_store, progress)
    state, best_weights = resume(run)
    if cfg.train.compile:
        compile_run(run)
    run.model.train()
    if cfg.train.epochs == 0 and not state.history:      # the untrained model, evaluated once ("epoch 0")
        rec = {"epoch": 0, "step": 0}
        best_weights = evaluate_and_select(run, state, rec, best_weights)
        state.history.append(rec)
    epochs = tqdm(range(state.epoch, cfg.train.epochs), desc=run.name, unit="epoch", initial=state.epoch,
                  total=cfg.train.epochs, disable=not run.progress)
    for epoch in epochs:
        rec = train_epoch(run, state, epoch)
        state.epoch = epoch + 1
        last = state.epoch == cfg.train.epochs
        if state.epoch % cfg.train.eval_every == 0 or last:
            best_weights = evaluate_and_select(run, state, rec, best_weights)
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
    return finish(run, state, best_weights, manifest)
