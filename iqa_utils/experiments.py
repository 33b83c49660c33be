"""What each notebook runs: lists of run configs, executed through run records, returned as frames.

Every function here is incremental: a run whose record exists is loaded, not retrained, so a notebook
re-run (or a Colab session that reconnects) picks up where it stopped, and a sweep can be sharded
across machines with `shard="i/N"`, or spread over several devices with device="cuda:0,cuda:1" (one
worker process per device, pool.py). Configs are built by overrides and never changed in place.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch

from . import costs, tables
from .config import RunConfig, make_config, override, plan
from .data.registry import load_manifest
from .models import create_model, display_name, list_models
from .pool import parse_devices, run_on_pool
from .runs import record_row, run_or_load, shard as take_shard
from .system import resolve_device

RESULT_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")


def configs(profile: str, model: str, datasets: Iterable[str], seeds: Iterable[int],
            overrides: dict | None = None) -> list[RunConfig]:
    return [make_config(profile, model, {"data.dataset": ds, "split_seed": seed, **(overrides or {})})
            for ds in datasets for seed in seeds]


class _Manifests:
    """Each dataset parsed once per process."""

    def __init__(self, data_root):
        self.data_root, self.cache = data_root, {}

    def __call__(self, name):
        if name not in self.cache:
            self.cache[name] = load_manifest(name, self.data_root)
        return self.cache[name]


def method_row(rec: dict, variant: str = "") -> dict:
    """The columns tables need from a run record, with the paper's method name and the variant label."""
    r = record_row(rec)
    row = {"method": display_name(r["model"]), "variant": variant}
    row.update({k: r[k] for k in ("dataset", "test_dataset", "split_seed", "train_fraction", "selection", "key",
                                  "time_s", *RESULT_METRICS)})
    return row


def _train_on_pool(cfgs: list[RunConfig], devices: list[str], results_dir, manifests: _Manifests) -> None:
    """The runs trained by one worker per device; every dataset is parsed here first, so that a
    synthetic set is built once, not by each worker."""
    for cfg in cfgs:
        manifests(cfg.data.dataset)
        if cfg.test_dataset:
            manifests(cfg.test_dataset)
    run_on_pool(cfgs, devices, results_dir)


def run_all(cfgs: list[RunConfig], results_dir: str = "results", data_root: str | None = None,
            shard: str | None = None, progress: bool = True, labels: list[str] | None = None,
            device: str | None = None) -> pd.DataFrame:
    """Run (or load) every config; one row per run: method, variant, dataset, test_dataset, seed, metrics.

    device: one device, or several ("cuda:0,cuda:1"): the runs are then trained by one worker process
    per device, and this process loads their records (and trains any run a dead worker left)."""
    pairs = take_shard(list(zip(cfgs, labels or [""] * len(cfgs))), shard)
    manifests = _Manifests(data_root)
    devices = parse_devices(device)
    where = {"data.data_root": data_root, **({"train.device": devices[0]} if devices else {})}
    pairs = [(override(cfg, where), label) for cfg, label in pairs]
    if len(devices) > 1:
        _train_on_pool([cfg for cfg, _ in pairs], devices, results_dir, manifests)
    rows = []
    for cfg, label in pairs:
        test_m = manifests(cfg.test_dataset) if cfg.test_dataset else None
        rec = run_or_load(cfg, results_dir, manifest=manifests(cfg.data.dataset), test_manifest=test_m,
                          progress=progress)
        rows.append(method_row(rec, label))
    return pd.DataFrame(rows)


def main_runs(profile: str, models=("deiqt", "csfiqa", "lmliqa"), datasets=None, seeds=None,
              overrides: dict | None = None, **kw) -> pd.DataFrame:
    p = plan(profile)
    cfgs = [c for m in models for c in configs(profile, m, datasets or p["datasets"], seeds or p["seeds"],
                                                overrides)]
    return run_all(cfgs, **kw)


def variant_runs(profile: str, model: str, variants: dict[str, dict], datasets=None, seeds=None,
                 **kw) -> pd.DataFrame:
    """Ablation rows: {variant label: dotted overrides}; the label lands in the `variant` column."""
    p = plan(profile)
    cfgs, labels = [], []
    for label, ov in variants.items():
        for c in configs(profile, model, datasets or p["datasets"][:1], seeds or p["seeds"], ov):
            cfgs.append(c)
            labels.append(label)
    return run_all(cfgs, labels=labels, **kw)


