"""What each notebook runs: lists of (config, label) pairs, executed through run records by `run_all`
(a notebook's `Session.run`), returned as frames.

Every function here is incremental: a run whose record exists is loaded, not retrained, so a notebook
re-run (or a Colab session that reconnects) picks up where it stopped, and a sweep can be sharded
across machines with `shard="i/N"`, or spread over several devices with device="cuda:0,cuda:1" (one
worker process per device, pool.py). Configs are built by overrides and never changed in place.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..config.check import make_config, override
from ..config.fields import RunConfig
from ..config.profiles import profile_scope
from ..config.profiles import shard as take_shard
from ..data.cache import StoreCache
from ..data.registry import load_manifest
from ..models import display_name, list_models
from .pool import parse_devices, run_on_pool
from .records import record_row, run_or_load

RESULT_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")


def configs(profile: str, model: str, datasets: Iterable[str], seeds: Iterable[int],
            overrides: dict | None = None) -> list[RunConfig]:
    return [make_config(profile, model, {"data.dataset": ds, "split_seed": seed, **(overrides or {})})
            for ds in datasets for seed in seeds]


def _spread(index: np.ndarray, n: int) -> list:
    """n entries evenly spaced over index (all of them when there are fewer)."""
    return index[np.linspace(0, len(index) - 1, min(n, len(index))).round().astype(int)].tolist()


def rehearsal_rows(manifest, n: int) -> list[int]:
    """A handful of rows spread over the label range (a rehearsal's data): n images, or for sets split by
    reference, n // 3 references (at least 3, so that an 80/20 split leaves one for testing) spread over
    the sorted ids, with 3 images each."""
    df = manifest.df
    if manifest.split_unit != "ref":
        return sorted(set(_spread(df.sort_values("label", kind="stable").index.to_numpy(), n)))
    refs = np.asarray(sorted(df.ref.unique().tolist()), dtype=object)
    rows = []
    for ref in dict.fromkeys(_spread(refs, max(3, n // 3))):
        rows += _spread(df[df.ref == ref].sort_values("label", kind="stable").index.to_numpy(), 3)
    return sorted(set(rows))


def manifest_for(profile: str, name: str, data_root: str | None):
    """The manifest a profile's runs use: the whole dataset, or a rehearsal's handful of images (with
    the release's image count not checked: a rehearsal checks code paths; `iqa-kit data` checks data)."""
    n = profile_scope(profile)["images"]
    manifest = load_manifest(name, data_root, check_count=n is None)
    return manifest if n is None else manifest.subset(rehearsal_rows(manifest, n))


class _Manifests:
    """Each dataset parsed once per process."""

    def __init__(self, data_root):
        self.data_root, self.cache = data_root, {}

    def __call__(self, profile: str, name: str):
        if (profile, name) not in self.cache:
            self.cache[profile, name] = manifest_for(profile, name, self.data_root)
        return self.cache[profile, name]


def method_row(rec: dict, variant: str = "") -> dict:
    """The columns tables need from a run record, with the paper's method name and the variant label."""
    flat = record_row(rec)
    row = {"method": display_name(flat["model"]), "variant": variant}
    row.update({k: flat[k] for k in ("dataset", "test_dataset", "split_seed", "train_fraction", "selection", "key",
                                  "time_s", *RESULT_METRICS)})
    return row


Planned = list[tuple[RunConfig, str]]         # (config, variant label) pairs, in order


def with_base(planned: Planned, overrides: dict | None) -> Planned:
    """The planned runs with the user's overrides (`iqa-kit reproduce --set`) on every field the plan
    itself does not vary: they set the base, while a sweep's or an ablation's own field keeps its
    row's value (so a row labelled tau=0.1 runs at 0.1)."""
    if not overrides:
        return planned
    varied = {k for k in overrides if len({repr(getattr_dotted(c, k)) for c, _ in planned}) > 1}
    keep = {k: v for k, v in overrides.items() if k not in varied}
    return [(override(cfg, keep), label) for cfg, label in planned]


def run_all(planned: Planned, results_dir: str = "results", data_root: str | None = None,
            shard: str | None = None, progress: bool = True, device: str | None = None,
            overrides: dict | None = None, stores: StoreCache | None = None) -> pd.DataFrame:
    """Run (or load) every (config, label); one row per run: method, variant, dataset, seed, metrics.

    device: one device, or several ("cuda:0,cuda:1"): the runs are then trained by one worker process
    per device (pool.py), and this process loads their records (and trains any run a dead worker left).
    overrides: dotted fields set on every run, except those the planned runs vary (`with_base`).
    stores: the StoreCache the runs share (default: one for this call), so a sweep decodes each dataset once;
    pass one across calls to share it further."""
    pairs = take_shard(with_base(planned, overrides), shard)
    manifests = _Manifests(data_root)
    devices = parse_devices(device)
    where = {"data.data_root": data_root, **({"train.device": devices[0]} if devices else {})}
    pairs = [(override(cfg, where), label) for cfg, label in pairs]
    jobs = [(cfg, manifests(cfg.profile, cfg.data.dataset),
             manifests(cfg.profile, cfg.test_dataset) if cfg.test_dataset else None) for cfg, _ in pairs]
    if len(devices) > 1:
        run_on_pool(jobs, devices, results_dir)
    rows, stores = [], StoreCache() if stores is None else stores
    for (cfg, manifest, test_manifest), (_, label) in zip(jobs, pairs):
        rec = run_or_load(cfg, results_dir, manifest=manifest, test_manifest=test_manifest, progress=progress,
                          stores=stores)
        rows.append(method_row(rec, label))
    return pd.DataFrame(rows)


# --- the runs each table needs, as (config, label) lists: notebooks run them, `iqa-kit plan` counts them ----
def main_configs(profile: str, models=("deiqt", "csfiqa", "lmliqa"), datasets=None, seeds=None,
                 overrides: dict | None = None) -> Planned:
    scope = profile_scope(profile)
    return [(c, "") for m in models
            for c in configs(profile, m, datasets or scope["datasets"], seeds or scope["seeds"], overrides)]


def variant_configs(profile: str, model: str, variants: dict[str, dict], datasets=None, seeds=None) -> Planned:
    """Ablation rows: {variant label: dotted overrides} on the profile's ablation datasets."""
    scope, tiny = profile_scope(profile), make_config(profile).model.size == "tiny"
    return [(c, label) for label, ov in variants.items() if not (tiny and label in FULL_SIZE_ONLY)
            for c in configs(profile, model, datasets or scope["ablation_datasets"], seeds or scope["side_seeds"],
                             {**scope["side_budget"], **ov})]


def sweep_configs(profile: str, model: str, field: str | tuple[str, ...], values: list) -> Planned:
    """One-field (or tied-fields) sensitivity sweep; variant label = the value."""
    fields = (field,) if isinstance(field, str) else field
    variants = {}
    for v in values:
        vs = v if isinstance(v, (tuple, list)) and len(fields) > 1 else (v,)
        variants[", ".join(map(str, vs))] = dict(zip(fields, vs))
    return variant_configs(profile, model, variants)


def cross_configs(profile: str, models, pairs=None, seeds=None) -> Planned:
    """Train on A (all of it by default, data.cross_train; kit X1), test on all of B; one run per side seed,
    which sets the training seed (and the split seed, which draws the 80 % part under cross_train="split")."""
    scope = profile_scope(profile)
    return [(make_config(profile, model, {**scope["side_budget"], "data.dataset": source, "test_dataset": target,
                                          "split_seed": seed, "train.seed": seed}), "")
            for model in models for source, target in (pairs or scope["cross_pairs"])
            for seed in (seeds or scope["side_seeds"])]


def fraction_configs(profile: str, models, fractions=None, datasets=None, seeds=None) -> Planned:
    """Data-efficient learning: train on a share of the training split, same test split."""
    scope = profile_scope(profile)
    return [(c, f"{int(round(f * 100))}%") for m in models for f in (fractions or scope["fractions"])
            for c in configs(profile, m, datasets or scope["fraction_datasets"], seeds or scope["side_seeds"],
                             {**scope["side_budget"], "data.train_fraction": f})]


def untrained_configs(profile: str, model: str, datasets=None, seeds=None) -> Planned:
    """The same model evaluated before any training step (epochs = 0): the floor training must clear."""
    scope = profile_scope(profile)
    return [(c, "untrained") for c in configs(profile, model, datasets or scope["datasets"][:1],
                                                seeds or scope["seeds"], {"train.epochs": 0})]


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
        "NSM pooled (one weight per image)": {"csfiqa.nsm": "pooled"},
        "w/o AFS (dense attention)": {"csfiqa.afs": "dense"},
        "w/o Information Concentrator": {"csfiqa.ic": "off"},
        "w/o SFA (neither AFS nor IC)": {"csfiqa.afs": "off", "csfiqa.ic": "off"},
        "IC: a trainable block instead of LLaMA": {"csfiqa.ic": "trainable_block"},
        "IC: LLaMA layer 15 instead of 31": {"csfiqa.ic_layer": 15},
        "one scale": {"csfiqa.scale_mode": "single"},
    },
    "lmliqa": {
        "inter-image negatives only": {"lmliqa.intra_negatives": False},
        "+ intra-image negatives (LML-IQA)": {},
        "saliency: spectral residual": {"lmliqa.saliency": "spectral_residual"},
        "saliency: random (random positive)": {"lmliqa.saliency": "random"},
        "anchor: the training crop": {"lmliqa.anchor": "train_crop"},
        "anchor: a native-resolution crop at the saliency peak": {"lmliqa.anchor": "native_crop"},
        "two-term loss (v1 reading)": {"lmliqa.loss_form": "two_term"},
        "w/o mutual learning": {"lmliqa.mutual": "off"},
    },
}
# rows that change nothing at the tiny size (the smoke profile's LLaMA block is one random layer)
FULL_SIZE_ONLY = {"IC: LLaMA layer 15 instead of 31"}


