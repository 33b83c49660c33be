"""What a profile will cost, estimated before spending it (`iqa-kit plan`).

For every notebook: the training runs it makes (experiments.notebook_runs, the same lists the notebooks
run), how many already have a record, the training and test crops they process, and the estimated
GPU-hours. Image counts come from the datasets when they are on disk (the exact splits), else from the
releases' counts (marked "≈"). Time: a training crop costs about three forward passes and a test crop
one; models are scaled by their MACs per crop relative to DEIQT (CSFIQA ≈ 10x: its LLaMA-7B layer), so
one figure, DEIQT's training crops/s on the target GPU (benchmarks/bench_train.py measures it), sets
the estimate. LML-IQA's extra global views (student and teacher) are counted; the EMA update is not.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch

from ..config.check import make_config
from ..config.fields import RunConfig
from ..config.profiles import profile_scope
from ..data.manifest import EXPECTED_COUNTS
from ..devices import amp_dtype
from ..models import costs, create_model
from ..system import KitError, atomic_write_json, cache_dir, read_json
from ..training.optim import global_batch_for, steps_per_epoch
from .experiments import manifest_for, notebook_runs
from .records import data_digest, record_path, source_split


def _model(profile: str, name: str):
    cfg = make_config(profile, name, {"model.pretrained": False})
    return create_model(cfg) if cfg.model.size == "tiny" else costs.full_size_model(name)   # full size: shapes only


@lru_cache(maxsize=None)
def relative_cost(profile: str, model: str) -> float:
    """MACs per crop of the profile's model relative to its DEIQT's."""
    return costs.count_macs(_model(profile, model)) / costs.count_macs(_model(profile, "deiqt"))


class _Data:
    """Manifests when the datasets are on disk (exact splits and record keys), else release counts."""

    def __init__(self, profile: str, data_root):
        self.profile, self.data_root, self.cache = profile, data_root, {}

    def __call__(self, name: str):
        if name not in self.cache:
            try:
                self.cache[name] = manifest_for(self.profile, name, self.data_root)
            except (KitError, KeyError):
                self.cache[name] = None
        return self.cache[name]


def _split_sizes(cfg: RunConfig, manifest) -> tuple[int, int, int, bool]:
    """(train, val, test) images of the run's split, and whether they are exact."""
    d = cfg.data
    if manifest is not None:
        s = source_split(cfg, manifest)
        return len(s.train), len(s.val), len(s.test), True
    n = profile_scope(cfg.profile)["images"] or EXPECTED_COUNTS.get(d.dataset, 0)
    train = round((1.0 if cfg.is_cross() and d.cross_train == "whole" else d.split_ratio) * n)
    val = round(d.val_fraction * train)
    return max(1, round(d.train_fraction * (train - val))), val, n - train, False