def sweep_runs(profile: str, model: str, field: str | tuple[str, ...], values: list, **kw) -> pd.DataFrame:
    """One-field (or tied-fields) sensitivity sweep; variant label = the value."""
    fields = (field,) if isinstance(field, str) else field
    variants = {}
    for v in values:
        vs = v if isinstance(v, (tuple, list)) and len(fields) > 1 else (v,)
        variants[", ".join(map(str, vs))] = dict(zip(fields, vs))
    return variant_runs(profile, model, variants, **kw)


def cross_runs(profile: str, models, pairs, seeds=None, **kw) -> pd.DataFrame:
    """Train on A (its training split), test on all of B."""
    p = plan(profile)
    cfgs = [c for m in models for a, b in pairs
            for c in configs(profile, m, [a], seeds or p["seeds"][:1], {"test_dataset": b})]
    return run_all(cfgs, **kw)


def fraction_runs(profile: str, models, fractions=(0.2, 0.4, 0.6, 0.8), datasets=None, seeds=None,
                  **kw) -> pd.DataFrame:
    """Data-efficient learning: train on a share of the training split, same test split."""
    p = plan(profile)
    cfgs, labels = [], []
    for m in models:
        for f in fractions:
            for c in configs(profile, m, datasets or p["datasets"][:2], seeds or p["seeds"],
                             {"data.train_fraction": f}):
                cfgs.append(c)
                labels.append(f"{int(round(f * 100))}%")
    return run_all(cfgs, labels=labels, **kw)


def data_efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Reported | reproduced per share of the training split (the fraction_runs rows)."""
    parts = [tables.comparison_table(g, table=f"data_efficient_{share.rstrip('%')}",
                                     by=("method", "variant", "dataset"))
             for share, g in runs.groupby("variant", sort=False)]
    return pd.concat(parts, ignore_index=True)


# --- sweeps and ablations named in docs/csfiqa.md and docs/lmliqa.md -------------------------------------
# name -> (field or tied fields, values). The smoke profile runs the default and one alternative.
SWEEPS = {
    "csfiqa": {
        "lambda": ("csfiqa.lam", [0.01, 0.05, 0.1, 0.5, 1.0]),
        "tau": ("csfiqa.tau", [0.05, 0.07, 0.1, 0.2, 0.5]),
        "alpha_beta": (("csfiqa.alpha", "csfiqa.beta"), [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (1.0, 2.0)]),
        "k": ("csfiqa.afs_k", [0.25, 0.5, 0.75, 1.0]),
        "gamma": (("csfiqa.gamma1", "csfiqa.gamma2"), [(0.2, 0.7), (0.1, 0.8), (0.3, 0.6)]),
    },
    "lmliqa": {
        "tau": ("lmliqa.tau", [0.05, 0.07, 0.1, 0.2]),
        "k_crops": ("lmliqa.k_crops", [2, 4, 6, 8]),
        "ema_momentum": ("lmliqa.ema_momentum", [0.9, 0.99, 0.996, 0.999]),
        "lambda_con": ("lmliqa.lambda_con", [0.01, 0.05, 0.1, 0.5, 1.0]),
    },
}

# variant label -> overrides (the first row is the full model)
ABLATIONS = {
    "csfiqa": {
        "CSFIQA (full)": {},
        "w/o SCL": {"csfiqa.scl": False},
        "w/o NSM": {"csfiqa.nsm": "off"},
        "w/o AFS (dense attention)": {"csfiqa.afs": False},
        "w/o Information Concentrator": {"csfiqa.ic": "off"},
        "one scale": {"csfiqa.scale_mode": "single"},
    },
    "lmliqa": {
        "inter-image negatives only": {"lmliqa.intra_negatives": False},
        "+ intra-image negatives (LML-IQA)": {},
        "random positive": {"lmliqa.saliency": "random"},
        "w/o mutual learning": {"lmliqa.mutual": "off"},
    },
}


def sweep_label(model: str, name: str) -> str:
    fields = SWEEPS[model][name][0]
    return fields if isinstance(fields, str) else " / ".join(fields)


def getattr_dotted(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def sweep_values(profile: str, model: str, name: str) -> list:
    fields, values = SWEEPS[model][name]
    if profile != "smoke":
        return values
    tied = (fields,) if isinstance(fields, str) else fields
    default = tuple(getattr_dotted(make_config(profile, model), f) for f in tied)
    default = default[0] if isinstance(fields, str) else default
    others = [v for v in values if v != default]
    return [default, others[0]]


def named_sweep(profile: str, model: str, name: str, **kw) -> pd.DataFrame:
    fields, _ = SWEEPS[model][name]
    return sweep_runs(profile, model, fields, sweep_values(profile, model, name), **kw)


def sensitivity_table(profile: str, model: str, name: str, **kw) -> pd.DataFrame:
    """One named sweep run (or loaded) and compared with the reported cells of its table."""
    runs = named_sweep(profile, model, name, **kw)
    return tables.comparison_table(runs, table=f"ablation_{name}", by=("method", "variant", "dataset"))


def untrained_runs(profile: str, model: str, datasets=None, seeds=None, **kw) -> pd.DataFrame:
    """The same model evaluated before any training step (epochs = 0): the floor training must clear."""
    df = variant_runs(profile, model, {"untrained": {"train.epochs": 0}}, datasets=datasets, seeds=seeds, **kw)
    df["method"] = df["method"] + " (untrained)"
    return df


def dataset_summary(manifests: dict) -> pd.DataFrame:
    rows = []
    for name, m in manifests.items():
        df = m.df
        rows.append({"dataset": name, "images": len(m), "label": m.direction,
                     "label range": f"{df.label.min():.3g}–{df.label.max():.3g}",
                     "split by": m.split_unit,
                     "references": df.ref.nunique() if m.split_unit == "ref" else None,
                     "distortion types": df.distortion.nunique() if df.distortion.notna().any() else None,
                     "root": str(m.root)})
    return pd.DataFrame(rows)


# --- cost (notebook 05) --------------------------------------------------------------------------------
def full_size_model(model: str):
    """The paper-size model on the meta device: shapes only, nothing allocated, read or downloaded."""
    cfg = make_config("paper", model, {"model.pretrained": False})
    with torch.device("meta"):
        if model == "csfiqa":                      # the LLaMA-7B layer at its real shape, no weights read
            return costs.CSFIQA(cfg.csfiqa, "small", cfg.train.regression_loss, device="meta")
        return create_model(cfg)


def _timed_models(profile: str, dev) -> dict:
    """The profile's models on dev, for timing: random init (timing does not depend on the weights)."""
    out = {}
    for m in list_models():
        cfg = make_config(profile, m, {"model.pretrained": False})
        try:
            out[display_name(m)] = create_model(cfg).to(dev)
        except Exception as e:   # e.g. CSFIQA without the LLaMA-7B weights: params/MACs above still hold
            print(f"{display_name(m)}: not timed ({e})")
    return out


