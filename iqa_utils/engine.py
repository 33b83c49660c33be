"""Single-process training and evaluation of any IQAModel, with DEIQT's recipe as the default.

    train_run(cfg, manifest, split, out_dir)   -> run record (dict); checkpoint + resume under out_dir
    evaluate(model, sampler, rows, labels, ...) -> (metrics, per-image predictions)
    lr_at(step, steps_per_epoch, cfg.train)     -> DEIQT's per-step schedule (deiqt_protocol §3)
    param_groups(model, weight_decay)           -> AdamW groups (no decay on 1-D params, pos/cls tokens)
    load_trained(path) / predict_images(...)    -> `iqa-kit predict`

One "epoch" lists every training image crops_train times (DEIQT's PATCH_NUM), shuffled, and cuts the
batches of global_batch crops from that list (drop_last); micro_batch splits a batch into exact
gradient-accumulation chunks. Everything random comes from cfg.train.seed, and every epoch ends with an
atomic checkpoint holding the RNG states, so an interrupted run resumes to the same numbers.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import RunConfig, override
from .metrics import LogisticFitError, all_metrics

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DEFAULT_GLOBAL_BATCH = 64


class TrainingInterrupted(RuntimeError):
    """Raised by train_run(stop_after_epoch=k) after epoch k's checkpoint (tests, time-boxed sessions)."""


# ---- devices, precision ---------------------------------------------------------------------------
def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA when supported, else fp16 (with loss scaling); off on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, "fp32": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ---- optimizer and schedule -----------------------------------------------------------------------
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


def _schedule_value(t: int, E: int, tc) -> float:
    """f(t) of deiqt_protocol §3 (or the cosine alternative), t = optimizer updates done."""
    W = tc.warmup_epochs * E
    if t < W:
        return tc.warmup_lr + t * (tc.lr - tc.warmup_lr) / W
    if tc.schedule == "deiqt_step":
        D = max(1, tc.decay_epochs * E)
        return tc.lr * tc.decay_rate ** (t // D)
    if tc.schedule == "cosine":
        T = max(W + 1, tc.epochs * E)
        return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * (t - W) / (T - W)))
    raise ValueError(f"unknown schedule {tc.schedule!r}; choose deiqt_step or cosine")


def lr_at(step: int, steps_per_epoch: int, train_cfg) -> float:
    """LR of optimizer step `step` (0-based). timm's scheduler is updated after each step with the
    index of the step just taken, so step 0 runs at warmup_lr and step s >= 1 at f(s - 1)."""
    return _schedule_value(max(step - 1, 0), steps_per_epoch, train_cfg)


def global_batch_for(cfg: RunConfig, dataset: str) -> int:
    if cfg.train.global_batch:
        return int(cfg.train.global_batch)
    try:
        from .data.registry import DEIQT_GLOBAL_BATCH
        return int(DEIQT_GLOBAL_BATCH.get(dataset, DEFAULT_GLOBAL_BATCH))
    except ImportError:
        return DEFAULT_GLOBAL_BATCH


def steps_per_epoch(n_train: int, crops_train: int, global_batch: int) -> int:
    return (n_train * crops_train) // global_batch


# ---- data -----------------------------------------------------------------------------------------
_STORE_CACHE: dict = {}


def build_store(manifest, cfg: RunConfig, device: torch.device, min_side: int | None = None,
                progress: bool = True, cache: bool = True):
    """Decode once; on CUDA the pixels move to the GPU when they take under a third of its free memory.

    The last two stores built are kept, so a sweep over seeds (or models) decodes a dataset once.
    """
    from .data.store import ImageStore
    min_side = min_side or cfg.data.crop_size
    key = (manifest.name, hash(tuple(manifest.df.path)), cfg.data.resize_mode, cfg.data.max_side, min_side,
           str(device))
    if cache and key in _STORE_CACHE:
        return _STORE_CACHE[key]
    store = ImageStore.from_manifest(manifest, resize_mode=cfg.data.resize_mode, max_side=cfg.data.max_side,
                                     min_side=min_side, device="cpu", progress=progress)
    if device.type == "cuda" and store.nbytes < torch.cuda.mem_get_info(device)[0] / 3:
        store.to(device)
    if cache:
        while len(_STORE_CACHE) >= 2:                      # bound memory: a train and a test set
            _STORE_CACHE.pop(next(iter(_STORE_CACHE)))
        _STORE_CACHE[key] = store
    return store