def _extra_views(cfg: RunConfig, G: int) -> int:
    """Images per step beyond the regression crops: LML-IQA's global views (student + teacher) and, with
    budget "extra", its K crops; CSFIQA's second crop in the crop modes."""
    if cfg.model.name == "lmliqa":
        lc = cfg.lmliqa
        m = max(2, round(lc.con_share * G / lc.k_crops))
        m = min(m, max(2, G // lc.k_crops)) if lc.budget == "match_deiqt" else m
        return 2 * m + (m * lc.k_crops if lc.budget == "extra" else 0)
    if cfg.model.name == "csfiqa" and cfg.csfiqa.scale_mode in ("crop", "crop_per_branch"):
        return G
    return 0


def run_crops(cfg: RunConfig, data: _Data) -> dict:
    """Training and test crops of one run (its split, global batch, epochs and evaluations)."""
    train, val, test, exact = _split_sizes(cfg, data(cfg.data.dataset))
    if cfg.test_dataset:
        target = data(cfg.test_dataset)
        test = len(target) if target is not None else EXPECTED_COUNTS.get(cfg.test_dataset, 0)
        exact = exact and target is not None
    t, d = cfg.train, cfg.data
    G = global_batch_for(cfg, d.dataset)
    E = steps_per_epoch(train, d.crops_train, G)
    E = min(E, t.max_steps_per_epoch or E)
    evals = max(1, math.ceil(t.epochs / t.eval_every)) if t.epochs else 1
    return {"train_crops": t.epochs * E * (G + _extra_views(cfg, G)),
            "test_crops": evals * (test + val) * d.crops_test, "exact": exact}


def _has_record(cfg: RunConfig, data: _Data, results_dir: Path) -> bool:
    train, test = data(cfg.data.dataset), data(cfg.test_dataset) if cfg.test_dataset else None
    if train is not None and (test is not None or not cfg.test_dataset):
        return record_path(cfg, results_dir, data_digest(train, test)).exists()
    folder = record_path(cfg, results_dir, "x").parent        # data unknown: any record of the config
    return any(folder.glob(f"{cfg.key()}-s{cfg.split_seed}-d*.json"))


def check_rate(crops_per_s: float | None, name: str = "crops_per_s") -> float | None:
    """None (no GPU-hours) or a positive, finite rate; anything else would print negative or NaN hours."""
    if crops_per_s is not None and not 0 < crops_per_s < math.inf:
        raise KitError(f"{name}: {crops_per_s} is not a positive number of training crops per second")
    return crops_per_s


def plan_table(profile: str, results_dir="results", data_root=None, crops_per_s: float | None = None):
    """One row per notebook and a total: runs, runs with records, crops (millions), est. GPU-hours."""
    check_rate(crops_per_s)
    data, seen, rows = _Data(profile, data_root), set(), []
    for notebook, planned in notebook_runs(profile).items():
        runs = []
        for cfg, _ in planned:
            ident = (cfg.key(), cfg.split_seed, cfg.test_dataset)
            if ident not in seen:                     # a run another notebook made first is counted there
                seen.add(ident)
                runs.append((cfg, run_crops(cfg, data), _has_record(cfg, data, Path(results_dir))))
        rows.append(_row(notebook, runs, crops_per_s))
    table = pd.DataFrame(rows)
    total = table.drop(columns=["notebook", "counts"]).sum(numeric_only=True)
    table.loc[len(table)] = {"notebook": "total", **total.to_dict(),
                             "counts": "exact" if (table["counts"] == "exact").all() else "≈ release counts"}
    return table


def _row(notebook: str, runs: list, crops_per_s: float | None) -> dict:
    todo = [(c, n) for c, n, done in runs if not done]
    train = sum(n["train_crops"] for _, n, _ in runs) / 1e6
    test = sum(n["test_crops"] for _, n, _ in runs) / 1e6
    row = {"notebook": notebook, "runs": len(runs), "with records": len(runs) - len(todo),
           "train crops (M)": round(train, 3), "test crops (M)": round(test, 3)}
    if crops_per_s:
        sec = sum(relative_cost(c.profile, c.model.name) * (3 * n["train_crops"] + n["test_crops"]) / (3 * crops_per_s)
                  for c, n in todo)
        row["GPU-hours left"] = round(sec / 3600, 2)
    row["counts"] = "exact" if all(n["exact"] for _, n, _ in runs) else "≈ release counts"
    return row


# ---- memory, known before a run ----------------------------------------------------------------------
def measured_config(profile: str, model: str) -> RunConfig:
    """The profile's model as a run builds it, random weights (a 7B LLaMA layer of the real shape)."""
    over = {"model.pretrained": False}
    if model == "csfiqa" and make_config(profile, model).model.size != "tiny":
        over["csfiqa.ic_weights"] = "random"
    return make_config(profile, model, over)


def step_memory(profile: str, model: str, amp: str = "bf16") -> dict:
    """costs.step_memory of the profile's model on this CPU at the run's precision, cached in
    $IQA_KIT_CACHE/memory (a full-size measurement takes about a minute)."""
    cfg = measured_config(profile, model)
    path = cache_dir("memory") / f"{model}-{amp}-{cfg.key()}.json"
    if path.exists():
        return read_json(path)
    dtype = amp_dtype(amp, torch.device("cpu"))
    net = create_model(cfg)
    net.fit_precision(dtype)
    mem = costs.step_memory(net, "cpu", dtype=dtype, batches=costs.MEASURE_BATCHES.get(model, (2, 4)))
    atomic_write_json(mem, path)
    return mem


def _gib(b: float) -> float:
    return round(b / 2**30, 1)


def memory_table(profile: str, models=("deiqt", "csfiqa", "lmliqa"), amp: str = "bf16") -> pd.DataFrame:
    """Per model and dataset of the profile: the estimated peak GPU memory of a training step at the
    recipe's global batch, the cards (GB) it fits, and the micro-batch `train.micro_batch=auto` takes on
    each card (the numbers do not change with it: the gradient cache)."""
    rows = []
    for model in models:
        mem = step_memory(profile, model, amp)
        for dataset in profile_scope(profile)["datasets"]:
            G = global_batch_for(make_config(profile, model, {"data.dataset": dataset}), dataset)
            row = {"model": model, "dataset": dataset, "global batch": G,
                   "MiB / sample": round(mem["per_crop"] / 2**20, 1), "state GiB": _gib(mem["state"]),
                   "peak GiB at batch": _gib(costs.peak_bytes(mem, G)),
                   "fits at batch": ", ".join(map(str, costs.cards_fitting(mem, G))) or "none"}
            for card in costs.CARDS_GB:
                micro = costs.largest_micro(G, mem, card * 2**30)
                row[f"micro on {card} GB"] = f"{micro} ({_gib(costs.peak_bytes(mem, micro))})" if micro else "-"
            rows.append(row)
    return pd.DataFrame(rows)