def cost_analysis(profile: str, device: str = "auto", batch: int = 8, train_batch: int = 8,
                  crops_per_image: int = 10) -> pd.DataFrame:
    """Params and MACs at full size (each paper's input size), then latency, throughput and peak
    memory of the profile's model size on `device` (named in the table)."""
    dev = resolve_device(device)
    full = {display_name(m): full_size_model(m) for m in list_models()}
    sizes = {name: getattr(model, "input_size", 224) for name, model in full.items()}
    t_full = costs.cost_table(full, sizes, timing=False, crops_per_image=crops_per_image)
    t_full.insert(1, "size", "full (paper)")
    t_run = costs.cost_table(_timed_models(profile, dev), device=str(dev), batch=batch, train_batch=train_batch,
                             memory=True, crops_per_image=crops_per_image)
    if profile == "smoke":
        t_run.insert(1, "size", "tiny (smoke)")
        return pd.concat([t_full, t_run], ignore_index=True)
    t_full = t_full.drop(columns=["device"])
    keep = [c for c in t_run.columns if c not in t_full.columns or c == "model"]
    return t_full.merge(t_run[keep], on="model", how="left")


def cost_vs_reported(cost: pd.DataFrame) -> pd.DataFrame:
    """Reported cost figures next to the kit's full-size counts (LoDa / TReS are reported-only)."""
    rep = tables.reported_numbers()
    rep = rep[rep.table == "cost"]
    full = cost[cost["size"] == "full (paper)"].set_index("model")
    rows = []
    for r in rep.itertuples():
        method = r.method.split(" (")[0]
        col = "params_M" if r.metric == "params_M" else "GMACs_per_crop"
        ours = float(full.loc[method, col]) if method in full.index else None
        rows.append({"method": r.method, "metric": r.metric, "reported": r.value,
                     "source": f"{r.paper} {r.version}: {r.provenance}",
                     "kit (full size)": ours, "delta": None if ours is None else ours - r.value})
    return pd.DataFrame(rows)