def sweep_label(model: str, name: str) -> str:
    fields = SWEEPS[model][name][0]
    return fields if isinstance(fields, str) else " / ".join(fields)


def getattr_dotted(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def sweep_values(profile: str, model: str, name: str) -> list:
    """A sweep's values: all of them, or (smaller budgets) the default and the first other value, or the
    default alone."""
    fields, values = SWEEPS[model][name]
    if profile_scope(profile)["sweep_values"] == "all":
        return values
    tied = (fields,) if isinstance(fields, str) else fields
    default = tuple(getattr_dotted(make_config(profile, model), f) for f in tied)
    default = default[0] if isinstance(fields, str) else default
    others = [v for v in values if v != default]
    return [default] if profile_scope(profile)["sweep_values"] == "default" else [default, others[0]]


def named_sweep_configs(profile: str, model: str, name: str) -> Planned:
    fields, _ = SWEEPS[model][name]
    return sweep_configs(profile, model, fields, sweep_values(profile, model, name))


def visual_configs(profile: str, dataset: str | None = None, seed: int = 0) -> Planned:
    """The seed-0 run of each model that notebook 06 draws its figures from (LIVEC when planned)."""
    datasets = profile_scope(profile)["datasets"]
    dataset = dataset or ("LIVEC" if "LIVEC" in datasets else datasets[0])
    return [(c, "") for m in list_models() for c in configs(profile, m, [dataset], [seed])]


def llama_layers(profile: str) -> list[int]:
    """The LLaMA-7B layers the profile's CSFIQA runs read (the default, and any ablation's other index)."""
    return sorted({c.csfiqa.ic_layer for planned in notebook_runs(profile).values() for c, _ in planned
                   if c.model.name == "csfiqa" and c.csfiqa.ic.startswith("llama")})


def notebook_runs(profile: str) -> dict[str, Planned]:
    """Every run each notebook makes, in its order (`iqa-kit plan`; the notebooks call the same lists)."""
    sweeps = {m: [c for name in SWEEPS[m] for c in named_sweep_configs(profile, m, name)] for m in SWEEPS}
    return {
        "01_train_csfiqa": main_configs(profile, ("deiqt", "csfiqa")) + untrained_configs(profile, "csfiqa")
        + sweeps["csfiqa"],
        "02_train_lmliqa": main_configs(profile, ("deiqt", "lmliqa")) + untrained_configs(profile, "lmliqa")
        + fraction_configs(profile, ("deiqt", "lmliqa")),
        "03_ablations": variant_configs(profile, "csfiqa", ABLATIONS["csfiqa"])
        + variant_configs(profile, "lmliqa", ABLATIONS["lmliqa"]) + sweeps["lmliqa"],
        "04_cross_dataset": cross_configs(profile, ("deiqt", "csfiqa", "lmliqa")),
        "06_visualizations": visual_configs(profile),
    }
