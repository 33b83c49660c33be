"""The papers' tables that need more than `Session.compare`: reported | reproduced for data efficiency
and cost, which version of each paper they quote, the datasets as parsed (notebook 00) and the cost
table (notebook 05)."""
from __future__ import annotations

import pandas as pd

from ..config.check import make_config
from ..config.profiles import profile_scope
from ..devices import resolve_device
from ..models import costs, create_model, display_name, list_models
from . import tables


def paper_versions(profile: str, overrides: dict | None = None) -> dict[str, str]:
    """Which version of each paper the tables quote (csfiqa.version, lmliqa.version; docs D1): the
    profile's, or the one `overrides` (`iqa-kit reproduce --set csfiqa.version=v1`) sets."""
    return {display_name("csfiqa"): make_config(profile, "csfiqa", overrides).csfiqa.version,
            display_name("lmliqa"): make_config(profile, "lmliqa", overrides).lmliqa.version}


def data_efficiency_table(runs: pd.DataFrame, profile: str | None, versions: dict | None = None) -> pd.DataFrame:
    """Reported | reproduced per share of the training split (the fraction_configs rows), judged for
    `profile` (tables.comparison_table)."""
    parts = [tables.comparison_table(g, table=f"data_efficient_{share.rstrip('%')}", versions=versions,
                                     by=("method", "variant", "dataset"), profile=profile)
             for share, g in runs.groupby("variant", sort=False)]
    return pd.concat(parts, ignore_index=True)


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


def cost_analysis(profile: str, device: str = "auto", crops_per_image: int = 10) -> pd.DataFrame:
    """Params and MACs at full size (each paper's input size), then latency, throughput and peak
    memory of the profile's model size on `device` (named in the table), at the profile's budget."""
    dev, timing = resolve_device(device), costs.Timing(**profile_scope(profile)["cost"])
    full = {display_name(m): costs.full_size_model(m) for m in list_models()}
    sizes = {name: getattr(model, "input_size", 224) for name, model in full.items()}
    t_full = costs.cost_table(full, input_sizes=sizes, timing=None, crops_per_image=crops_per_image)
    t_full.insert(1, "size", "full (paper)")
    t_run = costs.cost_table(_timed_models(profile, dev), device=str(dev), timing=timing, memory=True,
                             crops_per_image=crops_per_image)
    if make_config(profile).model.size == "tiny":
        t_run.insert(1, "size", "tiny (smoke)")
        return pd.concat([t_full, t_run], ignore_index=True)
    t_full = t_full.drop(columns=["device"])
    keep = [c for c in t_run.columns if c not in t_full.columns or c == "model"]
    return t_full.merge(t_run[keep], on="model", how="left")