def _labels(store, rows) -> np.ndarray:
    return store.labels[torch.as_tensor(rows, dtype=torch.long)].numpy()


class LabelNorm:
    """cfg.train.label_norm: the regression target is raw (DEIQT) or min-max scaled by the label range
    of the training set's release; predictions are mapped back before metrics (RMSE in label units)."""

    def __init__(self, kind: str, label_range):
        if kind not in ("raw", "minmax"):
            raise ValueError(f"unknown label_norm {kind!r}; choose raw or minmax")
        lo, hi = label_range if label_range else (0.0, 1.0)
        self.kind, self.lo, self.span = kind, float(lo), float(hi - lo) or 1.0

    def __call__(self, y):
        return y if self.kind == "raw" else (y - self.lo) / self.span

    def inverse(self, p):
        return p if self.kind == "raw" else p * self.span + self.lo


# ---- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def predict_rows(model, sampler, rows, n_crops: int, size: int, mode: str = "seeded_random", seed: int = 0,
                 batch_size: int = 64, amp: torch.dtype | None = None, channels_last: bool = False,
                 progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Per-image mean of the model's scores on n_crops test crops of each row (model in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per = max(1, batch_size // n_crops)                     # images per forward
    rows = list(map(int, rows))
    out = []
    for i in tqdm(range(0, len(rows), per), desc=desc, leave=False, disable=not progress):
        chunk = rows[i:i + per]
        x = sampler.test_crops(torch.tensor(chunk), n_crops, size, mode=mode, seed=seed).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            s = model(x)
        out.append(s.float().view(len(chunk), n_crops).mean(1).cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def evaluate(model, sampler, rows, labels, n_crops: int, size: int, mode: str = "seeded_random",
             seed: int = 0, batch_size: int = 64, amp: torch.dtype | str | None = None,
             channels_last: bool = False, denorm=None, logistic: bool = False, progress: bool = False):
    """(metrics on the per-image means, per-image predictions). amp: a dtype, "off"/"fp32" or None."""
    if isinstance(amp, str):
        amp = amp_dtype(amp, next(model.parameters()).device)
    pred = predict_rows(model, sampler, rows, n_crops, size, mode, seed, batch_size, amp, channels_last,
                        progress)
    if denorm is not None:
        pred = denorm(pred)
    return all_metrics(pred, labels, logistic=logistic), pred


# ---- checkpoints ----------------------------------------------------------------------------------
def atomic_save(obj, path: Path, saver=torch.save) -> None:
    """Write to a temp file in the same folder, then rename: an interruption leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        saver(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    atomic_save(text, path, lambda t, p: Path(p).write_text(t))


def _rng_state(crop_gen, shuffle_gen) -> dict:
    """Every RNG as tensors and plain types, so torch.load(weights_only=True) can read it back."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "crop": crop_gen.get_state(), "shuffle": shuffle_gen.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }


def _set_rng_state(s: dict, crop_gen, shuffle_gen) -> None:
    crop_gen.set_state(s["crop"])
    shuffle_gen.set_state(s["shuffle"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((s["python"]["version"], tuple(s["python"]["state"].tolist()), None))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _state_dict_cpu(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ---- training -------------------------------------------------------------------------------------
def _better(metrics, best) -> bool:
    """max PLCC; ties go to the later epoch (DEIQT keeps the later one)."""
    if metrics is None:
        return False
    v = metrics["plcc"]
    return best is None or (np.isfinite(v) and v >= best)


def forward_backward(model, sampler, idx, labels, generator, micro: int, device, dtype=None, scaler=None,
                     channels_last: bool = False) -> tuple[float, dict]:
    """Gradients of the mean loss over the batch idx, accumulated over chunks of `micro` entries.

    Each chunk's loss is scaled by its share of the batch, so the sum of the chunks' gradients is the
    batch's gradient (exact for per-sample losses; the random crops are drawn per chunk, from the same
    distribution). Returns the batch loss and the batch mean of the model's logs.
    """
    total, logs_sum = 0.0, {}
    for chunk in idx.split(micro):
        batch = model.train_batch(sampler, chunk, labels[chunk], generator)
        if channels_last and isinstance(batch.get("x"), torch.Tensor) and batch["x"].dim() == 4:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            loss, logs = model.loss(batch)
        w = len(chunk) / len(idx)
        (scaler.scale(loss * w) if scaler is not None else loss * w).backward()
        total += loss.item() * w
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * w
        del batch, loss, logs   # free this chunk's crops before the next are cut (no allocator churn)
    return total, logs_sum


def train_run(cfg: RunConfig, manifest, split, out_dir, test_manifest=None, progress: bool = True,
              store=None, test_store=None, stop_after_epoch: int | None = None) -> dict:
    """Train cfg's model on split.train, evaluate every cfg.train.eval_every epochs, return the record.

    test_manifest (cross-dataset): evaluate on all of it instead of split.test. store / test_store: an
    ImageStore of the manifest(s) already decoded (sweeps reuse them). A checkpoint in out_dir written
    by the same config and split is resumed from.
    """
    from .models.registry import create_model
    from .data.store import CropSampler

    tc, dc = cfg.train, cfg.data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(tc.device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.selection not in ("last", "val", "max_test_plcc"):
        raise ValueError(f"unknown selection {tc.selection!r}; choose last, val or max_test_plcc")
    if tc.selection == "val" and not split.val:
        raise ValueError("selection='val' needs a validation split: set data.val_fraction > 0")

    # model first, from the training seed (DEIQT seeds after drawing the split)
    _seed_all(tc.seed)
    model = create_model(cfg).to(device)
    size = model.input_size
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)

    store = store or build_store(manifest, cfg, device, max(size, dc.crop_size), progress)
    sampler = CropSampler(store, device=device)
    if test_manifest is not None:
        test_store = test_store or build_store(test_manifest, cfg, device, max(size, dc.crop_size), progress)
        test_sampler, test_rows = CropSampler(test_store, device=device), list(range(len(test_manifest)))
    else:
        test_store, test_sampler, test_rows = store, sampler, list(split.test)
    test_labels = _labels(test_store, test_rows) if test_rows else None
    val_labels = _labels(store, split.val) if split.val else None
    norm = LabelNorm(tc.label_norm, manifest.label_range)

    if hasattr(model, "label_range") and manifest.label_range:
        model.label_range = tuple(float(v) for v in norm(np.asarray(manifest.label_range, dtype=float)))

    G = global_batch_for(cfg, manifest.name)
    micro = min(tc.micro_batch or G, G)
    train_rows = torch.as_tensor(split.train, dtype=torch.long)
    E = steps_per_epoch(len(train_rows), dc.crops_train, G)
    if E == 0 and tc.epochs > 0:
        raise ValueError(f"{len(train_rows)} training images x {dc.crops_train} crops make less than one "
                         f"batch of {G}; lower train.global_batch")
    all_labels = norm(store.labels.float())

    dtype = amp_dtype(tc.amp, device)
    eval_dtype = amp_dtype(getattr(tc, "eval_amp", None) or tc.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fused = tc.fused_optimizer and device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.warmup_lr, betas=tuple(tc.betas),
                            eps=tc.eps, **({"fused": True} if fused else {}))
    crop_gen = torch.Generator().manual_seed(tc.seed)
    shuffle_gen = torch.Generator().manual_seed(tc.seed + 1)
    eval_bs = max(G, micro)

    # resume
    ident = {"key": cfg.key(), "split": split.digest(),
             "test": test_manifest.name if test_manifest is not None else None}
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_epoch": None, "best_preds": None,
             "train_s": 0.0, "eval_s": 0.0, "train_crops": 0, "eval_crops": 0}
    best_weights = None
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["ident"] != ident:
            raise RuntimeError(f"{ckpt_path} belongs to another run ({ck['ident']}, this one is {ident}); "
                               f"delete it or use another out_dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck["scaler"]:
            scaler.load_state_dict(ck["scaler"])
        state = ck["state"]
        best_weights = ck.get("best_weights") or None
        _set_rng_state(ck["rng"], crop_gen, shuffle_gen)

    if tc.compile:
        model.compile()                       # in place: the model's own methods call the compiled forward

    def run_eval(rows, labels, smp):
        t0 = time.perf_counter()                # seeded_random/grid crops: the same every epoch
        m, pred = evaluate(model, smp, rows, labels, dc.crops_test, size, dc.test_crops, tc.seed, eval_bs,
                           eval_dtype, tc.channels_last, norm.inverse)
        state["eval_s"] += time.perf_counter() - t0
        state["eval_crops"] += len(rows) * dc.crops_test
        return m, pred

    def eval_and_select(rec, best_weights):
        """Evaluate into rec; model selection keeps the chosen epoch's test predictions (and weights)."""
        if test_rows:
            rec["test"], test_pred = run_eval(test_rows, test_labels, test_sampler)
        if split.val:
            rec["val"], _ = run_eval(split.val, val_labels, sampler)
        judged = {"last": None, "val": rec.get("val"), "max_test_plcc": rec.get("test")}[tc.selection]
        if tc.selection == "last" or _better(judged, state["best"]):
            state["best"] = judged["plcc"] if judged else None
            state["best_epoch"] = rec["epoch"]
            state["best_preds"] = test_pred.tolist() if test_rows else None
            if tc.selection != "last":
                best_weights = _state_dict_cpu(model)
        if progress and "test" in rec:
            epochs.set_postfix(srcc=f"{rec['test']['srcc']:.3f}", plcc=f"{rec['test']['plcc']:.3f}")
        return best_weights

    model.train()
    epochs = tqdm(range(state["epoch"], tc.epochs), desc=f"{cfg.model.name} {manifest.name}", unit="epoch",
                  initial=state["epoch"], total=tc.epochs, disable=not progress)
    if tc.epochs == 0 and not state["history"]:      # the untrained model, evaluated once ("epoch 0")
        rec = {"epoch": 0, "step": 0}
        best_weights = eval_and_select(rec, best_weights)
        state["history"].append(rec)
    for epoch in epochs:
        t0 = time.perf_counter()
        order = train_rows.repeat_interleave(dc.crops_train)
        order = order[torch.randperm(len(order), generator=shuffle_gen)]
        losses, logs_sum = [], {}
        for it in tqdm(range(E), desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
            lr = lr_at(state["step"], E, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order[it * G:(it + 1) * G]
            step_loss, logs = forward_backward(model, sampler, idx, all_labels, crop_gen, micro, device,
                                               dtype, scaler, tc.channels_last)
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v
            scaler.unscale_(opt)
            if tc.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            model.after_step()
            state["step"] += 1
            losses.append(step_loss)
        state["train_s"] += time.perf_counter() - t0
        state["train_crops"] += E * G

        rec = {"epoch": epoch + 1, "step": state["step"], "lr": lr, "train_loss": float(np.mean(losses)),
               **{k: v / E for k, v in logs_sum.items()}}
        last = epoch + 1 == tc.epochs
        if (epoch + 1) % tc.eval_every == 0 or last:
            best_weights = eval_and_select(rec, best_weights)
        state["history"].append(rec)
        state["epoch"] = epoch + 1

        atomic_save({"ident": ident, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "state": state, "best_weights": best_weights or {},
                     "rng": _rng_state(crop_gen, shuffle_gen)}, ckpt_path)
        if stop_after_epoch is not None and epoch + 1 == stop_after_epoch and not last:
            raise TrainingInterrupted(f"stopped after epoch {epoch + 1} (checkpoint {ckpt_path})")

    # the selected weights are the run's model
    if tc.selection != "last" and best_weights:
        model.load_state_dict(best_weights)
    final = None
    if test_rows and state["best_preds"] is not None:
        pred = np.asarray(state["best_preds"])
        final = all_metrics(pred, test_labels)
        try:
            final["plcc_logistic"] = all_metrics(pred, test_labels, logistic=True)["plcc_logistic"]
        except LogisticFitError as e:
            warnings.warn(f"{cfg.model.name} on {manifest.name}: {e}; plcc_logistic left empty")
            final["plcc_logistic"], final["logistic_error"] = None, str(e)

    save_trained(model, cfg, manifest, out_dir, min_side=max(size, dc.crop_size),
                 selected_epoch=state["best_epoch"])
    from .runs import environment, run_key
    test_name = test_manifest.name if test_manifest is not None else manifest.name
    return {
        "key": run_key(cfg), "config": cfg.to_dict(), "dataset": manifest.name, "test_dataset": test_name,
        "split": {**split.summary(), "n_test": len(test_rows)},
        "global_batch": G, "micro_batch": micro, "steps_per_epoch": E,
        "epochs": state["history"], "final": final,
        "selection": tc.selection, "selected_epoch": state["best_epoch"],
        "time_s": state["train_s"] + state["eval_s"], "train_time_s": state["train_s"],
        "eval_time_s": state["eval_s"],
        "train_crops_per_s": state["train_crops"] / max(state["train_s"], 1e-9),
        "eval_crops_per_s": state["eval_crops"] / max(state["eval_s"], 1e-9) if state["eval_crops"] else None,
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        **environment(device),
        "predictions": {"rows": [int(r) for r in test_rows],
                        "pred": [round(float(p), 6) for p in (state["best_preds"] or [])],
                        "label": [round(float(v), 6) for v in (test_labels if test_labels is not None else [])]},
    }


# ---- trained models: save, load, predict ----------------------------------------------------------
def save_trained(model, cfg: RunConfig, manifest, out_dir, min_side: int, selected_epoch=None) -> Path:
    """model.safetensors + config.json: all `iqa-kit predict` needs (working resolution, label scale)."""
    from safetensors.torch import save_model
    out_dir = Path(out_dir)
    atomic_save(model, out_dir / WEIGHTS, lambda m, p: save_model(getattr(m, "_orig_mod", m), p))
    meta = {"config": cfg.to_dict(), "dataset": manifest.name, "selected_epoch": selected_epoch,
            "label_range": list(manifest.label_range) if manifest.label_range else None,
            "direction": manifest.direction,
            "working": {"resize_mode": cfg.data.resize_mode, "parity_size": manifest.parity_size,
                        "keep_aspect_short_side": manifest.keep_aspect_short_side,
                        "max_side": cfg.data.max_side, "min_side": min_side}}
    atomic_write_text(json.dumps(meta, indent=1, default=str), out_dir / CONFIG)
    return out_dir / WEIGHTS


def config_from_dict(d: dict) -> RunConfig:
    """RunConfig from cfg.to_dict() output (a record or config.json); unknown fields raise."""
    flat = {}

    def walk(x, prefix=""):
        for k, v in x.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[prefix + k] = tuple(v) if k == "betas" else v
    walk(d)
    return override(RunConfig(), flat)


def load_trained(path, device: str | None = "cpu"):
    """(model, cfg) from a run folder, its model.safetensors, or a training checkpoint.pt."""
    from safetensors.torch import load_model
    from .models.registry import create_model

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder / CONFIG} is missing: pass a run's checkpoint folder "
                                f"(results/checkpoints/<key>/) holding {WEIGHTS} and {CONFIG}")
    meta = json.loads((folder / CONFIG).read_text())
    cfg = config_from_dict(meta["config"])
    cfg.model.pretrained = False              # the weights come from the file, not the hub
    model = create_model(cfg)
    if path.is_dir() or path.suffix == ".safetensors":
        f = path / WEIGHTS if path.is_dir() else path
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; the run may not have finished")
        load_model(model, str(f), strict=True)
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    model.kit_meta = meta
    return model.to(resolve_device(device)).eval(), cfg


def predict_images(model, paths, cfg: RunConfig | None = None, n_crops: int | None = None,
                   mode: str | None = None, seed: int = 0, batch_size: int = 64, device: str | None = None,
                   amp: str = "off", progress: bool = False) -> np.ndarray:
    """Scores of image files: decode at the training set's working resolution, test crops, mean."""
    from .data.store import CropSampler, ImageStore

    meta = getattr(model, "kit_meta", {})
    cfg = cfg or (config_from_dict(meta["config"]) if meta else RunConfig())
    w = meta.get("working", {})
    mode_ = w.get("resize_mode", cfg.data.resize_mode)
    dev = resolve_device(device) if device else next(model.parameters()).device
    model.to(dev).eval()
    size = model.input_size
    store = ImageStore.from_paths(paths, parity_size=w.get("parity_size") if mode_ == "deiqt_parity" else None,
                                  short_side=w.get("keep_aspect_short_side") if mode_ == "keep_aspect" else None,
                                  max_side=w.get("max_side", cfg.data.max_side),
                                  min_side=w.get("min_side", max(size, cfg.data.crop_size)), progress=progress)
    norm = LabelNorm(cfg.train.label_norm, meta.get("label_range"))
    pred = predict_rows(model, CropSampler(store, device=dev), range(len(store)), n_crops or cfg.data.crops_test,
                        size, mode or cfg.data.test_crops, seed, batch_size, amp_dtype(amp, dev),
                        progress=progress)
    return norm.inverse(pred)
